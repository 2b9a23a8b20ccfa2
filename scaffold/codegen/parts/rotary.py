"""Rotary position embedding (RoPE), with the frequency scalings of transformers' ``ROPE_INIT_FUNCTIONS``
(linear, dynamic NTK, yarn, longrope, llama3) computed as transformers computes them, over the whole head
or only its first features (partial rotary)."""

import math

import torch
from torch import nn


def rope_inv_freq(head_dim: int, theta: float, rope_scaling: dict | None = None) -> torch.Tensor:
    """Inverse frequencies of RoPE in float32, scaled as ``rope_scaling`` asks (linear, llama3 or yarn).

    ``head_dim`` is the rotated width: the whole head, or its first features under partial rotary.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    kind = (rope_scaling or {}).get("rope_type", (rope_scaling or {}).get("type", "default"))
    if kind == "linear":
        return inv_freq / rope_scaling["factor"]
    if kind == "llama3":
        factor = rope_scaling["factor"]
        low, high = rope_scaling["low_freq_factor"], rope_scaling["high_freq_factor"]
        old_context = rope_scaling["original_max_position_embeddings"]
        low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
        wavelen = 2 * math.pi / inv_freq
        # long wavelengths are slowed down by `factor`, short ones kept, the band between blended
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_context / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
        return torch.where(is_medium, blended, scaled)
    if kind == "yarn":
        return yarn_inv_freq(inv_freq, head_dim, theta, rope_scaling)
    if kind == "longrope":  # the short factors; RotaryEmbedding swaps in the long ones past the original context
        return longrope_inv_freq(head_dim, theta, rope_scaling["short_factor"])
    return inv_freq


def longrope_inv_freq(head_dim: int, theta: float, factors: list[float]) -> torch.Tensor:
    """LongRoPE (Ding et al., 2024; Phi-3): each frequency divided by its own factor."""
    ext_factors = torch.tensor(factors, dtype=torch.float32)
    return 1.0 / (ext_factors * theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def dynamic_ntk_inv_freq(head_dim: int, theta: float, factor: float, seq_len, max_positions: int) -> torch.Tensor:
    """Dynamic NTK: the base stretched for ``seq_len`` positions beyond ``max_positions`` (``seq_len`` may be
    a 0-d tensor, as transformers passes it)."""
    if isinstance(seq_len, torch.Tensor):
        seq_len = torch.maximum(seq_len, torch.tensor(max_positions, dtype=seq_len.dtype, device=seq_len.device))
    else:
        seq_len = max(seq_len, max_positions)
    base = theta * ((factor * seq_len / max_positions) - (factor - 1)) ** (head_dim / (head_dim - 2))
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(device=getattr(base, "device", None), dtype=torch.float)
    return 1.0 / (base ** (exponents / head_dim))


def yarn_inv_freq(inv_freq: torch.Tensor, head_dim: int, theta: float, rope_scaling: dict) -> torch.Tensor:
    """YaRN (Peng et al., 2023): high frequencies kept, low ones divided by ``factor``, a linear ramp between.

    The ramp runs over the dimensions whose wavelength fits between ``beta_fast`` (default 32) and
    ``beta_slow`` (default 1) rotations in the original context, rounded outwards unless ``truncate`` is false.
    """
    factor, old_context = rope_scaling["factor"], rope_scaling["original_max_position_embeddings"]
    beta_fast, beta_slow = rope_scaling.get("beta_fast") or 32, rope_scaling.get("beta_slow") or 1

    def dim_of(rotations: float) -> float:  # the dimension that turns `rotations` times over old_context
        return head_dim * math.log(old_context / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_of(beta_fast), dim_of(beta_slow)
    if rope_scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # a ramp of zero width would divide by zero
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp  # 1: keep the frequency, 0: interpolate it
    return inv_freq / factor * (1 - extrapolation) + inv_freq * extrapolation


def rope_attention_factor(rope_scaling: dict | None = None, max_positions: int | None = None) -> float:
    """Factor on the cos and sin tables: YaRN's ``attention_factor`` (by default ``0.1 ln(factor) + 1``),
    LongRoPE's (by default ``sqrt(1 + ln(factor) / ln(original context))``), else 1."""
    scaling = rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "longrope":
        if scaling.get("attention_factor") is not None:
            return scaling["attention_factor"]
        original = scaling.get("original_max_position_embeddings", max_positions)
        factor = scaling.get("factor") or max_positions / original
        return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    if kind != "yarn":
        return 1.0
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    factor, m, m_all = scaling["factor"], scaling.get("mscale"), scaling.get("mscale_all_dim")
    return float(mscale(factor, m) / mscale(factor, m_all)) if m and m_all else mscale(factor)


class RotaryEmbedding(nn.Module):
    """Computes the (cos, sin) tables of RoPE for given positions.

    ``inv_freq`` is a non-persistent buffer: never stored in checkpoints, and recomputed in float32
    whenever the module moves or changes dtype (``_apply``), so ``.to(bfloat16)``, ``to_empty`` and
    loading from the meta device all leave it exact. ``attention_scaling`` multiplies the tables (YaRN's
    and LongRoPE's attention factors; 1 for the other scalings). As transformers' rotary embeddings:
    dynamic NTK recomputes the frequencies once positions pass the longest seen beyond
    ``max_position_embeddings`` (and back to the original ones below it); longrope takes its long
    factors whenever a position passes ``original_max_position_embeddings``.
    """

    # every rope_type of transformers' ROPE_INIT_FUNCTIONS computed here; any other is refused, naming it
    ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")

    def __init__(
        self, head_dim: int, theta: float, rope_scaling: dict | None = None, max_position_embeddings: int = 2048
    ):
        super().__init__()
        self.head_dim, self.theta, self.rope_scaling = head_dim, theta, rope_scaling
        self.kind = (rope_scaling or {}).get("rope_type", (rope_scaling or {}).get("type", "default"))
        if self.kind not in self.ROPE_TYPES:
            raise ValueError(
                f"rope_parameters.rope_type: {self.kind!r} is not supported by this model; "
                f"supported: {', '.join(self.ROPE_TYPES)}"
            )
        for key in ("short_factor", "long_factor") if self.kind == "longrope" else ():
            if len(rope_scaling[key]) != head_dim // 2:
                raise ValueError(
                    f"rope_parameters.{key}: {len(rope_scaling[key])} factors for a rotated width of {head_dim}; "
                    f"longrope takes one per frequency ({head_dim // 2})"
                )
        self.max_position_embeddings = max_position_embeddings
        self.max_seq_len_cached = max_position_embeddings  # dynamic NTK: the length inv_freq was made for
        self.attention_scaling = rope_attention_factor(rope_scaling, max_position_embeddings)
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self, device: torch.device | None = None) -> torch.Tensor:
        if self.kind == "dynamic" and self.max_seq_len_cached > self.max_position_embeddings:
            factor, longest = self.rope_scaling["factor"], self.max_position_embeddings
            return dynamic_ntk_inv_freq(self.head_dim, self.theta, factor, self.max_seq_len_cached, longest).to(device)
        return rope_inv_freq(self.head_dim, self.theta, self.rope_scaling).to(device)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.inv_freq = self.compute_inv_freq(self.inv_freq.device)
        return self

    def frequencies(self, position_ids: torch.Tensor) -> torch.Tensor:
        """The inverse frequencies for these positions: fixed, except under dynamic NTK and longrope."""
        if self.kind == "dynamic":
            seq_len = torch.max(position_ids) + 1
            if seq_len > self.max_seq_len_cached:  # growth: stretch the base for the longer context
                self.max_seq_len_cached = seq_len
                self.inv_freq = self.compute_inv_freq(self.inv_freq.device)
            elif seq_len < self.max_position_embeddings < self.max_seq_len_cached:  # back in the original range
                self.max_seq_len_cached = self.max_position_embeddings
                self.inv_freq = self.compute_inv_freq(self.inv_freq.device)
        elif self.kind == "longrope":
            original = self.rope_scaling.get("original_max_position_embeddings", self.max_position_embeddings)
            long = longrope_inv_freq(self.head_dim, self.theta, self.rope_scaling["long_factor"])
            return torch.where(torch.max(position_ids) + 1 > original, long.to(self.inv_freq.device), self.inv_freq)
        return self.inv_freq

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # position_ids: (B, T) -> freqs: (B, T, head_dim / 2), computed in float32
        freqs = position_ids[..., None].float() * self.frequencies(position_ids).to(x.device)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, head_dim)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(
            x.dtype
        )


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys (B, heads, T, head_dim) by the (B, T, head_dim) tables."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def apply_partial_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial rotary: rotate the first ``cos.shape[-1]`` features of each head, pass the rest through."""
    rot = cos.shape[-1]
    q_rot, k_rot = apply_rotary_pos_emb(q[..., :rot], k[..., :rot], cos, sin)
    return torch.cat((q_rot, q[..., rot:]), dim=-1), torch.cat((k_rot, k[..., rot:]), dim=-1)


def rotate_interleaved(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): adjacent features as pairs (GLM, GPT-J, Llama 4)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply_interleaved_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interleaved RoPE: each adjacent pair of features turned together, over the first ``cos.shape[-1]``
    features of each head (all of them unless partial), the rest passed through (as transformers' GLM)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
    # the tables hold each frequency twice, half after half: once per pair, side by side, instead
    cos = cos[..., : cos.shape[-1] // 2].repeat_interleave(2, dim=-1)
    sin = sin[..., : sin.shape[-1] // 2].repeat_interleave(2, dim=-1)
    rot = cos.shape[-1]
    q_rot = q[..., :rot] * cos + rotate_interleaved(q[..., :rot]) * sin
    k_rot = k[..., :rot] * cos + rotate_interleaved(k[..., :rot]) * sin
    return torch.cat((q_rot, q[..., rot:]), dim=-1), torch.cat((k_rot, k[..., rot:]), dim=-1)
