"""Activations that transformers' ``ACT2FN`` has but that a generated file writes out itself."""

import torch
import torch.nn.functional as F


def gelu_pytorch_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (transformers' ``gelu_pytorch_tanh``); in a gated MLP it makes GeGLU."""
    return F.gelu(x, approximate="tanh")
