"""From a family and a resolved ``[model]`` table to an :class:`~scaffold.arch.model.Architecture`.

Structural defaults live once, in :data:`scaffold.spec.schema.STRUCTURE`; a family's ``[structure]`` is
merged into its manifests before they reach here. Everything derived is derived here: the norm's
epsilon key, RoPE's parameters, each layer's attention type and window. :func:`problems` holds the
cross-checks of structural keys (combinations the generated code cannot express), each with its key
path, for ``manifest.validate``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from scaffold.arch.model import (
    FULL,
    SLIDING,
    Architecture,
    Attention,
    Experts,
    Layer,
    Mlp,
    Norm,
    Rope,
    frozen_mapping,
)
from scaffold.spec import schema
from scaffold.spec.structure import is_number


def rope_of(model: Mapping[str, Any]) -> Rope:
    """The RoPE a ``[model]`` table asks for (rope_theta, rope_scaling, partial_rotary_factor)."""
    scaling = dict(model.get("rope_scaling") or {})
    kind = scaling.pop("rope_type", scaling.pop("type", "default"))
    theta = model.get("rope_theta", schema.COMPANIONS[("position_embedding", "rope")]["rope_theta"])
    return Rope(
        theta=float(theta),
        scaling=frozen_mapping(scaling),
        type=str(kind),
        partial_rotary_factor=float(model.get("partial_rotary_factor", 1.0)),
    )


def layer_types_of(model: Mapping[str, Any], layers: int, *, pattern_key: bool) -> list[str]:
    """Each layer's attention type: ``layer_types`` as given; else, with a window, every layer slides,
    or (a family with ``sliding_window_pattern``) every N-th layer attends fully, as the generated
    configuration's ``__post_init__`` derives them."""
    given = model.get("layer_types")
    if isinstance(given, (list, tuple)) and len(given) == layers:
        return [str(t) for t in given]
    window = model.get("sliding_window")
    if not window:
        return [FULL] * layers
    pattern = model.get("sliding_window_pattern") if pattern_key else None
    if pattern:
        return [SLIDING if (i + 1) % pattern else FULL for i in range(layers)]
    return [SLIDING] * layers


MOE_PATTERN_KEYS = schema.MOE_PATTERN_KEYS


def experts_of(model: Mapping[str, Any], structure: Mapping[str, Any], keys: Iterable[str]) -> Experts:
    """The mixture of experts of a ``[model]`` table whose family and structure accept ``keys``."""
    keys = set(keys) | set(schema.companions(structure, keys))
    mixtral = schema.MIXTRAL_EXPERTS_KEY in keys
    experts_key = schema.MIXTRAL_EXPERTS_KEY if mixtral else "num_experts"
    width_key = "intermediate_size" if mixtral else "moe_intermediate_size"
    return Experts(
        num_experts=model.get(experts_key),
        experts_per_token=model.get("num_experts_per_tok"),
        intermediate_size=model.get(width_key),
        router=structure["router"],
        norm_topk_prob=bool(structure["norm_topk_prob"]),
        shared_expert=structure["shared_expert"],
        shared_intermediate_size=model.get("shared_expert_intermediate_size")
        if structure["shared_expert"] != "none"
        else None,
        num_experts_key=experts_key,
        intermediate_size_key=width_key,
        pattern_keys=tuple(k for k in MOE_PATTERN_KEYS if k in keys),
        jitter="router_jitter_noise" in keys,
    )


def sparse_layer(model: Mapping[str, Any], index: int, pattern_keys: Iterable[str]) -> bool:
    """Whether layer ``index`` is a mixture of experts: not in mlp_only_layers, every
    decoder_sparse_step-th, from first_k_dense_replace on (as transformers' Qwen-MoE and DeepSeek)."""
    keys = set(pattern_keys)
    dense = model.get("mlp_only_layers") if "mlp_only_layers" in keys else None
    step = model.get("decoder_sparse_step", 1) if "decoder_sparse_step" in keys else 1
    first = model.get("first_k_dense_replace", 0) if "first_k_dense_replace" in keys else 0
    step = step if is_number(step) and step > 0 else 1
    first = first if is_number(first) else 0
    return (
        index not in (dense if isinstance(dense, (list, tuple)) else ())
        and (index + 1) % int(step) == 0
        and index >= first
    )


def no_rope_layers_of(model: Mapping[str, Any], layers: int) -> list[int]:
    """Per layer, 1 where RoPE turns queries and keys and 0 where it does not: ``no_rope_layers`` as
    given; else every ``no_rope_layer_interval``-th layer has none (as SmolLM3's configuration derives it)."""
    given = model.get("no_rope_layers")
    if isinstance(given, (list, tuple)) and len(given) == layers:
        return [int(x) for x in given]
    interval = model.get("no_rope_layer_interval", 4)
    interval = int(interval) if is_number(interval) and interval > 0 else 4
    return [int((i + 1) % interval != 0) for i in range(layers)]


def resolve(
    model: Mapping[str, Any],
    *,
    family: str = "",
    names: Mapping[str, str] | None = None,
    model_keys: Iterable[str] = (),
) -> Architecture:
    """The architecture of a resolved ``[model]`` table (the family's defaults and structure merged in)
    of a family with module ``names`` and ``model_keys`` (its blueprint's number keys)."""
    from scaffold.spec.blueprints import DEFAULT_NAMES

    s = schema.structure_of(model)
    keys = frozenset(set(model_keys) | set(model))
    single = s["attention"] == "single_head"
    heads = None if single else model.get("num_attention_heads")
    kv = None if single else model.get("num_key_value_heads", heads)
    hidden = model.get("hidden_size")
    head_dim = None if single else model.get("head_dim")
    if head_dim is None and not single and is_number(hidden) and is_number(heads) and heads:
        head_dim = int(hidden) // int(heads)
    layers = model.get("num_hidden_layers", 1)
    layers = int(layers) if is_number(layers) and layers > 0 else 1
    alibi = s["position_embedding"] == "alibi"
    per_layer = bool({"layer_types", "sliding_window_pattern"} & keys) and not single and not alibi
    windowed = "sliding_window" in keys and not single and not alibi
    types = layer_types_of(model, layers, pattern_key="sliding_window_pattern" in keys) if windowed else []
    types = types or [FULL] * layers
    window = model.get("sliding_window") if windowed else None
    rope = rope_of(model) if s["position_embedding"] == "rope" else None
    experts = experts_of(model, s, keys) if s["mlp"] == "moe" else None
    patterned = experts.pattern_keys if experts else ()
    if rope is not None and s["rope_interleaved"]:
        rope = replace(rope, interleaved=True)
    local_rope = None
    if rope is not None and s["rope_local_base_freq"] is not None and windowed:
        # the sliding layers' RoPE: its own base, unscaled, the rotated fraction of the full layers'
        local_rope = Rope(
            theta=float(s["rope_local_base_freq"]),
            partial_rotary_factor=rope.partial_rotary_factor,
            interleaved=rope.interleaved,
        )
    nope = rope is not None and bool(s["nope_layers"])
    with_rope = no_rope_layers_of(model, len(types)) if nope else [1] * len(types)
    return Architecture(
        family=family,
        names=frozen_mapping({**DEFAULT_NAMES, **(names or {})}),
        structure=frozen_mapping(s),
        norm=Norm(
            type=s["norm_type"],
            bias=bool(s["norm_bias"]),
            position=s["norm_position"],
            parallel_residual=bool(s["parallel_residual"]),
        ),
        position_embedding=s["position_embedding"],
        rope=rope,
        attention=Attention(
            kind=s["attention"],
            num_heads=heads,
            num_kv_heads=kv,
            head_dim=head_dim,
            qkv_layout=s["qkv_layout"],
            qk_norm=s["qk_norm"],
            bias=bool(s["attention_bias"]),
            qkv_bias=bool(s["qkv_bias"]),
            softcap=s["attn_logit_softcapping"],
            query_pre_attn_scalar=s["query_pre_attn_scalar"],
            multiplier=s["attention_multiplier"],
            sinks=bool(s["attention_sinks"]),
            output_gate=bool(s["attention_output_gate"]),
        ),
        mlp=Mlp(
            kind=s["mlp"],
            act=s["hidden_act"],
            bias=bool(s["mlp_bias"]),
            layout=s["mlp_layout"],
            intermediate_size=model.get("intermediate_size"),
            experts=experts,
        ),
        layers=tuple(
            Layer(
                index=i,
                attention_type=kind,
                sliding_window=window if kind == SLIDING else None,
                rope=None if not with_rope[i] else (local_rope if local_rope and kind == SLIDING else rope),
                mlp="sparse" if experts and sparse_layer(model, i, patterned) else "dense",
            )
            for i, kind in enumerate(types)
        ),
        hidden_size=hidden,
        vocab_size=model.get("vocab_size"),
        embedding_scale=s["embedding_scale"],
        lm_head_bias=bool(s["lm_head_bias"]),
        tie_word_embeddings=bool(model.get("tie_word_embeddings", False)),
        final_logit_softcapping=s["final_logit_softcapping"],
        local_rope=local_rope,
        nope_layers=nope,
        embedding_multiplier=s["embedding_multiplier"],
        residual_multiplier=s["residual_multiplier"],
        logits_scaling=s["logits_scaling"],
        init=s["init"],
        alibi_trainable=bool(model.get("alibi_trainable", False)),
        per_layer_types=per_layer,
        sliding_window_pattern=model.get("sliding_window_pattern") if per_layer else None,
        model_keys=keys,
    )


# Structural keys that change how weights are initialised, not the network a checkpoint computes.
INIT_ONLY = ("init",)
# The prefix of generated classes whose structure is not the network of the transformers class their
# family reproduces: a name no library owns, so nothing can build transformers' class in their place.
DIFFERENT_PREFIX = "Scaffold"


def differences(bp: Any, model: Mapping[str, Any]) -> list[str]:
    """The structural keys in which ``model`` differs from the network of the transformers class
    ``bp``'s family reproduces (``[]``: it is that network). Number-valued structural keys differ by
    presence (transformers' class applies its own default when config.json lacks one); the keys the
    family's transformers class reads from its config (``config_structure`` in blueprint.toml: biases,
    GPT-NeoX's parallel residual, a rotated fraction) keep its network with any value."""
    stock_preset = bp.preset(None).get("model", {})
    stock = schema.structure_of(
        {**bp.structure, **{k: stock_preset.get(k) for k in schema.NUMERIC_STRUCTURE}}
    )
    ours = schema.structure_of(model)
    out = []
    for key, value in ours.items():
        theirs = stock[key]
        if key in INIT_ONLY or key in bp.meta.get("config_structure", ()):
            continue  # init only, or a key transformers' class reads from its config (any value is its network)
        if key in schema.NUMERIC_STRUCTURE:
            same = (value is None) == (theirs is None)
        else:
            same = value == theirs
        if not same:
            out.append(key)
    return out


def for_blueprint(bp: Any, model: Mapping[str, Any]) -> Architecture:
    """The architecture of ``bp``'s family with the resolved ``[model]`` table ``model``."""
    from dataclasses import replace

    a = resolve(model, family=bp.name, names=bp.names, model_keys=bp.model_keys)
    hf = bp.meta.get("transformers_class")
    diff = tuple(differences(bp, model)) if hf else ()
    prefix = bp.prefix
    if diff and prefix:
        prefix = DIFFERENT_PREFIX + prefix
    return replace(
        a,
        transformers_class=hf if hf and not diff else None,
        differs_from=hf if diff else None,
        differences=diff,
        class_prefix=prefix,
    )


# -- cross-checks ----------------------------------------------------------------------------------
