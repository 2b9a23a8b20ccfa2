"""The resolved architecture (``Architecture``), how it is resolved, and its transformers mapping."""

from .model import FULL, SLIDING, Architecture, Attention, Experts, Layer, Mlp, Norm, Rope
from .resolve import accepted_keys, for_blueprint, problems, resolve

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
