"""Mistral, Qwen2, Qwen3 and OLMo 2 reproduced: their parts against transformers' own modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scaffold.parts.blocks import PostSublayerNormBlock
from scaffold.parts.mlp import GatedMLP
from scaffold.parts.norms import RMSNorm

from ._parity import assert_parity, tiny_hf_model


class _TensorOut(nn.Module):
    """transformers' attention modules return (output, weights); scaffold's blocks take the output."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.attn = attn

    def forward(self, x, attention_mask=None, **kwargs):
        return self.attn(x, attention_mask=attention_mask, **kwargs)[0]


def test_post_sublayer_block_is_olmo2s_decoder_layer():
    from transformers import Olmo2Config
    from transformers.models.olmo2.modeling_olmo2 import Olmo2DecoderLayer, Olmo2RotaryEmbedding

    torch.manual_seed(0)
    config = Olmo2Config(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_hidden_layers=1,
    )
    config._attn_implementation = "eager"
    theirs = Olmo2DecoderLayer(config, 0).eval()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)  # so that a norm in the wrong place shows
    mlp = GatedMLP(32, 64, act_fn=nn.functional.silu)
    mlp.load_state_dict(theirs.mlp.state_dict())
    norms = [RMSNorm(32, eps=config.rms_norm_eps) for _ in range(2)]
    norms[0].load_state_dict(theirs.post_attention_layernorm.state_dict())
    norms[1].load_state_dict(theirs.post_feedforward_layernorm.state_dict())
    ours = PostSublayerNormBlock(_TensorOut(theirs.self_attn), mlp, *norms).eval()
    x = torch.randn(2, 7, 32)
    position_ids = torch.arange(7)[None]
    position_embeddings = Olmo2RotaryEmbedding(config)(x, position_ids)
    with torch.no_grad():
        expected = theirs(x, position_embeddings=position_embeddings)
        got = ours(x, position_embeddings=position_embeddings)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert not any("input_layernorm" in k for k in ours.state_dict())


# --------------------------------------------------------------------------------------------- parity
# A tiny transformers model of each family (random weights, fp32), its state dict loaded strictly into
# the model scaffold generates, logits compared with eager and sdpa, with the KV cache, with padding and
# with packed sequences (tests/_parity.py).

SLIDING = {"sliding_window": 6}  # shorter than the test sequences, so a wrong window shows
MIXED = ["full_attention", "sliding_attention"]  # per layer, as transformers' layer_types

CASES = {
    "mistral-sliding-head-dim": ("mistral", {**SLIDING, "head_dim": 24}),
    "mistral-full": ("mistral", {"sliding_window": None}),
    "qwen2-qkv-bias": ("qwen2", {}),
    "qwen2-layer-types-tied": (
        "qwen2",
        {"use_sliding_window": True, **SLIDING, "layer_types": MIXED, "tie_word_embeddings": True},
    ),
    "qwen3-head-qk-norm": ("qwen3", {"head_dim": 32}),
    "qwen3-layer-types": ("qwen3", {"use_sliding_window": True, **SLIDING, "layer_types": MIXED}),
    "olmo2-gqa": ("olmo2", {}),
    "olmo2-mha": ("olmo2", {"num_key_value_heads": 4}),
}


@pytest.mark.parametrize("case", CASES)
def test_against_transformers(tmp_path, case):
    family, overrides = CASES[case]
    hf = tiny_hf_model(family, **overrides)
    ours = assert_parity(hf, family, tmp_path)
    assert type(ours).__name__ == type(hf).__name__  # transformers' class names, scaffold's code
    assert type(ours).__module__ != type(hf).__module__
