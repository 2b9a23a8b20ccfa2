"""The architecture diagrams: each family's structure drawn, one structural key changing one place,
and the parameter breakdown adding up to the model's parameters."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from scaffold.codegen.diagram import (
    mermaid,
    parameter_breakdown,
    project_structure,
    structure_of,
    text_diagram,
)
from scaffold.spec import schema
from scaffold.spec.blueprints import load as load_blueprint
from tests.conftest import ROOT, TINY_LLAMA, make_project

LLAMA = load_blueprint("llama").structure
# what a drawing shows of the structure: every structural key, each layer's attention, the window
STRUCTURE_KEYS = (*schema.STRUCTURE, "layer_types", "sliding_window")

# What a reader must see in each shipped family's drawing (Mermaid and text alike).
FAMILY_FEATURES = {
    "llama": [
        "RMSNorm",
        "RoPE on q, k",
        "4 query heads, 4 kv heads",
        "down_proj(silu(gate_proj(x)) * up_proj(x))",
    ],
    "causal_lm": [
        "LayerNorm",
        "sinusoidal positions",
        "* sqrt(hidden_size)",
        "down_proj(relu(up_proj(x))) + bias",
    ],
    "deepone": ["alpha", "ALiBi, per-head slopes", "down_proj(relu(gate_proj(x)) * up_proj(x))"],
    "single_head": ["qk_proj, v_proj: 1 head", "ALiBi, one slope, trainable", "tied to embed_tokens"],
}
FAMILY_ABSENT = {
    "llama": ["LayerNorm", "ALiBi", "sqrt(hidden_size)", "tied"],
    "causal_lm": ["RMSNorm", "RoPE", "ALiBi", "gate_proj"],
    "deepone": ["LayerNorm", "RoPE", "sqrt(hidden_size)"],
    "single_head": ["LayerNorm", "RoPE", "o_proj"],
}
# Edges of the layer subgraph that say where the norms sit.
NORM_EDGES = {
    "llama": "x_in --> norm_attn",  # pre-norm: the norm before attention
    "causal_lm": "add_attn --> norm_attn",  # post-norm: the norm after the residual sum
    "deepone": "add_attn --> norm_attn",
    "single_head": "x_in --> norm_attn",
}


def _manifest(family: str) -> dict:
    import tomllib

    with open(ROOT / "projects" / f"{family}_4m" / "scaffold.toml", "rb") as f:
        return tomllib.load(f)


@pytest.mark.parametrize("family", sorted(FAMILY_FEATURES))
def test_each_family_is_drawn_with_its_structure(family):
    s = project_structure(_manifest(family))
    chart, text = mermaid(s), text_diagram(s)
    assert chart.startswith("flowchart TB\n")
    for feature in FAMILY_FEATURES[family]:
        assert feature in chart, feature
        assert feature in text, feature
    assert NORM_EDGES[family] in chart
    for feature in FAMILY_ABSENT[family]:
        assert feature not in chart and feature not in text, feature
    layers = s["num_hidden_layers"]
    assert f"layers 0-{layers - 1}: {layers} x decoder layer, full causal attention" in chart
    assert ("final_norm[" in chart) == (family != "causal_lm")  # post-norm blocks end in a norm already


def _subgraph_of_each_line(chart: str) -> list[tuple[str, str]]:
    """(subgraph, line) for every line of a chart; '' outside any subgraph."""
    where, out = "", []
    for line in chart.splitlines():
        if line.strip().startswith("subgraph "):
            where = line.split()[1].split("[")[0]
        out.append((where, line))
        if line.strip() == "end":
            where = ""
    return out


def _changed(a: str, b: str) -> list[tuple[str, str]]:
    """The (subgraph, line) pairs that differ between two charts, from either side."""
    la, lb = _subgraph_of_each_line(a), _subgraph_of_each_line(b)
    sm = difflib.SequenceMatcher(a=[x[1] for x in la], b=[x[1] for x in lb], autojunk=False)
    changed = []
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op != "equal":
            changed += la[i1:i2] + lb[j1:j2]
    return changed


# (key, new value, the subgraph where the change must land, text the new drawing must have,
#  the text diagram's rows that may change)
ONE_KEY_CHANGES = [
    ("qk_norm", "head", {"attention"}, "RMSNorm on q, k (per head)", {"attn"}),
    ("position_embedding", "alibi", {"attention"}, "[ALiBi, per-head slopes]", {"attn"}),
    ("partial_rotary_factor", 0.5, {"attention"}, "RoPE on q, k on 0.5 of each head", {"attn"}),
    ("attn_logit_softcapping", 50.0, {"attention"}, "50 tanh((q k^T / sqrt(head_dim)) / 50)", {"attn"}),
    ("qkv_bias", True, {"attention"}, "q_proj, k_proj, v_proj + bias", {"attn"}),
    ("mlp", "plain", {"layer"}, "MLP: down_proj(silu(up_proj(x)))", {"mlp"}),
    ("hidden_act", "gelu", {"layer"}, "gelu(gate_proj(x))", {"mlp"}),
    ("norm_position", "sandwich", {"layer"}, "post_norm_attn", {"layer"}),
    ("norm_position", "post_sublayer", {"layer"}, "attn --> post_norm_attn", {"layer"}),
    ("parallel_residual", True, {"layer"}, "parallel residual", {"layer"}),
    ("final_logit_softcapping", 30.0, {"stack"}, "logits = 30 tanh(logits / 30)", {"stack"}),
    ("embedding_scale", "sqrt_hidden", {"stack"}, "* sqrt(hidden_size)", {"stack"}),
    ("position_embedding", "learned", {"stack", "attention"}, "+ learned positions", {"stack", "attn"}),
    ("lm_head_bias", True, {"stack"}, "lm_head + bias", {"stack"}),
    (
        "layer_types",
        ["sliding_attention", "full_attention"],
        {"stack"},
        "layer 1: 1 x decoder layer, full causal",
        {"layers"},
    ),
]


@pytest.mark.parametrize(
    ("key", "value", "where", "shows", "rows"),
    ONE_KEY_CHANGES,
    ids=[f"{c[0]}={c[1]}" if not isinstance(c[1], list) else c[0] for c in ONE_KEY_CHANGES],
)
def test_one_structural_key_changes_one_place(key, value, where, shows, rows):
    """Two manifests differing in one structural key: the diagrams differ there and nowhere else."""
    # ALiBi and single-head attention cannot slide (their layers are all full): no window to compare
    windowless = (key, value) in (("position_embedding", "alibi"), ("attention", "single_head"))
    model = {**TINY_LLAMA, **({} if windowless else {"sliding_window": 64})}
    before = structure_of(model, LLAMA)
    after = structure_of({**model, key: value}, LLAMA)
    assert {k for k in STRUCTURE_KEYS if before[k] != after[k]} == {key}
    a, b = mermaid(before), mermaid(after)
    changed = _changed(a, b)
    assert changed, "the diagram does not show the change"
    assert {sub for sub, _ in changed} <= where, changed
    assert shows in b and shows not in a
    ta, tb = text_diagram(before).splitlines(), text_diagram(after).splitlines()
    label = ""
    changed_rows = set()
    for line in difflib.ndiff(ta, tb):
        if line.startswith("? "):
            continue
        text = line[2:]
        if text[:1] != " ":  # a labelled row starts a new label; continuation lines keep it
            label = text.split()[0]
        if line[:1] in "+-":
            changed_rows.add(label)
    assert changed_rows and changed_rows <= rows, changed_rows


def test_a_key_the_manifest_sets_wins_over_the_family():
    deepone = load_blueprint("deepone").structure
    s = structure_of({"norm_type": "layernorm", "num_hidden_layers": 2}, deepone)
    assert s["norm_type"] == "layernorm" and s["norm_position"] == "deepnorm"
    assert "LayerNorm(alpha x + attn(x))" in text_diagram(s)


def test_parameter_breakdown_adds_up(tiny_llama_dir):
    import torch
    from transformers import AutoConfig

    from scaffold.build.construct import construct

    config = AutoConfig.from_pretrained(tiny_llama_dir, trust_remote_code=True)
    model = construct(config, device=torch.device("meta"))
    b = parameter_breakdown(list(model.named_parameters()))
    d, h, kv, hd, ff, v = (
        TINY_LLAMA[k]
        for k in (
            "hidden_size",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "intermediate_size",
            "vocab_size",
        )
    )
    assert len(b["layers"]) == 2
    for layer in b["layers"]:
        assert layer["attention"] == d * h * hd * 2 + d * kv * hd * 2  # q, o and k, v
        assert layer["mlp"] == 3 * d * ff
        assert layer["norms"] == 2 * d
        assert layer["embedding"] == layer["head"] == layer["other"] == 0
    total = b["total"]
    assert total["embedding"] == v * d and total["head"] == v * d  # untied
    assert total["norms"] == 2 * 2 * d + d  # two per layer and the final norm
    assert sum(total.values()) == sum(p.numel() for p in model.parameters())


def _mermaid_of(readme: Path) -> str:
    text = readme.read_text(encoding="utf-8")
    start = text.index("```mermaid\n") + len("```mermaid\n")
    return text[start : text.index("```", start)]


def test_model_cards_of_two_projects_differ_where_their_structure_does(tmp_path):
    """Projects one key apart (a sliding window: every layer's attention type; the MLP kind): their model
    cards' diagrams differ in that node only; a build override redraws the built card."""
    from scaffold.build import model_card
    from scaffold.project import load_project

    full = make_project(tmp_path, "full")
    sliding = make_project(tmp_path, "sliding", model={**TINY_LLAMA, "sliding_window": 32})
    a, b = _mermaid_of(full / "README.md"), _mermaid_of(sliding / "README.md")
    assert a == mermaid(project_structure(load_project(full).manifest))
    changed = _changed(a, b)
    assert {sub for sub, _ in changed} == {"stack"}
    assert [line for _, line in changed if "layers0" in line and "-->" in line] == [
        '    embed --> layers0["layers 0-1: 2 x decoder layer, full causal attention"]',
        '    embed --> layers0["layers 0-1: 2 x decoder layer, sliding-window attention (window 32)"]',
    ]
    plain = make_project(tmp_path, "plain", model={**TINY_LLAMA, "mlp": "plain"})  # a structural key
    changed = _changed(a, _mermaid_of(plain / "README.md"))
    assert [line for _, line in changed] == [
        '    mlp["MLP: down_proj(silu(gate_proj(x)) * up_proj(x))"]',
        '    mlp["MLP: down_proj(silu(up_proj(x)))"]',
    ]
    card = model_card(load_project(full, {"model": {"sliding_window": 16}}))
    assert card is not None and "sliding-window attention (window 16)" in card
