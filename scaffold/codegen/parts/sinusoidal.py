"""Absolute sinusoidal position encoding ("Attention Is All You Need", Vaswani et al., 2017)."""

import torch
from torch import nn


class SinusoidalPositionEmbedding(nn.Module):
    """``PE[p, 2i] = sin(p / base^(2i/d))`` and ``PE[p, 2i+1] = cos(p / base^(2i/d))`` for given positions.

    Nothing is stored in checkpoints: the frequencies are a non-persistent float32 buffer, recomputed
    whenever the module moves or changes dtype (``_apply``), so ``.to(bfloat16)``, ``to_empty`` and
    loading from the meta device all leave them exact. The rows of the table are computed for the
    positions at hand (a (P, d) table would be 128 MiB at P = 32768, d = 1024), in float32, then
    cast to the activations' dtype.
    """

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        self.dim, self.base = dim, base
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self, device: torch.device | None = None) -> torch.Tensor:
        exponents = torch.arange(0, self.dim, 2, dtype=torch.int64).float() / self.dim
        return (1.0 / self.base**exponents).to(device)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.inv_freq = self.compute_inv_freq(self.inv_freq.device)
        return self

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # position_ids: (B, T) -> angles: (B, T, ceil(d / 2)) -> (B, T, d), sin and cos interleaved
        angles = position_ids[..., None].float() * self.inv_freq.to(position_ids.device)
        table = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)
        return table[..., : self.dim].to(dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, base={self.base}"
