"""Parity of the generated families with transformers' own classes (tests/_parity.py), and structural
keys overriding a family's structure."""

from __future__ import annotations

import re

import pytest
import torch

from tests._parity import assert_family_checks, assert_parity, scaffold_model, tiny_hf_model


@pytest.mark.parametrize(
    "overrides",
    [{}, {"tie_word_embeddings": True, "num_key_value_heads": 1}, {"attention_bias": True, "mlp_bias": True}],
    ids=["gqa", "mqa-tied", "biases"],
)
def test_against_llama(tmp_path, overrides):
    assert_parity(tiny_hf_model("llama", **overrides), "llama", tmp_path)


# -- structural keys: any family, any combination the parts express --------------------------------

TINY = {
    "vocab_size": 300,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 128,
}
COMBINATIONS = {
    "layernorm-plain-gelu-alibi": {
        "norm_type": "layernorm",
        "mlp": "plain",
        "hidden_act": "gelu",
        "mlp_bias": True,
        "position_embedding": "alibi",
    },
    "post-sinusoidal-biases": {
        "norm_position": "post",
        "position_embedding": "sinusoidal",
        "attention_bias": True,
    },
    "deepnorm-nopos-xavier-nobias-ln": {
        "norm_position": "deepnorm",
        "position_embedding": "none",
        "init": "xavier",
        "norm_type": "layernorm",
        "norm_bias": False,
        "embedding_scale": "sqrt_hidden",
    },
}


@pytest.mark.parametrize("structure", COMBINATIONS.values(), ids=COMBINATIONS.keys())
def test_llama_with_another_structure_passes_the_family_checks(tmp_path, structure):
    from scaffold.spec import schema

    model = scaffold_model(tmp_path, "llama", {**TINY, **structure})
    assert_family_checks(model)
    modeling = next((tmp_path / "projects" / "parity" / "model").glob("modeling_*.py")).read_text()
    for key in schema.STRUCTURE:  # resolved when the code was generated, never read at run time
        assert not re.search(rf"config\.{key}\b", modeling), key
    assert ("RMSNorm" in modeling) == (structure.get("norm_type", "rmsnorm") == "rmsnorm")
    assert ("RotaryEmbedding" in modeling) == (structure.get("position_embedding", "rope") == "rope")


def test_a_structural_override_on_build_renders_fresh_code(tmp_path):
    """`build --set model.norm_type=layernorm`: the model directory holds LayerNorm code, never the
    project's RMSNorm code; the project's own files are untouched."""
    from click.testing import CliRunner

    from scaffold.cli import cli
    from scaffold.project.new import create_project

    project = create_project("p", "llama", projects_dir=tmp_path / "projects", overrides={"model": TINY})
    before = (project / "modeling_llama.py").read_text()
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["build", str(project), "--output-dir", str(out), "--set", "model.norm_type=layernorm"]
    )
    assert result.exit_code == 0, result.output
    built = (out / "modeling_llama.py").read_text()
    assert "nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)" in built and "RMSNorm" not in built
    assert "layer_norm_eps: float = 1e-5" in (out / "configuration_llama.py").read_text()
    assert (project / "modeling_llama.py").read_text() == before
    from transformers import AutoConfig, AutoModelForCausalLM

    from tests._parity import assert_family_checks as checks

    config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert config.norm_type == "layernorm" and config.layer_norm_eps == 1e-5
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=True).eval()
    assert type(model.model.norm).__name__ == "LayerNorm"
    checks(model, packed=False)
    # the next build without the override is stale (its structure differs), as for any other key
    result = CliRunner().invoke(cli, ["build", str(project), "--output-dir", str(out)])
    assert result.exit_code == 2 and "stale build" in result.output


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            {"model": {"norm_type": "batchnorm"}},
            "model.norm_type: must be one of rmsnorm, layernorm, rmsnorm_unit_offset; got 'batchnorm'",
        ),
        (
            {"model": {"attention": "single_head"}},
            "model.attention: single_head attention takes its positions from ALiBi; position_embedding is 'rope'",
        ),
        (
            {"model": {"position_embedding": "alibi"}, "test": {"attn_implementation": "flash_attention_2"}},
            "test.attn_implementation: flash_attention_2 takes no ALiBi slopes",
        ),
        ({"model": {"layer_norm_eps": 1e-5}}, "model.layer_norm_eps: unknown key for this blueprint"),
    ],
    ids=["bad-value", "single-head-needs-alibi", "alibi-flash", "eps-of-a-norm-not-chosen"],
)
def test_impossible_structures_are_named(tmp_path, sets, message):
    from scaffold.errors import ManifestError
    from scaffold.project.new import create_project

    with pytest.raises(ManifestError) as err:
        create_project(
            "p", "llama", projects_dir=tmp_path, overrides={**sets, "model": {**TINY, **sets["model"]}}
        )
    assert message in str(err.value)
    assert not (tmp_path / "p").exists()


def test_a_structure_brings_the_keys_it_needs(tmp_path):
    """layernorm on a family that never mentions layer_norm_eps: accepted, and written with its default."""
    from scaffold.project.new import create_project
    from scaffold.spec import manifest

    project = create_project(
        "p",
        "llama",
        projects_dir=tmp_path,
        overrides={"model": {**TINY, "norm_type": "layernorm", "layer_norm_eps": 1e-6}},
    )
    model = manifest.load(project / "scaffold.toml")["model"]
    assert model["norm_type"] == "layernorm" and model["layer_norm_eps"] == 1e-6


def test_the_decoder_blueprint_lists_every_structural_key(tmp_path):
    from scaffold.project.new import create_project
    from scaffold.spec import manifest, schema

    project = create_project("mine", "decoder", projects_dir=tmp_path)
    model = manifest.load(project / "scaffold.toml")["model"]
    # the number-valued structural keys are off while absent (TOML has no null): the rest are all shown
    shown = set(schema.STRUCTURE) - set(schema.NUMERIC_STRUCTURE)
    assert shown <= set(model), "a structural key the decoder blueprint does not show"
    assert not set(schema.NUMERIC_STRUCTURE) & set(model)
    assert "rope_theta" in model and "layer_norm_eps" not in model  # numbers follow the structure


def test_auto_classes_never_fall_back_to_transformers_own_llama(tmp_path):
    """The config class is scaffold's own name: an Auto class missing from auto_map fails with
    transformers' clear message instead of quietly building transformers' Llama from our config."""
    from transformers import AutoConfig, AutoModelForQuestionAnswering

    model = scaffold_model(tmp_path, "llama", TINY)
    out = tmp_path / "projects" / "parity" / "model"
    config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert type(config).__name__ == "ScaffoldLlamaConfig" and type(model).__name__ == "LlamaForCausalLM"
    with pytest.raises(ValueError, match="Unrecognized configuration class"):
        AutoModelForQuestionAnswering.from_config(config, trust_remote_code=True)  # not in auto_map


# -- the residual stream of each layout, read off the generated decoder layer ------------------------

# Each layout's decoder layer in formulas over its input x, the attention's output a and the MLP's
# output m (n_in, n_pa, n_pf, n_ff: input, post-attention, post-feedforward and pre-feedforward norms).
# The pre, parallel, sandwich and post_sublayer layouts are also compared whole with transformers'
# Llama, GPT-NeoX, Gemma 2 and OLMo 2; post and deepnorm have no transformers twin.
LAYOUTS = {
    "pre": {"norm_position": "pre"},
    "parallel": {"norm_position": "pre", "parallel_residual": True},
    "post": {"norm_position": "post"},
    "sandwich": {"norm_position": "sandwich"},
    "post_sublayer": {"norm_position": "post_sublayer"},
    "deepnorm": {"norm_position": "deepnorm"},
}


def _expected_stream(layout: str, layer, x, a, m, layers: int):
    """(attention input, MLP input, layer output) as the layout's formula has them."""
    n_in = getattr(layer, "input_layernorm", None)
    n_pa = layer.post_attention_layernorm
    n_pf = getattr(layer, "post_feedforward_layernorm", None)
    n_ff = getattr(layer, "pre_feedforward_layernorm", None)
    if layout == "pre":
        h = x + a
        return n_in(x), n_pa(h), h + m
    if layout == "parallel":
        return n_in(x), n_pa(x), x + a + m
    if layout == "post":
        h = n_pa(x + a)
        return x, h, n_pf(h + m)
    if layout == "sandwich":
        h = x + n_pa(a)
        return n_in(x), n_ff(h), h + n_pf(m)
    if layout == "post_sublayer":
        h = x + n_pa(a)
        return x, h, h + n_pf(m)
    alpha = (2 * layers) ** 0.25  # DeepNet's residual scale for a decoder-only model
    h = n_pa(alpha * x + a)
    return x, h, n_pf(alpha * h + m)


@pytest.mark.parametrize("layout", list(LAYOUTS), ids=list(LAYOUTS))
def test_decoder_layer_writes_its_layouts_residual_stream(tmp_path, layout):
    """Every norm placement: what the attention and the MLP read and what the layer returns are the
    layout's formula, with hidden dropout off in eval and acting on the sublayers' outputs in training."""
    model = scaffold_model(tmp_path, "decoder", {**TINY, "hidden_dropout": 0.5, **LAYOUTS[layout]})
    with torch.no_grad():  # norms off their identity init, so that a misplaced norm shows
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(torch.empty_like(p).uniform_(-0.5, 0.5))
    layer = model.model.layers[1]
    seen = {}
    layer.register_forward_pre_hook(lambda mod, args: seen.update(x=args[0]))
    layer.register_forward_hook(lambda mod, args, out: seen.update(out=out))
    layer.self_attn.register_forward_hook(lambda mod, args, out: seen.update(attn_in=args[0], a=out))
    layer.mlp.register_forward_hook(lambda mod, args, out: seen.update(mlp_in=args[0], m=out))
    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.eval()(ids)
        attn_in, mlp_in, out = _expected_stream(
            layout, layer, seen["x"], seen["a"], seen["m"], TINY["num_hidden_layers"]
        )
        torch.testing.assert_close(seen["attn_in"], attn_in)
        torch.testing.assert_close(seen["mlp_in"], mlp_in)
        torch.testing.assert_close(seen["out"], out)
        torch.manual_seed(0)
        model.train()(ids)
        *_, out = _expected_stream(layout, layer, seen["x"], seen["a"], seen["m"], TINY["num_hidden_layers"])
        assert not torch.allclose(seen["out"], out, atol=1e-3), "hidden dropout does not act in training"
