"""A project as every command sees it: the folder, its blueprint, its manifest resolved.

``load_project`` reads a project once (CLI > manifest > blueprint defaults, validated) and each
command consumes the :class:`Project` it returns: ``build`` (model directory), ``test`` (through the
build), ``show``; ``update`` and ``diff`` read the raw manifest and the blueprint with
:func:`blueprint_of`, since a project behind its blueprint may not validate until it is migrated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from scaffold.arch import Architecture, for_blueprint
from scaffold.errors import ManifestError, ProjectError
from scaffold.spec import manifest, schema
from scaffold.spec.blueprints import Blueprint
from scaffold.spec.blueprints import load as load_blueprint


def blueprint_of(path: Path, data: Mapping[str, Any]) -> Blueprint:
    """The blueprint a project's manifest ``data`` names (a built-in name, or a path relative to it)."""
    spec = (data.get("project") or {}).get("blueprint")
    if not isinstance(spec, str):
        raise ProjectError(
            "missing; which blueprint made this project?",
            path=Path(path) / manifest.MANIFEST_NAME,
            key="project.blueprint",
        )
    return load_blueprint(spec if (Path(spec).is_absolute() or "/" not in spec) else Path(path) / spec)


@dataclass
class Project:
    """A project folder, its blueprint and its manifest resolved against the blueprint's defaults."""

    path: Path
    blueprint: Blueprint
    manifest: manifest.Manifest  # resolved: defaults < file < overrides
    overrides: manifest.Manifest = field(default_factory=dict)
    file_manifest: manifest.Manifest = field(default_factory=dict)  # resolved: defaults < file

    @property
    def name(self) -> str:
        return self.manifest["project"]["name"]

    def file(self, key: str) -> Path:
        return self.path / self.blueprint.meta[key]

    @property
    def restructured(self) -> bool:
        """Whether the command line changes a structural key: the project's code files then no longer
        describe this model, and the build renders them afresh from the blueprint."""
        return schema.structure_of(self.manifest.get("model", {})) != schema.structure_of(
            self.file_manifest.get("model", {})
        )

    @cached_property
    def architecture(self) -> Architecture:
        """The resolved architecture of this project as resolved (command line included)."""
        return for_blueprint(self.blueprint, self.manifest.get("model", {}))

    @cached_property
    def rendering(self) -> dict[str, str]:
        """The blueprint's rendering of this project as resolved (command line included), by file name:
        rendered once, for the code of a restructured build and for a build's model card."""
        from scaffold.codegen.render import render_files

        return render_files(self.blueprint, self.manifest)

    @cached_property
    def code(self) -> dict[str, str]:
        """The configuration and modeling files a build writes, by file name: the project's own, or
        rendered from the blueprint when the command line changes the structure (never a stale one)."""
        names = [self.blueprint.meta["configuration_file"], self.blueprint.meta["modeling_file"]]
        if self.restructured:
            return {name: self.rendering[name] for name in names}
        from scaffold.atomic import read_text_inside

        # never through a link out of the project, never a FIFO; not UTF-8 is an integrity error
        return {name: read_text_inside(self.path / name, self.path) for name in names}


def load_project(path: str | Path, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Project:
    """Read and validate a project; ``overrides`` (from the command line) win over the manifest."""
    from scaffold.project.living import recover

    path = Path(path)
    recover(path)  # a project an interrupted update or `new` left aside is put back first
    if not path.is_dir():
        raise ProjectError("no such project folder", path=path)
    mpath = path / manifest.MANIFEST_NAME
    data = manifest.load(mpath)
    for section, values in data.items():
        if section in manifest.schema.SECTIONS and not isinstance(values, Mapping):
            raise ManifestError(
                [(section, f"must be a table ([{section}]), got {type(values).__name__} {values!r}")],
                path=mpath,
            )
    bp = blueprint_of(path, data)
    resolved = bp.resolve(data, overrides)
    try:
        manifest.validate(resolved, model_keys=bp.model_keys, path=mpath)
    except ManifestError as err:
        version = data.get("project", {}).get("blueprint_version")
        if version is None or version == bp.version:
            raise
        hint = (
            "project.blueprint_version",
            f"{version}, but blueprint {bp.name} {bp.version} is installed: `scaffold update {path}` migrates "
            "the manifest to it",
        )
        raise ManifestError([*err.problems, hint], path=mpath) from None
    project = Project(
        path=path,
        blueprint=bp,
        manifest=resolved,
        overrides=dict(overrides or {}),
        file_manifest=bp.resolve(data),
    )
    for key in ("modeling_file", "configuration_file"):
        if not project.file(key).is_file():
            raise ProjectError(
                "missing; re-create the project with `scaffold new --force`", path=project.file(key)
            )
    return project
