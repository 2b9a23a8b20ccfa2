"""Shared helpers of test_construct, test_checkpoint and test_flags: tiny llama projects, real builds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from click.testing import CliRunner

from scaffold.build import build
from scaffold.cli import cli
from scaffold.project import load_project
from scaffold.project.new import create_project

REPO = Path(__file__).resolve().parents[1]
TINY: dict[str, Any] = {
    "vocab_size": 300,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}
TEST = {"device": "cpu", "steps": 1, "batch_size": 2, "sequence_length": 16}


def make_project(projects: Path, name: str, blueprint: str | Path = "llama", **model: Any) -> Path:
    """A tiny llama project (TINY sizes, ``model`` on top) created with scaffold new."""
    return create_project(
        name, blueprint, projects_dir=projects, overrides={"model": {**TINY, **model}, "test": dict(TEST)}
    )


def build_model_dir(project: Path, out: Path | None = None, **model: Any) -> Path:
    """Build ``project`` (with [model] overrides) into ``out`` (default PROJECT/model)."""
    overrides = {"model": model} if model else None
    return build(load_project(project, overrides), out).output_dir


def invoke(*args: Any, env: dict[str, str] | None = None):
    """Run the CLI in this process."""
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


def config_of(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "config.json").read_text(encoding="utf-8"))


def load_model(model_dir: Path, **kwargs: Any):
    """The model of a built directory through the Auto classes, as a user would."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, trust_remote_code=True, **kwargs)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to show nothing on disk changed); run records
    (``runs/``), which every `scaffold test` adds, left out."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "runs" not in p.relative_to(folder).parts
    }


def logits(model, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=g)
    model.eval()
    with torch.no_grad():
        return model(ids).logits
