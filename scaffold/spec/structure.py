"""Cross-checks of structural ``[model]`` keys: combinations the generated code cannot express, each
with its key path (``manifest.validate`` reports them with every other problem), and the keys a
family accepts with a given structure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from scaffold.spec import schema


def is_number(value: Any) -> bool:
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
    if is_number(factor) and 0 < factor < 1 and position != "rope":
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
        if "sliding_attention" in types and model.get("sliding_window") is None:
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
    if is_number(experts) and is_number(top_k) and top_k > experts:
        out.append(
            ("model.num_experts_per_tok", f"routes each token to {top_k} experts but there are {experts}")
        )
    layers = model.get("num_hidden_layers")
    dense = model.get("mlp_only_layers")
    if isinstance(dense, list) and is_number(layers):
        beyond = [i for i in dense if is_number(i) and i >= layers]
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
        elif is_number(layers) and len(flags) != layers:
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
