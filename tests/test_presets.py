"""Every llama preset renders, builds and constructs; counts match the published parameter counts."""

from __future__ import annotations

import pytest
import torch

from scaffold.project.new import create_project
from tests.conftest import build_project

# preset -> published parameter count (model-specs.md) and the tolerance we hold it to
LLAMA_PRESETS = {
    "4m": (4.4e6, 0.02),
    "117m": (119e6, 0.02),
    "llama2_7b": (6.74e9, 0.005),
    "llama3.2_1b": (1.236e9, 0.005),
}


@pytest.fixture(scope="module")
def preset_dirs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("presets")
    from scaffold.spec.blueprints import load

    bp = load("llama")
    # a project's vocabulary follows its (byte) tokenizer unless given: give the preset's, as published
    vocab = {
        preset: {"model": {"vocab_size": bp.preset(preset)["model"]["vocab_size"]}}
        for preset in LLAMA_PRESETS
    }
    return {
        preset: build_project(
            create_project(
                f"llama_{preset}", "llama", projects_dir=tmp, preset=preset, overrides=vocab[preset]
            )
        )
        for preset in LLAMA_PRESETS
    }


@pytest.mark.parametrize("preset", LLAMA_PRESETS)
def test_llama_preset_parameter_count_on_meta(preset_dirs, preset):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(preset_dirs[preset], trust_remote_code=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=True)
    count = sum(p.numel() for p in model.parameters())
    expected, tolerance = LLAMA_PRESETS[preset]
    assert abs(count - expected) / expected < tolerance, f"{preset}: {count:,} vs {expected:,.0f}"


def test_llama3_preset_is_tied_and_scaled(preset_dirs):
    import json

    config = json.loads((preset_dirs["llama3.2_1b"] / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    assert config["rope_parameters"] == {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }


def test_117m_trains_a_step_on_cpu(preset_dirs):
    from scaffold.run.smoke import TestOptions, run

    report = run(
        preset_dirs["117m"],
        TestOptions(device="cpu", steps=1, batch_size=1, sequence_length=16),
        log=lambda _: None,
    )
    assert 118e6 < report.parameters < 120e6
    assert report.losses[0] == pytest.approx(torch.log(torch.tensor(8000.0)).item(), rel=0.2)
