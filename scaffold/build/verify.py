"""``scaffold verify``: check a model directory against the record its build left.

``scaffold build`` writes ``scaffold-build.json`` with the size and sha256 of every file it wrote.
:func:`check_model_dir` compares a directory with that record and names every file that is missing,
changed or extra, and every safetensors weight file that does not load (bad header, truncated) or
disagrees with its index (a shard the index names is missing, a tensor is in one and not the other).
A quick check (``deep=False``: sizes, weight headers, and checksums of the small files only) guards ``scaffold build``'s
"up to date" answer, so ``scaffold test`` on a damaged directory stops with the damaged file's name.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scaffold.atomic import files_on_disk, sha256_file
from scaffold.errors import IntegrityError, one_line
from scaffold.files import BUILD_RECORD

WEIGHTS_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"
MAX_NAMES = 5  # tensor names listed in one problem line
# the quick check hashes files up to this size (config, code, tokenizer: a garbled config.json of
# unchanged size is caught before use); larger ones (weights) by size and header only
QUICK_HASH_BYTES = 8 << 20

Problem = tuple[Path, str]


def read_record(path: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    """The build record of ``path``, or the problem that keeps it from being read."""
    stamp_path = path / BUILD_RECORD
    if not stamp_path.is_file():
        return None, [
            (stamp_path, "missing; this folder was not written by `scaffold build`, so there is no record")
        ]
    try:
        stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        return None, [(stamp_path, f"unreadable: {one_line(err)}")]
    if not isinstance(stamp, dict) or not isinstance(stamp.get("files"), dict):
        return None, [(stamp_path, "has no `files` table; rebuild with `scaffold build --force`")]
    return stamp, []


def _names(keys: list[str]) -> str:
    more = f" and {len(keys) - MAX_NAMES} more" if len(keys) > MAX_NAMES else ""
    return ", ".join(keys[:MAX_NAMES]) + more


LINK_PROBLEM = "is a symbolic link; a build writes plain files, and verify reads nothing outside the folder"


def _linked(path: Path, name: str) -> bool:
    """Whether the file ``name`` under ``path``, or a folder on the way to it, is a symbolic link."""
    rel = Path(name)
    return any((path / q).is_symlink() for q in (rel, *rel.parents) if q != Path("."))


def check_weights(path: Path) -> tuple[list[Problem], int]:
    """Open every safetensors file under ``path`` with safetensors and check it against its index.

    Returns the problems and the number of tensors found.
    """
    from safetensors import SafetensorError, safe_open

    problems: list[Problem] = []
    keys_of: dict[str, set[str]] = {}
    for p in sorted(path.rglob(f"*{WEIGHTS_SUFFIX}")):
        rel = p.relative_to(path).as_posix()
        if _linked(path, rel):
            problems.append((p, LINK_PROBLEM))
            continue
        try:
            with safe_open(str(p), framework="pt") as f:
                keys_of[rel] = set(f.keys())
        except (SafetensorError, OSError) as err:
            problems.append((p, f"does not load: {' '.join(str(err).split())}"))
    for index_path in sorted(path.rglob(f"*{INDEX_SUFFIX}")):
        problems += _check_index(
            path, index_path, keys_of, {p.relative_to(path).as_posix() for p, _ in problems}
        )
    return problems, sum(len(k) for k in keys_of.values())


def _check_index(
    path: Path, index_path: Path, keys_of: Mapping[str, set[str]], broken: set[str]
) -> list[Problem]:
    problems: list[Problem] = []
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict):
            raise ValueError("weight_map is not a table")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError) as err:
        return [(index_path, f"unreadable index: {one_line(err)}")]
    base = index_path.parent.relative_to(path)
    by_shard: dict[str, list[str]] = {}
    for key, shard in weight_map.items():
        by_shard.setdefault((base / str(shard)).as_posix(), []).append(key)
    for shard, keys in sorted(by_shard.items()):
        if shard in broken:
            continue
        if shard not in keys_of:
            problems.append(
                (
                    path / shard,
                    f"missing: {index_path.name} names this shard for {len(keys)} tensors ({_names(keys)})",
                )
            )
            continue
        absent = sorted(set(keys) - keys_of[shard])
        if absent:
            problems.append(
                (path / shard, f"tensors named by {index_path.name} are not in this file: {_names(absent)}")
            )
        unlisted = sorted(keys_of[shard] - set(keys))
        if unlisted:
            problems.append(
                (path / shard, f"tensors in this file are not in {index_path.name}: {_names(unlisted)}")
            )
    for shard in sorted(set(keys_of) - set(by_shard)):
        if Path(shard).parent == base:
            problems.append(
                (path / shard, f"weight file not named by {index_path.name} (left from another save?)")
            )
    return problems


def check_model_dir(
    path: str | Path, stamp: Mapping[str, Any] | None = None, *, deep: bool = True
) -> list[Problem]:
    """Every problem of the model directory ``path`` measured against its build record.

    ``deep`` also compares every checksum and lists files the build did not write; without it only
    presence, sizes, the weights' headers and the small files' checksums are checked (fast, for every
    ``scaffold build``).
    """
    return _check(Path(path), stamp, deep=deep)[0]


def _check(path: Path, stamp: Mapping[str, Any] | None, *, deep: bool) -> tuple[list[Problem], int]:
    if stamp is None:
        stamp, problems = read_record(path)
        if stamp is None:
            return problems, 0
    problems, tensors = check_weights(path)
    flagged = {p for p, _ in problems}
    recorded: Any = stamp.get("files", {})
    if not isinstance(recorded, Mapping):
        return [
            *problems,
            (path / BUILD_RECORD, "has no `files` table; rebuild with `scaffold build --force`"),
        ], tensors
    for name, entry in sorted(recorded.items()):
        p = path / name
        bad = _bad_entry(name, entry)
        if bad:
            problems.append((path / BUILD_RECORD, f"entry {name!r}: {bad}"))
            continue
        if p in flagged:
            continue
        if _linked(path, name):
            problems.append((p, LINK_PROBLEM))
            continue
        if not p.is_file():
            problems.append((p, f"missing (recorded in {BUILD_RECORD})"))
            continue
        size = p.stat().st_size
        if size != entry.get("size"):
            problems.append((p, f"changed: {size} bytes, {entry.get('size')} recorded in {BUILD_RECORD}"))
        elif (deep or size <= QUICK_HASH_BYTES) and sha256_file(p) != entry.get("sha256"):
            problems.append((p, f"changed: its sha256 differs from {BUILD_RECORD}"))
    if deep:
        for name in sorted(files_on_disk(path) - set(recorded)):
            if path / name not in flagged:
                problems.append((path / name, f"extra: not written by the build (not in {BUILD_RECORD})"))
    return problems, tensors


def _bad_entry(name: str, entry: Any) -> str | None:
    """Why a record entry cannot be checked: a name leaving the folder, or not a size/sha256 table."""
    rel = Path(name)
    if not name or rel.is_absolute() or ".." in rel.parts:
        return "names a file outside the model directory; the record is not scaffold's"
    if not isinstance(entry, Mapping):
        return f"must be a table with size and sha256, got {type(entry).__name__}"
    size, digest = entry.get("size"), entry.get("sha256")
    if isinstance(size, bool) or not isinstance(size, int) or not isinstance(digest, str):
        return "must be a table with an integer size and a sha256 string"
    return None


def model_dir_of(path: str | Path) -> Path:
    """``path`` itself, or the default model directory when ``path`` is a project folder."""
    path = Path(path)
    if not (path / BUILD_RECORD).exists() and (path / "scaffold.toml").is_file():
        return path / "model"
    return path


def verify(path: str | Path) -> str:
    """Check a model directory (or a project's default one); raise IntegrityError listing every problem.

    Returns a one-line summary when all is well.
    """
    from scaffold.errors import ProjectError

    model_dir = model_dir_of(path)
    if not model_dir.is_dir():
        raise ProjectError("no such model directory", path=model_dir)
    problems, tensors = _check(model_dir, None, deep=True)
    if problems:
        raise IntegrityError(problems=problems)
    stamp, _ = read_record(model_dir)
    n_weights = sum(1 for name in stamp["files"] if name.endswith(WEIGHTS_SUFFIX))
    what = f"; {n_weights} weight file(s), {tensors} tensors load" if n_weights else "; no weights"
    return f"OK {model_dir}: {len(stamp['files'])} files match {BUILD_RECORD}{what}"
