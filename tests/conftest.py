"""Shared fixtures: tiny projects made with the real pipeline (Copier render, build, Auto classes)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def cpu_flex_problem() -> str | None:
    """Why torch's compiled flex_attention cannot be trusted on this machine's CPU, or None.

    torch 2.13's CPU flex kernel gives wrong values at some short sequence lengths, differently from
    run to run (transformers' own LlamaForCausalLM with flex_attention too), so a test comparing our
    flex path with eager on CPU would fail for torch's reason, not ours. Probed with torch alone:
    compiled flex_attention against scaled_dot_product_attention, causal, at a few lengths. On CUDA
    the flex tests run (tests/gpu_check.py, bench/gpu.py).
    """
    import torch

    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return "this torch has no flex_attention"
    attend = torch.compile(flex_attention)
    for length in (8, 24, 40, 56):
        torch.manual_seed(length)
        q, k, v = (torch.randn(2, 4, length, 16) for _ in range(3))
        mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, length, length, device="cpu")
        try:
            with torch.no_grad():
                out = attend(q, k, v, block_mask=mask)
        except Exception as err:  # torch's CPU inductor cannot always compile the kernel
            return f"torch {torch.__version__} cannot compile flex_attention on CPU: {type(err).__name__}"
        want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        diff = (out - want).abs().max().item()
        if not diff <= 1e-4:
            return (
                f"torch {torch.__version__}'s compiled flex_attention is wrong on CPU at {length} tokens "
                f"(max difference {diff:.3g} from sdpa; transformers' own models too)"
            )
    return None


def skip_unreliable_flex(backend: str, device: str = "cpu") -> None:
    """Skip a flex_attention test on CPU when :func:`cpu_flex_problem` finds torch's kernel wrong."""
    if backend == "flex_attention" and str(device).startswith("cpu"):
        problem = cpu_flex_problem()
        if problem:
            pytest.skip(problem)


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
    from scaffold.project.new import create_project

    overrides = {"model": dict(TINY_LLAMA if model is None else model), **sections}
    return create_project(name, blueprint, projects_dir=tmp_path / "projects", overrides=overrides)


def build_project(project: Path, **kwargs) -> Path:
    from scaffold.build import build
    from scaffold.project import load_project

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
