"""SmolLM3, Gemma 3 (text) and Granite reproduced: a tiny transformers model of each (random weights,
fp32), its state dict loaded strictly into the model scaffold generates, logits compared with eager and
sdpa, with padding, with the KV cache (greedy generation) and with packed sequences (tests/_parity.py);
plus what each adds: NoPE layers that really skip RoPE, a RoPE base per layer type that really differs,
Granite's four scalings each biting, ``scaffold import`` of each family, and the real presets'
parameter counts equal to transformers' own classes on the meta device."""

from __future__ import annotations

import json

import pytest
import torch

from tests._parity import assert_parity, model_table, scaffold_model, tiny_hf_model

# 4 layers, so that SmolLM3's every-fourth NoPE layer (layer 3) and Gemma 3's full layer exist
# (SmolLM3's own token ids lie beyond the tiny vocabulary)
IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
SMOLLM3 = {"num_hidden_layers": 4, **IDS}
# Gemma 3 with a short window (4 < the test sequences) and a 2:1 pattern in 3 layers; the local base is
# far from the global one and the global RoPE scaled, so a layer turned with the wrong RoPE shows
GEMMA3 = {
    "num_hidden_layers": 3,
    "head_dim": 16,
    "query_pre_attn_scalar": 24,
    "sliding_window": 4,
    "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
    "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1_000_000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
    },
}
GRANITE = {
    "embedding_multiplier": 3.0,
    "residual_multiplier": 0.5,
    "attention_multiplier": 0.3,
    "logits_scaling": 4.0,
    "tie_word_embeddings": True,
}

CASES = {
    "smollm3-nope-every-4th": ("smollm3", SMOLLM3),
    "smollm3-nope-given": ("smollm3", {"num_hidden_layers": 3, "no_rope_layers": [0, 1, 0], **IDS}),
    "gemma3-local-global-rope": ("gemma3_text", GEMMA3),
    "granite-scalings": ("granite", GRANITE),
}
FAMILY = {"smollm3": "smollm3", "gemma3_text": "gemma3", "granite": "granite"}


@pytest.mark.parametrize("case", CASES)
def test_against_transformers(tmp_path, case):
    model_type, overrides = CASES[case]
    family = FAMILY[model_type]
    hf = tiny_hf_model(model_type, **overrides)
    ours = assert_parity(hf, family, tmp_path)
    assert type(ours).__name__ == type(hf).__name__  # transformers' class names, scaffold's code
    assert type(ours).__module__ != type(hf).__module__


def _logits(model, seed=7):
    ids = torch.randint(3, 300, (1, 16), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids).logits


def test_smollm3_nope_layers_skip_rope(tmp_path):
    """Turning RoPE on in the NoPE layer changes the logits: the flag is read, per layer."""
    hf = tiny_hf_model("smollm3", **SMOLLM3)
    assert hf.config.no_rope_layers == [1, 1, 1, 0]
    ours = scaffold_model(tmp_path, "smollm3", model_table(hf.config, "smollm3"))
    ours.load_state_dict(hf.state_dict(), strict=True)
    assert [layer.self_attn.use_rope for layer in ours.model.layers] == [True, True, True, False]
    before = _logits(ours)
    ours.model.layers[3].self_attn.use_rope = True
    assert (_logits(ours) - before).abs().max() > 1e-3


def test_gemma3_layer_types_turn_with_their_own_rope(tmp_path):
    hf = tiny_hf_model("gemma3_text", **GEMMA3)
    ours = scaffold_model(tmp_path, "gemma3", model_table(hf.config, "gemma3"))
    ours.load_state_dict(hf.state_dict(), strict=True)
    assert ours.config.rope_parameters["sliding_attention"]["rope_theta"] == 100.0
    rope = ours.model.rotary_emb
    assert not torch.equal(rope["full_attention"].inv_freq, rope["sliding_attention"].inv_freq)
    before = _logits(ours)
    rope["sliding_attention"].inv_freq.copy_(rope["full_attention"].inv_freq)  # one RoPE for all
    assert (_logits(ours) - before).abs().max() > 1e-3


@pytest.mark.parametrize(
    "key", ["embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling"]
)
def test_granite_scalings_bite(tmp_path, key):
    hf = tiny_hf_model("granite", **GRANITE)
    ours = scaffold_model(tmp_path, "granite", model_table(hf.config, "granite"))
    ours.load_state_dict(hf.state_dict(), strict=True)
    before = _logits(ours)
    setattr(ours.config, key, 1.0)
    for layer in ours.model.layers:  # the layers copy two of them at construction
        layer.residual_multiplier = ours.config.residual_multiplier
        layer.self_attn.scaling = (
            ours.config.attention_multiplier if key == "attention_multiplier" else layer.self_attn.scaling
        )
    assert (_logits(ours) - before).abs().max() > 1e-3, key


# --------------------------------------------------------------------------------------------- import


@pytest.mark.parametrize("case", CASES)
def test_import_maps_the_family_both_ways(tmp_path, case):
    """A transformers config.json -> ``scaffold import`` -> a project of the family whose built
    config.json transformers' own class reads back to the same network."""
    from transformers import AutoConfig

    from scaffold.build import build
    from scaffold.project import load_project
    from scaffold.project.importer import import_project

    model_type, overrides = CASES[case]
    hf = tiny_hf_model(model_type, **overrides)
    source = tmp_path / "hf"
    hf.config.save_pretrained(source)
    project = import_project(source, name="imported", projects_dir=tmp_path / "projects")
    text = (project / "scaffold.toml").read_text()
    assert f'blueprint = "{FAMILY[model_type]}"' in text
    out = build(load_project(project)).output_dir
    ours = json.loads((out / "config.json").read_text())
    back = AutoConfig.for_model(
        model_type, **{k: v for k, v in ours.items() if k not in ("model_type", "auto_map", "architectures")}
    )
    theirs = hf.config
    for key in (
        "no_rope_layers",
        "layer_types",
        "rope_parameters",
        "sliding_window",
        "embedding_multiplier",
        "residual_multiplier",
        "attention_multiplier",
        "logits_scaling",
        "num_hidden_layers",
    ):
        if hasattr(theirs, key):
            assert getattr(back, key) == getattr(theirs, key), key


# --------------------------------------------------------------------------------------------- presets

# The real presets' parameter counts, equal to transformers' own classes at the same configs (counted on
# the meta device with transformers 5.25) and to the published figures.
REAL_PRESETS = {
    ("smollm3", "3b"): 3_075_098_624,  # SmolLM3-3B: 3.08B
    ("gemma3", "1b"): 999_885_952,  # Gemma 3 1B: 1.00B
    ("gemma3", "4b"): 3_880_263_168,  # Gemma 3 4B's language model: 3.88B
    ("granite", "2b"): 2_533_531_648,  # Granite 3.0 2B: 2.53B
}
MODEL_TYPES = {"smollm3": "smollm3", "gemma3": "gemma3_text", "granite": "granite"}


@pytest.mark.parametrize(("family", "preset"), REAL_PRESETS, ids=[f"{f}-{p}" for f, p in REAL_PRESETS])
def test_real_preset_parameter_count_on_meta(tmp_path, family, preset):
    from transformers import AutoConfig, AutoModelForCausalLM

    from scaffold.build import build
    from scaffold.project import load_project
    from scaffold.project.new import create_project
    from scaffold.spec.blueprints import load as load_blueprint

    model = load_blueprint(family).preset(preset)["model"]
    project = create_project(
        f"{family}_{preset}",
        family,
        projects_dir=tmp_path,
        preset=preset,
        overrides={"model": {"vocab_size": model["vocab_size"]}},
    )
    out = build(load_project(project)).output_dir
    config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    with torch.device("meta"):
        ours = AutoModelForCausalLM.from_config(config, trust_remote_code=True)
    # transformers' own class at the config.json scaffold wrote (its keys are transformers' names)
    data = json.loads((out / "config.json").read_text())
    data = {k: v for k, v in data.items() if k not in ("model_type", "auto_map", "architectures")}
    with torch.device("meta"):
        theirs = AutoModelForCausalLM.from_config(AutoConfig.for_model(MODEL_TYPES[family], **data))
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters())
    assert count == REAL_PRESETS[(family, preset)]
