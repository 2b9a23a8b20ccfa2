"""From a transformers ``config.json`` to a manifest's ``[model]`` table (``scaffold import``).

A family says which transformers ``model_type`` it reproduces (``transformers_model_type`` in its
blueprint.toml). Keys are copied by name, since the manifest uses transformers' names; RoPE settings
are read from transformers 5.x's ``rope_parameters`` (or the older ``rope_theta`` / ``rope_scaling``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import schema
from .blueprints import Blueprint


def accepted_keys(bp: Blueprint, structure: Mapping[str, Any]) -> set[str]:
    """The ``[model]`` keys ``bp`` accepts with ``structure`` (as ``manifest.validate`` does)."""
    return (
        set(bp.model_keys)
        | set(schema.STRUCTURE)
        | set(schema.UNIVERSAL_MODEL_KEYS)
        | set(schema.companions(structure))
    )


def model_table(config: Mapping[str, Any], bp: Blueprint) -> dict[str, Any]:
    """The ``[model]`` table that reproduces a transformers config of ``bp``'s family: its sizes and
    every structural key it sets; the family's structure fills the rest."""
    config = dict(config)
    rope = dict(config.get("rope_parameters") or {})
    if rope or "rope_theta" in config:
        config["rope_theta"] = float(rope.pop("rope_theta", config.get("rope_theta", 10000.0)))
        scaling = dict(config.get("rope_scaling") or rope)
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        config["rope_scaling"] = {"rope_type": kind, **scaling} if kind != "default" else None
    structure = schema.structure_of(
        {**bp.structure, **{k: config[k] for k in schema.STRUCTURE if k in config}}
    )
    keys = accepted_keys(bp, structure)
    table = {}
    for key in sorted(keys):
        value = config.get(key)
        field = schema.BY_PATH.get(f"model.{key}")
        if field is None:
            continue
        if value is None:
            if key in config and field.nullable:
                table[key] = None  # off in this config: also off when a family or preset turns it on
            continue
        if field.problem(value) is None:
            table[key] = value
    return table
