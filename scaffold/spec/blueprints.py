"""Finding and reading blueprints: a family's ``blueprint.toml`` (structure, names, presets) over the
shared Copier template ``blueprints/_shared`` (or a blueprint's own ``copier.yml`` and ``template/``).

See docs/architecture.md for the layout and what a family file holds.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from scaffold.errors import BlueprintError
from scaffold.spec.schema import STRUCTURE as STRUCTURAL
from scaffold.spec.schema import has_control, is_name, toml_key

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
    pkg = Path(__file__).resolve().parents[1]  # scaffold/
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
    # tensor-parallel overrides for scaffold/codegen/plans.py (styles, layout), where the structure's are not right
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
        from scaffold.spec import manifest, schema

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
    if not isinstance(structure, dict) or not isinstance(names, dict):
        key = "structure" if not isinstance(structure, dict) else "names"
        raise BlueprintError(f"must be a table ([{key}])", path=where, key=key)
    problems = code_problems(data)
    problems += [
        (f"structure.{toml_key(k)}", "not a structural key (see `scaffold schema`)")
        for k in structure
        if k not in STRUCTURAL
    ]
    problems += [(f"names.{toml_key(k)}", "unknown parameter name") for k in names if k not in DEFAULT_NAMES]
    problems += [
        (f"names.{k}", f"must be a Python identifier, got {v!r}") for k, v in names.items() if not is_name(v)
    ]
    if problems:
        key, msg = problems[0]
        raise BlueprintError(msg, path=where, key=key)
    migrations = data.get("migrations", [])
    if not isinstance(migrations, list):
        raise BlueprintError("must be an array of tables ([[migrations]])", path=where, key="migrations")
    parallel = data.get("parallel", {})
    if not isinstance(parallel, dict):
        raise BlueprintError("must be a table ([parallel])", path=where, key="parallel")
    if parallel:  # checked here, before anything renders: its names reach the generated plans
        from scaffold.spec.parallel import layout_from

        layout_from(parallel, path=where)
    bp = Blueprint(
        path=path,
        meta=meta,
        defaults=data.get("defaults", {}),
        presets=data.get("presets", {}),
        structure=structure,
        names={**DEFAULT_NAMES, **names},
        parallel=parallel,
        migrations=migrations,
    )
    check_safe(bp.template_path)
    if bp.template_path != path:
        check_symlinks(path)
    return bp


MODULE_FILE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\.py")
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}")
PRESET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MODEL_TYPE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
# [blueprint] keys that name a class or a Python module, and what each must look like
META_NAMES = ("class_prefix", "config_class", "base_model_class", "causal_lm_class", "transformers_class")
META_FILES = ("modeling_file", "configuration_file")


def code_problems(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every string of a blueprint.toml that would reach generated code and is not safe there, as
    (key, message): names that are not names, versions and preset names that are not plain tokens,
    text with control characters or line breaks, values of types TOML has but Python literals do not."""
    meta = data.get("blueprint", {})
    problems: list[tuple[str, str]] = []

    def need(ok: bool, key: str, what: str, value: Any) -> None:
        if not ok:
            problems.append((key, f"must be {what}, got {value!r}"))

    need(
        is_name(meta.get("name")),
        "blueprint.name",
        "a name such as 'llama' ([A-Za-z_][A-Za-z0-9_]*)",
        meta.get("name"),
    )
    version = meta.get("version")
    need(
        isinstance(version, str) and bool(VERSION_RE.fullmatch(version)),
        "blueprint.version",
        "a version such as '0.1.0'",
        version,
    )
    for key in META_NAMES:
        if key in meta:
            need(is_name(meta[key]), f"blueprint.{key}", "a Python name ([A-Za-z_][A-Za-z0-9_]*)", meta[key])
    for key in META_FILES:
        value = meta.get(key)
        if value is not None and unsafe_name(value) is None:
            ok = isinstance(value, str) and bool(MODULE_FILE_RE.fullmatch(value))
            need(ok, f"blueprint.{key}", "a Python module file name such as 'modeling_x.py'", value)
    if "transformers_model_type" in meta:
        value = meta["transformers_model_type"]
        ok = isinstance(value, str) and bool(MODEL_TYPE_RE.fullmatch(value))
        need(ok, "blueprint.transformers_model_type", "a model type such as 'llama'", value)
    if "default_preset" in meta:
        value = meta["default_preset"]
        ok = isinstance(value, str) and bool(PRESET_RE.fullmatch(value))
        need(ok, "blueprint.default_preset", "a preset name such as '4m'", value)
    for key in ("optional_model_keys", "attn_implementations"):
        values = meta.get(key, [])
        if not isinstance(values, list):
            problems.append((f"blueprint.{key}", f"must be an array of names, got {values!r}"))
            continue
        for i, value in enumerate(values):
            need(is_name(value), f"blueprint.{key}[{i}]", "a name ([A-Za-z_][A-Za-z0-9_]*)", value)
    renames = meta.get("import_renames", {})
    if not isinstance(renames, dict):
        problems.append(("blueprint.import_renames", f"must be a table of names, got {renames!r}"))
    else:
        for theirs, ours in renames.items():
            need(is_name(ours), f"blueprint.import_renames.{toml_key(theirs)}", "a manifest key name", ours)
    for key, value in meta.items():  # any other text (description...): one line, no control characters
        if isinstance(value, str) and has_control(value):
            problems.append(
                (f"blueprint.{key}", f"must be one line without control characters, got {value!r}")
            )
    defaults = data.get("defaults", {})
    presets = data.get("presets", {})
    if not isinstance(defaults, dict) or not isinstance(presets, dict):
        key = "defaults" if not isinstance(defaults, dict) else "presets"
        return [*problems, (key, "must be a table")]
    tables = [(f"defaults.{toml_key(k)}", v) for k, v in defaults.items()]
    for name, preset in presets.items():
        where = f"presets.{toml_key(name)}"
        if not PRESET_RE.fullmatch(name):
            problems.append((where, f"a preset name must be like '4m' or 'llama3.2_1b', got {name!r}"))
        if not isinstance(preset, dict):
            problems.append((where, "must be a table of sections"))
            continue
        tables += [(f"{where}.{toml_key(k)}", v) for k, v in preset.items()]
    for where, table in tables:
        if not isinstance(table, dict):
            problems.append((where, "must be a table"))
            continue
        for key, value in table.items():
            if where.endswith(".model"):  # model keys become fields of the configuration class
                need(is_name(key), f"{where}.{toml_key(key)}", "a key name ([A-Za-z_][A-Za-z0-9_]*)", key)
            problem = _literal_problem(value)
            if problem:
                problems.append((f"{where}.{toml_key(key)}", problem))
    return problems


def _literal_problem(value: Any) -> str | None:
    """Why ``value`` has no Python literal that generated code could hold (a TOML date), or None."""
    import math

    if isinstance(value, dict):
        return next((p for p in map(_literal_problem, value.values()) if p), None)
    if isinstance(value, list):
        return next((p for p in map(_literal_problem, value) if p), None)
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if isinstance(value, str) and "\x00" in value:
        return f"must not hold a NUL character, got {value!r}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return None
    return f"must be a number, string, boolean, array or table, got {type(value).__name__} {value!r}"


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
