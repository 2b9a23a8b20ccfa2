"""``scaffold new``: render a blueprint with Copier into a project folder.

The resolved manifest (blueprint defaults < preset < ``--set``) is computed and validated here, then
handed to the blueprint's templates with the parts' sources. Copier runs with ``unsafe=False``, so no
template code is executed, and with StrictUndefined, so a misspelt variable is an error. A project is
rendered into a staging folder and moved into place only when complete.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import __version__, atomic, manifest
from .blueprints import Blueprint
from .blueprints import load as load_blueprint
from .errors import BlueprintError, ProjectError, UsageError
from .parts import part_sources
from .tokenizer import TOKENIZER_FILE as TOKENIZER_FILE  # re-exported: build.py imports it from here
from .tokenizer import make_for_new
from .tokenizer import write as write_tokenizer

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
ANSWERS_FILE = ".copier-answers.yml"


def check_name(name: str) -> None:
    """Refuse project names that are empty, hidden, or would escape the projects folder."""
    if not NAME_RE.match(name) or ".." in name:
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
    m = manifest.merge(*bp.base_layers(), bp.preset(preset), overrides, project)
    manifest.validate(m, model_keys=bp.model_keys, path=f"{name}/{manifest.MANIFEST_NAME}")
    return m


def render_data(bp: Blueprint, m: manifest.Manifest, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What the templates see: the answers (name, preset, --set overrides) and computed values."""
    project = m.get("project", {})
    return {
        "project_name": project["name"],
        "preset": project.get("preset") or bp.default_preset,
        "overrides": dict(overrides or {}),
        # not questions: computed here, so not saved in the answers file
        "manifest": m,
        "manifest_toml": manifest.dumps(m).rstrip(),
        "parts": part_sources(),
        "scaffold_version": __version__,
        "blueprint_name": bp.name,
        "blueprint_version": bp.version,
    }


def render_files(
    bp: Blueprint, m: manifest.Manifest, overrides: Mapping[str, Any] | None = None
) -> dict[str, str]:
    """The project files ``bp`` renders for the resolved manifest ``m``, by relative path.

    Copier renders into a temporary folder that is read back and removed; the tokenizer is not made
    here. ``overrides`` are the ``--set`` values recorded in the answers file.
    """
    import copier

    with tempfile.TemporaryDirectory(prefix="scaffold-render-") as tmp:
        out = Path(tmp) / "project"
        try:
            copier.run_copy(
                str(bp.path),
                out,
                data=render_data(bp, m, overrides),
                defaults=True,
                overwrite=True,
                unsafe=False,
                quiet=True,
                cleanup_on_error=False,
            )
        except Exception as err:  # copier and jinja raise many kinds; all mean the blueprint is at fault
            raise template_error(err, bp) from err
        _normalise_answers(out / ANSWERS_FILE, bp)
        return {
            p.relative_to(out).as_posix(): p.read_text(encoding="utf-8")
            for p in sorted(out.rglob("*"))
            if p.is_file()
        }


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
    relative to it, and a tokenizer already there, made from the same inputs, is reused. The
    rendering is also kept under ``.scaffold/``: the base of later three-way merges.
    """
    from .update import write_rendering

    preset = preset or bp.default_preset
    m = new_manifest(bp, name, preset, overrides)
    tokenizer = make_for_new(m, overrides or {}, Path(project_dir or dest))
    files = render_files(bp, m, overrides)
    dest.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(text, encoding="utf-8")
    write_rendering(dest, bp, files)
    write_tokenizer(tokenizer, dest)
    return dest


def template_error(err: BaseException, bp: Blueprint) -> BlueprintError:
    """A one-line error naming the template file, line and variable where rendering failed."""
    import jinja2

    where: str | Path = bp.path
    tb = err.__traceback__
    while tb is not None:  # jinja puts the template's file and line into the traceback
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(bp.meta.get("template_suffix", ".jinja")) and Path(filename).is_file():
            where = f"{filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    if isinstance(err, jinja2.TemplateSyntaxError) and err.filename:
        where = f"{err.filename}:{err.lineno}"
    if isinstance(err, jinja2.UndefinedError):
        found = re.search(r"'([^']+)' is undefined|has no attribute '([^']+)'", str(err))
        variable = next((g for g in found.groups() if g), None) if found else None
        return BlueprintError(
            f"undefined template variable ({_one_line(err)}); is it misspelt?", path=where, key=variable
        )
    return BlueprintError(f"rendering failed: {type(err).__name__}: {_one_line(err)}", path=where)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


def _normalise_answers(path: Path, bp: Blueprint) -> None:
    """Record the blueprint by its stable reference, not this machine's absolute path, and its version."""
    if path.is_file():
        text = re.sub(r"(?m)^_src_path: .*$", f"_src_path: {bp.ref}", path.read_text(encoding="utf-8"))
        # Copier's own field for the template version a project was made from (a git tag for Copier)
        text = re.sub(r"(?m)^_commit: .*\n", "", text)
        text = re.sub(r"(?m)^(_src_path: .*)$", lambda mt: f"_commit: {bp.version}\n{mt.group(1)}", text, count=1)
        path.write_text(text, encoding="utf-8")


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
    unless git holds them, ``backup`` (the old project is kept as ``NAME.backup-<time>``) or
    ``discard_edits``."""
    from .update import backup_path, committed, edited_files

    check_name(name)
    bp = load_blueprint(blueprint)
    projects_dir = Path(projects_dir)
    target = projects_dir / name
    new_manifest(bp, name, preset, overrides)  # validate before anything is written
    with atomic.locked(target):
        atomic.sweep(target)
        if target.exists() and not force:
            raise ProjectError("already exists; pass --force to replace it (its files will be lost)", path=target)
        if target.exists() and not target.is_dir():
            raise ProjectError("exists and is not a folder", path=target)
        keep = None
        if target.exists():
            edited = edited_files(target)
            if edited and not (discard_edits or backup or committed(target, edited)):
                raise ProjectError(
                    f"holds edits that --force would lose ({', '.join(edited)}): commit them, pass --backup to "
                    "keep the project as it is beside the new one, or --discard-edits",
                    path=target,
                )
            keep = backup_path(target) if backup else None
        staging = atomic.make_staging(target, "new")
        try:
            render(bp, staging, name, preset, overrides, project_dir=target)
            atomic.apply_umask(staging)
            atomic.fault_point("new-staged")
            atomic.fsync_tree(staging)
            atomic.swap_in(staging, target, keep_old=keep)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if keep is not None:
        print(f"kept the previous project as {keep}", file=sys.stderr)
    return target


def rerender(project_dir: str | Path, dest: str | Path) -> Path:
    """Render a project again, from its answers and blueprint, into ``dest`` (for the sync check)."""
    project_dir = Path(project_dir)
    answers = read_answers(project_dir)
    m = manifest.load(project_dir)
    bp = load_blueprint(m.get("project", {}).get("blueprint") or answers.get("_src_path"))
    return render(
        bp, Path(dest), answers["project_name"], answers.get("preset"), answers.get("overrides") or {},
        project_dir=project_dir,
    )
