"""Code generation: a family's files from the resolved architecture.

:func:`plan` turns an :class:`~scaffold.arch.Architecture` into what the shared templates paste (the
parts used, the norm class, the activation, the config fields, the docstrings), so a generated file
holds only the code its structure chose. Copier renders the templates with ``unsafe=False`` (no
template code is executed), StrictUndefined (a misspelt variable is an error) and none of its
host-reading filters; :func:`render_files` returns the code files as text, :func:`render_into`
renders a whole project folder for :mod:`scaffold.project.new`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scaffold import __version__
from scaffold.arch import Architecture, for_blueprint
from scaffold.codegen.diagram import diagram_structure, mermaid_block
from scaffold.codegen.parts import part_sources
from scaffold.codegen.plans import plans_for
from scaffold.errors import BlueprintError, one_line
from scaffold.spec import manifest
from scaffold.spec.blueprints import Blueprint

# -- structure -> what the templates paste ---------------------------------------------------------

# The activations the generated code calls as torch functions; any other comes from transformers' ACT2FN.
# gelu_pytorch_tanh is a part (F.gelu with the tanh approximation), as transformers' GELUTanh computes it.
TORCH_ACTIVATIONS = {
    "silu": "F.silu",
    "relu": "F.relu",
    "gelu": "F.gelu",
    "gelu_pytorch_tanh": "gelu_pytorch_tanh",
}
NORM_CLASSES = {"rmsnorm": "RMSNorm", "layernorm": "nn.LayerNorm", "rmsnorm_unit_offset": "UnitOffsetRMSNorm"}
# The config fields, in the order the configuration file lists them; keys a structure or family adds
# that are not here follow, sorted.
CONFIG_ORDER = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rope_parameters",
    "rms_norm_eps",
    "layer_norm_eps",
    "sliding_window",
    "sliding_window_pattern",
    "layer_types",
    "no_rope_layers",
    "no_rope_layer_interval",
    "query_pre_attn_scalar",
    "attention_multiplier",
    "embedding_multiplier",
    "residual_multiplier",
    "logits_scaling",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "attention_dropout",
    "hidden_dropout",
    "initializer_range",
    "alibi_slope_init",
    "alibi_trainable",
    "tie_word_embeddings",
)
CONFIG_COMMENTS = {
    "rope_parameters": 'RoPE as transformers 5.x spells it: {"rope_type": "default" | "linear" | "dynamic" |\n'
    '# "yarn" | "longrope" | "llama3", "rope_theta": ..., the scaling keys of that type, and\n'
    "# partial_rotary_factor when below 1}; the manifest's rope_theta, rope_scaling and\n"
    "# partial_rotary_factor fill it",
    "hidden_dropout": "dropout on the embeddings and on each sublayer's output",
    "alibi_trainable": "learn the ALiBi slopes (saved with the weights) instead of keeping the initial ones",
    "alibi_slope_init": "the one ALiBi slope of each layer: its initial value",
    "layer_types": "each layer's attention, full_attention or sliding_attention; absent: derived (__post_init__)",
    "mlp_only_layers": "the layers with a dense feed-forward instead of experts; absent: none",
    "sliding_window_pattern": "with layer_types absent, every N-th layer attends fully, the others within the window",
    "no_rope_layers": "per layer, 1: RoPE turns queries and keys, 0: no positions (NoPE); absent: derived (__post_init__)",
    "no_rope_layer_interval": "with no_rope_layers absent, every N-th layer attends without RoPE",
    "attention_multiplier": "the attention scores' scale (in place of head_dim^-0.5)",
    "embedding_multiplier": "the token embeddings are multiplied by this",
    "residual_multiplier": "each sublayer's output is multiplied by this before the residual add",
    "logits_scaling": "the output logits are divided by this",
}


def plan_parts(a: Architecture) -> list[str]:
    """The parts a structure uses, in the order the modeling file pastes them (dependencies first)."""
    parts = [NORM_CLASSES[a.norm.type]] if a.norm.type != "layernorm" else []
    if a.embedding_scale == "sqrt_hidden":
        parts += ["ScaledWordEmbedding"]
    single = a.attention.single_head
    if a.rope is not None:
        parts += ["rope_inv_freq", "yarn_inv_freq", "longrope_inv_freq", "dynamic_ntk_inv_freq"]
        parts += ["rope_attention_factor", "RotaryEmbedding"]
        if a.rope.interleaved:
            parts += ["rotate_interleaved", "apply_interleaved_rotary_pos_emb"]
        else:
            parts += ["rotate_half", "apply_rotary_pos_emb"]
            parts += ["apply_partial_rotary_pos_emb"] if a.rope.partial else []
    if a.attention.qk_norm == "l2":
        parts += ["weightless_rms_norm"]
    elif a.position_embedding == "sinusoidal":
        parts += ["SinusoidalPositionEmbedding"]
    elif a.alibi:
        parts += ["alibi_slopes"] if not single else []
        parts += ["AlibiSlopes", "alibi_attention_mask"]
    parts += ["repeat_kv", "mha_eager_attention_forward", "eager_attention_forward"]
    if a.alibi:
        parts += ["flex_alibi_attention_forward", "alibi_attention_forward"]
    parts += {"fused": ["split_qkv"], "fused_per_head": ["split_qkv_per_head"]}.get(
        a.attention.qkv_layout, []
    )
    if a.attention.softcap is not None or a.final_logit_softcapping is not None:
        parts += ["logit_softcap"]
    if a.attention.softcap is not None and not single:
        parts += ["softcap_eager_attention_forward"]
    if a.mlp.moe:
        parts += ["grouped_mm_usable", "grouped_linear", "grouped_experts_forward", "load_balancing_loss"]
    if a.attention.sinks:
        parts += ["sink_eager_attention_forward"]
    if a.mlp.act == "gelu_pytorch_tanh":
        parts += ["gelu_pytorch_tanh"]
    parts += ["ChunkedLinearCrossEntropy", "chunked_causal_lm_loss", "is_plain_linear"]
    if a.norm.position == "deepnorm":
        parts += ["deepnet_alpha"]
    if a.init == "deepnet":
        parts += ["deepnet_beta"]
    if a.init == "scaled_normal":
        parts += ["truncated_normal_"]
    return parts


def _literal(value: Any) -> str:
    """A Python literal for a config default, written as a person would (1e-5, not 1e-05)."""
    text = repr(value)
    return re.sub(r"e([-+])0(\d)", r"e\1\2", text) if isinstance(value, float) else text


def _code(value: Any) -> str:
    """A Python literal in generated code: strings in double quotes, as the rest of the file has them."""
    return json.dumps(value) if isinstance(value, str) else _literal(value)


def _annotation(key: str, default: Any) -> str:
    from scaffold.spec import schema

    if key == "rope_parameters":
        return "dict | None"
    if key == "layer_types":
        return "list[str] | None"
    if key in ("mlp_only_layers", "no_rope_layers"):
        return "list[int] | None"
    f = schema.BY_PATH.get(f"model.{key}")
    names = {int: "int", float: "float", bool: "bool", str: "str", dict: "dict", list: "list"}
    types = [t for t in (f.types if f else (type(default),)) if t in names]
    if float in types and int in types:
        types = [float]
    text = " | ".join(names[t] for t in types) or "object"
    return f"{text} | None" if default is None else text


def config_fields(bp: Blueprint, a: Architecture) -> list[dict[str, str]]:
    """The number fields of the configuration class: what the family and its structure understand, with
    the family's defaults. Depends on the family and the structure only, never on a project's numbers
    (so a build with other numbers needs no new code)."""
    from scaffold.spec import schema

    arch = a.structure
    # the number-valued structural keys that are set: their code reads the value, so it is config
    numeric = {
        k: arch[k]
        for k in schema.NUMERIC_STRUCTURE
        if arch[k] is not None and k not in schema.FOLDED_STRUCTURE
    }
    needed = schema.companions(arch, bp.model_keys)
    defaults = {**needed, **bp.defaults.get("model", {}), **numeric}
    keys = (
        set(bp.model_keys) | set(needed) | schema.optional_companions(arch) | set(schema.UNIVERSAL_MODEL_KEYS)
    ) - set(arch)
    keys |= set(numeric)
    if not a.attention.single_head:
        keys |= {"num_attention_heads", "num_key_value_heads", "head_dim"}
    if a.rope is not None:
        keys = (keys - {"rope_theta", "rope_scaling"}) | {"rope_parameters"}
    else:
        keys -= {"rope_theta", "rope_scaling"}
    if not a.alibi:
        keys -= {"alibi_trainable"}
    if not a.attention.single_head:
        keys -= {"alibi_slope_init"}
    if a.init not in ("scaled_normal", "normal"):
        keys -= {"initializer_range"} - set(bp.defaults.get("model", {}))
    ordered = [k for k in CONFIG_ORDER if k in keys] + sorted(keys - set(CONFIG_ORDER))
    fields = []
    for key in ordered:
        # absent, these follow from others (__post_init__), so a default would be wrong for other sizes
        derived = (
            "rope_parameters",
            "num_key_value_heads",
            "head_dim",
            "layer_types",
            "mlp_only_layers",
            "no_rope_layers",
        )
        default = None if key in derived else defaults.get(key)
        if key == "tie_word_embeddings" and default is None:
            default = False
        fields.append(
            {
                "name": key,
                "annotation": _annotation(key, default),
                "default": _literal(default),
                "comment": CONFIG_COMMENTS.get(key, ""),
            }
        )
    return fields


def _wrap(text: str, width: int = 100) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width=width, break_long_words=False, break_on_hyphens=False))


def _mlp_doc(a: Architecture) -> str:
    act = a.mlp.act
    if a.mlp.gated:
        named = {"silu": "SwiGLU", "relu": "GLU-ReLU", "gelu": "GeGLU", "gelu_pytorch_tanh": "GeGLU (tanh)"}
        kind = named.get(act, f"gated {act}") + " feed-forward"
        kind += " (gate and up fused in one projection)" if a.mlp.fused else ""
    else:
        kind = f"{act} MLP"
    return kind + (" with biases" if a.mlp.bias else "")


BLOCK_FORMULAS = {
    "pre": "Pre-norm blocks, ``x = x + attn({n}(x)); x = x + mlp({n}(x))``",
    "post": "Post-norm blocks, ``x = {n}(x + attn(x)); x = {n}(x + mlp(x))``",
    "deepnorm": "DeepNorm blocks (Wang et al., 2022), ``x = {n}(alpha * x + attn(x)); "
    "x = {n}(alpha * x + mlp(x))`` with alpha = (2L)^(1/4)",
    "post_sublayer": "Post-sublayer-norm blocks, ``x = x + {n}(attn(x)); x = x + {n}(mlp(x))``",
    "sandwich": "Sandwich-norm blocks, ``x = x + {n}(attn({n}(x))); x = x + {n}(mlp({n}(x)))``",
}
POSITION_DOCS = {
    "rope": "rotary position embeddings",
    "alibi": "ALiBi attention biases instead of position embeddings",
    "sinusoidal": "fixed sinusoidal position encodings added to the embeddings (computed, never stored)",
    "learned": "learned absolute position embeddings added to the token embeddings",
    "none": "no position information besides the causal mask",
}


def describe(bp: Blueprint, a: Architecture) -> tuple[str, str]:
    """A title line and a paragraph saying what the structure is, for the modeling file and the card."""
    norm = "layernorm" if a.norm.type == "layernorm" else "rmsnorm"
    norm_name = "LayerNorm" if a.norm.type == "layernorm" else "RMSNorm"
    no_bias = a.norm.type == "layernorm" and not a.norm.bias
    if no_bias:
        norm_name += " without bias"
    blocks = BLOCK_FORMULAS[a.norm.position].format(n=norm)
    if a.norm.parallel_residual:
        blocks = (
            f"Parallel-residual blocks, ``x = x + attn({norm}(x)) + mlp({norm}(x))`` (a norm for each): "
            "attention and the feed-forward read the same input"
        )
    position = POSITION_DOCS[a.position_embedding]
    if a.rope is not None and a.rope.partial:
        position = f"rotary position embeddings on the first {a.rope.partial_rotary_factor:g} of each head's features"
    if a.rope is not None and a.rope.interleaved:
        position += " (adjacent feature pairs turned together)"
    att = a.attention
    if att.single_head:
        attention = "one attention head with a fused query-key matrix and no output projection"
    else:
        kind = "multi-head" if att.qkv_layout == "fused_per_head" else "grouped-query"
        attention = f"{kind} attention"
        if att.bias:
            attention += " with biases"
        elif att.qkv_bias:
            attention += " with query, key and value biases"
        if att.qk_norm == "l2":
            attention += " (queries and keys divided by their RMS, head by head, with no weight, after RoPE)"
        elif att.qk_norm != "none":
            width = "each head" if att.qk_norm == "head" else "all heads at once"
            attention += f" ({norm_name} on queries and keys over {width}, before RoPE)"
        if att.output_gate:
            attention += " (its output gated by sigmoid of a second half of q_proj)"
        attention += {
            "fused": " (q, k and v from one projection stored [q; k; v])",
            "fused_per_head": " (q, k and v from one projection, interleaved per head)",
        }.get(att.qkv_layout, "")
    parts = [f"{blocks}, with {position}, {attention} and a {_mlp_doc(a)}"]
    if no_bias:
        parts[0] += " (layer norms without bias)"
    if a.norm.final:
        parts[0] += f", and a final {norm_name.split()[0]}"
    parts[0] += "."
    if a.norm.type == "rmsnorm_unit_offset":
        parts.append(
            "The RMS norms scale by (1 + w), computed in float32, with w starting at zero (Gemma's)."
        )
    if att.query_pre_attn_scalar is not None:
        parts.append("Attention scores are scaled by query_pre_attn_scalar^-0.5.")
    if att.multiplier is not None:
        parts.append("Attention scores are scaled by attention_multiplier, not head_dim^-0.5.")
    if att.sinks:
        parts.append(
            "Each head has a learned sink logit (``sinks``): one more softmax column that takes probability mass "
            "and adds nothing to the output; eager and flex_attention apply it, sdpa cannot."
        )
    if a.nope_layers:
        parts.append("Layers whose ``no_rope_layers`` entry is 0 attend without RoPE (NoPE).")
    if a.local_rope is not None:
        parts.append(
            "Sliding-window layers turn queries and keys with their own RoPE (base rope_local_base_freq), "
            "full-attention layers with rope_theta and its scaling: ``rope_parameters`` holds one table per type."
        )
    if a.embedding_multiplier is not None:
        parts.append("Token embeddings are multiplied by embedding_multiplier.")
    if a.residual_multiplier is not None:
        parts.append("Each sublayer's output is multiplied by residual_multiplier before the residual add.")
    if a.logits_scaling is not None:
        parts.append("The output logits are divided by logits_scaling.")
    if att.softcap is not None:
        parts.append("Attention scores are soft-capped, ``c * tanh(s / c)``, before the mask.")
    if a.final_logit_softcapping is not None:
        parts.append("The output logits are soft-capped the same way.")
    if a.embedding_scale == "sqrt_hidden":
        parts.append("Token embeddings are scaled by sqrt(d), rounded to the weights' dtype.")
    if a.lm_head_bias:
        parts.append("The output head has a bias.")
    if a.init == "deepnet":
        parts.append("Projections are initialised with DeepNet's gain beta = (8L)^(-1/4).")
    if a.transformers_class:
        parts.append(
            f"This is the network of transformers' ``{a.transformers_class}``, with its parameter names, so its "
            "checkpoints load here unchanged."
        )
    elif a.differs_from:
        parts.append(
            f"Parameter names are those of transformers' ``{a.differs_from}``, but the network differs from it "
            f"({', '.join(a.differences)}), so the classes are named ``{a.causal_lm_class}`` etc.: no library "
            "owns these names, and tools that pick a class by name build this code or refuse."
        )
    if a.alibi:
        parts.append(
            "Attention runs on eager, sdpa or flex_attention, with ALiBi as a float bias (eager, sdpa) or a score "
            "modifier (flex); masks (padding, packed sequences) come from transformers' mask builders. "
            "flash_attention_2 is not offered: transformers' flash path takes no ALiBi slopes."
        )
    else:
        parts.append(
            "Attention runs through transformers' attention interface (eager, sdpa, flex_attention, "
            "flash_attention_2), and masks (padding, "
            + ("sliding window, " if "sliding_window" in bp.model_keys else "")
            + "packed sequences) come from transformers' mask builders."
        )
    return f"A {bp.prefix}-family decoder-only language model in one file.", _wrap(" ".join(parts))


def lora_targets(a: Architecture) -> list[str]:
    """The names of the linear layers inside the decoder layers (attention and MLP projections): what
    PEFT's ``target_modules`` must list for a model type it does not know."""
    names = a.names
    if a.attention.single_head:
        attention = [names["qk_proj"], names["v_proj"]]
    elif a.attention.fused:
        attention = [names["qkv_proj"], names["o_proj"]]
    else:
        attention = [names[k] for k in ("q_proj", "k_proj", "v_proj", "o_proj")]
    if not a.mlp.gated:
        mlp = [names["up_proj"], names["down_proj"]]
    elif a.mlp.fused:
        mlp = [names["gate_up_proj"], names["down_proj"]]
    else:
        mlp = [names[k] for k in ("gate_proj", "up_proj", "down_proj")]
    if a.mlp.experts is not None and a.mlp.experts.shared_expert == "gated":
        mlp.append("shared_expert_gate")  # Qwen2-MoE's sigmoid gate on the shared expert (a linear layer)
    return attention + mlp


SPECIAL_TOKENS = ("bos_token_id", "eos_token_id", "pad_token_id")


def transformers_config_fields(bp: Blueprint, a: Architecture) -> list[dict[str, str]]:
    """The keys transformers' config of the family has that the generated code does not read (the
    blueprint's ``transformers_config``, and ``transformers_config_structure`` valued from the structure):
    fields of the configuration class, so that it accepts them and config.json carries them."""
    values = dict(bp.meta.get("transformers_config", {}))
    values |= {k: a.structure[v] for k, v in bp.meta.get("transformers_config_structure", {}).items()}
    return [
        {"name": k, "annotation": _annotation(k, v), "default": _code(v)}
        for k, v in values.items()
        if k not in SPECIAL_TOKENS
    ]


def _sparse_rule(a: Architecture) -> str:
    """The generated decoder layer's test of whether layer ``layer_idx`` is sparse, from the config keys
    that choose the dense layers (as transformers' Qwen-MoE and DeepSeek decide it)."""
    keys = a.mlp.experts.pattern_keys if a.mlp.experts else ()
    tests = {
        "mlp_only_layers": "layer_idx not in (config.mlp_only_layers or ())",
        "decoder_sparse_step": "(layer_idx + 1) % config.decoder_sparse_step == 0",
        "first_k_dense_replace": "layer_idx >= config.first_k_dense_replace",
    }
    return " and ".join(tests[k] for k in keys) or "True"


def plan(bp: Blueprint, a: Architecture) -> dict[str, Any]:
    """What the templates need besides the structure itself, derived from the architecture here, once."""
    from scaffold.spec import schema

    act = a.mlp.act
    parts = plan_parts(a)
    sources = part_sources()
    title, doc = describe(bp, a)
    multi = not a.attention.single_head
    if multi:
        heads_text = f"{a.attention.num_heads} query heads and {a.attention.num_kv_heads} key/value heads, "
    else:
        heads_text = "one attention head, "
    writers = (f"{a.names['o_proj']} and " if multi else f"{a.names['v_proj']} and ") + a.names["down_proj"]
    mlp_doc = _mlp_doc(a)
    return {
        "title": title,
        "doc": doc,
        "heads_text": heads_text,
        "attention_doc": (
            ("Multi-head" if a.attention.qkv_layout == "fused_per_head" else "Grouped-query")
            + " self-attention"
            + (" with RoPE" if a.rope is not None else "")
            + (" with ALiBi biases" if a.alibi else "")
        ),
        "mlp_doc": mlp_doc[0].upper() + mlp_doc[1:],
        "model_doc": (
            "Embeddings, the decoder layers and the final norm"
            if a.norm.final
            else "Embeddings and the decoder layers"
        ),
        "parts": parts,
        "needs_math": a.init == "scaled_normal"
        or (a.mlp.moe and a.init == "xavier")
        or any("math." in sources[p] for p in parts),
        "norm": NORM_CLASSES[a.norm.type],
        "norm_eps": a.norm.eps_key,
        "act": TORCH_ACTIVATIONS.get(act, f"ACT2FN[{json.dumps(act)}]"),
        "act2fn": act not in TORCH_ACTIVATIONS,
        "sliding_window": a.windowed,
        # per-layer attention types (transformers' layer_types): one mask per type, chosen per layer
        "layer_types": a.per_layer_types or a.rope_by_layer_type,
        "model_keys": sorted(a.model_keys),
        "numeric_structure": list(schema.NUMERIC_STRUCTURE),
        # structural keys of a part this structure does not have (a mixture's, without one): not listed
        "unused_structure": [] if a.mlp.moe else list(schema.MOE_STRUCTURE),
        "hidden_dropout": "hidden_dropout" in a.model_keys,
        "final_norm": a.norm.final,
        "positions": a.rope is not None or a.absolute_positions,
        "partial_rotary": a.rope is not None and a.rope.partial,
        "rope_by_layer_type": a.rope_by_layer_type,
        # the function turning queries and keys
        "apply_rope": (
            "apply_interleaved_rotary_pos_emb"
            if a.rope is not None and a.rope.interleaved
            else "apply_partial_rotary_pos_emb"
            if a.rope is not None and a.rope.partial
            else "apply_rotary_pos_emb"
        ),
        # as the family's transformers class: a zeroed pad row that gets no gradient, or none
        "padding_idx": bp.meta.get("embedding_padding_idx", a.init in ("scaled_normal", "normal")),
        "transformers_config": transformers_config_fields(bp, a),
        "special_tokens": {
            k: _literal(bp.meta.get("transformers_config", {}).get(k)) for k in SPECIAL_TOKENS
        },
        # transformers' keys that say what the structure is: another value needs other code
        "structure_checks": [
            {"name": k, "structure": v, "value": _code(a.structure[v])}
            for k, v in bp.meta.get("transformers_config_structure", {}).items()
            if v != "partial_rotary_factor"  # read at run time, from rope_parameters
        ],
        # transformers' keys unset by default that the code cannot honour once set: key -> why
        "refused_keys": dict(bp.meta.get("transformers_config_refused", {})),
        "residual_writers": writers,
        "linear_bias": a.attention.bias or a.mlp.bias or a.lm_head_bias,
        "config_fields": config_fields(bp, a),
        # the structure as Python literals, for the configuration class's informational fields
        "arch_literals": {
            k: json.dumps(v) if isinstance(v, str) else repr(v) for k, v in a.structure.items()
        },
        # a mixture of experts: its classes, and the dense MLP class where dense layers or a shared expert use it
        "moe": a.mlp.moe,
        "dense_mlp": not a.mlp.moe or a.mixed_mlp or bool(a.mlp.experts and a.mlp.experts.shared),
        "sparse_rule": _sparse_rule(a),
        # whose hub layout of the experts a checkpoint may have: the family's, else Qwen-MoE's
        # (mlp.experts.N.gate_proj / up_proj / down_proj)
        "moe_conversion": bp.meta.get("transformers_model_type")
        if bp.structure.get("mlp") == "moe"
        else "qwen2_moe",
        "lora_targets": lora_targets(a),
    }


def template_data(
    bp: Blueprint, m: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The data Copier renders a family's templates with (docs/architecture.md, section 4)."""
    project = m.get("project", {})
    a = for_blueprint(bp, m.get("model", {}))
    return {
        "project_name": project.get("name", ""),
        "preset": project.get("preset") or bp.default_preset,
        "overrides": dict(overrides or {}),
        "vocab_follows_tokenizer": "vocab_size" not in (dict(overrides or {}).get("model") or {}),
        # not questions: computed here, so not saved in the answers file
        "manifest": m,
        "manifest_toml": manifest.dumps(m).rstrip(),
        "parts": part_sources(),
        "architecture_mermaid": mermaid_block(diagram_structure(a)).rstrip(),
        "scaffold_version": __version__,
        "blueprint_name": bp.name,
        "blueprint_version": bp.version,
        "blueprint_description": bp.meta.get("description", ""),
        "family": bp.name,
        "prefix": a.class_prefix or bp.prefix,
        "config_class": bp.meta["config_class"],
        # the structural keys as the manifest spells them (the configuration class lists them)
        "arch": dict(a.structure),
        "architecture": a,
        "names": bp.names,
        "plan": plan(bp, a),
        "plans": plans_for(bp, a),  # tensor- and pipeline-parallel plans
    }


# Filters of Copier's default Jinja extension (jinja2-ansible-filters) that read the host: the
# environment, the home folder, the file system, the working directory. A template renders from the
# data scaffold gives it, nothing else, so its environment offers none of them.
HOST_FILTERS = ("expandvars", "expanduser", "realpath", "relpath", "fileglob")


def render_into(bp: Blueprint, dest: Path, data: Mapping[str, Any]) -> None:
    from copier._main import Worker
    from copier._settings import SettingsModel

    try:
        with Worker(
            src_path=str(bp.template_path),
            dst_path=Path(dest),
            data=dict(data),
            # not the user's Copier settings: a "trust" there must not unlock anything for a blueprint
            settings=SettingsModel(),
            defaults=True,
            overwrite=True,
            unsafe=False,
            quiet=True,
            cleanup_on_error=False,
        ) as worker:
            env = worker.jinja_env  # built once and cached: every file renders in this environment
            for name in HOST_FILTERS:
                env.filters.pop(name, None)
            worker.run_copy()
    except Exception as err:  # copier and jinja raise many kinds; all mean the blueprint is at fault
        raise template_error(err, bp) from err


def code_files(bp: Blueprint) -> list[str]:
    """The files of a project that a rendering writes and a user may edit: modeling, configuration, card."""
    return [bp.meta["modeling_file"], bp.meta["configuration_file"], "README.md"]


def render_files(bp: Blueprint, m: Mapping[str, Any]) -> dict[str, str]:
    """The code files of a project with the resolved manifest ``m``, rendered by Copier into a temporary
    folder: relative path -> text (the modeling file, the configuration file and the model card)."""
    from scaffold.atomic import fault_point, scratch_dir

    with scratch_dir("render") as tmp:
        dest = tmp / "project"
        render_into(bp, dest, template_data(bp, m))
        fault_point("render-scratch")  # tests stop or kill the process here (SCAFFOLD_FAULT)
        return {
            name: (dest / name).read_text(encoding="utf-8")
            for name in code_files(bp)
            if (dest / name).is_file()
        }


def template_error(err: BaseException, bp: Blueprint) -> BlueprintError:
    """A one-line error naming the template file, line and variable where rendering failed."""
    import jinja2

    where: str | Path = bp.template_path
    tb = err.__traceback__
    while tb is not None:  # jinja puts the template's file and line into the traceback
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith(bp.meta.get("template_suffix", ".jinja")) and Path(filename).is_file():
            where = f"{filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    if isinstance(err, jinja2.TemplateSyntaxError) and err.filename:
        where = f"{err.filename}:{err.lineno}"
    if isinstance(err, jinja2.UndefinedError):
        found = re.search(r"'([^']+)' is undefined|has no attribute '([^']+)'", str(err))
        variable = next((g for g in found.groups() if g), None) if found else None
        return BlueprintError(
            f"undefined template variable ({one_line(err)}); is it misspelt?", path=where, key=variable
        )
    return BlueprintError(f"rendering failed: {type(err).__name__}: {one_line(err)}", path=where)
