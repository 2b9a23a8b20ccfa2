"""The architecture's numbers as transformers spells them, both directions.

``to_hf``: a resolved ``[model]`` table -> the keyword arguments of the generated configuration class
(what ``config.json`` holds). ``from_hf``: a transformers ``config.json`` -> ``[model]`` keys. RoPE
has one representation on the transformers side, transformers 5's ``rope_parameters``
(:meth:`Rope.parameters`); the manifest keeps ``rope_theta``, ``rope_scaling`` and
``partial_rotary_factor`` as users write them. These two functions are the only converters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scaffold.arch.model import Architecture
from scaffold.errors import UsageError

ROPE_MANIFEST_KEYS = ("rope_theta", "rope_scaling", "partial_rotary_factor", "rope_local_base_freq")
LAYER_TYPES = ("full_attention", "sliding_attention")


def to_hf(arch: Architecture, model: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration class's keyword arguments for ``model`` (resolved, with architecture ``arch``):
    the manifest's keys, RoPE folded into ``rope_parameters``."""
    out = dict(model)
    if arch.rope is not None and "rope_theta" in out:
        # as transformers keeps it: in the RoPE table, and only there (transformers would copy a
        # top-level partial_rotary_factor into the table of some RoPE types and not of others)
        for key in ROPE_MANIFEST_KEYS:
            out.pop(key, None)
        # a table per attention type when the sliding layers have their own base (Gemma 3)
        out["rope_parameters"] = arch.rope_parameters()
    return out


def _table(config: Mapping[str, Any], key: str, where: Any) -> dict[str, Any]:
    """``config[key]`` as a table (absent or null: empty); anything else is a usage error naming it."""
    value = config.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UsageError(
            f"must be a JSON object (or null), got {type(value).__name__} {value!r}", path=where, key=key
        )
    return dict(value)


def from_hf(
    config: Mapping[str, Any], renames: Mapping[str, str] | None = None, *, where: Any = None
) -> dict[str, Any]:
    """``[model]`` keys from a transformers config: the family's own spellings renamed (GPT-NeoX's
    ``use_parallel_residual``, ``rotary_pct``), ``rope_parameters`` (or the older ``rope_theta`` /
    ``rope_scaling``) unfolded into the manifest's RoPE keys. Other keys are copied as they are; a RoPE
    table or base of the wrong type is a usage error naming the key in ``where`` (the config file)."""
    config = dict(config)
    for theirs, ours in (renames or {}).items():
        if theirs in config:
            config.setdefault(ours, config.pop(theirs))
    if config.get("use_sliding_window") is False:  # the window is off (SmolLM3 keeps its size)
        config["sliding_window"] = None
    flags = config.get("no_rope_layers")
    if isinstance(flags, list) and 0 in flags:  # some layers attend without RoPE
        config.setdefault("nope_layers", True)
    rope = _table(config, "rope_parameters", where)
    if set(rope) and set(rope) <= set(LAYER_TYPES):  # transformers 5's per-layer-type RoPE (Gemma 3)
        local = rope.get("sliding_attention")
        local = dict(local) if isinstance(local, Mapping) else {}
        rope = dict(rope.get("full_attention") or {})
        if "rope_theta" in local:
            config.setdefault("rope_local_base_freq", local["rope_theta"])
    if rope or "rope_theta" in config:
        theta = rope.pop("rope_theta", config.get("rope_theta", 10000.0))
        if isinstance(theta, bool) or not isinstance(theta, (int, float)):
            key = (
                "rope_parameters.rope_theta"
                if "rope_theta" in _table(config, "rope_parameters", where)
                else "rope_theta"
            )
            raise UsageError(f"must be a number, got {type(theta).__name__} {theta!r}", path=where, key=key)
        config["rope_theta"] = float(theta)
        scaling = _table(config, "rope_scaling", where) or rope
        # transformers keeps the rotated fraction of each head in the RoPE table; the manifest has a key
        config.setdefault("partial_rotary_factor", scaling.pop("partial_rotary_factor", 1.0))
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        config["rope_scaling"] = {"rope_type": kind, **scaling} if kind != "default" else None
    return config
