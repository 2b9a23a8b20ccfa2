"""The manifest schema: every key a ``scaffold.toml`` may hold, its type, its check and its one doc line.

The same text serves the manifest's validation messages, ``--help`` of the override flags, and the
docs (``scaffold schema`` prints it). Model keys use transformers' standard names so that one
vocabulary serves the manifest, the command-line flags and ``config.json``.

A blueprint says which ``[model]`` keys its family understands (the keys of its defaults); any other
model key is an error for that family.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scaffold.devices import TEST_DTYPE_NAMES, TEST_DTYPES

Check = Callable[[Any], "str | None"]


def positive(v: Any) -> str | None:
    return None if v > 0 else f"must be positive, got {v}"


# The largest a model size may be: one tensor dimension torch indexes with 32 bits in places, and
# far past any model; larger sizes would overflow torch's int64 shape products (C++ errors, not ours).
MAX_SIZE = 2**31 - 1


def size(v: Any) -> str | None:
    """A model size (a width, a count of layers, heads or positions): positive and at most MAX_SIZE."""
    if v <= 0:
        return f"must be positive, got {v}"
    return None if v <= MAX_SIZE else f"must be at most {MAX_SIZE} (2^31 - 1), got {v}"


def has_control(text: str) -> bool:
    """Whether ``text`` holds a control, format or line-separator character (a newline, a NUL...)."""
    import unicodedata

    return any(unicodedata.category(c)[0] in "CZ" and c != " " for c in text)


def one_line(v: Any) -> str | None:
    """Text that generated files quote in comments and headers: one line, no control characters."""
    return f"must be one line without control characters, got {v!r}" if has_control(v) else None


def non_negative(v: Any) -> str | None:
    return None if v >= 0 else f"must be zero or more, got {v}"


def seed_range(v: Any) -> str | None:
    return None if 0 <= v < 2**32 else f"must be in [0, 2^32 - 1], got {v}"


def probability(v: Any) -> str | None:
    return None if 0.0 <= v < 1.0 else f"must be in [0, 1), got {v}"


def fraction(v: Any) -> str | None:
    return None if 0.0 < v <= 1.0 else f"must be in (0, 1], got {v}"


def each_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        bad = [x for x in v if x not in choices]
        return f"entries must be one of {', '.join(choices)}; got {bad[0]!r}" if bad else None

    return check


def zeros_and_ones(v: Any) -> str | None:
    bad = [x for x in v if isinstance(x, bool) or x not in (0, 1)]
    return f"entries must be 0 or 1; got {bad[0]!r}" if bad else None


def dtype_name(v: Any) -> str | None:
    """test.dtype: a dtype scaffold test trains in, by any name it accepts (bf16 for bfloat16...);
    the message lists the dtypes themselves."""
    return None if v in TEST_DTYPE_NAMES else f"must be one of {', '.join(TEST_DTYPES)}; got {v!r}"


def non_negative_ints(v: Any) -> str | None:
    bad = [x for x in v if not isinstance(x, int) or isinstance(x, bool) or x < 0]
    return f"entries must be layer indices (integers from 0); got {bad[0]!r}" if bad else None


def one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}; got {v!r}"

    return check


@dataclass(frozen=True)
class Field:
    """One manifest key: ``section.key``, its accepted types, a check and its doc line."""

    section: str
    key: str
    types: tuple[type, ...]
    doc: str
    checks: tuple[Check, ...] = ()
    nullable: bool = False  # may be set to null from the command line (removed from the manifest)
    flags: tuple[str, ...] = field(default=())  # extra command-line spellings (the seed's)

    @property
    def path(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def type_name(self) -> str:
        names = {
            int: "integer",
            float: "number",
            bool: "boolean",
            str: "string",
            dict: "table",
            list: "array",
        }
        return " or ".join(names[t] for t in self.types)

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable for this key, or None."""
        if value is None:
            return None if self.nullable else "must not be null"
        ok = any(
            isinstance(value, t) and not (t in (int, float) and isinstance(value, bool)) for t in self.types
        )
        if not ok:
            article = "an" if self.type_name[0] in "aeiou" else "a"
            return f"must be {article} {self.type_name}, got {type(value).__name__} {value!r}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            return f"must fit in 64 bits, got {value}"
        for check in self.checks:
            msg = check(value)
            if msg:
                return msg
        return None


INT, FLOAT, NUM, BOOL, STR = (int,), (float,), (int, float), (bool,), (str,)
ATTN = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3")
DTYPES = TEST_DTYPES  # what scaffold test trains in; any spelling of them in TEST_DTYPE_NAMES

# The structural keys' values. Each value names the code a template renders for it
# (docs/architecture.md, section 3).
NORM_TYPES = ("rmsnorm", "layernorm", "rmsnorm_unit_offset")
NORM_POSITIONS = ("pre", "post", "deepnorm", "post_sublayer", "sandwich")
POSITION_EMBEDDINGS = ("rope", "alibi", "sinusoidal", "learned", "none")
ATTENTIONS = ("multi_head", "single_head")
MLPS = ("gated", "plain", "moe")
# a mixture of experts' router: softmax over every expert before the top-k (Mixtral, Qwen-MoE, OLMoE), or
# an independent sigmoid score per expert
ROUTERS = ("softmax", "sigmoid")
# a mixture of experts' shared expert, added to the routed ones for every token: none, or one dense
# SwiGLU scaled by a sigmoid gate (Qwen2-MoE), or ungated
SHARED_EXPERTS = ("none", "gated", "plain")
# how q, k and v (and a gated MLP's gate and up) are stored: separate matrices, or one fused matrix
QKV_LAYOUTS = ("separate", "fused", "fused_per_head")
MLP_LAYOUTS = ("separate", "fused")
# transformers' ACT2FN names the generated code can use (read without importing transformers)
ACTIVATIONS = ("silu", "relu", "gelu", "gelu_pytorch_tanh", "gelu_new", "tanh", "sigmoid")
QK_NORMS = ("none", "head", "full", "l2")
LAYER_TYPES = ("full_attention", "sliding_attention")
EMBEDDING_SCALES = ("none", "sqrt_hidden")
INITS = ("scaled_normal", "xavier", "deepnet", "normal")

# Every structural key and its value when neither the family nor the manifest sets it (Llama's).
STRUCTURE: dict[str, Any] = {
    "norm_type": "rmsnorm",
    "norm_bias": True,
    "norm_position": "pre",
    "position_embedding": "rope",
    "attention": "multi_head",
    "attention_bias": False,
    "mlp": "gated",
    "hidden_act": "silu",
    "mlp_bias": False,
    "parallel_residual": False,
    "partial_rotary_factor": 1.0,
    "qkv_layout": "separate",
    "mlp_layout": "separate",
    "lm_head_bias": False,
    "embedding_scale": "none",
    "qk_norm": "none",
    "qkv_bias": False,
    "init": "scaled_normal",
    # a mixture of experts (mlp = "moe"): the router, whether the top-k weights are renormalised, a shared expert
    "router": "softmax",
    "norm_topk_prob": False,
    "shared_expert": "none",
    "nope_layers": False,
    "attention_sinks": False,
    "attention_output_gate": False,
    "rope_interleaved": False,
    # structural by presence: set, the code for them is generated and reads their values from the config
    "attn_logit_softcapping": None,
    "final_logit_softcapping": None,
    "query_pre_attn_scalar": None,
    "rope_local_base_freq": None,
    "embedding_multiplier": None,
    "residual_multiplier": None,
    "attention_multiplier": None,
    "logits_scaling": None,
}
# The structural keys of a mixture of experts (mlp = "moe"); without one they are left at their defaults.
MOE_STRUCTURE = ("router", "norm_topk_prob", "shared_expert")
# The structural keys that are numbers: absent (None) leaves their code out; set, their value is config.
NUMERIC_STRUCTURE = (
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "query_pre_attn_scalar",
    "rope_local_base_freq",
    "embedding_multiplier",
    "residual_multiplier",
    "attention_multiplier",
    "logits_scaling",
)
# Number-valued structural keys whose value lives inside another config field, not in one of their own
# (the sliding layers' RoPE base is in rope_parameters, per layer type, as transformers 5 keeps it).
FOLDED_STRUCTURE = ("rope_local_base_freq",)

# Number keys a structural value needs, with the value used when the manifest has none: a family that
# never mentions layer_norm_eps accepts it (and gets 1e-5) once norm_type = layernorm.
COMPANIONS: dict[tuple[str, Any], dict[str, Any]] = {
    ("norm_type", "rmsnorm"): {"rms_norm_eps": 1e-6},
    ("norm_type", "rmsnorm_unit_offset"): {"rms_norm_eps": 1e-6},
    ("norm_type", "layernorm"): {"layer_norm_eps": 1e-5},
    ("position_embedding", "rope"): {"rope_theta": 10000.0},
    ("position_embedding", "alibi"): {"alibi_trainable": False},
    ("position_embedding", "learned"): {"max_position_embeddings": 2048},
    ("attention", "single_head"): {"alibi_slope_init": 0.5},
    ("init", "scaled_normal"): {"initializer_range": 0.02},
    ("init", "normal"): {"initializer_range": 0.02},
    # a mixture of experts: experts, experts per token, their width, the per-layer dense/sparse pattern and
    # the load-balancing loss (a family of Mixtral's convention spells some otherwise: moe_companions)
    ("mlp", "moe"): {
        "num_experts": 8,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 256,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "first_k_dense_replace": 0,
        "router_aux_loss_coef": 0.001,
        "output_router_logits": False,
    },
    ("shared_expert", "gated"): {"shared_expert_intermediate_size": 512},
    ("shared_expert", "plain"): {"shared_expert_intermediate_size": 512},
    ("nope_layers", True): {"no_rope_layer_interval": 4},
}
# Model keys a structural value makes acceptable without a default (absent: derived from others).
OPTIONAL_COMPANIONS: dict[tuple[str, Any], tuple[str, ...]] = {
    ("nope_layers", True): ("no_rope_layers",),
}
# Model keys a model cannot do without (where its family has them): never absent from a resolved manifest.
REQUIRED_MODEL_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
)
# The config keys that choose a mixture's dense layers, in the order the generated rule tests them.
MOE_PATTERN_KEYS = ("mlp_only_layers", "decoder_sparse_step", "first_k_dense_replace")
# Mixtral's convention (a family whose keys name num_local_experts): its experts are the feed-forward, as
# wide as intermediate_size, and every layer is sparse, so the generic keys below are not its keys.
MIXTRAL_EXPERTS_KEY = "num_local_experts"
MIXTRAL_DROPS = (
    "num_experts",
    "moe_intermediate_size",
    "decoder_sparse_step",
    "mlp_only_layers",
    "first_k_dense_replace",
)
# Model keys every family understands besides the structural ones.
UNIVERSAL_MODEL_KEYS = ("tie_word_embeddings",)


def structure_of(model: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved structure of a ``[model]`` table: every structural key, defaults filled in."""
    return {key: model.get(key, default) for key, default in STRUCTURE.items()}


def optional_companions(structure: Mapping[str, Any]) -> set[str]:
    """The model keys ``structure`` accepts that have no default (derived when absent)."""
    return {
        k for (key, value), keys in OPTIONAL_COMPANIONS.items() if structure.get(key) == value for k in keys
    }


def companions(structure: Mapping[str, Any], family_keys: Any = ()) -> dict[str, Any]:
    """The number keys ``structure`` needs, with their values for when the manifest has none
    (``family_keys``: the family's own keys, for the spellings of a family of Mixtral's convention)."""
    out: dict[str, Any] = {}
    for (key, value), needed in COMPANIONS.items():
        if structure.get(key) == value:
            out.update(needed)
    family_keys = set(family_keys)
    if structure.get("mlp") == "moe" and family_keys & set(MOE_PATTERN_KEYS):
        for key in (
            set(MOE_PATTERN_KEYS) - family_keys
        ):  # the family's class chooses dense layers its way only
            out.pop(key, None)
    if structure.get("mlp") == "moe" and MIXTRAL_EXPERTS_KEY in family_keys:
        for key in MIXTRAL_DROPS:
            out.pop(key, None)
        out.setdefault(MIXTRAL_EXPERTS_KEY, 8)
    return out


FIELDS: tuple[Field, ...] = (
    # [project]
    Field("project", "name", STR, "Project name; also the model's name in its card.", (one_line,)),
    Field(
        "project", "blueprint", STR, "Blueprint (model family) the project was generated from.", (one_line,)
    ),
    Field(
        "project",
        "blueprint_version",
        STR,
        "Version of the blueprint the project was generated from.",
        (one_line,),
    ),
    Field("project", "preset", STR, "Preset of the blueprint the sizes started from.", (one_line,)),
    Field("project", "description", STR, "One line for the model card.", (one_line,)),
    # [model]
    Field("model", "vocab_size", INT, "Vocabulary size of the embedding and output head.", (size,)),
    Field("model", "hidden_size", INT, "Width of the residual stream (d_model).", (size,)),
    Field("model", "num_hidden_layers", INT, "Number of decoder layers.", (size,)),
    Field(
        "model",
        "num_attention_heads",
        INT,
        "Number of query heads (and KV heads, if otherwise unspecified).",
        (size,),
    ),
    Field(
        "model",
        "num_key_value_heads",
        INT,
        "Number of key/value heads (grouped-query attention); must divide the query heads.",
        (size,),
        nullable=True,  # null: as many as the query heads
        flags=("--num-kv-heads",),
    ),
    Field(
        "model",
        "head_dim",
        INT,
        "Width of one attention head; defaults to hidden_size / num_attention_heads.",
        (size,),
        nullable=True,  # null: derived, as the doc says
        flags=("--d-head",),
    ),
    Field(
        "model",
        "intermediate_size",
        INT,
        "Width of the feed-forward layer.",
        (size,),
        flags=("--dim-feedforward",),
    ),
    Field("model", "max_position_embeddings", INT, "Longest sequence the model is meant for.", (size,)),
    Field("model", "rope_theta", NUM, "Base of the rotary position embedding's frequencies.", (positive,)),
    Field(
        "model",
        "rope_scaling",
        (dict,),
        'RoPE scaling as a table, e.g. {rope_type = "llama3", factor = 32.0, ...}; null disables.',
        nullable=True,
    ),
    Field("model", "rms_norm_eps", NUM, "Epsilon of the RMS norms.", (positive,)),
    Field("model", "layer_norm_eps", NUM, "Epsilon of the layer norms.", (positive,)),
    Field(
        "model",
        "sliding_window",
        INT,
        "Attend only to this many most recent tokens; null disables.",
        (positive,),
        nullable=True,
    ),
    Field(
        "model",
        "layer_types",
        (list,),
        "Attention per layer, as transformers' layer_types: full_attention or sliding_attention (within "
        "sliding_window), one per layer; absent: every layer slides when sliding_window is set.",
        (each_of(*LAYER_TYPES),),
        nullable=True,
    ),
    Field(
        "model",
        "sliding_window_pattern",
        INT,
        "When layer_types is absent: every N-th layer attends to everything, the others within sliding_window "
        "(Gemma 2: 2; transformers' Gemma 3 name).",
        (positive,),
    ),
    Field(
        "model",
        "no_rope_layers",
        (list,),
        "With nope_layers: one entry per layer, 1 where RoPE turns queries and keys, 0 where the layer attends "
        "without positions (NoPE); absent: every no_rope_layer_interval-th layer has none (SmolLM3, Llama 4).",
        (zeros_and_ones,),
        nullable=True,
    ),
    Field(
        "model",
        "no_rope_layer_interval",
        INT,
        "With nope_layers and no_rope_layers absent: every N-th layer (N, 2N, ...) attends without RoPE (SmolLM3: 4).",
        (positive,),
    ),
    Field("model", "tie_word_embeddings", BOOL, "Share the input embedding with the output head."),
    Field("model", "attention_dropout", NUM, "Dropout on attention probabilities.", (probability,)),
    Field("model", "hidden_dropout", NUM, "Dropout on the embeddings and residual branches.", (probability,)),
    Field("model", "initializer_range", NUM, "Standard deviation of the default weight init.", (positive,)),
    Field("model", "alibi_trainable", BOOL, "Learn the ALiBi slopes instead of fixing them."),
    Field(
        "model",
        "alibi_slope_init",
        NUM,
        "Initial value of single_head's one ALiBi slope (its fixed value when alibi_trainable is false).",
        (positive,),
    ),
    # [model]: structure. Resolved when the code is generated (the modeling file never reads them);
    # every family accepts every structural key, with STRUCTURE's value (Llama's) when neither the
    # family nor the manifest sets it.
    Field(
        "model",
        "norm_type",
        STR,
        "Normalisation: rmsnorm, layernorm, or rmsnorm_unit_offset (Gemma's: x / rms(x) * (1 + w) in float32, "
        "w starting at zero).",
        (one_of(*NORM_TYPES),),
    ),
    Field("model", "norm_bias", BOOL, "Give the layer norms a bias (norm_type = layernorm)."),
    Field(
        "model",
        "norm_position",
        STR,
        "Where the norms sit: pre (before each sublayer), post (after each residual sum), deepnorm "
        "(post, the residual scaled by (2L)^(1/4)), post_sublayer (each sublayer's output normed before "
        "the residual add: OLMo 2) or sandwich (before and after each sublayer: Gemma 2).",
        (one_of(*NORM_POSITIONS),),
    ),
    Field(
        "model",
        "position_embedding",
        STR,
        "Positions: rope (rotary), alibi (linear attention biases), sinusoidal (added to the embeddings), "
        "learned (a trained table added to the embeddings) or none.",
        (one_of(*POSITION_EMBEDDINGS),),
    ),
    Field(
        "model",
        "attention",
        STR,
        "Attention: multi_head (grouped-query when num_key_value_heads < num_attention_heads) or single_head "
        "(one head of width hidden_size, a fused query-key matrix, no output projection; needs alibi).",
        (one_of(*ATTENTIONS),),
    ),
    Field("model", "attention_bias", BOOL, "Biases on the query, key, value and output projections."),
    Field(
        "model",
        "qkv_bias",
        BOOL,
        "Biases on the query, key and value projections only, not the output one (Qwen2).",
    ),
    Field(
        "model",
        "qk_norm",
        STR,
        "Normalise queries and keys: none, head (each head over head_dim: Qwen3) or full (over all heads' "
        "width at once: OLMo 2), both before RoPE with the model's norm_type, or l2 (each head divided by its "
        "RMS, no weight, after RoPE: Llama 4).",
        (one_of(*QK_NORMS),),
    ),
    Field(
        "model",
        "mlp",
        STR,
        "Feed-forward: gated (down(act(gate(x)) * up(x))), plain (down(act(up(x)))) or moe (a router sends each "
        "token to num_experts_per_tok of num_experts gated experts; dense layers per decoder_sparse_step, "
        "mlp_only_layers, first_k_dense_replace).",
        (one_of(*MLPS),),
    ),
    Field(
        "model",
        "hidden_act",
        STR,
        "Feed-forward activation, as transformers names it (silu: SwiGLU when gated, relu, gelu, ...).",
        (one_of(*ACTIVATIONS),),
    ),
    Field("model", "mlp_bias", BOOL, "Biases on the feed-forward projections."),
    Field(
        "model",
        "num_experts",
        INT,
        "mlp = moe: routed experts per sparse layer (Mixtral spells it num_local_experts).",
        (positive,),
    ),
    Field(
        "model",
        "num_local_experts",
        INT,
        "mlp = moe: routed experts per layer (Mixtral's name).",
        (positive,),
    ),
    Field(
        "model",
        "num_experts_per_tok",
        INT,
        "mlp = moe: experts each token is routed to (top-k).",
        (positive,),
    ),
    Field(
        "model",
        "moe_intermediate_size",
        INT,
        "mlp = moe: width of each expert's SwiGLU (Mixtral: intermediate_size).",
        (positive,),
    ),
    Field(
        "model",
        "shared_expert_intermediate_size",
        INT,
        "shared_expert: width of the shared expert's SwiGLU.",
        (positive,),
    ),
    Field(
        "model",
        "decoder_sparse_step",
        INT,
        "mlp = moe: every N-th layer is sparse (layer i when (i + 1) % N == 0), the others dense (Qwen-MoE).",
        (positive,),
    ),
    Field(
        "model",
        "mlp_only_layers",
        (list,),
        "mlp = moe: indices of layers with a dense feed-forward instead of experts (Qwen-MoE).",
        (non_negative_ints,),
    ),
    Field(
        "model",
        "first_k_dense_replace",
        INT,
        "mlp = moe: the first k layers are dense, the rest sparse (DeepSeek).",
        (non_negative,),
    ),
    Field(
        "model",
        "router_aux_loss_coef",
        NUM,
        "mlp = moe: weight of the load-balancing loss added to the loss when router logits are output.",
        (non_negative,),
    ),
    Field(
        "model",
        "output_router_logits",
        BOOL,
        "mlp = moe: return each sparse layer's router logits and add the load-balancing loss to the loss.",
    ),
    Field(
        "model",
        "router_jitter_noise",
        NUM,
        "mlp = moe: in training, multiply the experts' input by noise uniform in [1 - e, 1 + e] (Mixtral).",
        (probability,),
    ),
    Field(
        "model",
        "router",
        STR,
        "mlp = moe: expert scores, softmax over every expert before the top-k (Mixtral, Qwen-MoE, OLMoE) or "
        "sigmoid per expert.",
        (one_of(*ROUTERS),),
    ),
    Field(
        "model",
        "norm_topk_prob",
        BOOL,
        "mlp = moe: renormalise the top-k scores of each token to sum to one (Mixtral: always).",
    ),
    Field(
        "model",
        "shared_expert",
        STR,
        "mlp = moe: a dense expert every token also goes through: none, gated (scaled by sigmoid(w . x), "
        "Qwen2-MoE) or plain.",
        (one_of(*SHARED_EXPERTS),),
    ),
    Field(
        "model",
        "parallel_residual",
        BOOL,
        "Attention and feed-forward read the same input and are added together: x = x + attn(norm1(x)) + "
        "mlp(norm2(x)) (GPT-NeoX, GPT-J; needs norm_position = pre).",
    ),
    Field(
        "model",
        "partial_rotary_factor",
        NUM,
        "Fraction of each head's features RoPE rotates (GPT-NeoX: 0.25); the rest pass through unrotated.",
        (fraction,),
    ),
    Field(
        "model",
        "qkv_layout",
        STR,
        "How q, k and v are stored: separate (q_proj, k_proj, v_proj), fused (one qkv_proj stacked [q; k; v], "
        "Phi-3) or fused_per_head (one matrix, each head's [q; k; v] side by side, GPT-NeoX).",
        (one_of(*QKV_LAYOUTS),),
    ),
    Field(
        "model",
        "mlp_layout",
        STR,
        "How a gated feed-forward stores gate and up: separate, or fused (one gate_up_proj stacked [gate; up], Phi-3).",
        (one_of(*MLP_LAYOUTS),),
    ),
    Field("model", "lm_head_bias", BOOL, "A bias on the output head."),
    Field(
        "model",
        "embedding_scale",
        STR,
        "Scale the token embeddings: none, or sqrt_hidden (by sqrt(hidden_size)).",
        (one_of(*EMBEDDING_SCALES),),
    ),
    Field(
        "model",
        "attn_logit_softcapping",
        NUM,
        "Soft-cap attention scores to (-c, c) by c * tanh(s / c) before the mask (Gemma 2: 50); null: off. "
        "sdpa cannot apply it.",
        (positive,),
        nullable=True,
    ),
    Field(
        "model",
        "final_logit_softcapping",
        NUM,
        "Soft-cap the output logits to (-c, c) by c * tanh(x / c) (Gemma 2: 30); null: off.",
        (positive,),
        nullable=True,
    ),
    Field(
        "model",
        "query_pre_attn_scalar",
        NUM,
        "Scale attention scores by query_pre_attn_scalar^-0.5 instead of head_dim^-0.5 (Gemma 2); null: head_dim.",
        (positive,),
        nullable=True,
    ),
    Field(
        "model",
        "nope_layers",
        BOOL,
        "Some layers attend without RoPE (NoPE), as model.no_rope_layers says (SmolLM3, Llama 4); needs "
        "position_embedding = rope.",
    ),
    Field(
        "model",
        "rope_local_base_freq",
        NUM,
        "The sliding-window layers' own RoPE base (Gemma 3: 10000, the full layers keeping rope_theta and "
        "rope_scaling), as transformers 5's per-layer-type rope_parameters; null: one RoPE for every layer.",
        (positive,),
        nullable=True,
    ),
    Field(
        "model",
        "attention_sinks",
        BOOL,
        "A learned sink logit per head (gpt-oss's `sinks`): one more softmax column that takes probability mass "
        "and adds nothing to the output. eager, flex_attention and flash kernels taking s_aux; not sdpa.",
    ),
    Field(
        "model",
        "attention_output_gate",
        BOOL,
        "Gate attention's output by sigmoid(gate) before o_proj, the gate a second half of each head's q_proj "
        "output (Qwen3-Next's gated attention); needs qkv_layout = separate.",
    ),
    Field(
        "model",
        "rope_interleaved",
        BOOL,
        "RoPE turns adjacent feature pairs (x0, x1), (x2, x3)... (GLM) instead of the two halves of each head.",
    ),
    Field(
        "model",
        "embedding_multiplier",
        NUM,
        "Multiply the token embeddings by this (Granite: 12); null: off.",
        (positive,),
        nullable=True,
    ),
    Field(
        "model",
        "residual_multiplier",
        NUM,
        "Multiply each sublayer's output by this before the residual add (Granite: 0.22; pre-norm only); null: off.",
        (positive,),
        nullable=True,
    ),
    Field(
        "model",
        "attention_multiplier",
        NUM,
        "Scale attention scores by this instead of head_dim^-0.5 (Granite: 1/64); null: head_dim^-0.5.",
        (positive,),
        nullable=True,
    ),
    Field(
        "model",
        "logits_scaling",
        NUM,
        "Divide the output logits by this (Granite: 8); null: off.",
        (positive,),
        nullable=True,
    ),
    Field(
        "model",
        "init",
        STR,
        "Weight init: scaled_normal (truncated normal, residual writers / sqrt(2L), head d^-0.5), xavier "
        "(xavier-uniform, zero biases, embeddings d^-0.5), deepnet (xavier with DeepNet's beta gain) or normal "
        "(transformers' own: normal(0, initializer_range), zero biases).",
        (one_of(*INITS),),
    ),
    # [tokenizer]
    Field(
        "tokenizer",
        "kind",
        STR,
        "Tokenizer kind: byte (needs no data), bpe (trained on your text) or pretrained (a file on disk).",
        (one_of("byte", "bpe", "pretrained"),),
    ),
    Field(
        "tokenizer",
        "vocab_size",
        INT,
        "Vocabulary size a BPE tokenizer is trained to (specials included); defaults to model.vocab_size.",
        (positive,),
    ),
    Field(
        "tokenizer",
        "files",
        (list,),
        "Files a BPE tokenizer is trained on (text, JSON Lines, CSV, Parquet), relative to the project.",
    ),
    Field(
        "tokenizer",
        "dataset",
        STR,
        "A dataset a BPE tokenizer is trained on (file, folder or dataset.toml), relative to the project.",
    ),
    Field(
        "tokenizer", "dataset_config", STR, "The configuration of tokenizer.dataset's dataset.toml to use."
    ),
    Field(
        "tokenizer",
        "min_frequency",
        INT,
        "A BPE merge needs a pair seen at least this often (default 2).",
        (positive,),
    ),
    Field(
        "tokenizer",
        "path",
        STR,
        "A tokenizer.json or tokenizer folder to reuse (kind = pretrained), relative to the project.",
    ),
    Field(
        "tokenizer",
        "chat_template",
        STR,
        "A named chat template (chatml), inherit (a pretrained tokenizer's own), a template file, or '' for none.",
    ),
    Field("tokenizer", "model_max_length", INT, "Longest input the tokenizer announces.", (positive,)),
    # [generation]
    Field("generation", "max_new_tokens", INT, "Default number of tokens generate() adds.", (positive,)),
    Field("generation", "do_sample", BOOL, "Sample instead of greedy decoding."),
    Field("generation", "temperature", NUM, "Sampling temperature.", (positive,)),
    Field("generation", "top_k", INT, "Keep only the k most likely tokens when sampling.", (non_negative,)),
    Field("generation", "top_p", NUM, "Nucleus sampling probability mass.", (positive,)),
    Field("generation", "repetition_penalty", NUM, "Penalty on repeated tokens (1.0 = none).", (positive,)),
    # [test]
    Field(
        "test",
        "device",
        STR,
        "Device the model is constructed and run on: auto (CUDA when available, else CPU), cpu, cuda:N.",
    ),
    Field("test", "dtype", STR, "Parameter dtype the model is constructed in.", (dtype_name,)),
    Field("test", "steps", INT, "Optimizer steps scaffold test runs.", (positive,)),
    Field("test", "batch_size", INT, "Sequences per step.", (positive,)),
    Field("test", "sequence_length", INT, "Tokens per sequence.", (positive,)),
    Field("test", "lr", NUM, "AdamW learning rate.", (positive,)),
    Field("test", "attn_implementation", STR, "Attention backend.", (one_of(*ATTN),)),
    Field("test", "gradient_checkpointing", BOOL, "Recompute activations in backward to save memory."),
    Field(
        "test",
        "fuse_optim_with_backward",
        BOOL,
        "Step each parameter as soon as its gradient is ready, freeing gradients early.",
    ),
    Field(
        "test",
        "seed",
        INT,
        "Random seed for the weights and the random tokens (0 to 2^32 - 1).",
        (seed_range,),
    ),
    Field(
        "test",
        "dataset",
        STR,
        "Train on this dataset instead of random tokens: a text, JSON Lines, CSV or Parquet file, a folder "
        "of them, a save_to_disk folder, a dataset.toml or folder holding one (relative to the project), or a "
        "sample shipped with scaffold (sample:tinyshakespeare).",
    ),
    Field("test", "dataset_config", STR, "The configuration of test.dataset's dataset.toml to use."),
    Field(
        "test",
        "packed",
        BOOL,
        "Pack several documents into each sequence (position ids restart at each document, no attention mask).",
    ),
)

# Command-line options of build, test and show that are not manifest keys, documented once here
# (their --help is this text).
OPTIONS: dict[str, str] = {
    "output_dir": "The model directory (default: PROJECT/model): build writes it, test builds and loads it, "
    "show reports whether it is up to date.",
    "no_init_weights": "Construct the model without running any weight init (scaffold.no_init_weights); "
    "its weights then come from --load-from-checkpoint or the model directory.",
    "load_from_checkpoint": "Load the weights from this safetensors checkpoint (a folder in the Hugging Face "
    "layout, or a .safetensors file); strict: every tensor must fit.",
    # scaffold test's multi-node options (torch.distributed.run's own)
    "nnodes": "With --nproc: the number of machines (nodes) taking part; run the same `scaffold test` "
    "command on each, with the same --rdzv-endpoint (default 1: this machine alone).",
    "node_rank": "With --nnodes: this node's rank, 0 to N-1 (static rendezvous: node 0 listens at "
    "--rdzv-endpoint and takes ranks 0 to nproc-1). Absent: c10d rendezvous, ranks in order of arrival.",
    "rdzv_endpoint": "With --nnodes: HOST:PORT where the nodes meet (a port free on HOST, the first node "
    "or any reachable one); needed with --nnodes above 1.",
    "rdzv_id": "With --nnodes: the job's name at the rendezvous, the same on every node (default scaffold).",
}

SECTIONS = ("project", "model", "tokenizer", "generation", "test")
BY_PATH: dict[str, Field] = {f.path: f for f in FIELDS}


def lookup(key: str) -> Field | None:
    """Find a field by ``section.key`` or by a bare key that is unique across sections."""
    if key in BY_PATH:
        return BY_PATH[key]
    hits = [f for f in FIELDS if f.key == key]
    return hits[0] if len(hits) == 1 else None


def describe() -> str:
    """The schema as text, one key a line, for ``scaffold schema`` and the docs."""
    lines: list[str] = []
    for section in SECTIONS:
        lines.append(f"[{section}]")
        for f in FIELDS:
            if f.section == section:
                null = ", or null" if f.nullable else ""
                lines.append(f"  {f.key:<26} {f.type_name}{null}: {f.doc}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# What a blueprint's strings may be where they reach generated code. The templates paste names
# (classes, attributes, modules, config fields) into Python source, so each must be a plain ASCII name;
# everything else a template needs from blueprint.toml is emitted as a literal (repr).
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def toml_key(key: str) -> str:
    """``key`` as TOML spells it in a dotted key path: bare when it can be, else quoted on one line."""
    import json

    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def is_name(value: Any) -> bool:
    """Whether ``value`` is a name generated code may use: ``[A-Za-z_][A-Za-z0-9_]*``, not a keyword."""
    import keyword

    return isinstance(value, str) and bool(NAME_RE.fullmatch(value)) and not keyword.iskeyword(value)
