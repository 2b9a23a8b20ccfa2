"""Shared fixtures: tiny projects made with the real pipeline (Copier render, build, Auto classes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent

# Tiny llama shapes: 2 layers, width 64, GQA 4/2, vocabulary just above the byte tokenizer's 262.
TINY_LLAMA = {
    "vocab_size": 300,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "max_position_embeddings": 256,
}


def make_project(
    tmp_path: Path, name: str = "tiny", blueprint: str = "llama", model: dict | None = None, **sections
):
    """Create a project with the real `scaffold new` code path; returns its folder."""
    from scaffold.render import create_project

    overrides = {"model": dict(TINY_LLAMA if model is None else model), **sections}
    return create_project(name, blueprint, projects_dir=tmp_path / "projects", overrides=overrides)


def build_project(project: Path, **kwargs) -> Path:
    from scaffold.build import build, load_project

    return build(load_project(project), **kwargs).output_dir


def load_model(model_dir: Path, **kwargs):
    """The built model through the Auto classes, as a user would load it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True, **kwargs)
    return AutoModelForCausalLM.from_config(config, trust_remote_code=True).eval()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A built tiny llama model directory, shared by the tests that only read it."""
    tmp = tmp_path_factory.mktemp("tiny_llama")
    return build_project(make_project(tmp))
