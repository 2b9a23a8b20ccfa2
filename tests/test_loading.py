"""A built model directory loads with stock transformers in a process where scaffold cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_LLAMA, build_project, make_project

LOADCHECK = Path(__file__).with_name("loadcheck.py")


def run_loadcheck(model_dir: Path, work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(work / "modules"))
    proc = subprocess.run(
        [sys.executable, str(LOADCHECK), str(model_dir), str(work / "saved")],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_model_dir_loads_without_scaffold(tmp_path, tied):
    project = make_project(tmp_path, model={**TINY_LLAMA, "tie_word_embeddings": tied})
    facts = run_loadcheck(build_project(project), tmp_path)
    assert facts["class"] == "LlamaForCausalLM"
    assert facts["tied"] is tied and facts["loaded_tied"] is tied
    assert facts["tokenizer_len"] == 262
    assert facts["chat"] == "<|im_start|>user\nhi<|im_end|>\n"
    assert facts["generated"] == 12


def test_loadcheck_really_blocks_scaffold(tmp_path):
    """The check above is only worth something if scaffold is unimportable in that process."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['scaffold'] = None; import scaffold"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "import of scaffold halted" in proc.stderr
    assert 'sys.modules["scaffold"] = None' in LOADCHECK.read_text()


def test_saved_tied_checkpoint_stores_the_embedding_once(tmp_path):
    from safetensors import safe_open

    project = make_project(tmp_path, model={**TINY_LLAMA, "tie_word_embeddings": True})
    model_dir = build_project(project, save_weights=True)
    with safe_open(model_dir / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys


def test_a_rebuilt_model_with_edited_code_loads_fresh_in_the_same_process(tmp_path):
    """A notebook's loop: load, edit the modeling file, rebuild the same folder, load again. transformers
    keeps the model class it registered for the configuration class the first time; the rebuilt
    directory's configuration file carries the modeling file's sha256, so the new code is loaded."""
    import torch
    from click.testing import CliRunner
    from transformers import AutoModelForCausalLM

    from scaffold.cli import cli

    project = make_project(tmp_path)
    model_dir = build_project(project, save_weights=True)
    ids = torch.tensor([[5, 6, 7]])
    first = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True)
    assert first(ids).logits.abs().sum() > 0
    modeling = project / "modeling_llama.py"
    line = "logits = head(hidden[:, keep, :])"
    assert line in modeling.read_text()
    modeling.write_text(modeling.read_text().replace(line, "logits = 0 * head(hidden[:, keep, :])"))
    build_project(project, save_weights=True, force=True)
    second = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True)
    assert torch.equal(second(ids).logits, torch.zeros(1, 3, 300)), "the old model class was loaded"
    stamp = (model_dir / "configuration_llama.py").read_text().splitlines()
    assert any(s.startswith("# built with modeling_llama.py sha256 ") for s in stamp)
    result = CliRunner().invoke(cli, ["verify", str(model_dir)])
    assert result.exit_code == 0 and result.output.startswith("OK "), result.output
