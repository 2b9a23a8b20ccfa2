"""Finding and reading blueprints: Copier templates plus a ``blueprint.toml`` of metadata and presets."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .errors import BlueprintError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BLUEPRINT_FILE = "blueprint.toml"
FORBIDDEN_COPIER_KEYS = ("_tasks", "_migrations", "_jinja_extensions", "_external_data")

# Defaults shared by every family; a blueprint's [defaults.*] tables override them.
COMMON_DEFAULTS: dict[str, dict[str, Any]] = {
    "tokenizer": {"kind": "byte", "chat_template": "chatml", "model_max_length": 2048},
    "generation": {"max_new_tokens": 64, "do_sample": False},
    "test": {
        "device": "auto",
        "dtype": "float32",
        "steps": 3,
        "batch_size": 2,
        "sequence_length": 128,
        "lr": 1e-3,
        "attn_implementation": "sdpa",
        "gradient_checkpointing": False,
        "fuse_optim_with_backward": False,
        "seed": 0,
    },
}


def builtin_dirs() -> list[Path]:
    """Where bare blueprint names are looked up: the repository's blueprints/, then the installed copy."""
    pkg = Path(__file__).resolve().parent
    return [pkg.parent / "blueprints", pkg / "_blueprints"]


def builtin_names() -> list[str]:
    names: set[str] = set()
    for d in builtin_dirs():
        if d.is_dir():
            names.update(p.parent.name for p in d.glob(f"*/{BLUEPRINT_FILE}"))
    return sorted(names)


@dataclass
class Blueprint:
    """A blueprint folder: ``copier.yml``, ``template/`` and ``blueprint.toml``."""

    path: Path
    meta: dict[str, Any]
    defaults: dict[str, dict[str, Any]]
    presets: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # [[migrations]]: manifest keys renamed, added or removed at a version (data, applied by update)
    migrations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def version(self) -> str:
        return self.meta["version"]

    @property
    def default_preset(self) -> str:
        return self.meta.get("default_preset") or next(iter(self.presets), "")

    @cached_property
    def model_keys(self) -> set[str]:
        return set(self.defaults.get("model", {})) | set(self.meta.get("optional_model_keys", []))

    @property
    def builtin(self) -> bool:
        return any(self.path.parent == d.resolve() for d in builtin_dirs() if d.exists())

    @property
    def ref(self) -> str:
        """How a project refers to it: the bare name for a built-in blueprint, else the path."""
        return self.name if self.builtin else str(self.path)

    def preset(self, name: str | None) -> dict[str, dict[str, Any]]:
        name = name or self.default_preset
        if name not in self.presets:
            raise BlueprintError(
                f"no preset {name!r}; presets are {', '.join(self.presets) or 'none'}",
                path=self.path / BLUEPRINT_FILE,
            )
        return self.presets[name]

    def base_layers(self) -> list[dict[str, dict[str, Any]]]:
        """The defaults in merge order: scaffold's common defaults, then the blueprint's."""
        return [COMMON_DEFAULTS, self.defaults]


def load(spec: str | Path) -> Blueprint:
    """A blueprint from a folder path, or from a built-in name (``llama``)."""
    path = Path(spec)
    if not (path / BLUEPRINT_FILE).is_file():
        if path.name == str(spec) or len(path.parts) == 1 or str(spec).startswith("blueprints"):
            for d in builtin_dirs():
                if (d / path.name / BLUEPRINT_FILE).is_file():
                    path = d / path.name
                    break
    if not (path / BLUEPRINT_FILE).is_file():
        known = ", ".join(builtin_names()) or "none"
        raise BlueprintError(f"no blueprint here (no {BLUEPRINT_FILE}); built-in blueprints: {known}", path=spec)
    path = path.resolve()
    try:
        data = tomllib.loads((path / BLUEPRINT_FILE).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise BlueprintError(f"not valid TOML: {err}", path=path / BLUEPRINT_FILE) from None
    meta = data.get("blueprint", {})
    for key in ("name", "version", "modeling_file", "configuration_file", "config_class", "causal_lm_class"):
        if key not in meta:
            raise BlueprintError("missing key", path=path / BLUEPRINT_FILE, key=f"blueprint.{key}")
    check_safe(path)
    migrations = data.get("migrations", [])
    if not isinstance(migrations, list):
        raise BlueprintError("must be an array of tables ([[migrations]])", path=path / BLUEPRINT_FILE, key="migrations")
    return Blueprint(
        path=path,
        meta=meta,
        defaults=data.get("defaults", {}),
        presets=data.get("presets", {}),
        migrations=migrations,
    )


def check_safe(path: Path) -> None:
    """Refuse blueprints that would run code or reach outside themselves when rendered."""
    import yaml

    copier_yml = path / "copier.yml"
    if not copier_yml.is_file():
        raise BlueprintError("missing copier.yml", path=path)
    text = copier_yml.read_text(encoding="utf-8")
    try:  # Copier's own YAML reader; a tag it alone understands (!include) is refused as well
        keys = {k for doc in yaml.safe_load_all(text) if isinstance(doc, dict) for k in doc}
    except yaml.YAMLError as err:
        raise BlueprintError(f"not YAML that scaffold can check: {' '.join(str(err).split())}", path=copier_yml) from None
    keys |= {line.split(":", 1)[0].strip().strip("'\"") for line in text.splitlines()}
    for key in FORBIDDEN_COPIER_KEYS:
        if key in keys:
            raise BlueprintError(
                f"asks to run code at render time ({key}); scaffold never runs template code",
                path=copier_yml,
                key=key,
            )
    root = path.resolve()
    for dirpath, dirnames, filenames in os.walk(path):  # never follows a symlinked folder
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                target = p.resolve()
                if root not in target.parents and target != root:
                    raise BlueprintError(f"symlink leaves the blueprint (points to {target})", path=p)
