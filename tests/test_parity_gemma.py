"""Gemma and Gemma 2 reproduced: a tiny transformers model of each (random weights, fp32), its state
dict loaded strictly into the model scaffold generates, logits compared with eager and sdpa (Gemma 2:
eager; sdpa cannot soft-cap scores, so it is offered only without the cap), with the KV cache, with
padding and with packed sequences (tests/_parity.py); plus what is Gemma's own: the embedding scale
cast to bfloat16 as Gemma casts it, zero-initialised unit-offset norms, the soft caps actually biting,
the alternating sliding window, and the real presets' parameter counts on the meta device."""

from __future__ import annotations

import pytest
import torch

from tests._parity import assert_parity, scaffold_model, tiny_hf_model

# Gemma 2's defaults cap scores at 50 and logits at 30, which tiny random weights never reach: small
# caps make a missing or misplaced cap show. The window (4) is shorter than the test sequences and the
# generation, so a wrong per-layer window shows too.
GEMMA2 = {
    "head_dim": 16,
    "query_pre_attn_scalar": 24,  # != head_dim: scores scaled by 24^-0.5, not 16^-0.5
    "attn_logit_softcapping": 2.0,
    "final_logit_softcapping": 3.0,
    "sliding_window": 4,
}

CASES = {
    "gemma-mqa-untied": ("gemma", {"num_key_value_heads": 1, "head_dim": 32, "tie_word_embeddings": False}),
    "gemma2-capped-alternating": ("gemma2", GEMMA2),
    # no caps, and layer_types given (full first) rather than Gemma 2's default alternation
    "gemma2-uncapped-full-first": (
        "gemma2",
        {
            **GEMMA2,
            "attn_logit_softcapping": None,
            "final_logit_softcapping": None,
            "layer_types": ["full_attention", "sliding_attention"],
        },
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_against_transformers(tmp_path, case):
    family, overrides = CASES[case]
    hf = tiny_hf_model(family, **overrides)
    if family == "gemma2":
        with torch.no_grad():  # scores of several units, so that the attention cap (2) bends them
            for layer in hf.model.layers:
                layer.self_attn.q_proj.weight.mul_(20)
                layer.self_attn.k_proj.weight.mul_(20)
    capped = family == "gemma2" and hf.config.attn_logit_softcapping is not None
    # transformers' Gemma 2 runs on eager only (sdpa cannot soft-cap); ours offers sdpa when uncapped
    ours = assert_parity(
        hf, family, tmp_path, backends=("eager",) if family == "gemma2" else ("eager", "sdpa")
    )
    # transformers' class names, scaffold's code; a Gemma 2 without its soft caps is not transformers' Gemma 2
    # (its config.json has no caps, and transformers' class would apply its own): names no library owns
    uncapped = family == "gemma2" and None in (
        hf.config.attn_logit_softcapping,
        hf.config.final_logit_softcapping,
    )
    assert type(ours).__name__ == ("Scaffold" if uncapped else "") + type(hf).__name__
    assert type(ours).__module__ != type(hf).__module__
    assert ours.model.embed_tokens.embed_scale.item() == pytest.approx(hf.config.hidden_size**0.5)
    if family == "gemma2" and not capped:
        ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(5))
        mask = torch.ones_like(ids)
        mask[0, :5] = 0
        ours.set_attn_implementation("sdpa")
        with torch.no_grad():
            for kwargs in ({}, {"attention_mask": mask}):
                keep = mask.bool() if kwargs else torch.ones_like(mask, dtype=torch.bool)
                torch.testing.assert_close(
                    ours(ids, **kwargs).logits[keep], hf(ids, **kwargs).logits[keep], atol=1e-5, rtol=1e-5
                )
    if capped:  # the caps bite: lifting either changes the logits well beyond the tolerance
        ids = torch.randint(3, 300, (1, 24), generator=torch.Generator().manual_seed(6))
        with torch.no_grad():
            logits = ours(ids).logits
            assert logits.abs().max() <= hf.config.final_logit_softcapping
            for cap in ("attn_logit_softcapping", "final_logit_softcapping"):
                setattr(ours.config, cap, 1e6)
                assert (ours(ids).logits - logits).abs().max() > 1e-3, cap
                setattr(ours.config, cap, getattr(hf.config, cap))


def test_gemma_scales_embeddings_by_a_bfloat16_rounded_sqrt_hidden(tmp_path):
    # sqrt(48) = 6.928 is 6.9375 in bfloat16: Gemma multiplies by the rounded value
    hf = tiny_hf_model("gemma", hidden_size=48, head_dim=16).to(torch.bfloat16)
    ours = scaffold_model(tmp_path, "gemma", _model_table(hf)).to(torch.bfloat16)
    ours.load_state_dict(hf.state_dict(), strict=True)
    ids = torch.tensor([[3, 17, 99, 42]])
    got = ours.get_input_embeddings()(ids)
    assert torch.equal(got, hf.get_input_embeddings()(ids))
    unrounded = (ours.get_input_embeddings().weight[ids].float() * 48**0.5).to(torch.bfloat16)
    assert not torch.equal(got, unrounded)


def test_fresh_gemma2_norms_start_at_the_identity_scale(tmp_path):
    hf = tiny_hf_model("gemma2", **GEMMA2)
    ours = scaffold_model(tmp_path, "gemma2", _model_table(hf))  # initialised by scaffold, not loaded
    norms = {n: p for n, p in ours.named_parameters() if "norm" in n}
    # four per layer (the sandwich) and the final one, all zero: (1 + w) = 1
    assert len(norms) == 4 * hf.config.num_hidden_layers + 1
    assert all(torch.equal(p, torch.zeros_like(p)) for p in norms.values())
    logits = ours(torch.randint(0, 128, (1, 9))).logits
    assert logits.abs().max() <= GEMMA2["final_logit_softcapping"]


def _model_table(hf):
    from tests._parity import model_table

    return model_table(hf.config, hf.config.model_type)


# --------------------------------------------------------------------------------------------- presets

# The real presets' parameter counts equal transformers' own classes at the same configs (counted on
# the meta device with transformers 5.24) and the published figures.
REAL_PRESETS = {
    ("gemma", "2b"): 2_506_172_416,  # Gemma 2B: 2.51B
    ("gemma", "7b"): 8_537_680_896,  # Gemma 7B: 8.54B
    ("gemma2", "2b"): 2_614_341_888,  # Gemma 2 2B: 2.61B
    ("gemma2", "9b"): 9_241_705_984,  # Gemma 2 9B: 9.24B
    ("gemma2", "27b"): 27_227_128_320,  # Gemma 2 27B: 27.2B
}


@pytest.mark.parametrize(("family", "preset"), REAL_PRESETS, ids=[f"{f}-{p}" for f, p in REAL_PRESETS])
def test_real_preset_parameter_count_on_meta(tmp_path, family, preset):
    from transformers import AutoConfig, AutoModelForCausalLM

    from scaffold.build import build
    from scaffold.project import load_project
    from scaffold.project.new import create_project
    from scaffold.spec.blueprints import load

    # a project's vocabulary follows its (byte) tokenizer unless given: give the preset's, as published
    vocab = {"model": {"vocab_size": load(family).preset(preset)["model"]["vocab_size"]}}
    project = create_project(
        f"{family}_{preset}", family, projects_dir=tmp_path, preset=preset, overrides=vocab
    )
    config = AutoConfig.from_pretrained(build(load_project(project)).output_dir, trust_remote_code=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=True)
    assert sum(p.numel() for p in model.parameters()) == REAL_PRESETS[(family, preset)]
    if family == "gemma2":  # sliding window on every other layer, starting with the first
        assert config.layer_types[:4] == ["sliding_attention", "full_attention"] * 2
        assert len(config.layer_types) == config.num_hidden_layers


# --------------------------------------------------------------------------------------------- manifest


@pytest.mark.parametrize(
    ("blueprint", "sets", "key", "message"),
    [
        ("gemma2", {"test": {"attn_implementation": "sdpa"}}, "test.attn_implementation", "soft-cap"),
        ("gemma2", {"model": {"attn_logit_softcapping": -1.0}}, "model.attn_logit_softcapping", "positive"),
        ("gemma2", {"model": {"sliding_window_pattern": 0}}, "model.sliding_window_pattern", "positive"),
        ("gemma", {"model": {"norm_position": "sandwiched"}}, "model.norm_position", "sandwich"),
        (
            "deepone",
            {"model": {"attn_logit_softcapping": 30.0}},
            "model.attn_logit_softcapping",
            "ALiBi",
        ),
        ("llama", {"model": {"sliding_window_pattern": 2}}, "model.sliding_window_pattern", "unknown key"),
    ],
    ids=[
        "sdpa-softcap",
        "negative-cap",
        "zero-pattern",
        "bad-norm-position",
        "alibi-softcap",
        "llama-pattern",
    ],
)
def test_manifest_names_the_bad_key(tmp_path, blueprint, sets, key, message):
    from scaffold.errors import ManifestError
    from scaffold.project.new import create_project

    with pytest.raises(ManifestError) as err:
        create_project("bad", blueprint, projects_dir=tmp_path, overrides=sets)
    assert key in str(err.value) and message in str(err.value)
    assert not (tmp_path / "bad").exists()


def test_gemma2_without_soft_caps_renders_no_cap_code_and_offers_sdpa(tmp_path):
    from scaffold.project.new import create_project

    off = {"attn_logit_softcapping": None, "final_logit_softcapping": None}
    project = create_project("nocap", "gemma2", projects_dir=tmp_path, overrides={"model": off})
    code = (project / "modeling_gemma2.py").read_text().split('"""', 2)[2]  # the code, not its docstring
    # no cap code: neither cap is read, and no soft-capping function is pasted (the chunked loss takes an
    # optional cap, unused here)
    assert "logit_softcapping" not in code and "def logit_softcap" not in code
    assert "_supports_sdpa = True" in code
    capped = create_project("capped", "gemma2", projects_dir=tmp_path)
    code = (capped / "modeling_gemma2.py").read_text()
    assert "_supports_sdpa = False" in code and "logit_softcap(logits" in code
