"""`scaffold import`: a local transformers model becomes a project whose build gives the same logits;
configs the parts cannot express are refused before anything is written."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from scaffold.cli import cli
from tests._parity import tiny_hf_model


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_import_build_and_load_give_the_original_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    hf = tiny_hf_model("llama", tie_word_embeddings=True, rope_theta=50000.0)
    source = tmp_path / "my-llama"
    hf.save_pretrained(source)
    r = invoke("import", source, "--projects-dir", tmp_path / "projects")
    assert r.exit_code == 0, r.output
    project = tmp_path / "projects" / "my-llama"
    assert f"next: scaffold build {project} --load-from-checkpoint {source} --save-weights" in r.output
    manifest = (project / "scaffold.toml").read_text()
    assert 'blueprint = "llama"' in manifest and "rope_theta = 50000.0" in manifest
    assert "tie_word_embeddings = true" in manifest and "num_key_value_heads = 2" in manifest
    r = invoke("build", project, "--load-from-checkpoint", source, "--save-weights")
    assert r.exit_code == 0, r.output
    ours = AutoModelForCausalLM.from_pretrained(project / "model", trust_remote_code=True).eval()
    ids = torch.randint(3, 300, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            {"model_type": "jamba"},
            "config.json: model_type: unsupported model_type 'jamba'; scaffold reproduces: ",
        ),
        ({"num_local_experts": 8}, "config.json: num_local_experts: mixture of experts is not something"),
        ({"kv_lora_rank": 64}, "config.json: kv_lora_rank: multi-head latent attention is not something"),
        (
            {"vision_config": {"hidden_size": 8}},
            "config.json: vision_config: a vision tower is not something",
        ),
        (
            {"hidden_act": "swish_beta"},
            "config.json: hidden_act: cannot be reproduced: must be one of silu, relu",
        ),
    ],
    ids=["unknown-model-type", "moe", "mla", "vision", "activation"],
)
def test_import_refuses_what_the_parts_cannot_express(tmp_path, edit, message):
    from tests._parity import tiny_hf_config

    config = {**tiny_hf_config("llama").to_dict(), **edit}
    file = tmp_path / "config.json"
    file.write_text(json.dumps(config))
    r = invoke("import", file, "--name", "p", "--projects-dir", tmp_path / "projects")
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert not (tmp_path / "projects").exists()


def test_import_without_a_config_is_a_usage_error(tmp_path):
    r = invoke("import", tmp_path, "--projects-dir", tmp_path / "projects")
    assert r.exit_code == 2 and "no config.json here" in r.output
