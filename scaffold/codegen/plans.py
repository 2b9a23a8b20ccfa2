"""Tensor- and pipeline-parallel plans of a model family, from its module names and structure.

transformers shards a model with ``from_pretrained(..., tp_plan="auto")`` by the plans its classes
carry: the configuration class's ``base_model_tp_plan`` (module name patterns of the base model ->
a parallel style) and ``base_model_pp_plan`` (the base model's children in order, with the names of
their inputs and outputs), and the causal-LM class's ``_tp_plan`` / ``_pp_plan`` for the output head.
config.json cannot carry them (transformers drops them when it saves a config), so they are class
attributes, rendered into the generated files from what this module computes.

How a projection may be split follows from the layout:

- Attention whose heads are independent (RoPE, sinusoidal or no positions, per-head q/k norms) is
  split by heads: q, k, v ``colwise`` (each rank keeps whole heads), the output projection
  ``rowwise`` (partial sums all-reduced).
- Attention that needs every head at once (a q/k norm over the full projection width, ALiBi with
  one slope vector for all heads, a single head) keeps its weights sharded but gathers the
  projections' outputs: ``colwise_rep`` in, ``rowwise_rep`` out, as transformers' OLMo 2 does.
- A fused qkv projection interleaved per head (GPT-NeoX) is split by heads like separate ones; one
  stored as [q; k; v] blocks (Phi-3) would mix q, k and v in a column slice, so it is gathered
  (``colwise_rep``) and the output projection takes a replicated input (``rowwise_rep``). A fused
  [gate; up] projection is gathered likewise.
- The feed-forward is split on its hidden width: gate and up ``colwise``, down ``rowwise``.
- The output head is split on the vocabulary and gathered (``colwise_rep``), which also matches an
  input embedding tied to it (transformers splits ``embed_tokens`` on the vocabulary).

The layout follows from the resolved architecture and its family's module names (``[names]``); the
``[parallel]`` table of a blueprint.toml may set any :class:`Layout` field on top, the style of any
projection included (``styles``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scaffold.arch import Architecture
from scaffold.spec.parallel import Layout, layout_from


def attention_styles(layout: Layout) -> dict[str, str]:
    """The style of each attention projection, by attribute name."""
    gather = layout.heads == "whole" or layout.qk_norm == "full"
    col, row = ("colwise_rep", "rowwise_rep") if gather else ("colwise", "rowwise")
    out: dict[str, str] = {}
    if layout.qkv_proj:
        fused_by_head = layout.qkv_layout == "interleaved" and not gather
        out[layout.qkv_proj] = "colwise" if fused_by_head else "colwise_rep"
        row = "rowwise" if fused_by_head else "rowwise_rep"
    else:
        for name in (layout.q_proj, layout.k_proj, layout.v_proj):
            if name:
                out[name] = col
    if layout.o_proj:
        out[layout.o_proj] = row
    return out


def mlp_styles(layout: Layout) -> dict[str, str]:
    """The style of each feed-forward projection, by attribute name."""
    out: dict[str, str] = {}
    if layout.gate_up_proj:
        out[layout.gate_up_proj] = "colwise_rep"
        if layout.down_proj:
            out[layout.down_proj] = "rowwise_rep"
        return out
    for name in (layout.gate_proj, layout.up_proj):
        if name:
            out[name] = "colwise"
    if layout.down_proj:
        out[layout.down_proj] = "rowwise"
    return out


def base_model_tp_plan(layout: Layout) -> dict[str, str]:
    """transformers' ``base_model_tp_plan``: module name patterns of the base model -> style."""
    plan: dict[str, str] = {}
    modules = [(layout.attention, attention_styles(layout))]
    if layout.dense_mlp:
        modules.append((layout.mlp, mlp_styles(layout)))
    if layout.shared_expert:  # a dense SwiGLU inside the sparse block: split like one
        modules.append((f"{layout.mlp}.{layout.shared_expert}", mlp_styles(layout)))
    for module, styles in modules:
        for name, style in styles.items():
            style = layout.styles.get(name, style)
            if style != "replicate":
                plan[f"{layout.layers}.*.{module}.{name}"] = style
    return plan


def replicated_linears(layout: Layout) -> set[str]:
    """Linear layers of the decoder layers the plan leaves whole on every rank by design: a shared
    expert's gate (one output, hidden_size inputs: nothing to split)."""
    return {f"{layout.shared_expert}_gate"} if layout.shared_expert else set()


def base_model_pp_plan(layout: Layout) -> dict[str, tuple[list[str], list[str]]]:
    """transformers' ``base_model_pp_plan``: the base model's stages in order, inputs and outputs."""
    plan = {
        layout.embed_tokens: (["input_ids"], ["inputs_embeds"]),
        layout.layers: (["hidden_states", "attention_mask"], ["hidden_states"]),
    }
    if layout.norm:
        plan[layout.norm] = (["hidden_states"], ["hidden_states"])
    return plan


def head_tp_plan(layout: Layout) -> dict[str, str]:
    """The causal-LM class's ``_tp_plan``: the output head split on the vocabulary, then gathered."""
    return {layout.lm_head: "colwise_rep"}


def head_pp_plan(layout: Layout) -> dict[str, tuple[list[str], list[str]]]:
    return {layout.lm_head: (["hidden_states"], ["logits"])}


def _dict_source(name: str, plan: Mapping[str, Any], indent: int) -> str:
    pad = " " * indent
    if len(plan) <= 1:
        return f"{name} = {dict(plan)!r}".replace("'", '"')
    body = "".join(f"{pad}    {k!r}: {v!r},\n".replace("'", '"') for k, v in plan.items())
    return f"{name} = {{\n{body}{pad}}}"


@dataclass(frozen=True)
class RenderedPlans:
    """The plans as source lines for the templates: ``config`` for the configuration class,
    ``causal_lm`` for the causal-LM class (each indented for a class body's first line)."""

    config: str
    causal_lm: str


def render_plans(layout: Layout) -> RenderedPlans:
    """Class-attribute source of every plan, for ``{{ plans.config }}`` and ``{{ plans.causal_lm }}``."""
    config = "\n    ".join(
        [
            '# tensor- and pipeline-parallel plans, read by from_pretrained(tp_plan="auto") (scaffold/codegen/plans.py)',
            _dict_source("base_model_tp_plan", base_model_tp_plan(layout), 4),
            _dict_source("base_model_pp_plan", base_model_pp_plan(layout), 4),
        ]
    )
    causal_lm = "\n    ".join(
        [
            "# the output head split on the vocabulary and gathered (scaffold/codegen/plans.py)",
            _dict_source("_tp_plan", head_tp_plan(layout), 4),
            _dict_source("_pp_plan", head_pp_plan(layout), 4),
        ]
    )
    return RenderedPlans(config=config, causal_lm=causal_lm)


def layout_for(a: Architecture) -> Layout:
    """The layout of a resolved architecture, with its family's module names.

    ALiBi (one slope vector over all heads) and single-head attention keep whole heads; a q/k norm over
    the full width gathers; a fused qkv projection is split by heads when it is interleaved per head
    (``qkv_layout = fused_per_head``: GPT-NeoX) and gathered when stored as [q; k; v] blocks
    (``fused``: Phi-3); a fused [gate; up] projection is gathered; a post-norm decoder has no final
    norm; a plain MLP no gate.
    """
    names = a.names
    single = a.attention.single_head
    fused = a.attention.fused
    return Layout(
        embed_tokens=names["embed_tokens"],
        layers=names["layers"],
        norm=names["norm"] if a.norm.final else "",
        lm_head=names["lm_head"],
        attention=names["self_attn"],
        q_proj="" if fused else names["qk_proj"] if single else names["q_proj"],
        k_proj="" if fused or single else names["k_proj"],
        v_proj="" if fused else names["v_proj"],
        o_proj="" if single else names["o_proj"],
        qkv_proj=names["qkv_proj"] if fused else "",
        qkv_layout="interleaved" if a.attention.qkv_layout == "fused_per_head" else "blocks",
        qk_norm=a.attention.qk_norm,
        heads="whole" if single or a.alibi else "split",
        mlp=names["mlp"],
        gate_proj=names["gate_proj"] if a.mlp.gated and not a.mlp.fused else "",
        up_proj="" if a.mlp.fused else names["up_proj"],
        down_proj=names["down_proj"],
        gate_up_proj=names["gate_up_proj"] if a.mlp.fused else "",
        # the layers this project's config makes dense (another config's dense layers stay replicated)
        dense_mlp=not a.mlp.moe or len(a.sparse_layers) < a.num_hidden_layers,
        shared_expert="shared_expert" if a.mlp.experts and a.mlp.experts.shared else "",
    )


def plans_for(blueprint: Any, a: Architecture) -> RenderedPlans:
    """The rendered plans of a family's project: its architecture, with the ``[parallel]`` table of its
    blueprint.toml (any :class:`Layout` field) on top."""
    from dataclasses import asdict

    derived = asdict(layout_for(a))
    layout = layout_from({**derived, **blueprint.parallel}, path=blueprint.path / "blueprint.toml")
    return render_plans(layout)
