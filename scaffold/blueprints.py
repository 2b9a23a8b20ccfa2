"""Finding and reading blueprints: a family's ``blueprint.toml`` (structure, names, presets) over the
shared Copier template ``blueprints/_shared`` (or a blueprint's own ``copier.yml`` and ``template/``).

See docs/architecture.md for the layout and what a family file holds.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .errors import BlueprintError
from .schema import STRUCTURE as STRUCTURAL

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BLUEPRINT_FILE = "blueprint.toml"
SHARED = "_shared"  # the shared template, beside the families
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


# Parameter names of the decoder (transformers' Llama's): a family's [names] table overrides some.
# Each is an attribute name; the state-dict keys are paths of them (docs/architecture.md, section 5).
DEFAULT_NAMES: dict[str, str] = {
    "model": "model",
    "embed_tokens": "embed_tokens",
    "embed_positions": "embed_positions",
    "layers": "layers",
    "norm": "norm",
    "rotary_emb": "rotary_emb",
    "self_attn": "self_attn",
    "mlp": "mlp",
    "input_layernorm": "input_layernorm",
    "post_attention_layernorm": "post_attention_layernorm",
    "pre_feedforward_layernorm": "pre_feedforward_layernorm",
    "post_feedforward_layernorm": "post_feedforward_layernorm",
    "q_proj": "q_proj",
    "k_proj": "k_proj",
    "v_proj": "v_proj",
    "o_proj": "o_proj",
    "qk_proj": "qk_proj",
    "qkv_proj": "qkv_proj",
    "q_norm": "q_norm",
    "k_norm": "k_norm",
    "gate_proj": "gate_proj",
    "up_proj": "up_proj",
    "down_proj": "down_proj",
    "gate_up_proj": "gate_up_proj",
    "lm_head": "lm_head",
}


@dataclass
class Blueprint:
    """A family: ``blueprint.toml`` (metadata, structure, names, defaults, presets) and its template."""

    path: Path
    meta: dict[str, Any]
    defaults: dict[str, dict[str, Any]]
    presets: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    structure: dict[str, Any] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    # tensor-parallel overrides for scaffold/plans.py (styles, layout), where the structure's are not right
    parallel: dict[str, Any] = field(default_factory=dict)
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

    @property
    def prefix(self) -> str:
        """The class prefix: ``Llama`` gives ``LlamaModel``, ``LlamaForCausalLM``, ``ScaffoldLlamaConfig``."""
        return self.meta.get("class_prefix", "")

    @cached_property
    def model_keys(self) -> set[str]:
        """The model keys the family lists (its defaults, optional keys and structure); every family also
        accepts every structural key and the keys its structure needs (see ``manifest.validate``)."""
        return (
            set(self.defaults.get("model", {}))
            | set(self.meta.get("optional_model_keys", []))
            | set(self.structure)
        )

    @property
    def builtin(self) -> bool:
        return any(self.path.parent == d.resolve() for d in builtin_dirs() if d.exists())

    @property
    def ref(self) -> str:
        """How a project refers to it: the bare name for a built-in blueprint, else the path."""
        return self.name if self.builtin else str(self.path)

    @property
    def template_path(self) -> Path:
        """The Copier template this family renders with: its own ``copier.yml`` folder, else the shared
        one beside it, else the built-in shared one."""
        if (self.path / "copier.yml").is_file():
            return self.path
        for candidate in (self.path.parent / SHARED, *(d / SHARED for d in builtin_dirs())):
            if (candidate / "copier.yml").is_file():
                return candidate.resolve()
        raise BlueprintError(
            f"no copier.yml here and no shared template ({SHARED}/) beside it", path=self.path
        )

    @property
    def shared(self) -> bool:
        """Whether the family is data over the shared template (not a hand-written blueprint)."""
        return not (self.path / "copier.yml").is_file()

    def preset(self, name: str | None) -> dict[str, dict[str, Any]]:
        name = name or self.default_preset
        if name not in self.presets:
            raise BlueprintError(
                f"no preset {name!r}; presets are {', '.join(self.presets) or 'none'}",
                path=self.path / BLUEPRINT_FILE,
            )
        return self.presets[name]

    def base_layers(self) -> list[dict[str, dict[str, Any]]]:
        """The defaults in merge order: scaffold's common defaults, the family's structure, its defaults."""
        return [COMMON_DEFAULTS, {"model": dict(self.structure)}, self.defaults]

    def resolve(self, *layers: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
        """Merge the defaults and ``layers``, then fill in the number keys the structure needs and lacks
        (``layer_norm_eps`` once ``norm_type = "layernorm"``, ...). Not validated."""
        from . import manifest, schema

        m = manifest.merge(*self.base_layers(), *layers)
        model = m.get("model")
        if isinstance(model, dict):
            for key, value in schema.companions(schema.structure_of(model), self.model_keys).items():
                model.setdefault(key, value)
        return m


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
        raise BlueprintError(
            f"no blueprint here (no {BLUEPRINT_FILE}); built-in blueprints: {known}", path=spec
        )
    path = path.resolve()
    try:
        data = tomllib.loads((path / BLUEPRINT_FILE).read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise BlueprintError(f"not valid TOML: {err}", path=path / BLUEPRINT_FILE) from None
    meta = data.get("blueprint", {})
    where = path / BLUEPRINT_FILE
    for key in ("name", "version"):
        if key not in meta:
            raise BlueprintError("missing key", path=where, key=f"blueprint.{key}")
    prefix = meta.get("class_prefix")
    if prefix is not None:
        if not (isinstance(prefix, str) and prefix.isidentifier() and prefix[:1].isupper()):
            raise BlueprintError(
                f"must be a class-name prefix such as 'Llama', got {prefix!r}",
                path=where,
                key="blueprint.class_prefix",
            )
        name = meta["name"]
        meta.setdefault("modeling_file", f"modeling_{name}.py")
        meta.setdefault("configuration_file", f"configuration_{name}.py")
        meta.setdefault("config_class", f"Scaffold{prefix}Config")
        meta.setdefault("base_model_class", f"{prefix}Model")
        meta.setdefault("causal_lm_class", f"{prefix}ForCausalLM")
    for key in ("modeling_file", "configuration_file", "config_class", "causal_lm_class"):
        if key not in meta:
            raise BlueprintError(
                "missing key (or give blueprint.class_prefix)", path=where, key=f"blueprint.{key}"
            )
    for key, value in meta.items():
        if key.endswith("_file"):
            problem = unsafe_name(value)
            if problem:
                raise BlueprintError(problem, path=where, key=f"blueprint.{key}")
    structure = data.get("structure", {})
    names = data.get("names", {})
    problems = [
        (f"structure.{k}", "not a structural key (see `scaffold schema`)")
        for k in structure
        if k not in STRUCTURAL
    ]
    problems += [(f"names.{k}", "unknown parameter name") for k in names if k not in DEFAULT_NAMES]
    problems += [
        (f"names.{k}", f"must be a Python identifier, got {v!r}")
        for k, v in names.items()
        if not (isinstance(v, str) and v.isidentifier())
    ]
    if problems:
        key, msg = problems[0]
        raise BlueprintError(msg, path=where, key=key)
    migrations = data.get("migrations", [])
    if not isinstance(migrations, list):
        raise BlueprintError("must be an array of tables ([[migrations]])", path=where, key="migrations")
    bp = Blueprint(
        path=path,
        meta=meta,
        defaults=data.get("defaults", {}),
        presets=data.get("presets", {}),
        structure=structure,
        names={**DEFAULT_NAMES, **names},
        parallel=data.get("parallel", {}),
        migrations=migrations,
    )
    check_safe(bp.template_path)
    if bp.template_path != path:
        check_symlinks(path)
    return bp


def unsafe_name(value: Any) -> str | None:
    """Why ``value`` is not a file name inside the project (absolute, ``..``, not a string), or None."""
    if not isinstance(value, str) or not value.strip():
        return f"must be a file name inside the project, got {value!r}"
    p = Path(value)
    if p.is_absolute() or ".." in p.parts or "\\" in value or value.startswith("~"):
        return f"must be a file name inside the project, not a path that leaves it: {value!r}"
    return None


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
        raise BlueprintError(
            f"not YAML that scaffold can check: {' '.join(str(err).split())}", path=copier_yml
        ) from None
    keys |= {line.split(":", 1)[0].strip().strip("'\"") for line in text.splitlines()}
    for key in FORBIDDEN_COPIER_KEYS:
        if key in keys:
            raise BlueprintError(
                f"asks to run code at render time ({key}); scaffold never runs template code",
                path=copier_yml,
                key=key,
            )
    check_symlinks(path)


def check_symlinks(path: Path) -> None:
    """Refuse symlinks that point outside the blueprint folder."""
    root = path.resolve()
    for dirpath, dirnames, filenames in os.walk(path):  # never follows a symlinked folder
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                target = p.resolve()
                if root not in target.parents and target != root:
                    raise BlueprintError(f"symlink leaves the blueprint (points to {target})", path=p)
