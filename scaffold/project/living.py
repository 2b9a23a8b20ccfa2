"""Re-rendering a living project: merge the new rendering with the user's edits and write it whole.

:func:`plan_merge` decides each generated file's change (updated, merged, conflict, kept, removed);
:func:`commit` writes them and the new base as one swap of the whole project (hard-linked staging,
flushed, swapped in under the project's lock and its ``model/``'s); :func:`rerender_if_changed` is what
``scaffold build`` runs when the manifest changed since the last rendering."""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaffold import atomic
from scaffold.errors import ProjectError
from scaffold.files import DEFAULT_OUTPUT
from scaffold.project.merge import merge_text
from scaffold.project.store import (
    STATE_FILE,
    STORE_DIR,
    differs,
    read_file,
    read_rendering,
    render_fingerprint,
    rendering_state,
    state_text,
    tracked,
    write_new,
    write_store,
)
from scaffold.spec import manifest


def say(line: str) -> None:
    """A progress line on stderr (stdout carries each command's result)."""
    print(line, file=sys.stderr, flush=True)


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
        if new_r is None and differs(Path(project_dir) / name, old_r):
            continue  # no longer rendered, and not as scaffold wrote it: kept as it is (or absent)
        yours = read_file(Path(project_dir) / name)  # not UTF-8: refused, never merged
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
                write_new(staging / c.name, c.after)
                written.append(staging / c.name)
        for name, text in (extra or {}).items():
            write_new(staging / name, text)
            written.append(staging / name)
        write_store(staging / STORE_DIR, new_rendering, state)
        atomic.fault_point("update-written")
        fsync_written(staging, written)
        atomic.fault_point("update-staged")
        atomic.swap_in(staging, project_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fsync_written(staging: Path, written: list[Path]) -> None:
    """Flush the files written (the linked ones are on disk already) and every folder."""
    atomic.fsync_tree(staging, files=[*written, *(staging / STORE_DIR).rglob("*")])


def write_state(project_dir: Path, state: Mapping[str, Any], files: Mapping[str, str]) -> None:
    """Replace rendering.json alone (atomically): the rendering (``files``) did not change, only its record."""
    atomic.write_text(project_dir / STORE_DIR / STATE_FILE, state_text(state, files))


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
        from scaffold.codegen.render import render_files

        new = tracked(render_files(bp, resolved))
        for name in sorted(set(new) | set(rendering.files)):  # every generated file readable first:
            read_file(path / name)  # one that is not UTF-8 (or a link out, a FIFO) stops before any write
        changes = plan_merge(path, rendering.files, new, label="manifest changed")
        state = {
            **rendering.state,
            **rendering_state(bp, data, manifest_sha256=rendering.state.get("manifest_sha256")),
        }
        if not changes and new == rendering.files:
            write_state(path, state, new)
            return []
        commit(path, changes, new, state)
    lines = [c.line("manifest changed") for c in changes]
    for line in lines:
        say(line)
    return lines


def backup_path(target: Path) -> Path:
    """A free name beside ``target`` for a copy of it: ``NAME.backup-YYYYmmdd-HHMMSS``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = target.with_name(f"{target.name}.backup-{stamp}")
    n = 1
    while path.exists():
        n += 1
        path = target.with_name(f"{target.name}.backup-{stamp}-{n}")
    return path
