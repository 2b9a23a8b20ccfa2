"""The architecture as a picture: a decoder's structure as a Mermaid diagram and as compact text.

Everything here is a pure function of the resolved architecture (``scaffold.arch``):
:func:`diagram_structure` reads an :class:`~scaffold.arch.Architecture` into the view the drawings
label (the structural keys as the manifest spells them, the sizes, each layer's attention type), and
:func:`structure_of` resolves a ``[model]`` table over a family's ``[structure]`` first, so a
structural key set in the manifest wins over the family's choice. There are no defaults here: they
are the schema's, applied once when the architecture is resolved.

:func:`mermaid` draws one decoder layer and the whole stack (the model card embeds it; the Hugging
Face hub and GitHub render it). Node ids are fixed and each structural key decides its own nodes and
labels, so two structures differing in one key give diagrams differing in that place only.
:func:`text_diagram` is the same structure as a few lines of formulas for ``scaffold show``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scaffold.arch import Architecture, resolve

NORM_NAMES = {"rmsnorm": "RMSNorm", "layernorm": "LayerNorm", "rmsnorm_unit_offset": "RMSNorm (1 + w)"}
POSITION_NAMES = {
    "rope": "RoPE",
    "alibi": "ALiBi",
    "sinusoidal": "sinusoidal positions",
    "learned": "learned positions",
    "none": "no positions",
}


def diagram_structure(a: Architecture) -> dict[str, Any]:
    """What the drawings read, from the resolved architecture alone: every structural key, the sizes
    the labels show, each layer's attention type and the window."""
    s: dict[str, Any] = dict(a.structure)
    s.update(
        vocab_size=a.vocab_size,
        hidden_size=a.hidden_size,
        intermediate_size=a.mlp.intermediate_size,
        num_hidden_layers=a.num_hidden_layers,
        num_attention_heads=1 if a.attention.single_head else a.attention.num_heads or 1,
        num_key_value_heads=1 if a.attention.single_head else a.attention.num_kv_heads or 1,
        head_dim=a.hidden_size if a.attention.single_head else a.attention.head_dim,
        tie_word_embeddings=a.tie_word_embeddings,
        alibi_trainable=a.alibi_trainable,
        final_norm=a.norm.final,  # post-norm blocks already end in a norm
        layer_types=a.layer_types,
        sliding_window=a.sliding_window,
    )
    if a.rope is not None:
        s["rope_theta"] = a.rope.theta
    # each layer's positions when they vary by layer (NoPE layers, a RoPE per layer type)
    s["layer_positions"] = [_layer_rope(a, layer.rope) for layer in a.layers]
    return s


def _layer_rope(a: Architecture, rope: Any) -> str:
    if a.rope is None or not (a.nope_layers or a.rope_by_layer_type):
        return ""
    if rope is None:
        return "no RoPE (NoPE)"
    return f"RoPE theta {rope.theta:g}" + (f", {rope.type} scaling" if rope.type != "default" else "")


def structure_of(
    model: Mapping[str, Any], family_defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The drawn structure of a ``[model]`` table over a family's ``[structure]`` defaults."""
    return diagram_structure(resolve({**dict(family_defaults or {}), **model}, model_keys=model))


def project_structure(
    manifest: Mapping[str, Any], family_defaults: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The drawn structure of a manifest (a resolved one holds every structural key its family sets);
    ``family_defaults``: the family's ``[structure]`` table, for the keys the manifest lacks."""
    return structure_of(manifest.get("model", {}), family_defaults)


# -- pieces shared by both drawings -----------------------------------------------------------------


def _norm(s: Mapping[str, Any]) -> str:
    name = NORM_NAMES.get(s["norm_type"], str(s["norm_type"]))
    return name + (" (no bias)" if s["norm_type"] == "layernorm" and not s["norm_bias"] else "")


def _bias(on: Any) -> str:
    return " + bias" if on else ""


def _act(s: Mapping[str, Any]) -> str:
    return str(s["hidden_act"])


def _mlp_formula(s: Mapping[str, Any]) -> str:
    b = _bias(s["mlp_bias"])
    if s["mlp"] == "gated":
        return f"down_proj({_act(s)}(gate_proj(x)) * up_proj(x)){b}"
    return f"down_proj({_act(s)}(up_proj(x))){b}"


def _qkv(s: Mapping[str, Any]) -> str:
    if s["attention"] == "single_head":
        return "qk_proj, v_proj: 1 head of width " + str(s.get("hidden_size", "d"))
    heads, kv = s["num_attention_heads"], s["num_key_value_heads"]
    kind = "multi-head" if heads == kv else ("multi-query" if kv == 1 else "grouped-query")
    bias = _bias(s["qkv_bias"] or s["attention_bias"])
    return (
        f"q_proj, k_proj, v_proj{bias}: {heads} query heads, {kv} kv heads ({kind}), head_dim {s['head_dim']}"
    )


def _rope(s: Mapping[str, Any]) -> str:
    factor = s["partial_rotary_factor"]
    part = "" if factor in (None, 1, 1.0) else f" on {factor:g} of each head"
    theta = f", theta {s['rope_theta']:g}" if s.get("rope_theta") else ""
    if s.get("rope_local_base_freq"):
        theta += f" (sliding layers: {s['rope_local_base_freq']:g})"
    text = f"RoPE on q, k{part}{theta}"
    if s.get("rope_interleaved"):
        text += ", adjacent pairs"
    if s.get("nope_layers"):
        text += ", skipped where no_rope_layers is 0"
    return text


def _qk_norm(s: Mapping[str, Any]) -> str:
    if s["qk_norm"] == "l2":
        return "q, k / rms (per head, no weight, after RoPE)"
    return f"{_norm(s)} on q, k ({'per head' if s['qk_norm'] == 'head' else 'whole projection'})"


def _scores(s: Mapping[str, Any]) -> str:
    if s["attention"] == "single_head":
        q, k = "x W_qk", "x"
    else:
        q, k = "q", "k"
    scale = s["query_pre_attn_scalar"]
    score = f"{q} {k}^T / sqrt({scale if scale else 'head_dim'})"
    if s.get("attention_multiplier"):
        score = f"{q} {k}^T * {s['attention_multiplier']:g}"
    if s["attn_logit_softcapping"]:
        cap = s["attn_logit_softcapping"]
        score = f"{cap:g} tanh(({score}) / {cap:g})"
    if s["position_embedding"] == "alibi":
        slopes = "one slope" if s["attention"] == "single_head" else "per-head slopes"
        slopes += ", trainable" if s.get("alibi_trainable") else ""
        score += f" - m (i - j) [ALiBi, {slopes}]"
    if s.get("attention_sinks"):
        return f"softmax([{score} + causal mask, sink per head])[:-1] v"
    return f"softmax({score} + causal mask) v"


def _out(s: Mapping[str, Any]) -> str | None:
    if s["attention"] == "single_head":
        return None
    gate = " (out * sigmoid(gate), the gate from q_proj)" if s.get("attention_output_gate") else ""
    return "o_proj" + _bias(s["attention_bias"]) + gate


def _layer_groups(s: Mapping[str, Any]) -> list[tuple[int, int, str]]:
    """Consecutive runs of the same attention type (and positions): (first layer, last layer, type)."""
    groups: list[tuple[int, int, str]] = []
    positions = s.get("layer_positions") or [""] * len(s["layer_types"])
    for i, (kind, rope) in enumerate(zip(s["layer_types"], positions)):
        kind = f"{kind}, {rope}" if rope else kind
        if groups and groups[-1][2] == kind:
            groups[-1] = (groups[-1][0], i, kind)
        else:
            groups.append((i, i, kind))
    return groups


def _attention_kind(s: Mapping[str, Any], kind: str) -> str:
    kind, _, rope = kind.partition(", ")
    rope = f", {rope}" if rope else ""
    if kind == "sliding_attention":
        return f"sliding-window attention (window {s['sliding_window']}){rope}"
    return ("full causal attention" if kind == "full_attention" else kind) + rope


def _residual_lines(s: Mapping[str, Any]) -> list[str]:
    """The block as formulas over the residual stream x."""
    n = _norm(s)
    pos = s["norm_position"]
    if s.get("residual_multiplier") and pos == "pre":
        r = f"{s['residual_multiplier']:g}"
        return [f"x = x + {r} attn({n}(x))", f"x = x + {r} mlp({n}(x))"]
    if s["parallel_residual"]:
        if pos == "pre":
            return [f"x = x + attn({n}(x)) + mlp({n}(x))   [parallel residual]"]
        return [f"x = {n}(x + attn(x) + mlp(x))   [parallel residual]"]
    return {
        "pre": [f"x = x + attn({n}(x))", f"x = x + mlp({n}(x))"],
        "post": [f"x = {n}(x + attn(x))", f"x = {n}(x + mlp(x))"],
        "sandwich": [f"x = x + {n}(attn({n}(x)))", f"x = x + {n}(mlp({n}(x)))"],
        "post_sublayer": [f"x = x + {n}(attn(x))", f"x = x + {n}(mlp(x))"],
        "deepnorm": [f"x = {n}(alpha x + attn(x))", f"x = {n}(alpha x + mlp(x))   alpha = (2L)^(1/4)"],
    }.get(pos, [f"x = block(x)   [{pos}]"])


def _embedding(s: Mapping[str, Any]) -> str:
    text = f"embed_tokens {s.get('vocab_size', '?')} x {s.get('hidden_size', '?')}"
    if s["embedding_scale"] == "sqrt_hidden":
        text += " * sqrt(hidden_size)"
    if s.get("embedding_multiplier"):
        text += f" * {s['embedding_multiplier']:g}"
    if s["position_embedding"] in ("sinusoidal", "learned"):
        text += f" + {POSITION_NAMES[s['position_embedding']]}"
    return text


def _head(s: Mapping[str, Any]) -> str:
    text = (
        "lm_head" + (" (tied to embed_tokens)" if s["tie_word_embeddings"] else "") + _bias(s["lm_head_bias"])
    )
    if s.get("logits_scaling"):
        text += f", logits / {s['logits_scaling']:g}"
    if s["final_logit_softcapping"]:
        cap = s["final_logit_softcapping"]
        text += f", logits = {cap:g} tanh(logits / {cap:g})"
    return text


# -- text ------------------------------------------------------------------------------------------


def text_diagram(s: Mapping[str, Any]) -> str:
    """The structure as a few labelled lines of formulas (``scaffold show``)."""
    final = f" -> norm ({_norm(s)})" if s["final_norm"] else ""
    lines = [
        f"stack       {_embedding(s)}",
        f"            -> {s['num_hidden_layers']} x decoder layer{final} -> {_head(s)}",
    ]
    block = _residual_lines(s)
    lines.append(f"layer       {block[0]}")
    lines += [f"            {line}" for line in block[1:]]
    attn = [_qkv(s)]
    if s["qk_norm"] != "none":
        attn.append(_qk_norm(s))
    if s["position_embedding"] == "rope":
        attn.append(_rope(s))
    attn.append(_scores(s))
    if _out(s):
        attn.append(str(_out(s)))
    lines.append(f"attn        {attn[0]}")
    lines += [f"            -> {a}" for a in attn[1:]]
    lines.append(f"mlp         {_mlp_formula(s)}")
    for first, last, kind in _layer_groups(s):
        span = f"{first}" if first == last else f"{first}-{last}"
        lines.append(f"layers {span:<5}{_attention_kind(s, kind)}")
    return "\n".join(lines) + "\n"


# -- Mermaid ---------------------------------------------------------------------------------------


def _q(text: str) -> str:
    """A Mermaid node label: quoted, with the characters Mermaid would read as syntax escaped."""
    return '"' + text.replace('"', "#quot;") + '"'


def mermaid(s: Mapping[str, Any]) -> str:
    """A Mermaid flowchart of the whole stack and of one decoder layer (the model card's diagram)."""
    out = ["flowchart TB"]
    add = out.append

    # the whole stack, with one node per run of layers of the same attention type
    add('  subgraph stack["model"]')
    add("    direction TB")
    add(f"    tokens[{_q('input_ids')}] --> embed[{_q(_embedding(s))}]")
    previous = "embed"
    for g, (first, last, kind) in enumerate(_layer_groups(s)):
        count = last - first + 1
        span = f"layer {first}" if count == 1 else f"layers {first}-{last}"
        node = f"layers{g}"
        add(
            f"    {previous} --> {node}[{_q(f'{span}: {count} x decoder layer, {_attention_kind(s, kind)}')}]"
        )
        previous = node
    if s["final_norm"]:
        add(f"    {previous} --> final_norm[{_q(f'norm: {_norm(s)}')}]")
        previous = "final_norm"
    add(f"    {previous} --> lm_head[{_q(_head(s))}] --> logits[{_q('logits')}]")
    add("  end")

    # one decoder layer
    n = _norm(s)
    pos = s["norm_position"]
    add('  subgraph layer["decoder layer"]')
    add("    direction TB")
    add(f"    x_in[{_q('x')}]")
    add(f"    attn[{_q('attention')}]")
    add(f"    mlp[{_q('MLP: ' + _mlp_formula(s))}]")
    add(f"    x_out[{_q('x')}]")
    if s["parallel_residual"]:
        add(f"    sum(({_q('+')}))")
        if pos == "pre":
            add(f"    x_in --> norm_attn[{_q(n)}] --> attn --> sum")
            add(f"    x_in --> norm_mlp[{_q(n)}] --> mlp --> sum")
            add(f"    x_in -->|{_q('parallel residual')}| sum --> x_out")
        else:
            add("    x_in --> attn --> sum")
            add("    x_in --> mlp --> sum")
            add(f"    x_in -->|{_q('parallel residual')}| sum --> norm_out[{_q(n)}] --> x_out")
    else:
        alpha = _q("alpha x, alpha = (2L)^(1/4)") if pos == "deepnorm" else _q("residual")
        add(f"    add_attn(({_q('+')}))")
        add(f"    add_mlp(({_q('+')}))")
        if pos == "pre":
            add(f"    x_in --> norm_attn[{_q(n)}] --> attn --> add_attn")
            add(f"    add_attn --> norm_mlp[{_q(n)}] --> mlp --> add_mlp --> x_out")
        elif pos == "sandwich":
            add(f"    x_in --> norm_attn[{_q(n)}] --> attn --> post_norm_attn[{_q(n)}] --> add_attn")
            add(
                f"    add_attn --> norm_mlp[{_q(n)}] --> mlp --> post_norm_mlp[{_q(n)}] --> add_mlp --> x_out"
            )
        elif pos == "post_sublayer":
            add(f"    x_in --> attn --> post_norm_attn[{_q(n)}] --> add_attn")
            add(f"    add_attn --> mlp --> post_norm_mlp[{_q(n)}] --> add_mlp --> x_out")
        else:  # post, deepnorm: the norm after the residual sum
            add(f"    x_in --> attn --> add_attn --> norm_attn[{_q(n)}]")
            add(f"    norm_attn --> mlp --> add_mlp --> norm_mlp[{_q(n)}] --> x_out")
        residual_from = "norm_attn" if pos in ("post", "deepnorm") else "add_attn"
        add(f"    x_in -->|{alpha}| add_attn")
        add(f"    {residual_from} -->|{alpha}| add_mlp")
    add("  end")

    # inside the attention
    add('  subgraph attention["attention"]')
    add("    direction TB")
    add(f"    qkv[{_q(_qkv(s))}]")
    previous = "qkv"
    if s["qk_norm"] != "none":
        add(f"    {previous} --> qk_norm[{_q(_qk_norm(s))}]")
        previous = "qk_norm"
    if s["position_embedding"] == "rope":
        add(f"    {previous} --> rope[{_q(_rope(s))}]")
        previous = "rope"
    add(f"    {previous} --> scores[{_q(_scores(s))}]")
    if _out(s):
        add(f"    scores --> o_proj[{_q(str(_out(s)))}]")
    add("  end")
    add("  attn -.- attention")
    add("  layers0 -.- layer")
    return "\n".join(out) + "\n"


def mermaid_block(s: Mapping[str, Any]) -> str:
    """:func:`mermaid` in a fenced block, as a Markdown file carries it."""
    return "```mermaid\n" + mermaid(s) + "```\n"


# -- parameters ------------------------------------------------------------------------------------

PART_ORDER = ("embedding", "attention", "mlp", "norms", "head", "other")


def _part(name: str) -> str:
    leaf = name.rsplit(".", 2)[-2] if "." in name else name
    if "embed" in name or name.endswith(("wte.weight", "wpe.weight")):
        return "embedding"
    if "lm_head" in name:
        return "head"
    if "norm" in leaf or leaf.startswith("ln"):
        return "norms"
    if "attn" in name or "attention" in name:
        return "attention"
    if "mlp" in name or "feed_forward" in name:
        return "mlp"
    return "other"


def parameter_breakdown(named_parameters: list[tuple[str, Any]]) -> dict[str, Any]:
    """Parameter counts by part (embedding, attention, MLP, norms, head, other), in total and per
    layer. ``named_parameters`` as ``model.named_parameters()`` gives them (tied tensors once)."""
    total = dict.fromkeys(PART_ORDER, 0)
    layers: dict[int, dict[str, int]] = {}
    for name, p in named_parameters:
        part, n = _part(name), int(p.numel())
        total[part] += n
        pieces = name.split(".")
        for i, piece in enumerate(pieces[:-1]):
            if piece in ("layers", "h", "blocks") and pieces[i + 1].isdigit():
                layer = layers.setdefault(int(pieces[i + 1]), dict.fromkeys(PART_ORDER, 0))
                layer[part] += n
                break
    return {"total": total, "layers": [layers[i] for i in sorted(layers)]}


def breakdown_lines(breakdown: Mapping[str, Any], tied: bool) -> list[str]:
    """The table ``scaffold show`` prints: a column per part, a row per distinct layer and the total."""
    total = breakdown["total"]
    parts = [p for p in PART_ORDER if total[p] or p == "head"]
    head = ["", *parts, "all"]
    rows: list[list[str]] = []
    layers = breakdown["layers"]
    i = 0
    while i < len(layers):  # consecutive identical layers as one row
        j = i
        while j + 1 < len(layers) and layers[j + 1] == layers[i]:
            j += 1
        label = f"layer {i}" if i == j else f"layers {i}-{j}, each"
        rows.append([label, *(f"{layers[i][p]:,}" for p in parts), f"{sum(layers[i].values()):,}"])
        i = j + 1
    rows.append(["total", *(f"{total[p]:,}" for p in parts), f"{sum(total.values()):,}"])
    if tied and "head" in parts:
        rows[-1][1 + parts.index("head")] = "tied"
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    fmt = lambda r: "  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt(head).rstrip(), *(fmt(r).rstrip() for r in rows)]
