"""``scaffold new``: a project rendered from a blueprint into a staging folder and swapped in whole.

The manifest of a new project (blueprint defaults < preset < ``--set``) is computed and validated
before anything is written; the code comes from :mod:`scaffold.codegen.render`, the tokenizer from
:mod:`scaffold.project.tokenizer`, and the rendering is kept under ``.scaffold/`` as the base of later
merges (:mod:`scaffold.project.store`). ``--force`` replaces only what scaffold wrote: everything else
in the old project (its git history, the user's own files) is carried into the new one."""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scaffold import atomic
from scaffold.codegen.render import code_files, render_into, template_data
from scaffold.errors import IntegrityError, ProjectError, UsageError
from scaffold.files import ANSWERS_FILE, DEFAULT_OUTPUT
from scaffold.project.store import differs, read_rendering, read_shown, tracked
from scaffold.project.tokenizer import make_for_new
from scaffold.project.tokenizer import write as write_tokenizer
from scaffold.spec import manifest
from scaffold.spec.blueprints import Blueprint
from scaffold.spec.blueprints import load as load_blueprint

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_name(name: str) -> None:
    """Refuse project names that are empty, hidden, or would escape the projects folder."""
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise UsageError(
            f"invalid project name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or "
            "digit (no paths)"
        )


def new_manifest(
    bp: Blueprint, name: str, preset: str | None, overrides: Mapping[str, Mapping[str, Any]] | None
) -> manifest.Manifest:
    """The manifest of a new project: blueprint defaults < preset < overrides, validated."""
    preset = preset or bp.default_preset
    project = {
        "project": {"name": name, "blueprint": bp.ref, "blueprint_version": bp.version, "preset": preset}
    }
    m = bp.resolve(bp.preset(preset), overrides, project)
    manifest.validate(m, model_keys=bp.model_keys, path=f"{name}/{manifest.MANIFEST_NAME}")
    return m


def render(
    bp: Blueprint,
    dest: Path,
    name: str,
    preset: str | None,
    overrides: Mapping[str, Any] | None,
    *,
    project_dir: Path | None = None,
) -> Path:
    """Render ``bp`` into the (new or empty) folder ``dest``; returns ``dest``.

    ``project_dir`` is where the project lives (default ``dest``): the tokenizer's input paths are
    relative to it, and a tokenizer already there, made from the same inputs, is reused. The code as
    rendered is also kept under ``.scaffold/``: the base of later three-way merges with a user's edits.
    """
    from scaffold.project.store import write_rendering

    preset = preset or bp.default_preset
    m = new_manifest(bp, name, preset, overrides)
    tokenizer = make_for_new(m, overrides or {}, Path(project_dir or dest))
    render_into(bp, Path(dest), template_data(bp, m, overrides))
    _normalise_answers(dest / ANSWERS_FILE, bp)
    write_rendering(Path(dest), bp, code_files(bp))
    write_tokenizer(tokenizer, dest)
    return dest


def _normalise_answers(path: Path, bp: Blueprint) -> None:
    """Record the blueprint by its stable reference, not this machine's absolute path, and its version."""
    if path.is_file():
        path.write_text(answers_text(path.read_text(encoding="utf-8"), bp), encoding="utf-8")


def answers_text(text: str, bp: Blueprint) -> str:
    """An answers file's text naming ``bp`` by its reference and version (``_commit``: Copier's own field
    for the template version a project was made from, a git tag for Copier)."""
    text = re.sub(r"(?m)^_src_path: .*$", f"_src_path: {bp.ref}", text)
    text = re.sub(r"(?m)^_commit: .*\n", "", text)
    return re.sub(r"(?m)^(_src_path: .*)$", lambda m: f"_commit: {bp.version}\n{m.group(1)}", text, count=1)


def read_answers(project_dir: Path) -> dict[str, Any]:
    """The answers Copier recorded for a project (YAML, read with Copier's own dependency)."""
    import yaml

    path = project_dir / ANSWERS_FILE
    if not path.is_file():
        raise ProjectError("no Copier answers file; was this project made by `scaffold new`?", path=path)
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def create_project(
    name: str,
    blueprint: str | Path,
    *,
    projects_dir: str | Path = "projects",
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    force: bool = False,
    discard_edits: bool = False,
    backup: bool = False,
) -> Path:
    """Create ``projects_dir/name`` from a blueprint. Refuses to replace a project unless ``force``,
    and to replace one holding edits (generated files or manifest changed since scaffold wrote them)
    unless git's last commit holds them, ``backup`` (the old project is kept as ``NAME.backup-<time>``)
    or ``discard_edits``.

    Only what scaffold writes is replaced: every other file of the old project (a ``.git`` folder, the
    user's scripts and data, ``model/``, ``runs/``) is kept in the new one, and the files an older
    rendering wrote that this one does not are removed only when they are as scaffold wrote them
    (or the edit check above let them go)."""

    from scaffold.files import DEFAULT_OUTPUT
    from scaffold.project.living import backup_path

    check_name(name)
    bp = load_blueprint(blueprint)
    projects_dir = Path(projects_dir)
    target = projects_dir / name
    new_manifest(bp, name, preset, overrides)  # validate before anything is written
    keep = None
    kept: list[str] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(atomic.locked(target))
        atomic.sweep(target)
        if target.exists() and not target.is_dir():
            raise ProjectError("exists and is not a folder", path=target)
        if target.exists() and not force:
            raise ProjectError(
                "already exists; pass --force to render it afresh (files scaffold did not write are kept)",
                path=target,
            )
        atomic.check_replaceable(target, accept="project")  # --force replaces only a scaffold project
        replaced: set[str] = set()
        if target.exists():
            stack.enter_context(atomic.locked(target / DEFAULT_OUTPUT))  # kept: no build writes it meanwhile
            atomic.sweep(target / DEFAULT_OUTPUT)
            if not (discard_edits or backup):
                edited = edited_files(target)
                if edited and not committed(target, edited):
                    raise ProjectError(
                        f"holds edits that --force would lose ({', '.join(edited)}): commit them, pass --backup "
                        "to keep the project as it is beside the new one, or --discard-edits",
                        path=target,
                    )
            replaced = _rendered_before(target)
            keep = backup_path(target) if backup else None
        staging = atomic.make_staging(target, "new")
        try:
            render(bp, staging, name, preset, overrides, project_dir=target)
            atomic.apply_umask(staging)
            if target.exists():
                kept = _carry_over(target, staging, replaced, copy=keep is not None)
            atomic.fault_point("new-staged")
            atomic.fsync_tree(staging)
            atomic.swap_in(staging, target, keep_old=keep)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if kept:
        shown = ", ".join(kept[:8]) + (f" and {len(kept) - 8} more" if len(kept) > 8 else "")
        print(f"kept what scaffold did not write: {shown}", file=sys.stderr)
    if keep is not None:
        print(f"kept the previous project as {keep}", file=sys.stderr)
    return target


def _rendered_before(project: Path) -> set[str]:
    """The files of ``project`` its last rendering wrote (from its record; none when the record is
    missing or damaged: every file a new rendering does not write is then kept)."""
    from scaffold.project.store import read_rendering

    try:
        rendering = read_rendering(project)
    except IntegrityError:
        return set()
    return set(rendering.files) if rendering is not None else set()


def _carry_over(old: Path, staging: Path, replaced: set[str], *, copy: bool) -> list[str]:
    """Put every entry of the project ``old`` that scaffold did not write into ``staging`` (a fresh
    rendering): hard links (``copy``: copies, so a backup of ``old`` stays independent of them); the
    names kept, folders with a '/'. ``replaced``: files an older rendering wrote, scaffold's to drop."""
    from scaffold.project.store import STORE_DIR

    kept: list[str] = []
    skip = {STORE_DIR, atomic.lock_path(old / DEFAULT_OUTPUT).name, *replaced}  # scaffold's own

    def carry(src: Path, dst: Path, rel: str) -> None:
        for entry in sorted(src.iterdir()):
            name = f"{rel}{entry.name}"
            if name in skip:
                continue
            target = dst / entry.name
            if entry.is_dir() and not entry.is_symlink():
                if target.is_dir() and not target.is_symlink():
                    carry(entry, target, f"{name}/")  # a folder the rendering writes into too
                elif not target.exists() and not target.is_symlink():
                    if copy:
                        shutil.copytree(entry, target, symlinks=True)
                    else:
                        atomic.link_tree(entry, target)
                    kept.append(f"{name}/")
                continue
            if target.exists() or target.is_symlink():
                continue  # written by this rendering (the edit check let it go)
            if copy:
                shutil.copy2(entry, target, follow_symlinks=False)
            else:
                atomic.link_or_copy(entry, target)
            kept.append(name)

    carry(old, staging, "")
    return kept


def rerender(project_dir: str | Path, dest: str | Path) -> Path:
    """Render a project again, from its answers and blueprint, into ``dest`` (for the sync check)."""
    project_dir = Path(project_dir)
    answers = read_answers(project_dir)
    m = manifest.load(project_dir)
    bp = load_blueprint(m.get("project", {}).get("blueprint") or answers.get("_src_path"))
    return render(
        bp,
        Path(dest),
        answers["project_name"],
        answers.get("preset"),
        answers.get("overrides") or {},
        project_dir=project_dir,
    )


def edited_files(project_dir: Path) -> list[str]:
    """The project's files that differ from what scaffold last wrote (the manifest too), by name.

    For a project made before scaffold kept its renderings, the files are compared with what its
    blueprint renders today from its answers (a difference may then also be the blueprint's).
    """
    project_dir = Path(project_dir)
    rendering = read_rendering(project_dir)
    mpath = project_dir / manifest.MANIFEST_NAME
    if rendering is None:
        from scaffold.atomic import scratch_dir

        with scratch_dir("edits") as tmp:
            try:
                fresh = rerender(project_dir, Path(tmp) / "fresh")
            except Exception:  # cannot tell: every generated file may hold edits
                return [p.name for p in code_files(project_dir)] + [manifest.MANIFEST_NAME]
            names = [n for n in sorted(tracked({p.name: "" for p in fresh.iterdir() if p.is_file()}))]
            names.append(manifest.MANIFEST_NAME)
            return [n for n in names if differs(project_dir / n, read_shown(fresh / n))]
    edited = [name for name, text in rendering.files.items() if differs(project_dir / name, text)]
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
