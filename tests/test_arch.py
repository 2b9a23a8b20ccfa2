"""The resolved architecture: what it derives (per-layer attention, RoPE, norms), that every consumer
reads it (plans, diagram, config mapping), and that the plans name exactly the modules a model has."""

from __future__ import annotations

import fnmatch
from dataclasses import FrozenInstanceError

import pytest

from scaffold import arch
from scaffold.arch.hf_config import from_hf, to_hf
from scaffold.codegen.diagram import diagram_structure, text_diagram
from scaffold.codegen.plans import base_model_tp_plan, head_tp_plan, layout_for, replicated_linears
from scaffold.spec import schema
from scaffold.spec.blueprints import load as load_blueprint
from tests._families import ALL, tiny
from tests._parity import scaffold_model


def _resolved(family: str, **model):
    """A family's architecture with its default preset, ``model`` on top (as a manifest resolves)."""
    bp = load_blueprint(family)
    m = bp.resolve(bp.preset(None), {"model": model} if model else None, {"project": {"name": "x"}})
    return arch.for_blueprint(bp, m["model"])


# (family, [model] overrides, the layer types expected)
LAYER_TYPES = [
    ("llama", {"num_hidden_layers": 3}, ["full_attention"] * 3),
    ("mistral", {"num_hidden_layers": 3, "sliding_window": 16}, ["sliding_attention"] * 3),
    ("mistral", {"num_hidden_layers": 2, "sliding_window": None}, ["full_attention"] * 2),
    # Gemma 2: every sliding_window_pattern-th layer attends fully, the others slide
    (
        "gemma2",
        {"num_hidden_layers": 4, "sliding_window": 16},
        ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    ),
    (
        "gemma2",
        {"num_hidden_layers": 3, "sliding_window": 16, "sliding_window_pattern": 3},
        ["sliding_attention", "sliding_attention", "full_attention"],
    ),
    (
        "qwen3",
        {"num_hidden_layers": 2, "sliding_window": 8, "layer_types": ["full_attention", "sliding_attention"]},
        ["full_attention", "sliding_attention"],
    ),
]


@pytest.mark.parametrize(
    ("family", "model", "expected"), LAYER_TYPES, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(LAYER_TYPES)]
)
def test_each_layer_gets_its_attention_type(family, model, expected):
    a = _resolved(family, **model)
    assert a.layer_types == expected
    window = model.get("sliding_window")
    assert [layer.sliding_window for layer in a.layers] == [
        window if kind == arch.SLIDING else None for kind in expected
    ]


def test_the_diagram_draws_the_layers_the_config_derives():
    """Gemma 2's card once said every layer slides while its config alternated: both read one derivation."""
    a = _resolved("gemma2", num_hidden_layers=4, sliding_window=16)
    s = diagram_structure(a)
    assert s["layer_types"] == a.layer_types
    text = text_diagram(s)
    assert "sliding" in text and "full" in text


def test_the_architecture_is_frozen_and_typed():
    a = _resolved("phi3")
    with pytest.raises(FrozenInstanceError):
        a.init = "xavier"  # type: ignore[misc]
    with pytest.raises(TypeError):
        a.structure["norm_type"] = "layernorm"  # type: ignore[index]
    assert a.attention.qkv_layout == "fused" and a.mlp.fused and a.mlp.gated
    assert a.norm.eps_key == "rms_norm_eps" and a.norm.final
    assert set(a.structure) == set(schema.STRUCTURE)


def test_structural_defaults_exist_once():
    """A [model] table that sets nothing resolves to the schema's defaults (Llama's)."""
    a = arch.resolve({"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4})
    assert dict(a.structure) == schema.STRUCTURE
    assert a.attention.head_dim == 8 and a.attention.num_kv_heads == 4
    assert a.rope is not None and a.rope.parameters() == {"rope_type": "default", "rope_theta": 10000.0}


ROPES = [
    ({"rope_theta": 5e5}, {"rope_type": "default", "rope_theta": 5e5}),
    (
        {"rope_theta": 1e4, "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
        {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0},
    ),
    (
        {"rope_theta": 1e4, "partial_rotary_factor": 0.25},
        {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25},
    ),
    (
        {
            "rope_theta": 1e4,
            "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
        },
        {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "original_max_position_embeddings": 32},
    ),
]


@pytest.mark.parametrize(
    ("model", "parameters"), ROPES, ids=[p["rope_type"] + str(i) for i, (_, p) in enumerate(ROPES)]
)
def test_rope_has_one_representation_both_ways(model, parameters):
    """The manifest's RoPE keys -> transformers 5's rope_parameters -> the same manifest keys."""
    a = arch.resolve(model)
    hf = to_hf(a, model)
    assert hf["rope_parameters"] == parameters
    assert not {"rope_theta", "rope_scaling", "partial_rotary_factor"} & set(hf)
    back = from_hf(hf)
    assert back["rope_theta"] == model["rope_theta"]
    assert back["rope_scaling"] == model.get("rope_scaling")
    assert back["partial_rotary_factor"] == model.get("partial_rotary_factor", 1.0)


def test_import_renames_a_familys_own_spellings():
    out = from_hf(
        {"rotary_pct": 0.25, "rotary_emb_base": 1e4, "use_parallel_residual": True},
        {
            "rotary_pct": "partial_rotary_factor",
            "rotary_emb_base": "rope_theta",
            "use_parallel_residual": "parallel_residual",
        },
    )
    assert out["partial_rotary_factor"] == 0.25 and out["rope_theta"] == 1e4 and out["parallel_residual"]


def test_cross_checks_name_the_key():
    problems = dict(arch.problems({"attention": "single_head", "position_embedding": "rope"}))
    assert "model.attention" in problems
    problems = dict(arch.problems({"qkv_layout": "fused", "qk_norm": "head"}))
    assert "model.qk_norm" in problems


# -- the plans name exactly the modules the model has -----------------------------------------------


def _patterns_match(plan: dict[str, str], names: list[str]) -> list[str]:
    return [pattern for pattern in plan if not any(fnmatch.fnmatchcase(n, pattern) for n in names)]


@pytest.mark.parametrize("family", ALL)
def test_tensor_parallel_plan_names_modules_the_model_has(family, tmp_path):
    """Every pattern of the base model's and the head's tensor-parallel plans matches a module of the
    built model (GPT-NeoX's fused query_key_value and Phi-3's qkv_proj / gate_up_proj included), and
    every linear layer of the decoder layers is in the plan."""
    from torch import nn

    bp = load_blueprint(family)
    model = tiny(family)  # only the sizes the family has
    a = arch.for_blueprint(
        bp, bp.resolve(bp.preset(None), {"model": model}, {"project": {"name": "x"}})["model"]
    )
    built = scaffold_model(tmp_path, family, model)
    layout = layout_for(a)
    base = built.get_submodule(bp.names.get("model", "model"))
    base_names = [n for n, _ in base.named_modules()]
    assert _patterns_match(base_model_tp_plan(layout), base_names) == []
    assert _patterns_match(head_tp_plan(layout), [n for n, _ in built.named_modules()]) == []
    linears = {
        n.split(".")[-1]
        for n, m in base.named_modules()
        if isinstance(m, nn.Linear) and n.startswith(f"{layout.layers}.")
    }
    planned = {pattern.split(".")[-1] for pattern in base_model_tp_plan(layout)} | replicated_linears(layout)
    assert linears <= planned, f"linear layers without a plan: {sorted(linears - planned)}"
