"""Decoder-block layouts: where the norms sit around the attention and feed-forward sublayers.

A block is given its sublayers; the family chooses them. The residual stream is written out as two
lines in each ``forward``. Every block is a ``GradientCheckpointingLayer``, so activation
checkpointing works for every family.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer


class PreNormBlock(GradientCheckpointingLayer):
    """Pre-norm: ``x = x + attn(norm(x)); x = x + mlp(norm(x))`` (GPT-2, Llama)."""

    def __init__(
        self,
        self_attn: nn.Module,
        mlp: nn.Module,
        input_layernorm: nn.Module,
        post_attention_layernorm: nn.Module,
    ):
        super().__init__()
        self.self_attn = self_attn
        self.mlp = mlp
        self.input_layernorm = input_layernorm
        self.post_attention_layernorm = post_attention_layernorm

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, **kwargs) -> torch.Tensor:
        x = hidden_states
        x = x + self.self_attn(self.input_layernorm(x), attention_mask, **kwargs)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x


class ParallelBlock(GradientCheckpointingLayer):
    """Parallel residual: ``x = x + drop(attn(norm1(x))) + drop(mlp(norm2(x)))``, both sublayers reading
    the same input (GPT-J, GPT-NeoX, PaLM)."""

    def __init__(
        self,
        self_attn: nn.Module,
        mlp: nn.Module,
        input_layernorm: nn.Module,
        post_attention_layernorm: nn.Module,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.self_attn = self_attn
        self.mlp = mlp
        self.input_layernorm = input_layernorm
        self.post_attention_layernorm = post_attention_layernorm
        self.dropout = dropout  # on each sublayer's output, before the residual sum

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, **kwargs) -> torch.Tensor:
        x = hidden_states
        attn = self.self_attn(self.input_layernorm(x), attention_mask, **kwargs)
        mlp = self.mlp(self.post_attention_layernorm(x))
        return (
            x
            + F.dropout(attn, p=self.dropout, training=self.training)
            + F.dropout(mlp, p=self.dropout, training=self.training)
        )


class SandwichNormBlock(GradientCheckpointingLayer):
    """Sandwich norm: each sublayer between two norms, ``x = x + norm(attn(norm(x))); x = x + norm(mlp(norm(x)))``
    (Gemma 2): four norms per block, the residual stream itself never normalised."""

    def __init__(
        self,
        self_attn: nn.Module,
        mlp: nn.Module,
        input_layernorm: nn.Module,
        post_attention_layernorm: nn.Module,
        pre_feedforward_layernorm: nn.Module,
        post_feedforward_layernorm: nn.Module,
    ):
        super().__init__()
        self.self_attn = self_attn
        self.mlp = mlp
        self.input_layernorm = input_layernorm
        self.post_attention_layernorm = post_attention_layernorm
        self.pre_feedforward_layernorm = pre_feedforward_layernorm
        self.post_feedforward_layernorm = post_feedforward_layernorm

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, **kwargs) -> torch.Tensor:
        x = hidden_states
        attn = self.self_attn(self.input_layernorm(x), attention_mask, **kwargs)
        x = x + self.post_attention_layernorm(attn)
        x = x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        return x


class PostNormBlock(GradientCheckpointingLayer):
    """Post-norm: ``x = norm(x + drop(attn(x))); x = norm(x + drop(mlp(x)))`` (the original Transformer)."""

    def __init__(
        self,
        self_attn: nn.Module,
        mlp: nn.Module,
        post_attention_layernorm: nn.Module,
        post_feedforward_layernorm: nn.Module,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.self_attn = self_attn
        self.mlp = mlp
        self.post_attention_layernorm = post_attention_layernorm
        self.post_feedforward_layernorm = post_feedforward_layernorm
        self.dropout = dropout  # on each sublayer's output, before the residual sum

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, **kwargs) -> torch.Tensor:
        x = hidden_states
        attn = self.self_attn(x, attention_mask, **kwargs)
        x = self.post_attention_layernorm(x + F.dropout(attn, p=self.dropout, training=self.training))
        x = self.post_feedforward_layernorm(
            x + F.dropout(self.mlp(x), p=self.dropout, training=self.training)
        )
        return x


def deepnet_alpha(num_hidden_layers: int) -> float:
    """DeepNet's residual scale for a decoder-only model: ``alpha = (2L)^(1/4)`` (Wang et al., 2022)."""
    return (2 * num_hidden_layers) ** 0.25


def deepnet_beta(num_hidden_layers: int) -> float:
    """DeepNet's init gain for a decoder-only model: ``beta = (8L)^(-1/4)`` (Wang et al., 2022)."""
    return (8 * num_hidden_layers) ** -0.25


class DeepNormBlock(GradientCheckpointingLayer):
    """DeepNorm: ``x = norm(alpha * x + attn(x)); x = norm(alpha * x + mlp(x))``, post-norm with the
    residual up-weighted by alpha so that very deep stacks train stably (Wang et al., 2022)."""

    def __init__(
        self,
        self_attn: nn.Module,
        mlp: nn.Module,
        post_attention_layernorm: nn.Module,
        post_feedforward_layernorm: nn.Module,
        alpha: float,
    ):
        super().__init__()
        self.self_attn = self_attn
        self.mlp = mlp
        self.post_attention_layernorm = post_attention_layernorm
        self.post_feedforward_layernorm = post_feedforward_layernorm
        self.alpha = alpha

    def forward(self, hidden_states: torch.Tensor, attention_mask=None, **kwargs) -> torch.Tensor:
        x = hidden_states
        x = self.post_attention_layernorm(self.alpha * x + self.self_attn(x, attention_mask, **kwargs))
        x = self.post_feedforward_layernorm(self.alpha * x + self.mlp(x))
        return x

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:.4f}"
