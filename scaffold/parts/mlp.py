"""Feed-forward parts."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def gelu_pytorch_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (transformers' ``gelu_pytorch_tanh``); in a GatedMLP it makes GeGLU."""
    return F.gelu(x, approximate="tanh")


class GatedMLP(nn.Module):
    """GLU feed-forward: ``down(act(gate(x)) * up(x))``; SwiGLU with silu, GLU-ReLU with relu."""

    def __init__(self, hidden_size: int, intermediate_size: int, act_fn: Callable, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class MLP(nn.Module):
    """Two-layer feed-forward: ``down(act(up(x)))``, with biases by default (the original Transformer's)."""

    def __init__(self, hidden_size: int, intermediate_size: int, act_fn: Callable, bias: bool = True):
        super().__init__()
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.up_proj(x)))


class FusedGatedMLP(nn.Module):
    """GLU feed-forward with gate and up in one matrix, stored ``[gate; up]`` (Phi-3's ``gate_up_proj``)."""

    def __init__(self, hidden_size: int, intermediate_size: int, act_fn: Callable, bias: bool = False):
        super().__init__()
        self.gate_up_proj = nn.Linear(hidden_size, 2 * intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # (B, T, intermediate) each
        return self.down_proj(self.act_fn(gate) * up)
