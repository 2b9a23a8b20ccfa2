"""ALiBi: attention with linear biases instead of position embeddings (Press et al., 2022).

Head h adds ``-m_h * (i - j)`` to the score of query position i for key position j. Positions are
absolute indices into the key sequence: under a KV cache the queries start after the cached prefix,
so generation with the cache sees exactly the biases of a full recomputation (and the causal mask
rebuilt for sdpa, which gets none for a plain causal batch, lines up with the cached keys). Within
a packed document, or among the real tokens of a left-padded row, index distances are token
distances, and the mask from transformers' mask builders keeps documents and padding apart.

Each attention backend takes the bias its own way: eager and sdpa an additive float mask (bias and
mask in one tensor), flex_attention a ``score_mod`` (the BlockMask carries causality, padding and
packing). transformers' flash-attention path takes no ALiBi slopes, so the ALiBi families do not
offer flash_attention_2.
"""

import math

import torch
from torch import nn
from transformers.integrations.flex_attention import compile_friendly_flex_attention
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from scaffold.codegen.parts.attention import eager_attention_forward, repeat_kv


def alibi_slopes(num_heads: int) -> list[float]:
    """The paper's slopes: ``2^(-8i/H)`` for i = 1..H when H is a power of two; otherwise those of the
    power of two below H, then every other slope of the power of two above it (the paper's extension)."""

    def geometric(n: int) -> list[float]:
        return [2 ** (-8 * i / n) for i in range(1, n + 1)]

    below = 2 ** math.floor(math.log2(num_heads))
    return geometric(below) + geometric(2 * below)[0::2][: num_heads - below]


class AlibiSlopes(nn.Module):
    """One ALiBi slope per head: fixed (a recomputed buffer) or trainable (a parameter).

    Fixed slopes are a non-persistent float32 buffer, never stored in checkpoints and recomputed
    whenever the module moves or changes dtype (``_apply``), so they stay exact after ``.to(bfloat16)``,
    ``to_empty`` and loading from the meta device. Trainable slopes are an ordinary parameter that
    starts at ``initial`` and is saved with the weights; like every other parameter it takes the
    default dtype (``from_pretrained(dtype=...)``, ``default_dtype``), so that FSDP sees one dtype.
    Either way the bias is computed from them in float32.
    """

    def __init__(self, initial: list[float], trainable: bool = False):
        super().__init__()
        self.initial = tuple(float(m) for m in initial)
        self.trainable = trainable
        if trainable:
            self.slopes = nn.Parameter(self.compute_slopes().to(torch.get_default_dtype()))
        else:
            self.register_buffer("slopes", self.compute_slopes(), persistent=False)

    def compute_slopes(self, device: torch.device | None = None) -> torch.Tensor:
        return torch.tensor(self.initial, dtype=torch.float32, device=device)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        if not self.trainable:
            self.slopes = self.compute_slopes(self.slopes.device)
        return self

    def extra_repr(self) -> str:
        return f"heads={len(self.initial)}, trainable={self.trainable}"


def alibi_attention_mask(
    slopes: torch.Tensor,
    attention_mask: torch.Tensor | None,
    query_offset: int,
    query_length: int,
    key_length: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The ALiBi bias and the attention mask as one additive float mask (B or 1, H, T, S) for eager/sdpa.

    ``attention_mask`` is what transformers' mask builders give: a float mask (0 where allowed) for
    eager, a bool mask (True where allowed) or None (a plain causal mask left to sdpa) for sdpa.
    ``query_offset`` is the number of cached positions before the first query.
    """
    device = slopes.device
    query_pos = torch.arange(query_length, device=device) + query_offset
    distance = torch.arange(key_length, device=device)[None, :] - query_pos[:, None]  # (T, S): j - i
    bias = slopes.float()[:, None, None] * distance  # (H, T, S), -m_h * (i - j)
    if attention_mask is None:  # sdpa skipped a plain causal mask: rebuild it from the positions
        attention_mask = (distance <= 0)[None, None]
    if attention_mask.dtype == torch.bool:
        bias = torch.where(attention_mask, bias, float("-inf"))  # (B, H, T, S)
    else:
        bias = bias + attention_mask.float()
    # clamped so that fully masked rows (left padding) stay finite, as in transformers' own masks (in
    # the target dtype: float64's minimum does not fit a float32 clamp)
    return bias.to(dtype).clamp(min=torch.finfo(dtype).min)


def flex_alibi_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    block_mask,
    slopes: torch.Tensor,
    query_offset: int,
    scaling: float,
) -> tuple[torch.Tensor, None]:
    """flex_attention with ALiBi as a score modifier; returns (B, T, H, D) like the other backends."""
    # a tensor, not a Python int, so that the compiled kernel is reused as the cache grows
    offset = torch.as_tensor(query_offset, device=query.device)
    slopes = slopes.float()  # the bias in float32 whatever the parameters' dtype
    if not torch.compiler.is_compiling():
        # heads and head width are fixed per model: only lengths may become dynamic when the kernel
        # recompiles (torch 2.13's CPU inductor fails on this kernel with a dynamic head count)
        for t in (query, key, value):
            torch._dynamo.mark_static(t, 1)
            torch._dynamo.mark_static(t, 3)
        torch._dynamo.mark_static(slopes, 0)

    def alibi_score_mod(score, batch_idx, head_idx, q_idx, kv_idx):
        return score + (slopes[head_idx] * (kv_idx - q_idx - offset)).to(score.dtype)

    out = compile_friendly_flex_attention(
        query,
        key,
        value,
        score_mod=alibi_score_mod,
        block_mask=block_mask,
        scale=scaling,
        training=module.training,
    )
    return out.transpose(1, 2).contiguous(), None


def alibi_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask,
    slopes: torch.Tensor,
    query_offset: int,
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention with ALiBi on the backend ``config._attn_implementation`` names; (B, T, H, D) out."""
    implementation = module.config._attn_implementation
    if implementation == "flex_attention":
        groups = getattr(module, "num_key_value_groups", 1)  # query heads per KV head
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        return flex_alibi_attention_forward(
            module, query, key, value, attention_mask, slopes, query_offset, scaling
        )
    mask = alibi_attention_mask(
        slopes, attention_mask, query_offset, query.shape[2], key.shape[2], query.dtype
    )
    # grouped-query attention: eager and sdpa expand the KV heads themselves
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
    return attention(module, query, key, value, mask, scaling=scaling)
