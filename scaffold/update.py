"""Living projects: ``scaffold update``, ``scaffold diff``, and the re-render ``scaffold build`` does.

A project's generated files (modeling, configuration, model card) are the user's to edit. scaffold
keeps what it last rendered under ``PROJECT/.scaffold/rendered/`` with ``.scaffold/rendering.json``
(blueprint version, a fingerprint of the manifest it was rendered from, the manifest's checksum as
scaffold wrote it). That is the base of every three-way merge:

- ``scaffold build`` re-renders when the manifest changed since the last rendering, and merges the
  new rendering with the user's files (:func:`rerender_if_changed`);
- ``scaffold update`` moves a project to the installed blueprint: the blueprint's migration table
  (data, never code) renames, adds and removes manifest keys, then the code is merged the same way
  (:func:`update_project`);
- ``scaffold diff`` shows the user's edits against the last rendering (:func:`status`).

Copier's own ``copier update`` is not used: it re-renders the old version of the template from a git
tag, and scaffold's blueprints ship inside its wheel, without git. See CONTRIBUTING.md.

Every change to a project is written whole or not at all: a copy of the project (files hard-linked,
so ``model/`` costs nothing) is staged beside it, the new files and the new rendering written into
it, flushed, and swapped in with :func:`scaffold.atomic.swap_in`, under the project's lock and the
lock of its ``model/`` (so no build is writing inside it meanwhile).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, atomic, manifest
from .blueprints import Blueprint
from .errors import BlueprintError, IntegrityError, ProjectError
from .files import ANSWERS_FILE, DEFAULT_OUTPUT
from .merge import merge_text, unified_diff

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


def _say(line: str) -> None:
    """A progress line on stderr (stdout carries each command's result)."""
    print(line, file=sys.stderr, flush=True)


# -- the last rendering, kept in the project -----------------------------------------------------


def tracked(files: Mapping[str, str]) -> dict[str, str]:
    """The rendered files a user may edit and a re-render merges (everything but manifest and answers)."""
    return {name: text for name, text in files.items() if name not in UNTRACKED}


def render_fingerprint(data: Mapping[str, Any]) -> str:
    """What of a manifest file can change the rendered files: all of it but [test]."""
    return manifest.fingerprint({k: v for k, v in data.items() if k != "test"})


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_rendering(dest: Path, bp: Blueprint, names: list[str]) -> None:
    """Keep the files ``names`` of ``dest``, a fresh rendering, as its last rendering."""
    manifest_text = (dest / manifest.MANIFEST_NAME).read_text(encoding="utf-8")
    state = _state(bp, tomllib.loads(manifest_text), manifest_sha256=_sha(manifest_text))
    files = {name: (dest / name).read_text(encoding="utf-8") for name in names if (dest / name).is_file()}
    _write_store(dest / STORE_DIR, files, state)


def _state(bp: Blueprint, data: Mapping[str, Any], *, manifest_sha256: str | None) -> dict[str, Any]:
    return {
        "note": STATE_NOTE,
        "blueprint": bp.name,
        "blueprint_version": bp.version,
        "scaffold_version": __version__,
        "manifest": render_fingerprint(data),
        # the manifest file as scaffold last wrote it; another checksum means the user edited it
        "manifest_sha256": manifest_sha256,
    }


def _state_text(state: Mapping[str, Any], files: Mapping[str, str]) -> str:
    """rendering.json: the record, and the sha256 of each file kept under rendered/ (only those are the
    base of a merge; anything else found there is not scaffold's)."""
    record = {k: v for k, v in state.items() if k != "files"}
    record["files"] = {name: _sha(text) for name, text in sorted(files.items())}
    return json.dumps(record, indent=2) + "\n"


def _write_store(store: Path, files: Mapping[str, str], state: Mapping[str, Any]) -> None:
    for name, text in files.items():
        _write_new(store / RENDERED_DIR / name, text)
    _write_new(store / STATE_FILE, _state_text(state, files))


def _write_new(path: Path, text: str) -> None:
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


def _damaged(path: Path, why: str) -> IntegrityError:
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
            raise _damaged(state_path, "missing")
        state = atomic.loads_json(text, state_path)
    except IntegrityError as err:
        if DAMAGED_STATE in str(err):
            raise
        raise _damaged(state_path, str(err.args[0]) if err.args else "damaged") from None
    if not isinstance(state, dict):
        raise _damaged(
            state_path, f"damaged: a JSON {type(state).__name__}, not the record scaffold writes (an object)"
        )
    if not isinstance(state.get("manifest"), str):
        raise _damaged(state_path, "no manifest fingerprint (key 'manifest')")
    if not root.is_dir() or root.is_symlink():
        raise _damaged(root, "missing or not a folder")
    listed = state.pop("files", None)
    if listed is None:  # recorded by an older scaffold: its renderings were the code files
        listed = {p.name: None for p in sorted(root.iterdir()) if LEGACY_RENDERED.fullmatch(p.name)}
    if not isinstance(listed, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in listed.items()
    ):
        raise _damaged(state_path, "'files' is not a table of file names and sha256 checksums")
    files: dict[str, str] = {}
    for name, digest in listed.items():
        path = root / name
        if Path(name).is_absolute() or ".." in Path(name).parts or name in UNTRACKED:
            raise _damaged(state_path, f"'files' names {name!r}, not a code file of the project")
        if not path.is_symlink() and not path.exists():
            raise _damaged(path, "missing")
        data = atomic.read_bytes_inside(path, root)  # a link out of rendered/ or a FIFO: named, never read
        if digest is not None and hashlib.sha256(data).hexdigest() != digest:
            raise _damaged(path, f"changed: its sha256 differs from {STATE_FILE}")
        try:
            files[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            raise _damaged(path, "not UTF-8 text") from None
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


def _read(path: Path) -> str | None:
    """A project file's text, None when absent. Never through a link out of its folder, never a FIFO;
    bytes that are not UTF-8 are an IntegrityError naming the file and the byte (never replaced: a
    merge written back would lose them)."""
    return atomic.read_text_inside(path, path.parent, missing_ok=True)


def _shown(path: Path) -> str | None:
    """A project file's text for display (bytes that are not UTF-8 shown as U+FFFD), None: absent;
    never through a link out of its folder, never a FIFO."""
    data = atomic.read_bytes_inside(path, path.parent, missing_ok=True)
    return None if data is None else data.decode("utf-8", errors="replace")


def _differs(path: Path, text: str | None) -> bool:
    """Whether the file at ``path`` is not, byte for byte, ``text`` (None: absent)."""
    data = atomic.read_bytes_inside(path, path.parent, missing_ok=True)
    if data is None:
        return text is not None
    return text is None or data != text.encode("utf-8")


def edited_files(project_dir: Path) -> list[str]:
    """The project's files that differ from what scaffold last wrote (the manifest too), by name.

    For a project made before scaffold kept its renderings, the files are compared with what its
    blueprint renders today from its answers (a difference may then also be the blueprint's).
    """
    project_dir = Path(project_dir)
    rendering = read_rendering(project_dir)
    mpath = project_dir / manifest.MANIFEST_NAME
    if rendering is None:
        from .atomic import scratch_dir
        from .render import rerender

        with scratch_dir("edits") as tmp:
            try:
                fresh = rerender(project_dir, Path(tmp) / "fresh")
            except Exception:  # cannot tell: every generated file may hold edits
                return [p.name for p in code_files(project_dir)] + [manifest.MANIFEST_NAME]
            names = [n for n in sorted(tracked({p.name: "" for p in fresh.iterdir() if p.is_file()}))]
            names.append(manifest.MANIFEST_NAME)
            return [n for n in names if _differs(project_dir / n, _shown(fresh / n))]
    edited = [name for name, text in rendering.files.items() if _differs(project_dir / name, text)]
    try:
        data = mpath.read_bytes()
    except FileNotFoundError:
        data = None
    if data is None or hashlib.sha256(data).hexdigest() != rendering.state.get("manifest_sha256"):
        edited.append(manifest.MANIFEST_NAME)
    return edited


def committed(project_dir: Path, names: list[str]) -> bool:
    """Whether git's last commit (HEAD) holds every one of ``names`` exactly as it is now.

    The file's content is hashed as git would store it and compared with the blob HEAD holds, never
    taken from ``git status`` (which trusts the index: a file marked ``--assume-unchanged`` or
    ``--skip-worktree`` reads as unchanged whatever it holds)."""
    git = shutil.which("git")
    if git is None or not names:
        return False
    paths = [f"./{name}" for name in names]
    try:
        held = subprocess.run(
            [git, "rev-parse", *(f"HEAD:{p}" for p in paths)],
            cwd=project_dir,
            capture_output=True,
            text=True,
            timeout=30,
        )
        now = subprocess.run(
            [git, "hash-object", "--", *paths],
            cwd=project_dir,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    if held.returncode != 0 or now.returncode != 0:
        return False
    held_ids, now_ids = held.stdout.split(), now.stdout.split()
    return len(held_ids) == len(names) and held_ids == now_ids


# -- planning a merge ----------------------------------------------------------------------------


@dataclass
class Change:
    """What a merge does to one file of the project."""

    name: str
    action: str  # updated | merged | conflict | added | removed | kept
    before: str | None  # the project's file now (None: absent)
    after: str | None  # what it becomes (None: deleted)
    conflicts: int = 0

    def line(self, why: str) -> str:
        what = {
            "updated": f"updated ({why})",
            "merged": f"merged with your edits ({why})",
            "conflict": f"CONFLICT: {self.conflicts} conflict(s) marked inline ({why}); resolve them, then build",
            "added": f"added ({why})",
            "removed": f"removed: no longer rendered ({why})",
            "kept": f"kept as you edited it, though no longer rendered ({why})",
        }[self.action]
        return f"{self.name}: {what}"


def plan_merge(
    project_dir: Path, base: Mapping[str, str], new: Mapping[str, str], *, label: str
) -> list[Change]:
    """How each generated file changes when the rendering goes from ``base`` to ``new``, keeping the
    user's edits: the files that change only (an unchanged rendering leaves a file alone)."""
    changes: list[Change] = []
    for name in sorted(set(base) | set(new)):
        old_r, new_r = base.get(name), new.get(name)
        if old_r == new_r:
            continue
        if new_r is None and _differs(Path(project_dir) / name, old_r):
            continue  # no longer rendered, and not as scaffold wrote it: kept as it is (or absent)
        yours = _read(Path(project_dir) / name)  # not UTF-8: refused, never merged
        if yours == new_r:
            continue
        if new_r is None:  # the blueprint no longer renders it
            if yours is None:
                continue
            if yours == old_r:
                changes.append(Change(name, "removed", yours, None))
            else:
                changes.append(Change(name, "kept", yours, yours))
            continue
        if yours is None or yours == old_r:
            changes.append(Change(name, "added" if yours is None else "updated", yours, new_r))
            continue
        merged = merge_text(old_r or "", yours, new_r, new_label=f"new rendering ({label})")
        action = "conflict" if merged.conflicts else "merged"
        changes.append(Change(name, action, yours, merged.text, conflicts=merged.conflicts))
    return [c for c in changes if c.after != c.before]


# -- writing a project whole ----------------------------------------------------------------------


@contextlib.contextmanager
def project_locked(project_dir: Path) -> Iterator[None]:
    """The project's lock, then its model/'s (a build writing there finishes first); leftovers of
    interrupted updates are swept."""
    with atomic.locked(project_dir), atomic.locked(project_dir / DEFAULT_OUTPUT):
        atomic.sweep(project_dir)
        yield


def recover(project_dir: str | Path) -> None:
    """Put back a project that an interrupted swap left aside, and sweep what interrupted runs left."""
    project_dir = Path(project_dir)
    found = atomic.leftovers(project_dir)
    if any(found.values()):
        with atomic.locked(project_dir):
            atomic.sweep(project_dir)


def commit(
    project_dir: Path,
    changes: list[Change],
    new_rendering: Mapping[str, str],
    state: Mapping[str, Any],
    extra: Mapping[str, str] | None = None,
) -> None:
    """Write ``changes``, the files in ``extra`` (name -> text) and the new rendering into the project,
    whole or not at all (call it holding :func:`project_locked`)."""
    staging = atomic.make_staging(project_dir, "update")
    try:
        atomic.link_tree(project_dir, staging, skip=lambda name: name == STORE_DIR)
        written = []
        for c in changes:
            if c.after is None:
                (staging / c.name).unlink(missing_ok=True)
            else:
                _write_new(staging / c.name, c.after)
                written.append(staging / c.name)
        for name, text in (extra or {}).items():
            _write_new(staging / name, text)
            written.append(staging / name)
        _write_store(staging / STORE_DIR, new_rendering, state)
        atomic.fault_point("update-written")
        _fsync_written(staging, written)
        atomic.fault_point("update-staged")
        atomic.swap_in(staging, project_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fsync_written(staging: Path, written: list[Path]) -> None:
    """Flush the files written (the linked ones are on disk already) and every folder."""
    atomic.fsync_tree(staging, files=[*written, *(staging / STORE_DIR).rglob("*")])


def _write_state(project_dir: Path, state: Mapping[str, Any], files: Mapping[str, str]) -> None:
    """Replace rendering.json alone (atomically): the rendering (``files``) did not change, only its record."""
    atomic.write_text(project_dir / STORE_DIR / STATE_FILE, _state_text(state, files))


# -- build: re-render when the manifest changed ---------------------------------------------------


def rerender_if_changed(project: Any) -> list[str]:
    """Re-render ``project`` (a :class:`scaffold.build.Project`) if its manifest changed since its last
    rendering, merging with the user's edits; one line per file changed (also printed on stderr).

    Conflicts are written inline with markers (the build then refuses to run until they are
    resolved). A project behind the installed blueprint is not re-rendered: `scaffold update` first.
    """
    path = Path(project.path)
    rendering = read_rendering(path)
    if rendering is None:  # made before scaffold kept its renderings: its code is used as it is
        return []
    data = manifest.load(path)
    if render_fingerprint(data) == rendering.state.get("manifest"):
        return []
    with project_locked(path):
        rendering = read_rendering(path)
        data = manifest.load(path)
        if rendering is None or render_fingerprint(data) == rendering.state.get("manifest"):
            return []  # another process re-rendered it meanwhile
        bp = project.blueprint
        mpath = path / manifest.MANIFEST_NAME
        version = (data.get("project") or {}).get("blueprint_version")
        if version != bp.version:
            raise ProjectError(
                f"changed since the project was last rendered, but the project is at blueprint {bp.name} "
                f"{version} and {bp.version} is installed: run `scaffold update {path}` to move it to "
                f"{bp.version} (it re-renders for this manifest too)",
                path=mpath,
            )
        resolved = bp.resolve(data)
        manifest.validate(resolved, model_keys=bp.model_keys, path=mpath)
        from .render import render_files

        new = tracked(render_files(bp, resolved))
        for name in sorted(set(new) | set(rendering.files)):  # every generated file readable first:
            _read(path / name)  # one that is not UTF-8 (or a link out, a FIFO) stops before any write
        changes = plan_merge(path, rendering.files, new, label="manifest changed")
        state = {
            **rendering.state,
            **_state(bp, data, manifest_sha256=rendering.state.get("manifest_sha256")),
        }
        if not changes and new == rendering.files:
            _write_state(path, state, new)
            return []
        commit(path, changes, new, state)
    lines = [c.line("manifest changed") for c in changes]
    for line in lines:
        _say(line)
    return lines


# -- scaffold update ------------------------------------------------------------------------------


def _version(text: str, *, where: str | Path, key: str):
    from packaging.version import InvalidVersion, Version

    try:
        return Version(str(text))
    except InvalidVersion:
        raise ProjectError(f"not a version: {text!r}", path=where, key=key) from None


def _get(data: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    section, _, key = dotted.partition(".")
    values = data.get(section)
    if isinstance(values, Mapping) and key in values:
        return True, values[key]
    return False, None


def migrate(
    data: Mapping[str, Any], bp: Blueprint, old_version: str
) -> tuple[manifest.Manifest, list[str], dict[str, str]]:
    """The manifest ``data`` moved from blueprint version ``old_version`` to ``bp.version`` by the
    blueprint's migration table, one line per key it changed, and the keys it renamed (old -> new)."""
    import copy

    where = bp.path / "blueprint.toml"
    old = _version(old_version, where=where, key="project.blueprint_version")
    new = _version(bp.version, where=where, key="blueprint.version")
    out: manifest.Manifest = copy.deepcopy(dict(data))
    notes: list[str] = []
    renamed: dict[str, str] = {}
    steps = []
    for i, step in enumerate(bp.migrations):
        if not isinstance(step, Mapping) or "version" not in step:
            raise BlueprintError(
                "each [[migrations]] entry needs a version", path=where, key=f"migrations[{i}]"
            )
        v = _version(step["version"], where=where, key=f"migrations[{i}].version")
        if old < v <= new:
            steps.append((v, i, step))
    for v, i, step in sorted(steps, key=lambda s: (s[0], s[1])):
        for old_key, new_key in (step.get("rename") or {}).items():
            present, value = _get(out, old_key)
            if not present:
                continue
            section, _, key = old_key.partition(".")
            del out[section][key]
            if _get(out, new_key)[0]:
                notes.append(f"{old_key}: removed, {new_key} is already set (blueprint {v})")
                continue
            new_section, _, new_name = new_key.partition(".")
            out.setdefault(new_section, {})[new_name] = value
            notes.append(f"{old_key} renamed to {new_key} (blueprint {v})")
            renamed[next((k for k, n in renamed.items() if n == old_key), old_key)] = new_key
        for dotted, value in (step.get("add") or {}).items():
            if not _get(out, dotted)[0]:
                section, _, key = dotted.partition(".")
                out.setdefault(section, {})[key] = value
                notes.append(f"{dotted} = {_toml_value(value)} added (blueprint {v})")
        for dotted in step.get("remove") or []:
            if _get(out, dotted)[0]:
                section, _, key = dotted.partition(".")
                del out[section][key]
                notes.append(f"{dotted} removed (blueprint {v})")
        unknown = set(step) - {"version", "rename", "add", "remove", "note"}
        if unknown:
            raise BlueprintError(
                f"unknown migration field(s) {', '.join(sorted(unknown))}; expected rename, add, remove, note",
                path=where,
                key=f"migrations[{i}]",
            )
    out.setdefault("project", {})["blueprint_version"] = bp.version
    return out, notes, renamed


def _toml_value(value: Any) -> str:
    import tomli_w

    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def edit_manifest_text(
    text: str,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    renames: Mapping[str, str] | None = None,
    *,
    path: str | Path | None = None,
) -> str:
    """``text`` (a manifest file) changed from ``old`` to ``new`` line by line, keeping its comments and
    layout (a key renamed within its section, ``renames``, stays on its line; a quoted key is a key).
    Never rewritten whole: where a line edit cannot express the change (a section written as an inline
    table, a dotted key), a :class:`ProjectError` names the key at ``path`` and nothing is written."""

    lines = text.splitlines(keepends=True)
    header_re = re.compile(
        r"""^\s*\[\s*(?:"([A-Za-z0-9_-]+)"|'([A-Za-z0-9_-]+)'|([A-Za-z0-9_.-]+))\s*\]\s*(#.*)?$"""
    )

    def section_span(name: str) -> tuple[int, int] | None:
        start = None
        for i, line in enumerate(lines):
            m = header_re.match(line)
            if m and start is not None:
                return start, i
            if m and next(g for g in m.groups()[:3] if g is not None) == name:
                start = i + 1
        return (start, len(lines)) if start is not None else None

    def key_re(key: str) -> str:  # bare, "quoted" or 'literal'
        k = re.escape(key)
        return rf"""(?:{k}|"{k}"|'{k}')"""

    def key_line(section: str, key: str) -> int | None:
        span = section_span(section)
        if span is None:
            return None
        pattern = re.compile(rf"^\s*{key_re(key)}\s*=")
        return next((i for i in range(*span) if pattern.match(lines[i])), None)

    old = {s: dict(v) if isinstance(v, Mapping) else v for s, v in old.items()}
    for old_key, new_key in (renames or {}).items():
        (section, key), (new_section, new_name) = old_key.split(".", 1), new_key.split(".", 1)
        i = key_line(section, key) if section == new_section else None
        if i is not None and key in old.get(section, {}) and new_name not in old[section]:
            lines[i] = re.sub(rf"^(\s*){key_re(key)}(\s*=)", rf"\g<1>{new_name}\g<2>", lines[i])
            old[section][new_name] = old[section].pop(key)
    old_keys = {(s, k) for s, vals in old.items() if isinstance(vals, Mapping) for k in vals}
    new_keys = {(s, k) for s, vals in new.items() if isinstance(vals, Mapping) for k in vals}
    for section, key in sorted(old_keys - new_keys):
        i = key_line(section, key)
        if i is not None:
            del lines[i]
    for section, key in sorted(new_keys):
        value = new[section][key]
        if (section, key) in old_keys and old[section][key] == value:
            continue
        entry = f"{key} = {_toml_value(value)}\n"
        i = key_line(section, key)
        if i is not None:
            lines[i] = entry.rstrip("\n") + _trailing_comment(lines[i]) + "\n"
            continue
        span = section_span(section)
        if span is None:
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            lines += ["\n", f"[{section}]\n", entry]
            continue
        end = span[1]
        while end > span[0] and not lines[end - 1].strip():
            end -= 1
        lines.insert(end, entry)
    result = "".join(lines)
    try:
        edited = tomllib.loads(result)
    except tomllib.TOMLDecodeError:
        edited = old  # nothing of the change is there
    if edited == dict(new):
        return result

    def value(data: Mapping[str, Any], section: str, key: str) -> Any:
        values = data.get(section)
        return values.get(key, _ABSENT) if isinstance(values, Mapping) else _ABSENT

    keys = sorted({(s, k) for d in (old, new) for s, v in d.items() if isinstance(v, Mapping) for k in v})
    missed = [f"{s}.{k}" for s, k in keys if value(new, s, k) != value(edited, s, k)]
    wanted = [
        f"{key} = {_toml_value(new[key.split('.')[0]][key.split('.', 1)[1]])}"
        if key.split(".", 1)[1] in (new.get(key.split(".")[0]) or {})
        else f"{key} removed"
        for key in missed
    ]
    raise ProjectError(
        "cannot be changed in place, keeping your comments (its section is written as an inline table or "
        f"its key dotted); make the change by hand ({'; '.join(wanted) or 'see `scaffold update --dry-run`'}), "
        "or write the section as [section] with one `key = value` line each, and run again; nothing was written",
        path=path,
        key=", ".join(missed) or None,
    )


_ABSENT = object()


def _trailing_comment(line: str) -> str:
    """The comment after the value of ``key = value  # comment`` (with the spaces before it), or ''."""
    value = line.rstrip("\r\n").split("=", 1)[1] if "=" in line else ""
    for i, ch in enumerate(value):
        if ch == "#":
            try:
                tomllib.loads(f"v = {value[:i]}")
            except tomllib.TOMLDecodeError:
                continue  # a '#' inside the value
            start = len(value[:i].rstrip())
            return value[start:]
    return ""


@dataclass
class UpdatePlan:
    """What ``scaffold update`` does to a project."""

    project_dir: Path
    old_version: str
    new_version: str
    blueprint: str
    notes: list[str]  # manifest migrations
    changes: list[Change]
    manifest_before: str
    manifest_after: str
    extra: dict[str, str] = field(default_factory=dict)  # manifest and answers, when they change
    new_rendering: dict[str, str] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    state_changed: bool = False
    # a project taken in without a record of its last rendering: the files kept as the user's edits
    adopted: list[str] | None = None

    @property
    def label(self) -> str:
        return f"blueprint {self.blueprint} {self.old_version} -> {self.new_version}"

    def nothing_to_do(self) -> bool:
        return not self.changes and not self.extra and not self.state_changed

    def report(self) -> list[str]:
        lines = [c.line(self.label) for c in self.changes]
        if self.adopted is not None:
            lines.append(
                f"{STORE_DIR}/: tracked from now on (the base of later merges: blueprint {self.blueprint} "
                f"{self.new_version}'s rendering)"
            )
            lines += [
                f"{name}: kept as it is, as your edit (`scaffold diff` shows how it differs from the rendering)"
                for name in self.adopted
            ]
        if self.manifest_after != self.manifest_before:
            lines.append(
                f"{manifest.MANIFEST_NAME}: "
                + ("; ".join(self.notes) or f"blueprint_version {self.new_version}")
            )
        return lines

    def diff(self) -> str:
        parts = [
            unified_diff(
                self.manifest_before,
                self.manifest_after,
                manifest.MANIFEST_NAME,
                old_label="yours",
                new_label="updated",
            )
        ]
        for c in self.changes:
            parts.append(unified_diff(c.before, c.after, c.name, old_label="yours", new_label="updated"))
        return "".join(parts)


def plan_update(project_dir: str | Path, *, adopt: bool = False) -> UpdatePlan:
    """Work out what ``scaffold update`` would do, writing nothing.

    A project made before scaffold kept its renderings has no base for a merge. It is taken in
    ("adopted"): the installed blueprint's rendering of its (migrated) manifest becomes the last
    rendering. Files equal to that rendering are then plain generated files; files that differ cannot
    be told apart (the user's edits or an older blueprint's code), so they are kept exactly as they are,
    as the user's edits, and only with ``adopt`` (else a usage error naming them).
    """
    from .files import ANSWERS_FILE as ANSWERS
    from .project import blueprint_of
    from .render import answers_text, render_files

    project_dir = Path(project_dir)
    if not project_dir.is_dir():
        raise ProjectError("no such project folder", path=project_dir)
    mpath = project_dir / manifest.MANIFEST_NAME
    data = manifest.load(mpath)  # first: a manifest that is not UTF-8 is named there
    manifest_text = _read(mpath) or ""
    bp = blueprint_of(project_dir, data)
    rendering = read_rendering(project_dir)
    recorded = rendering.state.get("blueprint_version") if rendering is not None else bp.version
    old_version = str((data.get("project") or {}).get("blueprint_version", recorded))
    if _version(old_version, where=mpath, key="project.blueprint_version") > _version(
        bp.version, where=bp.path / "blueprint.toml", key="blueprint.version"
    ):
        raise ProjectError(
            f"made by blueprint {bp.name} {old_version}, newer than the installed {bp.version}; upgrade scaffold",
            path=mpath,
            key="project.blueprint_version",
        )
    migrated, notes, renamed = migrate(data, bp, old_version)
    resolved = bp.resolve(migrated)
    manifest.validate(resolved, model_keys=bp.model_keys, path=mpath)
    new = tracked(render_files(bp, resolved))
    adopted = None
    if rendering is None:  # made before scaffold kept its renderings: the new rendering is the base
        adopted = [
            name
            for name, text in new.items()
            if (project_dir / name).exists() and _differs(project_dir / name, text)
        ]
        if adopted and not adopt:
            raise ProjectError(
                f"made before scaffold kept a record of its last rendering, and {', '.join(adopted)} "
                f"differ{'s' if len(adopted) == 1 else ''} from what blueprint {bp.name} {bp.version} renders "
                "(your edits or an older blueprint's code: scaffold cannot tell which). `scaffold update "
                f"{project_dir} --adopt` keeps them exactly as they are and tracks the project from now on; "
                "`scaffold diff` then shows each difference",
                path=project_dir,
            )
        rendering = Rendering(files=dict(new), state={})
    plan = UpdatePlan(
        project_dir=project_dir,
        old_version=old_version,
        new_version=bp.version,
        blueprint=bp.name,
        notes=notes,
        changes=[],
        manifest_before=manifest_text,
        manifest_after=edit_manifest_text(manifest_text, data, migrated, renamed, path=mpath)
        if migrated != data
        else manifest_text,
        new_rendering=new,
        adopted=adopted,
    )
    plan.changes = plan_merge(project_dir, rendering.files, new, label=f"blueprint {bp.name} {bp.version}")
    if plan.manifest_after != manifest_text:
        plan.extra[manifest.MANIFEST_NAME] = plan.manifest_after
    answers = _read(project_dir / ANSWERS)
    if answers is not None and answers_text(answers, bp) != answers:
        plan.extra[ANSWERS] = answers_text(answers, bp)
    # an adopted project's manifest counts as scaffold's own (it cannot know better)
    unedited = adopted is not None or _sha(manifest_text) == rendering.state.get("manifest_sha256")
    sha = _sha(plan.manifest_after) if unedited else rendering.state.get("manifest_sha256")
    plan.state = _state(bp, migrated, manifest_sha256=sha)
    plan.state_changed = plan.state != rendering.state or new != rendering.files
    return plan


def update_project(project_dir: str | Path, *, dry_run: bool = False, adopt: bool = False) -> str:
    """``scaffold update``: move a project to the installed blueprint version, keeping every edit.

    With ``dry_run``, returns what would change (one line per file and a unified diff) and writes
    nothing. Conflicts are written inline with markers; build and test refuse until they are gone.
    ``adopt``: a project without a record of its last rendering is taken in (see :func:`plan_update`).
    """
    project_dir = Path(project_dir)
    if dry_run:
        recover(project_dir)
        plan = plan_update(project_dir, adopt=True)
        return _describe(plan, dry_run=True)
    recover(project_dir)
    with project_locked(project_dir):
        plan = plan_update(project_dir, adopt=adopt)
        if not plan.nothing_to_do():
            commit(project_dir, plan.changes, plan.new_rendering, plan.state, plan.extra)
    return _describe(plan, dry_run=False)


def _describe(plan: UpdatePlan, *, dry_run: bool) -> str:
    where = plan.project_dir
    if plan.nothing_to_do():
        return f"up to date: {where} is at blueprint {plan.blueprint} {plan.new_version}"
    verb = (
        ("would take in" if dry_run else "took in")
        if plan.adopted is not None
        else ("would update" if dry_run else "updated")
    )
    versions = (
        plan.new_version
        if plan.old_version == plan.new_version
        else f"{plan.old_version} -> {plan.new_version}"
    )
    head = f"{verb} {where}: blueprint {plan.blueprint} {versions}"
    lines = [head, *(f"  {line}" for line in plan.report())]
    if plan.adopted and dry_run:
        lines.append(
            f"(made before scaffold kept its renderings: `scaffold update {where} --adopt` does this)"
        )
    if not plan.report():
        lines.append("  (no file changes; the record of the last rendering is refreshed)")
    conflicts = [c for c in plan.changes if c.action == "conflict"]
    if conflicts and not dry_run:
        lines.append(
            f"resolve the conflicts in {', '.join(c.name for c in conflicts)}, then `scaffold build {where}`"
        )
    if dry_run:
        diff = plan.diff().rstrip("\n")
        lines.append("nothing written (--dry-run)" + ("; the changes:" if diff else ""))
        if diff:
            lines.append(diff)
    return "\n".join(lines)


# -- scaffold diff --------------------------------------------------------------------------------


def status(project_dir: str | Path) -> str:
    """``scaffold diff``: what the user changed against the last rendering, and whether the project is
    behind the installed blueprint."""
    from .project import blueprint_of
    from .render import render_files

    project_dir = Path(project_dir)
    recover(project_dir)
    if not project_dir.is_dir():
        raise ProjectError("no such project folder", path=project_dir)
    data = manifest.load(project_dir)
    bp = blueprint_of(project_dir, data)
    rendering = read_rendering(project_dir)
    if rendering is None:
        raise ProjectError(
            f"no record of the project's last rendering ({STORE_DIR}/{RENDERED_DIR}): it was made by an older "
            f"scaffold, so edits cannot be told apart; `scaffold update {project_dir} --dry-run` shows how "
            "taking it in would go",
            path=project_dir,
        )
    version = str((data.get("project") or {}).get("blueprint_version"))
    out: list[str] = []
    edited = [n for n in edited_files(project_dir) if n != manifest.MANIFEST_NAME]
    for name in edited:
        out.append(
            unified_diff(
                rendering.files.get(name),
                _shown(project_dir / name),
                name,
                old_label="last rendered",
                new_label="yours",
            )
        )
    summary = [f"{project_dir}: blueprint {bp.name} {version}"]
    summary.append(
        f"edited since the last rendering: {', '.join(edited)}"
        if edited
        else "no edits to the generated files"
    )
    manifest_changed = render_fingerprint(data) != rendering.state.get("manifest")
    if manifest_changed:
        summary.append("the manifest changed since the last rendering: the next `scaffold build` re-renders")
    if version != bp.version:
        summary.append(
            f"behind: blueprint {bp.name} {bp.version} is installed; `scaffold update {project_dir} --dry-run` "
            "shows what moving to it changes"
        )
    elif not manifest_changed:
        fresh = tracked(render_files(bp, bp.resolve(data)))
        if fresh != rendering.files:
            summary.append(
                f"the installed blueprint {bp.name} {bp.version} now renders differently: `scaffold update "
                f"{project_dir}` merges the change"
            )
        else:
            summary.append(f"up to date with the installed blueprint {bp.name} {bp.version}")
    return "\n".join(summary) + ("\n" + "".join(out).rstrip("\n") if out else "")


def backup_path(target: Path) -> Path:
    """A free name beside ``target`` for a copy of it: ``NAME.backup-YYYYmmdd-HHMMSS``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = target.with_name(f"{target.name}.backup-{stamp}")
    n = 1
    while path.exists():
        n += 1
        path = target.with_name(f"{target.name}.backup-{stamp}-{n}")
    return path
