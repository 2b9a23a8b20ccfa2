"""Attention parts shared by the families: the plain eager attention, and KV-head expansion for GQA."""

import torch
from torch import nn


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, kv_heads, T, D) -> (B, kv_heads * n_rep, T, D), each KV head serving n_rep query heads."""
    if n_rep == 1:
        return x
    b, kv_heads, t, d = x.shape
    return x[:, :, None].expand(b, kv_heads, n_rep, t, d).reshape(b, kv_heads * n_rep, t, d)


def mha_eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scaling + mask) v for multi-head attention (as many KV heads as query heads)."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, T, S)
    if attention_mask is not None:
        scores = scores + attention_mask  # additive float mask: 0 (or a bias) where allowed, -inf-like elsewhere
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, T, H, D)
    return out, weights


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped-query attention: each KV head expanded to its query heads, then plain multi-head attention."""
    groups = getattr(module, "num_key_value_groups", 1)  # query heads per KV head
    key = repeat_kv(key, groups)
    value = repeat_kv(value, groups)
    return mha_eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout)


def split_qkv_per_head(qkv: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPT-NeoX's fused projection, interleaved per head: (B, T, heads * [q; k; v]) -> q, k, v (B, heads, T, D)."""
    qkv = qkv.view(*qkv.shape[:-1], -1, 3 * head_dim).transpose(1, 2)  # (B, heads, T, 3 * D)
    q, k, v = qkv.chunk(3, dim=-1)
    return q, k, v


def split_qkv(
    qkv: torch.Tensor, num_heads: int, num_key_value_heads: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Phi-3's fused projection, stacked: (B, T, [q; k; v]) -> q (B, heads, T, D), k and v (B, kv_heads, T, D)."""
    sizes = (num_heads * head_dim, num_key_value_heads * head_dim, num_key_value_heads * head_dim)
    q, k, v = (x.view(*qkv.shape[:-1], -1, head_dim).transpose(1, 2) for x in qkv.split(sizes, dim=-1))
    return q, k, v


def sink_eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    s_aux: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention with a learned sink logit per head (gpt-oss): softmax over [scores, sink], the sink's column
    dropped, so each query may give part of its attention to nothing. ``s_aux``: the (heads,) sink logits."""
    groups = getattr(module, "num_key_value_groups", 1)  # query heads per KV head
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, T, S)
    if attention_mask is not None:
        scores = scores + attention_mask
    sinks = s_aux.reshape(1, -1, 1, 1).expand(query.shape[0], -1, query.shape[-2], -1)  # (B, H, T, 1)
    logits = torch.cat([scores, sinks], dim=-1)
    logits = logits - logits.max(dim=-1, keepdim=True).values  # no overflow in half precision
    weights = nn.functional.softmax(logits, dim=-1, dtype=logits.dtype)[..., :-1]  # the sink's column dropped
    weights = nn.functional.dropout(weights, p=dropout, training=module.training).to(value.dtype)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, T, H, D)
    return out, weights
