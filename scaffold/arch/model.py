"""The resolved architecture: a frozen, typed description of one decoder, layer by layer.

An :class:`Architecture` is what every part of scaffold reads about a model's structure: the code
generator (which parts and branches a modeling file holds), the configuration class and
``config.json`` fields, the transformers config mapping (both directions), the tensor- and
pipeline-parallel plans, the diagram and ``scaffold show``, LoRA targets. It is built once by
:func:`scaffold.arch.resolve` from a family and a resolved ``[model]`` table and never changed.

Nothing here imports torch or Jinja: it is plain data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

FULL, SLIDING = "full_attention", "sliding_attention"


def frozen_mapping(data: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """A read-only view of a copy of ``data``."""
    return MappingProxyType(dict(data or {}))


@dataclass(frozen=True)
class Norm:
    """The normalisation every norm of the model uses."""

    type: str  # rmsnorm | layernorm | rmsnorm_unit_offset
    bias: bool  # LayerNorm's bias (layernorm only)
    position: str  # pre | post | deepnorm | post_sublayer | sandwich
    parallel_residual: bool = False

    @property
    def eps_key(self) -> str:
        """The config key holding the norm's epsilon."""
        return "layer_norm_eps" if self.type == "layernorm" else "rms_norm_eps"

    @property
    def final(self) -> bool:
        """Whether the stack ends in a final norm (post-norm blocks already end in one)."""
        return self.position != "post"


@dataclass(frozen=True)
class Rope:
    """Rotary position embeddings: one base, one scaling, the rotated fraction of each head."""

    theta: float
    scaling: Mapping[str, Any] = field(default_factory=frozen_mapping)  # without rope_type
    type: str = "default"  # default | linear | llama3 | yarn | ...
    partial_rotary_factor: float = 1.0
    interleaved: bool = False  # adjacent feature pairs turned (GLM), not the two halves of each head

    @property
    def partial(self) -> bool:
        return self.partial_rotary_factor < 1

    def parameters(self) -> dict[str, Any]:
        """transformers 5's ``rope_parameters`` for this RoPE."""
        out: dict[str, Any] = {"rope_type": self.type, "rope_theta": float(self.theta), **self.scaling}
        if self.partial:
            out["partial_rotary_factor"] = float(self.partial_rotary_factor)
        return out


@dataclass(frozen=True)
class Attention:
    """Self-attention, the same in every layer (what varies per layer is in :class:`Layer`)."""

    kind: str  # multi_head (grouped-query when fewer kv heads) | single_head
    num_heads: int | None
    num_kv_heads: int | None
    head_dim: int | None
    qkv_layout: str = "separate"  # separate | fused ([q; k; v] blocks) | fused_per_head (interleaved)
    qk_norm: str = "none"  # none | head | full
    bias: bool = False  # on q, k, v and o
    qkv_bias: bool = False  # on q, k and v only
    softcap: float | None = None  # attn_logit_softcapping
    query_pre_attn_scalar: float | None = None
    multiplier: float | None = None  # attention_multiplier: the score scale itself (Granite)
    sinks: bool = False  # a learned sink logit per head (gpt-oss)
    output_gate: bool = False  # sigmoid(gate) on the output, the gate from q_proj (Qwen3-Next)

    @property
    def single_head(self) -> bool:
        return self.kind == "single_head"

    @property
    def fused(self) -> bool:
        return self.qkv_layout != "separate"

    @property
    def grouping(self) -> str:
        """multi-head, multi-query or grouped-query (for the docs and the diagram)."""
        if self.single_head:
            return "single-head"
        if self.qkv_layout == "fused_per_head" or self.num_kv_heads in (None, self.num_heads):
            return "multi-head"
        return "multi-query" if self.num_kv_heads == 1 else "grouped-query"


@dataclass(frozen=True)
class Experts:
    """A mixture of experts (``mlp = "moe"``): a router scoring every expert, the top-k experts per
    token (SwiGLU, stored as transformers 5 stores them: 3-D ``gate_up_proj`` and ``down_proj``), and
    an optional shared expert. The config keys are the family's spellings."""

    num_experts: int | None
    experts_per_token: int | None
    intermediate_size: int | None  # of each expert
    router: str = "softmax"  # softmax (over every expert, before the top-k) | sigmoid
    norm_topk_prob: bool = False
    shared_expert: str = "none"  # none | gated (sigmoid gate, Qwen2-MoE) | plain
    shared_intermediate_size: int | None = None
    num_experts_key: str = "num_experts"  # num_local_experts (Mixtral)
    intermediate_size_key: str = "moe_intermediate_size"  # intermediate_size (Mixtral)
    # the config keys choosing the dense layers (absent: every layer is sparse)
    pattern_keys: tuple[str, ...] = ()
    jitter: bool = False  # router_jitter_noise (Mixtral)

    @property
    def shared(self) -> bool:
        return self.shared_expert != "none"


@dataclass(frozen=True)
class Mlp:
    """The feed-forward of every layer (``moe``: of the sparse layers; the dense ones are gated)."""

    kind: str  # gated | plain | moe
    act: str  # transformers' ACT2FN name
    bias: bool = False
    layout: str = "separate"  # separate | fused ([gate; up] in one projection)
    intermediate_size: int | None = None
    experts: Experts | None = None  # kind = moe

    @property
    def gated(self) -> bool:
        return self.kind in ("gated", "moe")  # a mixture's dense layers and experts are gated

    @property
    def moe(self) -> bool:
        return self.kind == "moe"

    @property
    def fused(self) -> bool:
        return self.layout == "fused"


@dataclass(frozen=True)
class Layer:
    """One decoder layer: what may differ from layer to layer."""

    index: int
    attention_type: str = FULL  # full_attention | sliding_attention
    sliding_window: int | None = None  # the window of a sliding layer
    rope: Rope | None = None  # the RoPE turning this layer's queries and keys (None: no positions here)
    mlp: str = "dense"  # dense | sparse (a mixture of experts)

    @property
    def sliding(self) -> bool:
        return self.attention_type == SLIDING


@dataclass(frozen=True)
class Architecture:
    """One decoder, resolved: every structural choice with its default filled in, and per layer."""

    family: str
    names: Mapping[str, str]  # the family's module names (blueprint [names] over Llama's)
    structure: Mapping[str, Any]  # every structural key as the manifest spells it, resolved
    norm: Norm
    position_embedding: str  # rope | alibi | sinusoidal | learned | none
    rope: Rope | None
    attention: Attention
    mlp: Mlp
    layers: tuple[Layer, ...]
    hidden_size: int | None = None
    vocab_size: int | None = None
    embedding_scale: str = "none"  # none | sqrt_hidden
    lm_head_bias: bool = False
    tie_word_embeddings: bool = False
    final_logit_softcapping: float | None = None
    # the sliding layers' own RoPE (Gemma 3's local base), when it differs from ``rope``
    local_rope: Rope | None = None
    nope_layers: bool = False  # some layers attend without RoPE (config.no_rope_layers)
    embedding_multiplier: float | None = None  # Granite's scalings
    residual_multiplier: float | None = None
    logits_scaling: float | None = None
    init: str = "scaled_normal"
    alibi_trainable: bool = False
    # whether the family's config carries per-layer attention types (layer_types / a window pattern)
    per_layer_types: bool = False
    sliding_window_pattern: int | None = None
    model_keys: frozenset[str] = frozenset()  # every [model] key the family and this structure accept
    # transformers' class this network is, exactly (None: no transformers class computes it), and,
    # when the family reproduces one but this structure differs, the keys that make it differ
    transformers_class: str | None = None
    differs_from: str | None = None  # the transformers class the family reproduces, when this differs
    differences: tuple[str, ...] = ()
    class_prefix: str = ""  # of the generated classes: the family's, or Scaffold<family's> when it differs

    @property
    def model_class(self) -> str:
        return f"{self.class_prefix}Model"

    @property
    def causal_lm_class(self) -> str:
        return f"{self.class_prefix}ForCausalLM"

    @property
    def num_hidden_layers(self) -> int:
        return len(self.layers)

    @property
    def layer_types(self) -> list[str]:
        return [layer.attention_type for layer in self.layers]

    @property
    def sliding_window(self) -> int | None:
        """The window the sliding layers use (None when no layer slides)."""
        return next((layer.sliding_window for layer in self.layers if layer.sliding), None)

    @property
    def rope_by_layer_type(self) -> bool:
        """Whether each attention type has its own RoPE (transformers 5's per-layer-type rope_parameters)."""
        return self.local_rope is not None

    def rope_parameters(self) -> dict[str, Any] | None:
        """transformers 5's ``rope_parameters``: one table, or one per attention type."""
        if self.rope is None:
            return None
        if self.local_rope is None:
            return self.rope.parameters()
        return {FULL: self.rope.parameters(), SLIDING: self.local_rope.parameters()}

    @property
    def alibi(self) -> bool:
        return self.position_embedding == "alibi"

    @property
    def sparse_layers(self) -> list[int]:
        """The layers whose feed-forward is a mixture of experts."""
        return [layer.index for layer in self.layers if layer.mlp == "sparse"]

    @property
    def mixed_mlp(self) -> bool:
        """Whether some layers are dense and others sparse (the generated code then has both)."""
        return self.mlp.moe and bool(self.mlp.experts and self.mlp.experts.pattern_keys)

    @property
    def absolute_positions(self) -> bool:
        """Positions added to the embeddings (sinusoidal or learned)."""
        return self.position_embedding in ("sinusoidal", "learned")

    @property
    def windowed(self) -> bool:
        """Whether the generated attention takes a sliding window (the family has the key and the
        attention can use it)."""
        return "sliding_window" in self.model_keys and not self.attention.single_head and not self.alibi
