"""The last rendering of a project, kept in ``PROJECT/.scaffold/``: the base of every three-way merge.

``rendered/`` holds the files as scaffold last rendered them and ``rendering.json`` lists them with
their sha256, the blueprint version and a fingerprint of the manifest they were rendered from. Every
read goes through :func:`scaffold.atomic.read_text_inside` (no link out of the project, no FIFO, no
bytes replaced); a damaged record is an :class:`~scaffold.errors.IntegrityError` naming the file.
:func:`edited_files` and :func:`committed` tell whether the user's edits are safe to replace."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaffold import __version__, atomic
from scaffold.errors import IntegrityError
from scaffold.files import ANSWERS_FILE
from scaffold.spec import manifest
from scaffold.spec.blueprints import Blueprint

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


STORE_DIR = ".scaffold"


RENDERED_DIR = "rendered"


STATE_FILE = "rendering.json"


# rendered files that are inputs or records, not code: never merged, never "edited"
UNTRACKED = (manifest.MANIFEST_NAME, ANSWERS_FILE)


STATE_NOTE = (
    "scaffold's last rendering of this project (rendered/): the base of the three-way merges of "
    "`scaffold build` and `scaffold update`. Do not edit."
)


def tracked(files: Mapping[str, str]) -> dict[str, str]:
    """The rendered files a user may edit and a re-render merges (everything but manifest and answers)."""
    return {name: text for name, text in files.items() if name not in UNTRACKED}


def render_fingerprint(data: Mapping[str, Any]) -> str:
    """What of a manifest file can change the rendered files: all of it but [test]."""
    return manifest.fingerprint({k: v for k, v in data.items() if k != "test"})


def sha_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_rendering(dest: Path, bp: Blueprint, names: list[str]) -> None:
    """Keep the files ``names`` of ``dest``, a fresh rendering, as its last rendering."""
    manifest_text = (dest / manifest.MANIFEST_NAME).read_text(encoding="utf-8")
    state = rendering_state(bp, tomllib.loads(manifest_text), manifest_sha256=sha_text(manifest_text))
    files = {name: (dest / name).read_text(encoding="utf-8") for name in names if (dest / name).is_file()}
    write_store(dest / STORE_DIR, files, state)


def rendering_state(bp: Blueprint, data: Mapping[str, Any], *, manifest_sha256: str | None) -> dict[str, Any]:
    return {
        "note": STATE_NOTE,
        "blueprint": bp.name,
        "blueprint_version": bp.version,
        "scaffold_version": __version__,
        "manifest": render_fingerprint(data),
        # the manifest file as scaffold last wrote it; another checksum means the user edited it
        "manifest_sha256": manifest_sha256,
    }


def state_text(state: Mapping[str, Any], files: Mapping[str, str]) -> str:
    """rendering.json: the record, and the sha256 of each file kept under rendered/ (only those are the
    base of a merge; anything else found there is not scaffold's)."""
    record = {k: v for k, v in state.items() if k != "files"}
    record["files"] = {name: sha_text(text) for name, text in sorted(files.items())}
    return json.dumps(record, indent=2) + "\n"


def write_store(store: Path, files: Mapping[str, str], state: Mapping[str, Any]) -> None:
    for name, text in files.items():
        write_new(store / RENDERED_DIR / name, text)
    write_new(store / STATE_FILE, state_text(state, files))


def write_new(path: Path, text: str) -> None:
    """Write a file as a new inode (never through a hard link shared with the live project)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    path.write_text(text, encoding="utf-8")


@dataclass
class Rendering:
    """The last rendering of a project: its files (by relative name) and its record."""

    files: dict[str, str]
    state: dict[str, Any]


# what an older scaffold kept under rendered/ without listing it: the modeling and configuration files
# (as every built-in blueprint names them) and the model card
LEGACY_RENDERED = re.compile(r"(modeling|configuration)_\w+\.py|README\.md")


DAMAGED_STATE = (
    "scaffold's record of its last rendering is damaged, so a re-render cannot tell your edits from its "
    "code; re-create the project with `scaffold new NAME --force --backup` (the old one is kept beside "
    f"it), or delete {STORE_DIR}/ and take the files in as they are with `scaffold update PROJECT --adopt`"
)


def damaged(path: Path, why: str) -> IntegrityError:
    return IntegrityError(f"{why}: {DAMAGED_STATE}", path=path)


def read_rendering(project_dir: Path) -> Rendering | None:
    """The project's last rendering, or None for a project made before scaffold kept one (no
    ``.scaffold/``).

    The base of a merge is exactly the files rendering.json lists, each checked against its sha256; a
    record older than that list stands for the code files under rendered/ (``*.py``, README.md).
    Anything else under rendered/ is ignored. A record that is there but damaged (not a JSON object,
    a listed file missing, changed or not UTF-8) is an :class:`IntegrityError` naming the file: a
    re-render from it would merge against a wrong base, or not happen at all.
    """
    store = Path(project_dir) / STORE_DIR
    if not store.exists() and not store.is_symlink():
        return None
    state_path, root = store / STATE_FILE, store / RENDERED_DIR
    # read without following a link out of .scaffold/ (a planted link would show or merge an outside
    # file); damaged (not JSON, not an object, not UTF-8, a FIFO) is an IntegrityError naming the file
    try:
        text = atomic.read_text_inside(state_path, store, missing_ok=True)
        if text is None:
            raise damaged(state_path, "missing")
        state = atomic.loads_json(text, state_path)
    except IntegrityError as err:
        if DAMAGED_STATE in str(err):
            raise
        raise damaged(state_path, str(err.args[0]) if err.args else "damaged") from None
    if not isinstance(state, dict):
        raise damaged(
            state_path, f"damaged: a JSON {type(state).__name__}, not the record scaffold writes (an object)"
        )
    if not isinstance(state.get("manifest"), str):
        raise damaged(state_path, "no manifest fingerprint (key 'manifest')")
    if not root.is_dir() or root.is_symlink():
        raise damaged(root, "missing or not a folder")
    listed = state.pop("files", None)
    if listed is None:  # recorded by an older scaffold: its renderings were the code files
        listed = {p.name: None for p in sorted(root.iterdir()) if LEGACY_RENDERED.fullmatch(p.name)}
    if not isinstance(listed, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in listed.items()
    ):
        raise damaged(state_path, "'files' is not a table of file names and sha256 checksums")
    files: dict[str, str] = {}
    for name, digest in listed.items():
        path = root / name
        if Path(name).is_absolute() or ".." in Path(name).parts or name in UNTRACKED:
            raise damaged(state_path, f"'files' names {name!r}, not a code file of the project")
        if not path.is_symlink() and not path.exists():
            raise damaged(path, "missing")
        data = atomic.read_bytes_inside(path, root)  # a link out of rendered/ or a FIFO: named, never read
        if digest is not None and hashlib.sha256(data).hexdigest() != digest:
            raise damaged(path, f"changed: its sha256 differs from {STATE_FILE}")
        try:
            files[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            raise damaged(path, "not UTF-8 text") from None
    return Rendering(files=files, state=state)


def code_files(project_dir: Path) -> list[Path]:
    """The project's generated files (those a re-render merges): where conflict markers may be."""
    project_dir = Path(project_dir)
    rendering = read_rendering(project_dir)
    if rendering is not None:
        names = list(rendering.files)
    else:
        names = [p.name for p in project_dir.glob("*.py")] + ["README.md"]
    return [project_dir / n for n in sorted(names) if (project_dir / n).is_file()]


def read_file(path: Path) -> str | None:
    """A project file's text, None when absent. Never through a link out of its folder, never a FIFO;
    bytes that are not UTF-8 are an IntegrityError naming the file and the byte (never replaced: a
    merge written back would lose them)."""
    return atomic.read_text_inside(path, path.parent, missing_ok=True)


def read_shown(path: Path) -> str | None:
    """A project file's text for display (bytes that are not UTF-8 shown as U+FFFD), None: absent;
    never through a link out of its folder, never a FIFO."""
    data = atomic.read_bytes_inside(path, path.parent, missing_ok=True)
    return None if data is None else data.decode("utf-8", errors="replace")


def differs(path: Path, text: str | None) -> bool:
    """Whether the file at ``path`` is not, byte for byte, ``text`` (None: absent)."""
    data = atomic.read_bytes_inside(path, path.parent, missing_ok=True)
    if data is None:
        return text is not None
    return text is None or data != text.encode("utf-8")
