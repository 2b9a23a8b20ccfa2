"""From a family and a resolved ``[model]`` table to an :class:`~scaffold.arch.model.Architecture`.

Structural defaults live once, in :data:`scaffold.schema.STRUCTURE`; a family's ``[structure]`` is
merged into its manifests before they reach here. Everything derived is derived here: the norm's
epsilon key, RoPE's parameters, each layer's attention type and window. :func:`problems` holds the
cross-checks of structural keys (combinations the generated code cannot express), each with its key
path, for ``manifest.validate``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from .. import schema
from .model import FULL, SLIDING, Architecture, Attention, Experts, Layer, Mlp, Norm, Rope, frozen_mapping


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def accepted_keys(model_keys: Iterable[str], structure: Mapping[str, Any]) -> set[str]:
    """The ``[model]`` keys a family whose own keys are ``model_keys`` accepts with ``structure``:
    its keys, every structural key, the universal ones and the number keys the structure needs."""
    keys = set(model_keys)
    return (
        keys
        | set(schema.STRUCTURE)
        | set(schema.UNIVERSAL_MODEL_KEYS)
        | set(schema.companions(structure, keys))
        | schema.optional_companions(structure)
    )


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
    step = step if _number(step) and step > 0 else 1
    first = first if _number(first) else 0
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
    interval = int(interval) if _number(interval) and interval > 0 else 4
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
    from ..blueprints import DEFAULT_NAMES

    s = schema.structure_of(model)
    keys = frozenset(set(model_keys) | set(model))
    single = s["attention"] == "single_head"
    heads = None if single else model.get("num_attention_heads")
    kv = None if single else model.get("num_key_value_heads", heads)
    hidden = model.get("hidden_size")
    head_dim = None if single else model.get("head_dim")
    if head_dim is None and not single and _number(hidden) and _number(heads) and heads:
        head_dim = int(hidden) // int(heads)
    layers = model.get("num_hidden_layers", 1)
    layers = int(layers) if _number(layers) and layers > 0 else 1
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


def problems(model: Mapping[str, Any], test: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
    """Combinations of structural keys the generated code cannot express, each with its key path
    (``test``: the manifest's [test] table, for the attention backend)."""
    structure = schema.structure_of(model)
    out: list[tuple[str, str]] = []
    position = structure["position_embedding"]
    if structure["attention"] == "single_head" and position != "alibi":
        out.append(
            (
                "model.attention",
                f"single_head attention takes its positions from ALiBi; position_embedding is {position!r}",
            )
        )
    if structure["parallel_residual"] and structure["norm_position"] != "pre":
        out.append(
            (
                "model.parallel_residual",
                f"needs norm_position = pre; norm_position is {structure['norm_position']!r}",
            )
        )
    factor = structure["partial_rotary_factor"]
    if _number(factor) and 0 < factor < 1 and position != "rope":
        out.append(
            (
                "model.partial_rotary_factor",
                f"partial rotary needs position_embedding = rope, not {position!r}",
            )
        )
    layout = structure["qkv_layout"]
    if layout != "separate" and structure["attention"] != "multi_head":
        out.append(("model.qkv_layout", f"{layout} needs attention = multi_head"))
    if layout != "separate" and structure["qk_norm"] != "none":
        out.append(("model.qk_norm", f"a q/k norm needs qkv_layout = separate; qkv_layout is {layout!r}"))
    if layout == "fused_per_head":
        heads, kv = model.get("num_attention_heads"), model.get("num_key_value_heads")
        if kv is not None and kv != heads:
            out.append(
                (
                    "model.qkv_layout",
                    f"fused_per_head interleaves one k and one v per query head; num_key_value_heads = {kv} "
                    f"differs from num_attention_heads = {heads}",
                )
            )
    if structure["mlp_layout"] == "fused" and structure["mlp"] != "gated":
        out.append(("model.mlp_layout", "fused stores a gated MLP's gate and up projections; mlp is 'plain'"))
    for key in ("qkv_layout", "mlp_layout"):
        if structure["init"] == "deepnet" and structure[key] != "separate":
            out.append(
                (f"model.{key}", f"init = deepnet sets a gain per projection; it needs {key} = separate")
            )
    if position != "rope" and model.get("rope_scaling"):
        out.append(
            ("model.rope_scaling", f"position_embedding is {position!r}: RoPE scaling would change nothing")
        )
    out.extend(_attention_layout_checks(model, structure))
    out.extend(_moe_checks(model, structure))
    test = test if isinstance(test, Mapping) else {}
    backend = test.get("attn_implementation")
    out.extend(_score_checks(structure, backend))
    out.extend(_position_and_scale_checks(model, structure, backend))
    if position == "alibi" and isinstance(backend, str) and backend.startswith("flash_attention"):
        out.append(
            (
                "test.attn_implementation",
                f"{backend} takes no ALiBi slopes (position_embedding = alibi); use sdpa",
            )
        )
    return out


def _attention_layout_checks(model: Mapping[str, Any], structure: Mapping[str, Any]) -> list[tuple[str, str]]:
    """qk-norm, sliding windows and per-layer attention types against the attention they act on."""
    out: list[tuple[str, str]] = []
    single = structure["attention"] == "single_head"
    if single and structure["qk_norm"] != "none":
        out.append(("model.qk_norm", "single_head attention has no separate queries and keys to normalise"))
    if single and structure["qkv_bias"]:
        out.append(("model.qkv_bias", "single_head attention has no query and key projections"))
    windowed = model.get("sliding_window") is not None or model.get("layer_types") is not None
    if windowed and (single or structure["position_embedding"] == "alibi"):
        key = "model.sliding_window" if model.get("sliding_window") is not None else "model.layer_types"
        out.append(
            (key, "sliding windows need multi_head attention without ALiBi (its bias spans every key)")
        )
    types = model.get("layer_types")
    if isinstance(types, list):
        layers = model.get("num_hidden_layers")
        if isinstance(layers, int) and not isinstance(layers, bool) and len(types) != layers:
            out.append(("model.layer_types", f"has {len(types)} entries for num_hidden_layers = {layers}"))
        if SLIDING in types and model.get("sliding_window") is None:
            out.append(
                ("model.layer_types", "names sliding_attention layers but model.sliding_window is not set")
            )
    return out


def _score_checks(structure: Mapping[str, Any], backend: Any) -> list[tuple[str, str]]:
    """Soft-capping and query_pre_attn_scalar against the attention they act on and its backend."""
    out: list[tuple[str, str]] = []
    if structure["attn_logit_softcapping"] is not None and backend == "sdpa":
        out.append(
            (
                "test.attn_implementation",
                "sdpa cannot soft-cap attention scores (model.attn_logit_softcapping is set); "
                "use eager, flex_attention or flash_attention_2",
            )
        )
    if structure["attention"] == "single_head":
        for key in ("attn_logit_softcapping", "query_pre_attn_scalar"):
            if structure[key] is not None:
                out.append((f"model.{key}", "single_head attention scores by its own rule; unset it"))
    elif structure["position_embedding"] == "alibi" and structure["attn_logit_softcapping"] is not None:
        out.append(("model.attn_logit_softcapping", "ALiBi attention does not soft-cap its scores; unset it"))
    return out


def _moe_checks(model: Mapping[str, Any], structure: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A mixture of experts' keys against each other, and its structural keys without one."""
    out: list[tuple[str, str]] = []
    if structure["mlp"] != "moe":
        for key in ("shared_expert", "router", "norm_topk_prob"):
            if structure[key] != schema.STRUCTURE[key]:
                out.append((f"model.{key}", 'belongs to a mixture of experts; set mlp = "moe" or unset it'))
        return out
    if structure["mlp_bias"]:
        out.append(("model.mlp_bias", "the experts of mlp = moe have no biases; unset it"))
    if structure["init"] == "deepnet":
        out.append(("model.init", "init = deepnet sets a gain per dense projection; mlp = moe has experts"))
    experts = model.get(schema.MIXTRAL_EXPERTS_KEY, model.get("num_experts"))
    top_k = model.get("num_experts_per_tok")
    if _number(experts) and _number(top_k) and top_k > experts:
        out.append(
            ("model.num_experts_per_tok", f"routes each token to {top_k} experts but there are {experts}")
        )
    layers = model.get("num_hidden_layers")
    dense = model.get("mlp_only_layers")
    if isinstance(dense, list) and _number(layers):
        beyond = [i for i in dense if _number(i) and i >= layers]
        if beyond:
            out.append(
                (
                    "model.mlp_only_layers",
                    f"names layer {beyond[0]}; the model has {layers} (0 to {layers - 1})",
                )
            )
    return out


def _position_and_scale_checks(
    model: Mapping[str, Any], structure: Mapping[str, Any], backend: Any
) -> list[tuple[str, str]]:
    """Per-layer positions, attention sinks and Granite's multipliers against what they act on."""
    out: list[tuple[str, str]] = []
    position = structure["position_embedding"]
    single = structure["attention"] == "single_head"
    if structure["nope_layers"] and position != "rope":
        out.append(("model.nope_layers", f"NoPE layers leave out RoPE; position_embedding is {position!r}"))
    flags = model.get("no_rope_layers")
    if isinstance(flags, list):
        layers = model.get("num_hidden_layers")
        if not structure["nope_layers"]:
            out.append(("model.no_rope_layers", "is read only with model.nope_layers = true"))
        elif _number(layers) and len(flags) != layers:
            out.append(("model.no_rope_layers", f"has {len(flags)} entries for num_hidden_layers = {layers}"))
    if structure["rope_local_base_freq"] is not None and position != "rope":
        out.append(
            (
                "model.rope_local_base_freq",
                f"a second RoPE base needs position_embedding = rope, not {position!r}",
            )
        )
    if structure["attention_sinks"]:
        if single or position == "alibi":
            out.append(("model.attention_sinks", "sinks need multi_head attention without ALiBi"))
        if structure["attn_logit_softcapping"] is not None:
            out.append(
                (
                    "model.attention_sinks",
                    "no attention function both soft-caps scores and adds sinks; unset one",
                )
            )
        if backend == "sdpa":
            out.append(
                (
                    "test.attn_implementation",
                    "sdpa takes no sink logits (model.attention_sinks = true); use eager or flex_attention",
                )
            )
    if structure["attention_multiplier"] is not None:
        if structure["query_pre_attn_scalar"] is not None:
            out.append(
                (
                    "model.attention_multiplier",
                    "both it and query_pre_attn_scalar set the score scale; unset one",
                )
            )
        if single:
            out.append(
                ("model.attention_multiplier", "single_head attention scores by its own rule; unset it")
            )
    if structure["attention_output_gate"] and (single or structure["qkv_layout"] != "separate"):
        out.append(
            (
                "model.attention_output_gate",
                "the gate comes from q_proj: it needs multi_head attention with qkv_layout = separate",
            )
        )
    if structure["rope_interleaved"] and position != "rope":
        out.append(
            ("model.rope_interleaved", f"interleaves RoPE's pairs; position_embedding is {position!r}")
        )
    if structure["residual_multiplier"] is not None and (
        structure["norm_position"] != "pre" or structure["parallel_residual"]
    ):
        out.append(
            (
                "model.residual_multiplier",
                "scales the sublayers of pre-norm blocks (norm_position = pre, no parallel residual)",
            )
        )
    if structure["embedding_multiplier"] is not None and structure["embedding_scale"] != "none":
        out.append(
            ("model.embedding_multiplier", "embedding_scale already scales the embeddings; unset one of them")
        )
    return out
