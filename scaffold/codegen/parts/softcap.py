"""Logit soft-capping (Gemma 2): scores or logits squashed smoothly into (-cap, cap) by ``cap * tanh(x / cap)``."""

import torch
from torch import nn

from scaffold.codegen.parts.attention import repeat_kv


def logit_softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """``cap * tanh(x / cap)``: close to x for |x| << cap, never beyond +-cap."""
    return torch.tanh(x / cap) * cap


def softcap_eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    softcap: float = 50.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped-query eager attention whose scores are soft-capped before the mask is added (Gemma 2).

    The same computation as ``eager_attention_forward`` with one step more; flex_attention and
    flash_attention_2 take ``softcap`` themselves, sdpa cannot apply it.
    """
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, H, T, S)
    scores = logit_softcap(scores, softcap)
    if attention_mask is not None:
        scores = scores + attention_mask  # additive float mask: 0 where allowed, -inf-like elsewhere
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, T, H, D)
    return out, weights
