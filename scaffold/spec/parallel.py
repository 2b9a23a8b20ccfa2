"""What a family's tensor- and pipeline-parallel layout may say (a blueprint's ``[parallel]`` table):
the :class:`Layout` the plans follow from, checked when the blueprint is read (:mod:`scaffold.codegen.plans`
derives the layout from the architecture and renders the plans)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from scaffold.errors import BlueprintError
from scaffold.spec import schema

# The styles a plan here may use: present in every transformers 5.x release scaffold supports.
STYLES = ("colwise", "rowwise", "colwise_rep", "rowwise_rep", "replicate")


QKV_LAYOUTS = ("interleaved", "blocks")


HEADS = ("split", "whole")


@dataclass(frozen=True)
class Layout:
    """What a family's plans follow from. Module names are attribute names; "" means the family has
    no such module."""

    # the base model's children, in the order the forward runs them
    embed_tokens: str = "embed_tokens"
    layers: str = "layers"
    norm: str = "norm"  # the final norm ("" for none)
    lm_head: str = "lm_head"
    # one decoder layer
    attention: str = "self_attn"
    q_proj: str = "q_proj"
    k_proj: str = "k_proj"
    v_proj: str = "v_proj"
    o_proj: str = "o_proj"
    qkv_proj: str = ""  # a fused query-key-value projection, instead of q/k/v
    qkv_layout: str = "blocks"  # "interleaved" per head (GPT-NeoX) or "blocks" [q; k; v] (Phi-3)
    qk_norm: str = "none"  # "head": over head_dim, per head; "full": over every head's width at once
    heads: str = "split"  # "whole": the attention needs every head on every rank (ALiBi slopes, one head)
    mlp: str = "mlp"
    gate_proj: str = "gate_proj"
    up_proj: str = "up_proj"
    down_proj: str = "down_proj"
    gate_up_proj: str = ""  # a fused [gate; up] projection, instead of gate/up
    # a mixture of experts: whether some layers keep a dense feed-forward, and the shared expert's name in
    # the sparse block ("" for none). The routed experts (3-D gate_up_proj, down_proj) and the router are
    # replicated: splitting them needs expert parallelism, whose styles differ across transformers 5.x
    dense_mlp: bool = True
    shared_expert: str = ""
    # explicit styles by projection attribute name (e.g. {"q_proj": "colwise_rep"}), over the derived ones
    styles: Mapping[str, str] = field(default_factory=dict)


def layout_from(data: Mapping[str, Any], *, path: Any = None) -> Layout:
    """A :class:`Layout` from a blueprint's ``[parallel]`` table; unknown keys and values are errors."""
    known = {f.name for f in fields(Layout)}
    for key in data:
        if key not in known:
            raise BlueprintError(
                f"unknown key; known: {', '.join(sorted(known))}", path=path, key=f"parallel.{key}"
            )
    for key, allowed in (("qk_norm", schema.QK_NORMS), ("qkv_layout", QKV_LAYOUTS), ("heads", HEADS)):
        if key in data and data[key] not in allowed:
            raise BlueprintError(
                f"{data[key]!r} is not one of {', '.join(allowed)}", path=path, key=f"parallel.{key}"
            )
    from scaffold.spec.schema import is_name, toml_key

    for f in fields(Layout):  # module names are pasted into the plans' source: plain names only
        value = data.get(f.name)
        if f.name == "dense_mlp":
            if value is not None and not isinstance(value, bool):
                raise BlueprintError(
                    f"must be true or false, got {value!r}", path=path, key="parallel.dense_mlp"
                )
            continue
        if f.name != "styles" and value is not None and not (value == "" or is_name(value)):
            raise BlueprintError(
                f'must be a module name ([A-Za-z_][A-Za-z0-9_]*) or "", got {value!r}',
                path=path,
                key=f"parallel.{f.name}",
            )
    styles = data.get("styles", {})
    if not isinstance(styles, Mapping):
        raise BlueprintError(f"must be a table, got {styles!r}", path=path, key="parallel.styles")
    for name, style in dict(styles).items():
        if not is_name(name):
            raise BlueprintError(
                f"must be a module name ([A-Za-z_][A-Za-z0-9_]*), got {name!r}",
                path=path,
                key=f"parallel.styles.{toml_key(name)}",
            )
        if style not in STYLES:
            raise BlueprintError(
                f"{style!r} is not one of {', '.join(STYLES)}", path=path, key=f"parallel.styles.{name}"
            )
    return Layout(**{k: v for k, v in data.items()})
