"""The resolved architecture (``Architecture``), how it is resolved, and its transformers mapping."""

from scaffold.arch.model import FULL, SLIDING, Architecture, Attention, Experts, Layer, Mlp, Norm, Rope
from scaffold.arch.resolve import for_blueprint, resolve
from scaffold.spec.structure import accepted_keys, problems

__all__ = [
    "FULL",
    "SLIDING",
    "Architecture",
    "Attention",
    "Experts",
    "Layer",
    "Mlp",
    "Norm",
    "Rope",
    "accepted_keys",
    "for_blueprint",
    "problems",
    "resolve",
]
