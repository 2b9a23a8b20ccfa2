"""Mistral, Qwen2, Qwen3 and OLMo 2 reproduced: each against transformers' own class of the family."""

from __future__ import annotations

import pytest
import torch

from tests._parity import assert_family_checks, assert_parity, model_table, scaffold_model, tiny_hf_model

# --------------------------------------------------------------------------------------------- parity
# A tiny transformers model of each family (random weights, fp32), its state dict loaded strictly into
# the model scaffold generates, logits compared with eager and sdpa, with the KV cache, with padding and
# with packed sequences (tests/_parity.py).

SLIDING = {"sliding_window": 6}  # shorter than the test sequences, so a wrong window shows
MIXED = ["full_attention", "sliding_attention"]  # per layer, as transformers' layer_types

CASES = {
    "mistral-sliding-head-dim": ("mistral", {**SLIDING, "head_dim": 24}),
    "qwen2-qkv-bias-layer-types-tied": (
        "qwen2",
        {"use_sliding_window": True, **SLIDING, "layer_types": MIXED, "tie_word_embeddings": True},
    ),
    "qwen3-head-qk-norm-layer-types": (
        "qwen3",
        {"head_dim": 32, "use_sliding_window": True, **SLIDING, "layer_types": MIXED},
    ),
    "olmo2-full-qk-norm-gqa": ("olmo2", {}),
}


@pytest.mark.parametrize("case", CASES)
def test_against_transformers(tmp_path, case):
    family, overrides = CASES[case]
    hf = tiny_hf_model(family, **overrides)
    ours = assert_parity(hf, family, tmp_path)
    assert type(ours).__name__ == type(hf).__name__  # transformers' class names, scaffold's code
    assert type(ours).__module__ != type(hf).__module__


def test_layer_types_choose_each_layers_window(tmp_path):
    """Each layer's attention follows layer_types; absent, every layer slides once a window is set."""
    hf = tiny_hf_model("qwen3", use_sliding_window=True, sliding_window=4, layer_types=MIXED)
    ours = scaffold_model(tmp_path / "mixed", "qwen3", model_table(hf.config, "qwen3"))
    assert [layer.self_attn.sliding_window for layer in ours.model.layers] == [None, 4]
    assert ours.config.layer_types == MIXED
    table = {k: v for k, v in model_table(hf.config, "qwen3").items() if k != "layer_types"}
    ours = scaffold_model(tmp_path / "all", "qwen3", table)
    assert ours.config.layer_types == ["sliding_attention"] * 2
    assert [layer.self_attn.sliding_window for layer in ours.model.layers] == [4, 4]


def test_the_new_keys_combine_on_another_family(tmp_path):
    """qk_norm, qkv_bias and post_sublayer are structure, not families: set on llama with LayerNorm,
    they build, load, and pass the checks that need no transformers twin."""
    from tests.conftest import TINY_LLAMA

    model = {
        **TINY_LLAMA,
        "norm_type": "layernorm",
        "qk_norm": "head",
        "qkv_bias": True,
        "norm_position": "post_sublayer",
        "sliding_window": 5,
    }
    ours = scaffold_model(tmp_path, "llama", model)
    attn = ours.model.layers[0].self_attn
    assert isinstance(attn.q_norm, torch.nn.LayerNorm) and attn.q_norm.normalized_shape == (16,)
    assert attn.q_proj.bias is not None and attn.o_proj.bias is None
    assert not hasattr(ours.model.layers[0], "input_layernorm")
    assert_family_checks(ours)
    source = (tmp_path / "projects" / "parity" / "modeling_llama.py").read_text()
    assert "config.qk_norm" not in source and "config.norm_position" not in source  # resolved when generated


# --------------------------------------------------------------------------------------------- presets

# One real preset per family: its parameter count equals transformers' own class at the same config
# (counted on the meta device, transformers 5.24) and the published figure.
REAL_PRESETS = {
    ("mistral", "7b"): 7_241_732_096,  # Mistral 7B v0.1: 7.24B
    ("qwen2", "0.5b"): 494_032_768,  # Qwen2.5-0.5B: 0.49B
    ("qwen3", "0.6b"): 596_049_920,  # Qwen3-0.6B: 0.6B
    ("olmo2", "1b"): 1_484_916_736,  # OLMo 2 1B: 1.48B
}


@pytest.mark.parametrize(("family", "preset"), REAL_PRESETS, ids=[f"{f}-{p}" for f, p in REAL_PRESETS])
def test_real_preset_parameter_count_on_meta(tmp_path, family, preset):
    from transformers import AutoConfig, AutoModelForCausalLM

    from scaffold.build import build
    from scaffold.project import load_project
    from scaffold.project.new import create_project
    from scaffold.spec.blueprints import load as load_blueprint

    # a project's vocabulary follows its (byte) tokenizer unless given: give the preset's, as published
    vocab = load_blueprint(family).preset(preset)["model"]["vocab_size"]
    project = create_project(
        f"{family}_{preset}",
        family,
        projects_dir=tmp_path,
        preset=preset,
        overrides={"model": {"vocab_size": vocab}},
    )
    config = AutoConfig.from_pretrained(build(load_project(project)).output_dir, trust_remote_code=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=True)
    assert sum(p.numel() for p in model.parameters()) == REAL_PRESETS[(family, preset)]


# --------------------------------------------------------------------------------------------- manifest


@pytest.mark.parametrize(
    ("blueprint", "sets", "key", "message"),
    [
        (
            "qwen2",
            {"layer_types": ["full_attention"] * 3},
            "model.layer_types",
            "3 entries for num_hidden_layers = 4",
        ),
        (
            "qwen2",
            {"layer_types": ["sliding_attention"] * 4},
            "model.layer_types",
            "sliding_window is not set",
        ),
        ("qwen3", {"layer_types": ["full_attention", "local"] * 2}, "model.layer_types", "'local'"),
        ("qwen3", {"qk_norm": "both"}, "model.qk_norm", "none, head, full"),
        ("llama", {"position_embedding": "alibi", "sliding_window": 8}, "model.sliding_window", "ALiBi"),
        ("mistral", {"layer_types": ["full_attention"] * 4}, "model.layer_types", "unknown key"),
        ("single_head", {"qk_norm": "head"}, "model.qk_norm", "no separate queries and keys"),
    ],
    ids=[
        "length",
        "sliding-without-window",
        "bad-type",
        "bad-qk-norm",
        "alibi-window",
        "mistral-has-no-layer-types",
        "single-head-qk-norm",
    ],
)
def test_manifest_names_the_bad_key(tmp_path, blueprint, sets, key, message):
    from scaffold.errors import ManifestError
    from scaffold.project.new import create_project

    with pytest.raises(ManifestError) as err:
        create_project("bad", blueprint, projects_dir=tmp_path, overrides={"model": sets})
    assert key in str(err.value) and message in str(err.value)
    assert not (tmp_path / "bad").exists()
