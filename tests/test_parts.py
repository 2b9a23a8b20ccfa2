"""Unit tests of the model-parts collection: each part against its formula, in float64 where it matters."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scaffold.codegen.parts import part_sources
from scaffold.codegen.parts.alibi import (
    AlibiSlopes,
    alibi_attention_forward,
    alibi_attention_mask,
    alibi_slopes,
)
from scaffold.codegen.parts.attention import eager_attention_forward, mha_eager_attention_forward
from scaffold.codegen.parts.deepnet import deepnet_alpha, deepnet_beta
from scaffold.codegen.parts.norms import RMSNorm
from scaffold.codegen.parts.rotary import RotaryEmbedding, apply_rotary_pos_emb, rope_inv_freq
from scaffold.codegen.parts.sinusoidal import SinusoidalPositionEmbedding
from tests.conftest import skip_unreliable_flex

torch.manual_seed(0)


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------- norms


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rmsnorm_matches_float64_reference(dtype):
    norm = RMSNorm(48, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 48))
    x = torch.randn(3, 5, 48) * 7 + 2
    ref = x.double() / torch.sqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight.double()
    out = norm.to(dtype)(x.to(dtype))
    assert out.dtype == dtype
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(out.double(), ref, atol=tol * ref.abs().max().item(), rtol=tol)


# --------------------------------------------------------------------------------------------- rotary


def test_rotary_rotation_preserves_norms_and_depends_on_relative_position():
    head_dim = 16
    rope = RotaryEmbedding(head_dim, theta=10000.0)
    q = torch.randn(1, 2, 1, head_dim, dtype=torch.float64)
    k = torch.randn(1, 2, 1, head_dim, dtype=torch.float64)

    def rotated(pos_q: int, pos_k: int):
        cq, sq = (t.double() for t in rope(q.float(), torch.tensor([[pos_q]])))
        ck, sk = (t.double() for t in rope(k.float(), torch.tensor([[pos_k]])))
        rq, _ = apply_rotary_pos_emb(q, q, cq, sq)
        _, rk = apply_rotary_pos_emb(k, k, ck, sk)
        return rq, rk

    rq, rk = rotated(37, 5)
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(rk.norm(dim=-1), k.norm(dim=-1), atol=1e-6, rtol=1e-6)
    # q.k after rotation depends only on the distance: (37, 5) and (132, 100) are both 32 apart
    rq2, rk2 = rotated(132, 100)
    torch.testing.assert_close((rq * rk).sum(-1), (rq2 * rk2).sum(-1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose((rq * rk).sum(-1), (q * k).sum(-1), atol=1e-3)


def test_rope_llama3_scaling_matches_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    config = LlamaConfig(
        hidden_size=2048,
        num_attention_heads=32,
        head_dim=64,
        rope_parameters={**scaling, "rope_theta": 500000.0},
    )
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    ours = rope_inv_freq(64, 500000.0, scaling)
    torch.testing.assert_close(ours, expected.float(), atol=0, rtol=1e-6)
    plain = rope_inv_freq(64, 500000.0)
    assert (ours <= plain).all() and (ours < plain).any()  # long wavelengths slowed down


# --------------------------------------------------------------------------------------------- sinusoidal


@pytest.mark.parametrize("dim", [64, 63], ids=["even", "odd"])
def test_sinusoidal_table_matches_the_formula(dim):
    positions = torch.arange(2048)
    pe = SinusoidalPositionEmbedding(dim)(positions[None], torch.float32)[0]
    assert pe.shape == (2048, dim)
    pos = positions.double()[:, None]
    i = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / 10000.0 ** ((2 * torch.div(i, 2, rounding_mode="floor")) / dim)
    ref = torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle))
    # float32 angles lose ~p * 6e-8 rad: 1.2e-4 at position 2048
    torch.testing.assert_close(pe.double(), ref, atol=2e-4, rtol=0)
    torch.testing.assert_close(pe[:, 0].double(), torch.sin(pos[:, 0]), atol=2e-4, rtol=0)


def test_sinusoidal_follows_position_ids_and_casts_to_activations():
    pe = SinusoidalPositionEmbedding(32)
    packed = torch.tensor([[0, 1, 2, 0, 1]])
    out = pe(packed, torch.bfloat16)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out[0, 3:], out[0, :2])  # restarting positions restart the encoding


# --------------------------------------------------------------------------------------------- recomputed buffers


def _buffer_modules():
    return {
        "rotary": (RotaryEmbedding(16, 10000.0), "inv_freq", lambda m: m.compute_inv_freq()),
        "rotary-llama3": (
            RotaryEmbedding(
                16,
                500000.0,
                {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                },
            ),
            "inv_freq",
            lambda m: m.compute_inv_freq(),
        ),
        "sinusoidal": (SinusoidalPositionEmbedding(32), "inv_freq", lambda m: m.compute_inv_freq()),
        "alibi-fixed": (AlibiSlopes(alibi_slopes(12)), "slopes", lambda m: m.compute_slopes()),
    }


@pytest.mark.parametrize("name", list(_buffer_modules()))
def test_recomputed_buffers_stay_exact_after_to_dtype(name):
    module, attr, compute = _buffer_modules()[name]
    expected = compute(module)
    for dtype in (torch.bfloat16, torch.float16):
        module.to(dtype)
        buf = getattr(module, attr)
        assert buf.dtype == torch.float32, f"{name}.{attr} was cast to {buf.dtype}"
        assert torch.equal(buf, expected)
    assert attr not in module.state_dict(), "a recomputed buffer must not be saved"


@pytest.mark.parametrize("name", list(_buffer_modules()))
def test_recomputed_buffers_are_exact_after_meta_to_empty(name):
    module, attr, compute = _buffer_modules()[name]
    expected = compute(module)
    with torch.device("meta"):
        module_meta = _buffer_modules()[name][0]
    assert getattr(module_meta, attr).is_meta
    module_meta.to_empty(device="cpu")
    assert torch.equal(getattr(module_meta, attr), expected)


# --------------------------------------------------------------------------------------------- ALiBi


def test_alibi_slopes_are_the_papers():
    assert alibi_slopes(8) == [2.0**-k for k in range(1, 9)]
    assert alibi_slopes(4) == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]
    assert alibi_slopes(1) == [2.0**-8]
    for h in (2, 16, 32):
        assert alibi_slopes(h) == pytest.approx([2 ** (-8 * i / h) for i in range(1, h + 1)], rel=1e-12)
    # not a power of two: the 4 slopes of H=4, then every other slope of H=8 (the paper's extension)
    assert alibi_slopes(6) == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]
    assert len(alibi_slopes(12)) == 12 and len(set(alibi_slopes(12))) == 12


def test_alibi_trainable_slopes_are_saved_and_learn():
    fixed = AlibiSlopes(alibi_slopes(4))
    assert list(fixed.parameters()) == [] and "slopes" not in fixed.state_dict()
    single = AlibiSlopes([0.5], trainable=True)
    assert isinstance(single.slopes, nn.Parameter) and single.slopes.tolist() == [0.5]
    assert "slopes" in single.state_dict()
    mask = alibi_attention_mask(single.slopes, None, 0, 4, 4, torch.float32)
    mask[torch.isfinite(mask) & (mask > -1e30)].sum().backward()
    assert single.slopes.grad is not None and single.slopes.grad.item() != 0


def _alibi_reference(slopes, offset, t, s, allowed):
    """float64 bias -m_h (i - j) with i the absolute query position; -inf where not allowed."""
    i = torch.arange(t, dtype=torch.float64)[:, None] + offset
    j = torch.arange(s, dtype=torch.float64)[None, :]
    bias = -torch.tensor(slopes, dtype=torch.float64)[:, None, None] * (i - j)
    return torch.where(allowed, bias, float("-inf"))


@pytest.mark.parametrize("offset", [0, 5], ids=["prefill", "after-cache"])
def test_alibi_attention_mask_values(offset):
    slopes = alibi_slopes(4)
    t, s = 3, 3 + offset
    causal = torch.arange(s)[None, :] <= (torch.arange(t)[:, None] + offset)
    ref = _alibi_reference(slopes, offset, t, s, causal)
    min32 = torch.finfo(torch.float32).min
    slopes_t = torch.tensor(slopes)
    # sdpa with a plain causal mask: None
    out = alibi_attention_mask(slopes_t, None, offset, t, s, torch.float32)
    assert out.shape == (1, 4, t, s)
    torch.testing.assert_close(out[0].double(), ref.clamp(min=min32), atol=1e-6, rtol=0)
    # sdpa with padding: bool mask, first key of the second row padded
    allowed = causal[None, None].repeat(2, 1, 1, 1)
    allowed[1, :, :, 0] = False
    out = alibi_attention_mask(slopes_t, allowed, offset, t, s, torch.float32)
    assert out.shape == (2, 4, t, s)
    torch.testing.assert_close(
        out[1].double(), _alibi_reference(slopes, offset, t, s, allowed[1, 0]).clamp(min=min32)
    )
    # eager: the same as a float mask (0 / min)
    float_mask = torch.where(allowed, 0.0, min32)
    out_f = alibi_attention_mask(slopes_t, float_mask, offset, t, s, torch.float32)
    assert torch.equal(out_f, out)
    # bf16 keeps masked entries finite
    assert torch.isfinite(alibi_attention_mask(slopes_t, allowed, offset, t, s, torch.bfloat16)).all()


class _Attn(nn.Module):
    """The minimum an attention function reads from its module."""

    def __init__(self, implementation: str):
        super().__init__()
        self.is_causal = True
        self.config = type("Config", (), {"_attn_implementation": implementation})()


def _attention_reference(q, k, v, slopes, offset, scaling):
    t, s = q.shape[2], k.shape[2]
    causal = torch.arange(s)[None, :] <= (torch.arange(t)[:, None] + offset)
    scores = (q.double() @ k.double().transpose(-1, -2)) * scaling + _alibi_reference(
        slopes, offset, t, s, causal
    )
    return (scores.softmax(-1) @ v.double()).transpose(1, 2)  # (B, T, H, D)


@pytest.mark.parametrize("implementation", ["eager", "sdpa", "flex_attention"])
@pytest.mark.parametrize("offset", [0, 6], ids=["prefill", "after-cache"])
@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_alibi_attention_forward_matches_reference(implementation, offset, kv_heads):
    if implementation == "flex_attention" and not flex_available():
        pytest.skip("this torch has no flex_attention")
    skip_unreliable_flex(implementation)
    from transformers.masking_utils import sdpa_mask

    torch.manual_seed(1)
    heads, t, d = 4, 5, 8
    s = t + offset
    q, k, v = torch.randn(2, heads, t, d), torch.randn(2, kv_heads, s, d), torch.randn(2, kv_heads, s, d)
    slopes = alibi_slopes(heads)
    module = _Attn(implementation)
    module.num_key_value_groups = heads // kv_heads  # grouped-query: each KV head serves this many
    if implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        mask = create_block_mask(lambda b, h, qi, ki: ki <= qi + offset, None, None, t, s, device="cpu")
    else:
        mask = (
            None
            if implementation == "sdpa"
            else sdpa_mask(
                batch_size=2,
                q_length=t,
                kv_length=s,
                q_offset=offset,
                kv_offset=0,
                allow_is_causal_skip=False,
            )
        )
        if mask is not None:  # eager takes the float form
            mask = torch.where(mask, 0.0, torch.finfo(torch.float32).min)
    out, _ = alibi_attention_forward(module, q, k, v, mask, torch.tensor(slopes), offset, d**-0.5)
    k, v = k.repeat_interleave(heads // kv_heads, dim=1), v.repeat_interleave(heads // kv_heads, dim=1)
    torch.testing.assert_close(
        out.double(), _attention_reference(q, k, v, slopes, offset, d**-0.5), atol=1e-5, rtol=1e-5
    )


# --------------------------------------------------------------------------------------------- attention


def test_eager_attention_forwards_match_sdpa():
    torch.manual_seed(2)
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    float_mask = torch.where(causal, 0.0, float("-inf"))[None, None]
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)
    module = _Attn("eager")
    out, weights = mha_eager_attention_forward(module, q, k, v, float_mask, scaling=8**-0.5)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 6))
    module.num_key_value_groups = 2  # the GQA version: 2 KV heads serve 4 query heads
    out_gqa, _ = eager_attention_forward(module, q, k[:, ::2], v[:, ::2], float_mask, scaling=8**-0.5)
    ref_gqa = F.scaled_dot_product_attention(
        q, k[:, ::2].repeat_interleave(2, 1), v[:, ::2].repeat_interleave(2, 1), is_causal=True
    ).transpose(1, 2)
    torch.testing.assert_close(out_gqa, ref_gqa, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------------- DeepNet


@pytest.mark.parametrize(
    ("layers", "alpha", "beta"),
    [(4, 1.682, 0.420), (8, 2.000, 0.354), (32, 2.828, 0.250)],
    ids=["L4", "L8", "L32"],
)
def test_deepnet_constants_match_the_preset_table(layers, alpha, beta):
    assert deepnet_alpha(layers) == pytest.approx(alpha, abs=5e-4)
    assert deepnet_beta(layers) == pytest.approx(beta, abs=5e-4)
    assert deepnet_alpha(layers) == pytest.approx((2 * layers) ** 0.25)
    assert deepnet_beta(layers) == pytest.approx(math.pow(8 * layers, -0.25))


# --------------------------------------------------------------------------------------------- sources


def test_part_sources_are_whole_definitions():
    sources = part_sources()
    for name in (
        "SinusoidalPositionEmbedding",
        "AlibiSlopes",
        "alibi_attention_mask",
        "deepnet_alpha",
        "RMSNorm",
    ):
        src = sources[name]
        assert src.startswith(("class ", "def ")) and f" {name}" in src.splitlines()[0]
        compile(src, name, "exec")  # a complete, parseable definition


def test_truncated_normal_matches_the_truncated_distribution():
    from scaffold.codegen.parts.init import truncated_normal_

    torch.manual_seed(0)
    x = truncated_normal_(torch.empty(1_000_000), std=0.02)
    assert x.abs().max().item() <= 0.06
    # the standard deviation of N(0, s^2) truncated at 3 s is 0.98658 s
    assert abs(x.std().item() - 0.02 * 0.98658) < 0.0002
    assert abs(x.mean().item()) < 1e-4
    assert abs(((x.abs() < 0.02).float().mean().item()) - 0.68267 / 0.9973) < 0.003


def test_truncated_normal_leaves_loaded_tensors_alone():
    from scaffold.codegen.parts.init import truncated_normal_

    loaded = torch.ones(4)
    loaded._is_hf_initialized = True
    assert torch.equal(truncated_normal_(loaded, std=0.02), torch.ones(4))


def test_every_part_is_pasted_by_a_shipped_family():
    """A part no family's structure pastes, nor a structural option turned on over a family (each boolean
    key true, each qk_norm), is dead code: delete it rather than keep testing it."""
    from scaffold.arch import for_blueprint
    from scaffold.codegen.render import plan_parts
    from scaffold.spec import schema
    from scaffold.spec.blueprints import builtin_names, load

    pasted = set()
    options = [{k: True} for k, v in schema.STRUCTURE.items() if v is False]
    options += [{"qk_norm": kind} for kind in schema.QK_NORMS]
    for name in builtin_names():
        bp = load(name)
        model = {**bp.defaults.get("model", {}), **bp.preset(bp.default_preset)["model"], **bp.structure}
        pasted |= set(plan_parts(for_blueprint(bp, model)))
        if name == "llama":
            for option in options:
                pasted |= set(plan_parts(for_blueprint(bp, {**model, **option})))
    assert set(part_sources()) - pasted == set()
