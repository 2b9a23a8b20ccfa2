"""Parity helpers: a generated model against transformers' own class of the same family.

In the spirit of litgpt's ``test_against_*`` tests: build a tiny transformers model (random weights,
fp32, eager), render, build and load the scaffold model of the same shapes through the Auto classes,
load the transformers state dict into it with ``strict=True``, and compare logits with each attention
backend, with padding, with the KV cache (greedy generation), and packed sequences against documents
run alone. See docs/architecture.md, section 7.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# Tiny shapes for every family: 2 layers, width 64, 4 query heads over 2 KV heads, a vocabulary that
# holds the byte tokenizer (262 tokens).
TINY_HF: dict[str, Any] = {
    "vocab_size": 300,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 96,
    "max_position_embeddings": 128,
}


def tiny_hf_config(model_type: str, **overrides: Any):
    """transformers' own config class of ``model_type`` with the tiny shapes, plus ``overrides``."""
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **{**TINY_HF, **overrides})


def tiny_hf_model(model_type: str, seed: int = 0, **overrides: Any):
    """transformers' causal-LM class of ``model_type``: fp32, eager, seeded, every 1-D parameter (norm
    weights, biases) moved off its initial value so that a misplaced norm or bias shows in the logits."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_hf_config(model_type, **overrides)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.empty_like(p).uniform_(-0.5, 0.5))
    return model


def model_table(hf_config, blueprint: str) -> dict[str, Any]:
    """The manifest ``[model]`` table reproducing ``hf_config`` (the mapping ``scaffold import`` uses)."""
    from scaffold.project.importer import model_table as table
    from scaffold.spec.blueprints import load

    return table(hf_config.to_dict(), load(blueprint))


def scaffold_model(tmp_path: Path, blueprint: str, model: dict[str, Any], attn_implementation: str = "eager"):
    """``scaffold new`` + ``scaffold build`` into ``tmp_path``, then the model directory loaded through
    the Auto classes in fp32, as a user would."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from scaffold.build import build
    from scaffold.project import load_project
    from scaffold.project.new import create_project

    project = create_project(
        "parity", blueprint, projects_dir=tmp_path / "projects", overrides={"model": model}
    )
    out = build(load_project(project)).output_dir
    config = AutoConfig.from_pretrained(out, trust_remote_code=True, attn_implementation=attn_implementation)
    return AutoModelForCausalLM.from_config(config, trust_remote_code=True, dtype=torch.float32).eval()


def _ids(vocab: int, shape: tuple[int, int], seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, shape, generator=g)


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, atol: float, what: str) -> None:
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=1e-5, msg=lambda m: f"{what}: {m}")


def assert_parity(
    hf_model,
    blueprint: str,
    tmp_path: Path,
    *,
    model: dict[str, Any] | None = None,
    packed: bool = True,
    atol: float = 1e-5,
    backends: tuple[str, ...] = ("eager", "sdpa"),
    checkpoint: bool = False,
):
    """Every parity check of a family; returns the scaffold model for family-specific extra checks.

    With ``checkpoint``, the weights come from the folder transformers' ``save_pretrained`` writes,
    through scaffold's strict loader: the names a checkpoint has on disk, which for some families
    differ from those in memory (GPT-NeoX's output head is ``embed_out`` on disk, ``lm_head`` in memory).
    """
    table = model if model is not None else model_table(hf_model.config, blueprint)
    ours = scaffold_model(tmp_path, blueprint, table)
    if checkpoint:
        from scaffold.build.checkpoint import load_checkpoint

        hf_model.save_pretrained(tmp_path / "transformers")
        load_checkpoint(tmp_path / "transformers", ours)
    else:
        result = ours.load_state_dict(hf_model.state_dict(), strict=True)
        assert not result.missing_keys and not result.unexpected_keys
    vocab = ours.config.vocab_size
    ids = _ids(vocab, (2, 24))
    with torch.no_grad():
        for backend in backends:
            ours.set_attn_implementation(backend)
            hf_model.set_attn_implementation(backend)
            assert_close(ours(ids).logits, hf_model(ids).logits, atol, f"logits ({backend})")
            # left padding: the first row's first 5 positions are padding
            mask = torch.ones_like(ids)
            mask[0, :5] = 0
            mine, theirs = ours(ids, attention_mask=mask).logits, hf_model(ids, attention_mask=mask).logits
            assert_close(mine[mask.bool()], theirs[mask.bool()], atol, f"logits with padding ({backend})")
        ours.set_attn_implementation("eager")
        hf_model.set_attn_implementation("eager")
    prompt = _ids(vocab, (1, 6), seed=2)
    # eos_token_id: a token no model emits, so that both run the full length whatever EOS their configs name
    greedy = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0, "eos_token_id": vocab}
    with torch.no_grad():
        cached = ours.generate(prompt, **greedy)
        assert torch.equal(cached, hf_model.generate(prompt, **greedy)), (
            "greedy generation differs from transformers'"
        )
        assert torch.equal(cached, ours.generate(prompt, use_cache=False, **greedy)), (
            "the cache changes generation"
        )
    if packed:
        assert_packed_equals_alone(ours, atol)
    return ours


def assert_packed_equals_alone(model, atol: float = 1e-5) -> None:
    """Two documents packed in one row (restarting position_ids, no attention mask) give the logits of
    each document run alone: attention never crosses a document."""
    vocab = model.config.vocab_size
    a, b = _ids(vocab, (1, 7), seed=3), _ids(vocab, (1, 9), seed=4)
    row = torch.cat([a, b], dim=1)
    positions = torch.cat([torch.arange(7), torch.arange(9)])[None]
    with torch.no_grad():  # no cache: transformers reads packing from position_ids only without one
        together = model(row, position_ids=positions, use_cache=False).logits
        assert_close(together[:, :7], model(a, use_cache=False).logits, atol, "packed, first document")
        assert_close(together[:, 7:], model(b, use_cache=False).logits, atol, "packed, second document")


def assert_family_checks(model, *, packed: bool = True, atol: float = 1e-5) -> None:
    """The checks that need no transformers twin (novel combinations): eager and sdpa agree, with and
    without padding; generation with the cache equals recomputation; packed equals alone."""
    vocab = model.config.vocab_size
    ids = _ids(vocab, (2, 24))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    with torch.no_grad():
        outs = {}
        for backend in ("eager", "sdpa"):
            model.set_attn_implementation(backend)
            outs[backend] = (model(ids).logits, model(ids, attention_mask=mask).logits[mask.bool()])
        model.set_attn_implementation("eager")
    assert_close(outs["sdpa"][0], outs["eager"][0], atol, "sdpa against eager")
    assert_close(outs["sdpa"][1], outs["eager"][1], atol, "sdpa against eager, with padding")
    prompt = _ids(vocab, (1, 6), seed=2)
    # eos_token_id: a token no model emits, so that both run the full length whatever EOS their configs name
    greedy = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0, "eos_token_id": vocab}
    with torch.no_grad():
        assert torch.equal(
            model.generate(prompt, **greedy), model.generate(prompt, use_cache=False, **greedy)
        )
    if packed:
        assert_packed_equals_alone(model, atol)
