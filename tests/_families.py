"""The one family registry the per-family tests draw from: every built-in blueprint, the seed's four,
the families that reproduce a transformers class (with its model_type), and tiny shapes for each."""

from __future__ import annotations

from typing import Any

from scaffold.spec.blueprints import builtin_names
from scaffold.spec.blueprints import load as load_blueprint
from tests._parity import TINY_HF

ALL: tuple[str, ...] = tuple(builtin_names())
SEED: tuple[str, ...] = ("llama", "causal_lm", "deepone", "single_head")
# family -> the transformers model_type it reproduces
REPRODUCED: dict[str, str] = {
    name: load_blueprint(name).meta["transformers_model_type"]
    for name in ALL
    if load_blueprint(name).meta.get("transformers_model_type")
}


def tiny(family: str, **overrides: Any) -> dict[str, Any]:
    """TINY_HF's sizes that ``family`` has (GPT-NeoX has no kv heads, single_head no heads), ``overrides`` on top."""
    keys = load_blueprint(family).model_keys
    return {**{k: v for k, v in TINY_HF.items() if k in keys}, **overrides}
