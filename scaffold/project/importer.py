"""``scaffold import``: from a transformers ``config.json`` to a project that reproduces the model.

A family says which transformers ``model_type`` it reproduces (``transformers_model_type`` in its
blueprint.toml). Keys are copied by name, since the manifest uses transformers' names; RoPE settings
are read from transformers 5.x's ``rope_parameters`` (or the older ``rope_theta`` / ``rope_scaling``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scaffold import arch
from scaffold.arch.hf_config import from_hf
from scaffold.errors import DataError, UsageError
from scaffold.spec import schema
from scaffold.spec.blueprints import Blueprint


def accepted_keys(bp: Blueprint, structure: Mapping[str, Any]) -> set[str]:
    """The ``[model]`` keys ``bp`` accepts with ``structure`` (as ``manifest.validate`` does)."""
    return arch.accepted_keys(bp.model_keys, structure)


def model_table(config: Mapping[str, Any], bp: Blueprint, where: Path | None = None) -> dict[str, Any]:
    """The ``[model]`` table that reproduces a transformers config of ``bp``'s family: its sizes and
    every structural key it sets; the family's structure fills the rest."""
    renames = dict(bp.meta.get("import_renames", {}))
    if bp.structure.get("mlp") == "moe":
        # transformers writes the number of experts under either name (its attribute_map): the family's
        ours = schema.MIXTRAL_EXPERTS_KEY if schema.MIXTRAL_EXPERTS_KEY in bp.model_keys else "num_experts"
        theirs = "num_experts" if ours == schema.MIXTRAL_EXPERTS_KEY else schema.MIXTRAL_EXPERTS_KEY
        renames.setdefault(theirs, ours)
    config = from_hf(config, renames, where=where)
    structure = schema.structure_of(
        {**bp.structure, **{k: config[k] for k in schema.STRUCTURE if k in config}}
    )
    keys = accepted_keys(bp, structure)
    # every value is taken as it is: one the family cannot take fails validation, naming the key
    table = {}
    for key in sorted(keys):
        value = config.get(key)
        if key == "sliding_window" and value == 0:
            value = None  # off (Qwen2-MoE writes 0 without use_sliding_window)
        field = schema.BY_PATH.get(f"model.{key}")
        if field is None:
            continue
        if value is None:
            if key in config and field.nullable:
                table[key] = None  # off in this config: also off when a family or preset turns it on
            continue
        table[key] = value
    return table


# Config keys that name what no part expresses: a config that sets them (to anything but off) is refused.
# A mixture of experts is expressed (mlp = "moe": Mixtral, Qwen2-MoE, Qwen3-MoE); DeepSeek's grouped
# routing with its expert-bias correction is not.
UNSUPPORTED_KEYS: dict[str, str] = {
    "n_routed_experts": "DeepSeek's mixture of experts (grouped top-k routing, expert-bias correction)",
    "n_group": "group-limited expert routing",
    "topk_group": "group-limited expert routing",
    "kv_lora_rank": "multi-head latent attention",
    "q_lora_rank": "multi-head latent attention",
    "vision_config": "a vision tower",
    "audio_config": "an audio tower",
    "text_config": "a multimodal model (a text_config inside)",
}
CONFIG_NAME = "config.json"


def read_config(path: Path) -> tuple[Path, dict[str, Any]]:
    """The ``config.json`` of a local transformers model folder (or the file itself), parsed."""

    file = path / CONFIG_NAME if path.is_dir() else path
    if not file.is_file():
        raise UsageError(
            f"no {CONFIG_NAME} here: give a transformers model folder or its {CONFIG_NAME}", path=path
        )
    from scaffold.project.tokenizer import _json_input

    try:
        data = _json_input(file)  # a FIFO, bytes not UTF-8, nesting too deep: one line naming the file
    except OSError as err:
        raise DataError(f"not a readable JSON config: {' '.join(str(err).split())}", path=file) from None
    if not isinstance(data, dict):
        raise DataError("not a JSON object", path=file)
    return file, data


def family_for(model_type: Any, where: Path) -> Blueprint:
    """The built-in family that reproduces transformers' ``model_type``."""
    from scaffold.spec.blueprints import builtin_names, load

    families = {}
    for name in builtin_names():
        bp = load(name)
        if bp.meta.get("transformers_model_type"):
            families[bp.meta["transformers_model_type"]] = bp
    if not isinstance(model_type, str) or model_type not in families:
        known = ", ".join(sorted(families)) or "none"
        raise UsageError(
            f"unsupported model_type {model_type!r}; scaffold reproduces: {known}",
            path=where,
            key="model_type",
        )
    return families[model_type]


def check_supported(config: Mapping[str, Any], where: Path) -> None:
    """Refuse configs with features the parts cannot express, naming the first such key."""
    for key, what in UNSUPPORTED_KEYS.items():
        value = config.get(key)
        if value not in (None, 0, 1, False, {}, []) or (key.endswith("_config") and value is not None):
            raise UsageError(
                f"{what} is not something scaffold's parts express (set to {value!r})", path=where, key=key
            )


def import_project(
    path: str | Path, *, name: str | None = None, projects_dir: str | Path = "projects", force: bool = False
) -> Path:
    """``scaffold import``: a project whose manifest reproduces a local transformers model (sizes and
    structure). Everything is checked before anything is written."""
    from scaffold.errors import ManifestError
    from scaffold.project.new import check_name, create_project

    path = Path(path)
    file, config = read_config(path)
    check_supported(config, file)
    bp = family_for(config.get("model_type"), file)
    if bp.structure.get("mlp") != "moe":
        for key in ("num_experts", "num_local_experts"):
            if config.get(key) not in (None, 0, 1):
                raise UsageError(
                    f"mixture of experts is not something scaffold's {bp.name} family has (set to {config[key]!r}); "
                    "the MoE families are mixtral, qwen2_moe, qwen3_moe",
                    path=file,
                    key=key,
                )
    table = model_table(config, bp, file)
    # keys of the family's default preset that the config does not set are switched off, not inherited
    preset = bp.preset(None).get("model", {})
    model = {**{k: None for k in preset if k not in table}, **table}
    overrides: dict[str, Any] = {"model": model}
    folder = file.parent
    if (folder / "tokenizer.json").exists():  # the model's own tokenizer, when it ships one
        from scaffold.project.tokenizer import read_pretrained

        # read now (a damaged tokenizer is named before anything is written); a base model's tokenizer
        # usually has no chat template, and then the project has none (inherit would not build)
        pretrained = read_pretrained(folder)
        overrides["tokenizer"] = {
            "kind": "pretrained",
            "path": str(folder.resolve()),
            "chat_template": "inherit" if pretrained.chat_template else "",
        }
    name = name or _name_from(folder)
    check_name(name)
    try:
        return create_project(name, bp.name, projects_dir=projects_dir, overrides=overrides, force=force)
    except ManifestError as err:  # a value the family cannot take: name it as the config spells it
        key, msg = err.problems[0]
        raise UsageError(f"cannot be reproduced: {msg}", path=file, key=key.removeprefix("model.")) from None


def _name_from(folder: Path) -> str:
    import re

    name = re.sub(r"[^A-Za-z0-9._-]+", "_", folder.resolve().name).strip("._-")
    return name or "imported"
