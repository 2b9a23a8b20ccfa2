"""``scaffold update`` and ``scaffold diff`` of living projects (the re-render ``scaffold build`` does is
:mod:`scaffold.project.living`; the base it merges against, :mod:`scaffold.project.store`).

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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaffold.errors import ProjectError
from scaffold.project.living import Change, commit, plan_merge, project_locked, recover
from scaffold.project.merge import unified_diff
from scaffold.project.migrate import edit_manifest_text, migrate, parse_version
from scaffold.project.new import edited_files
from scaffold.project.store import (
    RENDERED_DIR,
    STORE_DIR,
    Rendering,
    differs,
    read_file,
    read_rendering,
    read_shown,
    render_fingerprint,
    rendering_state,
    sha_text,
    tracked,
)
from scaffold.spec import manifest

# -- the last rendering, kept in the project -----------------------------------------------------


# -- planning a merge ----------------------------------------------------------------------------


# -- writing a project whole ----------------------------------------------------------------------


# -- build: re-render when the manifest changed ---------------------------------------------------


# -- scaffold update ------------------------------------------------------------------------------


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
    from scaffold.codegen.render import render_files
    from scaffold.files import ANSWERS_FILE as ANSWERS
    from scaffold.project import blueprint_of
    from scaffold.project.new import answers_text

    project_dir = Path(project_dir)
    if not project_dir.is_dir():
        raise ProjectError("no such project folder", path=project_dir)
    mpath = project_dir / manifest.MANIFEST_NAME
    data = manifest.load(mpath)  # first: a manifest that is not UTF-8 is named there
    manifest_text = read_file(mpath) or ""
    bp = blueprint_of(project_dir, data)
    rendering = read_rendering(project_dir)
    recorded = rendering.state.get("blueprint_version") if rendering is not None else bp.version
    old_version = str((data.get("project") or {}).get("blueprint_version", recorded))
    if parse_version(old_version, where=mpath, key="project.blueprint_version") > parse_version(
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
            if (project_dir / name).exists() and differs(project_dir / name, text)
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
    answers = read_file(project_dir / ANSWERS)
    if answers is not None and answers_text(answers, bp) != answers:
        plan.extra[ANSWERS] = answers_text(answers, bp)
    # an adopted project's manifest counts as scaffold's own (it cannot know better)
    unedited = adopted is not None or sha_text(manifest_text) == rendering.state.get("manifest_sha256")
    sha = sha_text(plan.manifest_after) if unedited else rendering.state.get("manifest_sha256")
    plan.state = rendering_state(bp, migrated, manifest_sha256=sha)
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
        return describe_plan(plan, dry_run=True)
    recover(project_dir)
    with project_locked(project_dir):
        plan = plan_update(project_dir, adopt=adopt)
        if not plan.nothing_to_do():
            commit(project_dir, plan.changes, plan.new_rendering, plan.state, plan.extra)
    return describe_plan(plan, dry_run=False)


def describe_plan(plan: UpdatePlan, *, dry_run: bool) -> str:
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
    from scaffold.codegen.render import render_files
    from scaffold.project import blueprint_of

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
                read_shown(project_dir / name),
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
