"""GPT-NeoX and Phi-3: their parts against transformers' own modules, then whole models against
transformers' classes (tiny random models, fp32)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scaffold.codegen.parts.attention import (
    eager_attention_forward,
    mha_eager_attention_forward,
    split_qkv,
    split_qkv_per_head,
)
from scaffold.codegen.parts.rotary import (
    RotaryEmbedding,
    apply_partial_rotary_pos_emb,
    rope_attention_factor,
    rope_inv_freq,
)

# --------------------------------------------------------------------------------------------- rotary


def _hf_rope(kind: str, head_dim: int, rope: dict, max_positions: int = 4096):
    """transformers' inverse frequencies and attention factor for ``rope`` (a Llama config carries it)."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(
        hidden_size=4 * head_dim,
        num_attention_heads=4,
        head_dim=head_dim,
        max_position_embeddings=max_positions,
        rope_parameters={"rope_type": kind, **rope},
    )
    inv_freq, factor = ROPE_INIT_FUNCTIONS[kind](config, "cpu")
    return inv_freq.float(), factor


YARN_CASES = {
    "yarn": {"factor": 4.0, "original_max_position_embeddings": 1024},
    "yarn-untruncated-betas": {
        "factor": 8.0,
        "original_max_position_embeddings": 512,
        "beta_fast": 16,
        "beta_slow": 2,
        "truncate": False,
    },
    "yarn-mscale": {
        "factor": 16.0,
        "original_max_position_embeddings": 256,
        "mscale": 0.707,
        "mscale_all_dim": 1.0,
    },
    "yarn-attention-factor": {
        "factor": 2.0,
        "original_max_position_embeddings": 2048,
        "attention_factor": 1.25,
    },
}


@pytest.mark.parametrize("case", list(YARN_CASES), ids=list(YARN_CASES))
@pytest.mark.parametrize("partial", [1.0, 0.25], ids=["full", "partial"])
def test_rope_yarn_matches_transformers(case, partial):
    rope = {"rope_theta": 10000.0, "partial_rotary_factor": partial, **YARN_CASES[case]}
    expected, expected_factor = _hf_rope("yarn", 64, rope)
    scaling = {"rope_type": "yarn", **YARN_CASES[case]}
    ours = rope_inv_freq(int(64 * partial), 10000.0, scaling)
    torch.testing.assert_close(ours, expected, atol=0, rtol=1e-6)
    assert rope_attention_factor(scaling) == pytest.approx(expected_factor, rel=1e-12)
    plain = rope_inv_freq(int(64 * partial), 10000.0)
    assert (ours <= plain * (1 + 1e-6)).all() and (ours < plain).any()  # low frequencies slowed down
    assert rope_attention_factor(scaling) != 1.0


def test_rope_linear_matches_transformers_and_scales_nothing_else():
    expected, factor = _hf_rope("linear", 32, {"rope_theta": 500.0, "factor": 3.0})
    scaling = {"rope_type": "linear", "factor": 3.0}
    torch.testing.assert_close(rope_inv_freq(32, 500.0, scaling), expected, atol=0, rtol=1e-6)
    assert factor == 1.0 and rope_attention_factor(scaling) == 1.0 and rope_attention_factor(None) == 1.0


def test_rotary_tables_carry_the_yarn_attention_factor():
    scaling = {"rope_type": "yarn", **YARN_CASES["yarn"]}
    plain, yarn = RotaryEmbedding(16, 10000.0), RotaryEmbedding(16, 10000.0, scaling)
    x, positions = torch.zeros(1, 3, 16), torch.arange(3)[None]
    cos, sin = yarn(x, positions)
    assert cos[0, 0, 0].item() == pytest.approx(
        rope_attention_factor(scaling)
    )  # cos(0) = 1, times the factor
    assert sin.abs().max() <= rope_attention_factor(scaling)
    torch.testing.assert_close(plain(x, positions)[0][0, 0], torch.ones(16))


def test_partial_rotary_matches_transformers():
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb as hf_apply

    rope = RotaryEmbedding(4, 10000.0)  # a quarter of a 16-wide head rotates
    q, k = torch.randn(2, 3, 5, 16), torch.randn(2, 3, 5, 16)
    cos, sin = rope(q, torch.arange(7, 12)[None].expand(2, 5))
    ours = apply_partial_rotary_pos_emb(q, k, cos, sin)
    theirs = hf_apply(q, k, cos, sin)
    torch.testing.assert_close(ours[0], theirs[0], atol=0, rtol=0)
    torch.testing.assert_close(ours[1], theirs[1], atol=0, rtol=0)
    assert torch.equal(ours[0][..., 4:], q[..., 4:]) and not torch.equal(ours[0][..., :4], q[..., :4])


# --------------------------------------------------------------------------------------------- fused layouts


def _identity_rope(batch: int, length: int, dim: int):
    return torch.ones(batch, length, dim), torch.zeros(batch, length, dim)


def _hf_attention_out(attn: nn.Module, x: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    b, t, _ = x.shape
    mask = torch.full((t, t), float("-inf")).triu(1)[None, None]
    out, _ = attn(x, attention_mask=mask, position_embeddings=_identity_rope(b, t, rotary_dim))
    return out


def test_gpt_neox_query_key_value_is_interleaved_per_head():
    from transformers import GPTNeoXConfig
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXAttention

    config = GPTNeoXConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=1)
    config._attn_implementation = "eager"
    attn = GPTNeoXAttention(config, 0).eval()
    x = torch.randn(2, 6, 32)
    b, t, _ = x.shape
    mask = torch.full((t, t), float("-inf")).triu(1)[None, None]
    q, k, v = split_qkv_per_head(attn.query_key_value(x), head_dim=8)
    assert q.shape == k.shape == v.shape == (2, 4, 6, 8)
    out, _ = mha_eager_attention_forward(attn, q, k, v, mask, scaling=8**-0.5)
    ours = attn.dense(out.reshape(b, t, -1))
    torch.testing.assert_close(ours, _hf_attention_out(attn, x, 2), atol=1e-6, rtol=1e-6)
    # the per-head interleave matters: reading the same weights as [q; k; v] gives another answer
    q2, k2, v2 = split_qkv(attn.query_key_value(x), 4, 4, 8)
    out2, _ = mha_eager_attention_forward(attn, q2, k2, v2, mask, scaling=8**-0.5)
    assert not torch.allclose(attn.dense(out2.reshape(b, t, -1)), ours, atol=1e-3)


def test_phi3_qkv_proj_is_stacked_with_grouped_kv_heads():
    from transformers import Phi3Config
    from transformers.models.phi3.modeling_phi3 import Phi3Attention

    config = Phi3Config(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, pad_token_id=0
    )
    config._attn_implementation = "eager"
    attn = Phi3Attention(config, 0).eval()
    assert attn.qkv_proj.out_features == (4 + 2 * 2) * 8
    x = torch.randn(2, 6, 32)
    b, t, _ = x.shape
    mask = torch.full((t, t), float("-inf")).triu(1)[None, None]
    q, k, v = split_qkv(attn.qkv_proj(x), 4, 2, 8)
    assert q.shape == (2, 4, 6, 8) and k.shape == v.shape == (2, 2, 6, 8)
    out, _ = eager_attention_forward(attn, q, k, v, mask, scaling=8**-0.5)
    ours = attn.o_proj(out.reshape(b, t, -1))
    torch.testing.assert_close(ours, _hf_attention_out(attn, x, 8), atol=1e-6, rtol=1e-6)


# --------------------------------------------------------------------------------------------- families

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}

# transformers config overrides of each parity case (tiny_hf_config's sizes underneath)
NEOX_CASES = {
    "parallel-quarter-rotary": {},
    "sequential-no-bias-yarn-tied": {
        "use_parallel_residual": False,
        "attention_bias": False,
        "rope_parameters": {**YARN, "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        "tie_word_embeddings": True,
    },
}
PHI3_CASES = {
    "gqa": {},
    "partial-rotary-tied": {
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        "tie_word_embeddings": True,
    },
}


@pytest.mark.parametrize("case", list(NEOX_CASES), ids=list(NEOX_CASES))
def test_against_gpt_neox(tmp_path, case):
    from tests._parity import assert_parity, tiny_hf_model

    hf = tiny_hf_model("gpt_neox", **NEOX_CASES[case])
    model = assert_parity(hf, "gpt_neox", tmp_path, checkpoint=True)
    assert type(model).__name__ == "GPTNeoXForCausalLM"
    assert "gpt_neox.layers.0.attention.query_key_value.weight" in model.state_dict()
    assert_trains_like(model, hf)


@pytest.mark.parametrize("case", list(PHI3_CASES), ids=list(PHI3_CASES))
def test_against_phi3(tmp_path, case):
    from tests._parity import assert_parity, tiny_hf_model

    # Phi-3's config defaults its special tokens to ids of its own 32k vocabulary
    hf = tiny_hf_model("phi3", bos_token_id=1, eos_token_id=2, pad_token_id=0, **PHI3_CASES[case])
    model = assert_parity(hf, "phi3", tmp_path, checkpoint=True)
    assert type(model).__name__ == "Phi3ForCausalLM"
    assert "model.layers.0.mlp.gate_up_proj.weight" in model.state_dict()
    assert_trains_like(model, hf)


def assert_trains_like(ours, hf) -> None:
    """A training step with activations recomputed in backward gives transformers' loss and gradients."""
    ids = torch.randint(3, ours.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(5))
    grads = []
    for model in (ours, hf):
        model.train()
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        model.zero_grad()
        loss = model(ids, labels=ids, use_cache=False).loss
        loss.backward()
        grads.append((loss.detach(), {k: p.grad for k, p in model.named_parameters()}))
        model.eval()
    (loss, mine), (their_loss, theirs) = grads
    torch.testing.assert_close(loss, their_loss, atol=1e-5, rtol=1e-5)
    if "embed_out.weight" in mine:  # GPT-NeoX's head: lm_head in transformers' memory, embed_out on disk
        theirs = {
            k.replace("lm_head.", "embed_out.") if k.startswith("lm_head.") else k: g
            for k, g in theirs.items()
        }
    assert mine.keys() == theirs.keys()
    for name, grad in mine.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(
            grad, theirs[name], atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}"
        )


def test_learned_positions_and_head_bias_pass_the_family_checks(tmp_path):
    """No transformers class has this combination: GPT-NeoX with a learned position table instead of
    RoPE and a biased output head. The checks that need no twin: backends agree, the cache equals
    recomputation, packed documents equal each alone."""
    from tests._parity import assert_family_checks, scaffold_model

    model = scaffold_model(
        tmp_path,
        "gpt_neox",
        {**TINY_NEOX, "position_embedding": "learned", "lm_head_bias": True, "partial_rotary_factor": 1.0},
    )
    state = model.state_dict()
    assert state["gpt_neox.embed_positions.weight"].shape == (TINY_NEOX["max_position_embeddings"], 64)
    assert "embed_out.bias" in state and not any("rotary" in k for k in state)
    assert model.get_input_embeddings() is model.gpt_neox.embed_in
    assert model.get_output_embeddings() is model.embed_out
    assert_family_checks(model)
    # the position table matters: permuting it changes the logits
    ids = torch.arange(1, 9)[None]
    with torch.no_grad():
        before = model(ids, use_cache=False).logits
        model.gpt_neox.embed_positions.weight.copy_(model.gpt_neox.embed_positions.weight.flip(0))
        assert not torch.allclose(model(ids, use_cache=False).logits, before, atol=1e-4)


TINY_NEOX = {
    "vocab_size": 300,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 96,
    "max_position_embeddings": 128,
}

BAD_STRUCTURES = {
    "parallel-post-norm": (
        "gpt_neox",
        {"norm_position": "post"},
        {"model.parallel_residual": "needs norm_position = pre; norm_position is 'post'"},
    ),
    "odd-rotary-width": (
        "gpt_neox",
        {"partial_rotary_factor": 0.3},  # head_dim 64 -> int(19.2) = 19 features
        {"model.partial_rotary_factor": "gives a rotary width of 19 (of head width 64)"},
    ),
    "partial-rotary-without-rope": (
        "llama",
        {"position_embedding": "alibi", "partial_rotary_factor": 0.5},
        {"model.partial_rotary_factor": "partial rotary needs position_embedding = rope, not 'alibi'"},
    ),
    "per-head-fused-gqa": (
        "llama",
        {"qkv_layout": "fused_per_head", "num_attention_heads": 4, "num_key_value_heads": 2},
        {"model.qkv_layout": "num_key_value_heads = 2 differs from num_attention_heads = 4"},
    ),
    "fused-plain-mlp": (
        "phi3",
        {"mlp": "plain"},
        {"model.mlp_layout": "fused stores a gated MLP's gate and up projections; mlp is 'plain'"},
    ),
    "bad-values": (
        "phi3",
        {"partial_rotary_factor": 1.5, "qkv_layout": "interleaved"},
        {
            "model.partial_rotary_factor": "must be in (0, 1], got 1.5",
            "model.qkv_layout": "must be one of separate, fused, fused_per_head; got 'interleaved'",
        },
    ),
    "yarn-keys": (
        "phi3",
        {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "beta": 2, "mscale": -1, "truncate": 1}},
        {
            "model.rope_scaling.original_max_position_embeddings": "must be a positive number for yarn, got None",
            "model.rope_scaling.beta": "unknown key for rope_type yarn",
            "model.rope_scaling.mscale": "must be a positive number for yarn, got -1",
            "model.rope_scaling.truncate": "must be true or false, got 1",
        },
    ),
}


@pytest.mark.parametrize("case", list(BAD_STRUCTURES), ids=list(BAD_STRUCTURES))
def test_impossible_structures_are_named_before_anything_is_written(tmp_path, case):
    from scaffold.errors import ManifestError
    from scaffold.project.new import create_project

    family, model, expected = BAD_STRUCTURES[case]
    with pytest.raises(ManifestError) as err:
        create_project("bad", family, projects_dir=tmp_path, overrides={"model": model})
    found = dict(err.value.problems)
    for key, message in expected.items():
        assert key in found and message in found[key], (key, found)
    assert err.value.exit_code == 2
    assert not (tmp_path / "bad").exists()


# preset -> transformers' own config for it: the parameter counts must agree exactly, on the meta device
REAL_PRESETS = {
    ("gpt_neox", "pythia_160m"): (
        "gpt_neox",
        {
            "vocab_size": 50304,
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "max_position_embeddings": 2048,
            "rotary_pct": 0.25,
        },
        162_322_944,
    ),
    ("phi3", "phi3_mini_4k"): (
        "phi3",
        {
            "vocab_size": 32064,
            "hidden_size": 3072,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "intermediate_size": 8192,
            "max_position_embeddings": 4096,
            "pad_token_id": 32000,
        },
        3_821_079_552,
    ),
}


@pytest.mark.parametrize("family_preset", list(REAL_PRESETS), ids=[f"{f}-{p}" for f, p in REAL_PRESETS])
def test_real_preset_parameter_count_on_meta(tmp_path, family_preset):
    from transformers import AutoConfig, AutoModelForCausalLM

    from scaffold.build import build
    from scaffold.project import load_project
    from scaffold.project.new import create_project

    family, preset = family_preset
    model_type, hf_kwargs, published = REAL_PRESETS[family_preset]
    # a project's vocabulary follows its (byte) tokenizer unless given: give the published one
    vocab = {"model": {"vocab_size": hf_kwargs["vocab_size"]}}
    project = create_project("real", family, projects_dir=tmp_path, preset=preset, overrides=vocab)
    out = build(load_project(project)).output_dir
    config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    with torch.device("meta"):
        ours = AutoModelForCausalLM.from_config(config, trust_remote_code=True)
        theirs = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **hf_kwargs))
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters()) == published
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    their_shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    if family == "gpt_neox":  # transformers 5 calls the head lm_head in memory, embed_out on disk
        their_shapes["embed_out.weight"] = their_shapes.pop("lm_head.weight")
    assert shapes == their_shapes


def test_import_reads_gpt_neox_configs_old_and_new(tmp_path):
    """The manifest table of a GPT-NeoX config as transformers 5 writes it, and as Pythia's files spell it
    (rotary_pct, rotary_emb_base), reproduces the structure: the same [model] either way."""
    import json

    from scaffold.project.importer import model_table
    from scaffold.spec.blueprints import load
    from tests._parity import tiny_hf_config

    hf = tiny_hf_config("gpt_neox", use_parallel_residual=False, rotary_pct=0.5, rotary_emb_base=500.0)
    hf.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "rope_parameters" in saved and "rotary_pct" not in saved
    legacy = {k: v for k, v in saved.items() if k != "rope_parameters"}
    legacy.update(rotary_pct=0.5, rotary_emb_base=500.0)
    for config in (saved, legacy):
        table = model_table(config, load("gpt_neox"))
        assert table["parallel_residual"] is False and table["partial_rotary_factor"] == 0.5
        assert table["rope_theta"] == 500.0 and table.get("rope_scaling") is None
        assert "num_key_value_heads" not in table  # GPT-NeoX has no grouped-query attention
        assert {k: table[k] for k in ("hidden_size", "num_attention_heads", "intermediate_size")} == {
            "hidden_size": 64,
            "num_attention_heads": 4,
            "intermediate_size": 96,
        }
