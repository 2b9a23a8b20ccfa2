"""Unit tests of the Gemma / Gemma 2 parts against transformers' own modules: unit-offset RMSNorm,
the scaled token embedding, GeGLU's activation and logit soft-capping in eager attention. The sandwich
decoder layer and the GeGLU MLP are written by the templates and checked whole, against transformers'
Gemma 2 and Gemma, in tests/test_parity_gemma.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm, GemmaTextScaledWordEmbedding
from transformers.models.gemma2 import modeling_gemma2

from scaffold.codegen.parts import part_sources
from scaffold.codegen.parts.activations import gelu_pytorch_tanh
from scaffold.codegen.parts.embedding import ScaledWordEmbedding
from scaffold.codegen.parts.norms import UnitOffsetRMSNorm
from scaffold.codegen.parts.softcap import logit_softcap, softcap_eager_attention_forward

DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])


@DTYPES
def test_unit_offset_rmsnorm_equals_gemmas(dtype):
    torch.manual_seed(0)
    ours, theirs = UnitOffsetRMSNorm(48, eps=1e-6), GemmaRMSNorm(48, eps=1e-6)
    assert torch.equal(ours.weight, torch.zeros(48))  # an offset from one: starts at zero
    with torch.no_grad():
        ours.weight.copy_(torch.randn(48) * 0.3)
        theirs.weight.copy_(ours.weight)
    x = (torch.randn(3, 5, 48) * 7 + 2).to(dtype)
    out = ours.to(dtype)(x)
    assert out.dtype == dtype
    torch.testing.assert_close(
        out, theirs.to(dtype)(x), atol=1e-5 if dtype == torch.float32 else 0, rtol=1e-5
    )
    # (1 + w), not w: a zero weight is the identity scale
    plain = UnitOffsetRMSNorm(48)(x.float())
    torch.testing.assert_close(plain, F.rms_norm(x.float(), (48,), eps=1e-6))


@DTYPES
def test_scaled_embedding_casts_the_scale_as_gemma_does(dtype):
    torch.manual_seed(0)
    hidden = 3072  # sqrt(3072) = 55.43 is 55.5 in bfloat16
    ours = ScaledWordEmbedding(10, hidden, padding_idx=0, embed_scale=hidden**0.5)
    theirs = GemmaTextScaledWordEmbedding(10, hidden, padding_idx=0, embed_scale=hidden**0.5)
    theirs.load_state_dict(ours.state_dict())
    assert "embed_scale" not in ours.state_dict()  # recomputed, never stored
    ids = torch.tensor([[1, 2, 9, 0]])
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    assert torch.equal(ours(ids), theirs(ids))
    if dtype == torch.bfloat16:
        assert not torch.equal(ours(ids), (ours.weight[ids].float() * hidden**0.5).to(dtype))
    # exact again after the meta device and to_empty (the buffer is recomputed, not garbage)
    with torch.device("meta"):
        meta = ScaledWordEmbedding(10, hidden, padding_idx=0, embed_scale=hidden**0.5)
    meta = meta.to_empty(device="cpu")
    assert meta.embed_scale.item() == pytest.approx(hidden**0.5)


def test_gelu_pytorch_tanh_equals_transformers():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 32) * 3
    torch.testing.assert_close(gelu_pytorch_tanh(x), ACT2FN["gelu_pytorch_tanh"](x), atol=0, rtol=0)
    assert not torch.allclose(gelu_pytorch_tanh(x), F.gelu(x), atol=1e-6)  # the approximation, not erf


class _Attn(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.head_dim = 8


@pytest.mark.parametrize("groups", [1, 2], ids=["mha", "gqa"])
def test_softcap_eager_attention_equals_gemma2s(groups):
    torch.manual_seed(1)
    q = torch.randn(2, 4, 6, 8) * 6  # large scores, so the cap matters
    k, v = torch.randn(2, 4 // groups, 6, 8) * 6, torch.randn(2, 4 // groups, 6, 8)
    mask = torch.where(torch.ones(6, 6, dtype=torch.bool).tril(), 0.0, torch.finfo(torch.float32).min)[
        None, None
    ]
    module = _Attn(groups).eval()
    ours, w = softcap_eager_attention_forward(module, q, k, v, mask, scaling=0.25, softcap=5.0)
    theirs, w_ref = modeling_gemma2.eager_attention_forward(module, q, k, v, mask, scaling=0.25, softcap=5.0)
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
    torch.testing.assert_close(w, w_ref, atol=0, rtol=0)
    uncapped = modeling_gemma2.eager_attention_forward(module, q, k, v, mask, scaling=0.25, softcap=None)[0]
    assert not torch.allclose(ours, uncapped, atol=1e-3)


def test_logit_softcap_bounds_and_keeps_small_values():
    x = torch.tensor([-1e4, -3.0, 0.0, 0.01, 3.0, 1e4])
    capped = logit_softcap(x, 30.0)
    assert capped.abs().max().item() <= 30.0
    torch.testing.assert_close(capped[3], x[3], atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(capped, 30.0 * torch.tanh(x / 30.0))


def test_gemma_part_sources_are_whole_definitions():
    sources = part_sources()
    for name in (
        "UnitOffsetRMSNorm",
        "ScaledWordEmbedding",
        "logit_softcap",
        "softcap_eager_attention_forward",
        "gelu_pytorch_tanh",
    ):
        src = sources[name]
        assert src.startswith(("class ", "def ")) and f" {name}" in src.splitlines()[0]
        compile(src, name, "exec")
