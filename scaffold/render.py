"""``scaffold new``: render a family with Copier into a project folder; structure -> code.

The resolved manifest (blueprint defaults < preset < ``--set``) is computed and validated here. Its
structural keys are resolved here, once: :func:`plan` turns them into what the shared templates
paste (the parts used, the norm class, the activation, the config fields), so a generated file holds
only the code its manifest chose. Copier runs with ``unsafe=False``, so no template code is executed,
and with StrictUndefined, so a misspelt variable is an error. A project is rendered into a staging
folder and moved into place only when complete. :func:`render_files` renders the code files alone
(for ``build`` with structural overrides, and for re-rendering a project).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import __version__, atomic, manifest
from .blueprints import Blueprint
from .blueprints import load as load_blueprint
from .diagram import mermaid_block, project_structure
from .errors import BlueprintError, ProjectError, UsageError, one_line
from .parts import part_sources
from .plans import plans_for
from .tokenizer import TOKENIZER_FILE as TOKENIZER_FILE  # re-exported: build.py imports it from here
from .tokenizer import make_for_new
from .tokenizer import write as write_tokenizer

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
ANSWERS_FILE = ".copier-answers.yml"


def check_name(name: str) -> None:
    """Refuse project names that are empty, hidden, or would escape the projects folder."""
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise UsageError(
            f"invalid project name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or "
            "digit (no paths)"
        )


def new_manifest(
    bp: Blueprint, name: str, preset: str | None, overrides: Mapping[str, Mapping[str, Any]] | None
) -> manifest.Manifest:
    """The manifest of a new project: blueprint defaults < preset < overrides, validated."""
    preset = preset or bp.default_preset
    project = {
        "project": {"name": name, "blueprint": bp.ref, "blueprint_version": bp.version, "preset": preset}
    }
    m = bp.resolve(bp.preset(preset), overrides, project)
    manifest.validate(m, model_keys=bp.model_keys, path=f"{name}/{manifest.MANIFEST_NAME}")
    return m


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
NORM_EPS = {"rmsnorm": "rms_norm_eps", "layernorm": "layer_norm_eps", "rmsnorm_unit_offset": "rms_norm_eps"}
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
    "query_pre_attn_scalar",
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
    "sliding_window_pattern": "with layer_types absent, every N-th layer attends fully, the others within the window",
}


def partial_rotary(arch: Mapping[str, Any]) -> bool:
    """Whether RoPE turns only the first features of each head (partial_rotary_factor below 1)."""
    return arch["position_embedding"] == "rope" and arch["partial_rotary_factor"] < 1


def plan_parts(arch: Mapping[str, Any]) -> list[str]:
    """The parts a structure uses, in the order the modeling file pastes them (dependencies first)."""
    parts = [NORM_CLASSES[arch["norm_type"]]] if arch["norm_type"] != "layernorm" else []
    if arch["embedding_scale"] == "sqrt_hidden":
        parts += ["ScaledWordEmbedding"]
    position = arch["position_embedding"]
    if position == "rope":
        parts += ["rope_inv_freq", "yarn_inv_freq", "longrope_inv_freq", "dynamic_ntk_inv_freq"]
        parts += ["rope_attention_factor", "RotaryEmbedding"]
        parts += ["rotate_half", "apply_rotary_pos_emb"]
        parts += ["apply_partial_rotary_pos_emb"] if partial_rotary(arch) else []
    elif position == "sinusoidal":
        parts += ["SinusoidalPositionEmbedding"]
    elif position == "alibi":
        parts += ["alibi_slopes"] if arch["attention"] == "multi_head" else []
        parts += ["AlibiSlopes", "alibi_attention_mask"]
    parts += ["repeat_kv", "mha_eager_attention_forward", "eager_attention_forward"]
    if position == "alibi":
        parts += ["flex_alibi_attention_forward", "alibi_attention_forward"]
    parts += {"fused": ["split_qkv"], "fused_per_head": ["split_qkv_per_head"]}.get(arch["qkv_layout"], [])
    if arch["attn_logit_softcapping"] is not None or arch["final_logit_softcapping"] is not None:
        parts += ["logit_softcap"]
    if arch["attn_logit_softcapping"] is not None and arch["attention"] == "multi_head":
        parts += ["softcap_eager_attention_forward"]
    if arch["hidden_act"] == "gelu_pytorch_tanh":
        parts += ["gelu_pytorch_tanh"]
    if arch["norm_position"] == "deepnorm":
        parts += ["deepnet_alpha"]
    if arch["init"] == "deepnet":
        parts += ["deepnet_beta"]
    if arch["init"] == "scaled_normal":
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
    from . import schema

    if key == "rope_parameters":
        return "dict | None"
    if key == "layer_types":
        return "list[str] | None"
    f = schema.BY_PATH.get(f"model.{key}")
    names = {int: "int", float: "float", bool: "bool", str: "str", dict: "dict", list: "list"}
    types = [t for t in (f.types if f else (type(default),)) if t in names]
    if float in types and int in types:
        types = [float]
    text = " | ".join(names[t] for t in types) or "object"
    return f"{text} | None" if default is None else text


def config_fields(bp: Blueprint, arch: Mapping[str, Any]) -> list[dict[str, str]]:
    """The number fields of the configuration class: what the family and its structure understand, with
    the family's defaults. Depends on the family and the structure only, never on a project's numbers
    (so a build with other numbers needs no new code)."""
    from . import schema

    # the number-valued structural keys that are set: their code reads the value, so it is config
    numeric = {k: arch[k] for k in schema.NUMERIC_STRUCTURE if arch[k] is not None}
    defaults = {**schema.companions(arch), **bp.defaults.get("model", {}), **numeric}
    keys = (set(bp.model_keys) | set(schema.companions(arch)) | set(schema.UNIVERSAL_MODEL_KEYS)) - set(arch)
    keys |= set(numeric)
    if arch["attention"] == "multi_head":
        keys |= {"num_attention_heads", "num_key_value_heads", "head_dim"}
    if arch["position_embedding"] == "rope":
        keys = (keys - {"rope_theta", "rope_scaling"}) | {"rope_parameters"}
    else:
        keys -= {"rope_theta", "rope_scaling"}
    if arch["position_embedding"] != "alibi":
        keys -= {"alibi_trainable"}
    if arch["attention"] != "single_head":
        keys -= {"alibi_slope_init"}
    if arch["init"] not in ("scaled_normal", "normal"):
        keys -= {"initializer_range"} - set(bp.defaults.get("model", {}))
    ordered = [k for k in CONFIG_ORDER if k in keys] + sorted(keys - set(CONFIG_ORDER))
    fields = []
    for key in ordered:
        # absent, these follow from others (__post_init__), so a default would be wrong for other sizes
        derived = ("rope_parameters", "num_key_value_heads", "head_dim", "layer_types")
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


def _mlp_doc(arch: Mapping[str, Any]) -> str:
    act = arch["hidden_act"]
    if arch["mlp"] == "gated":
        named = {"silu": "SwiGLU", "relu": "GLU-ReLU", "gelu": "GeGLU", "gelu_pytorch_tanh": "GeGLU (tanh)"}
        kind = named.get(act, f"gated {act}") + " feed-forward"
        kind += " (gate and up fused in one projection)" if arch["mlp_layout"] == "fused" else ""
    else:
        kind = f"{act} MLP"
    return kind + (" with biases" if arch["mlp_bias"] else "")


def describe(bp: Blueprint, arch: Mapping[str, Any]) -> tuple[str, str]:
    """A title line and a paragraph saying what the structure is, for the modeling file and the card."""
    norm = {"rmsnorm": "rmsnorm", "layernorm": "layernorm", "rmsnorm_unit_offset": "rmsnorm"}[
        arch["norm_type"]
    ]
    norm_name = {"rmsnorm": "RMSNorm", "layernorm": "LayerNorm", "rmsnorm_unit_offset": "RMSNorm"}[
        arch["norm_type"]
    ]
    if arch["norm_type"] == "layernorm" and not arch["norm_bias"]:
        norm_name += " without bias"
    blocks = {
        "pre": f"Pre-norm blocks, ``x = x + attn({norm}(x)); x = x + mlp({norm}(x))``",
        "post": f"Post-norm blocks, ``x = {norm}(x + attn(x)); x = {norm}(x + mlp(x))``",
        "deepnorm": f"DeepNorm blocks (Wang et al., 2022), ``x = {norm}(alpha * x + attn(x)); "
        f"x = {norm}(alpha * x + mlp(x))`` with alpha = (2L)^(1/4)",
        "post_sublayer": f"Post-sublayer-norm blocks, ``x = x + {norm}(attn(x)); x = x + {norm}(mlp(x))``",
        "sandwich": f"Sandwich-norm blocks, ``x = x + {norm}(attn({norm}(x))); x = x + {norm}(mlp({norm}(x)))``",
    }[arch["norm_position"]]
    if arch["parallel_residual"]:
        blocks = (
            f"Parallel-residual blocks, ``x = x + attn({norm}(x)) + mlp({norm}(x))`` (a norm for each): "
            "attention and the feed-forward read the same input"
        )
    position = {
        "rope": "rotary position embeddings",
        "alibi": "ALiBi attention biases instead of position embeddings",
        "sinusoidal": "fixed sinusoidal position encodings added to the embeddings (computed, never stored)",
        "learned": "learned absolute position embeddings added to the token embeddings",
        "none": "no position information besides the causal mask",
    }[arch["position_embedding"]]
    if partial_rotary(arch):
        position = f"rotary position embeddings on the first {arch['partial_rotary_factor']:g} of each head's features"
    if arch["attention"] == "single_head":
        attention = "one attention head with a fused query-key matrix and no output projection"
    else:
        kind = "multi-head" if arch["qkv_layout"] == "fused_per_head" else "grouped-query"
        attention = f"{kind} attention"
        if arch["attention_bias"]:
            attention += " with biases"
        elif arch["qkv_bias"]:
            attention += " with query, key and value biases"
        if arch["qk_norm"] != "none":
            width = "each head" if arch["qk_norm"] == "head" else "all heads at once"
            attention += f" ({norm_name} on queries and keys over {width}, before RoPE)"
        attention += {
            "fused": " (q, k and v from one projection stored [q; k; v])",
            "fused_per_head": " (q, k and v from one projection, interleaved per head)",
        }.get(arch["qkv_layout"], "")
    parts = [f"{blocks}, with {position}, {attention} and a {_mlp_doc(arch)}"]
    if arch["norm_type"] == "layernorm" and not arch["norm_bias"]:
        parts[0] += " (layer norms without bias)"
    if arch["norm_position"] != "post":
        parts[0] += f", and a final {norm_name.split()[0]}"
    parts[0] += "."
    if arch["norm_type"] == "rmsnorm_unit_offset":
        parts.append(
            "The RMS norms scale by (1 + w), computed in float32, with w starting at zero (Gemma's)."
        )
    if arch["query_pre_attn_scalar"] is not None:
        parts.append("Attention scores are scaled by query_pre_attn_scalar^-0.5.")
    if arch["attn_logit_softcapping"] is not None:
        parts.append("Attention scores are soft-capped, ``c * tanh(s / c)``, before the mask.")
    if arch["final_logit_softcapping"] is not None:
        parts.append("The output logits are soft-capped the same way.")
    if arch["embedding_scale"] == "sqrt_hidden":
        parts.append("Token embeddings are scaled by sqrt(d), rounded to the weights' dtype.")
    if arch["lm_head_bias"]:
        parts.append("The output head has a bias.")
    if arch["init"] == "deepnet":
        parts.append("Projections are initialised with DeepNet's gain beta = (8L)^(-1/4).")
    hf = bp.meta.get("transformers_class")
    if hf:
        parts.append(
            f"Parameter names are those of transformers' ``{hf}``, so its checkpoints load here unchanged."
        )
    if arch["position_embedding"] == "alibi":
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


def lora_targets(arch: Mapping[str, Any], names: Mapping[str, str]) -> list[str]:
    """The names of the linear layers inside the decoder layers (attention and MLP projections): what
    PEFT's ``target_modules`` must list for a model type it does not know."""
    if arch.get("attention") == "single_head":
        attention = [names["qk_proj"], names["v_proj"]]
    elif arch.get("qkv_layout", "separate") != "separate":
        attention = [names["qkv_proj"], names["o_proj"]]
    else:
        attention = [names[k] for k in ("q_proj", "k_proj", "v_proj", "o_proj")]
    if arch.get("mlp") == "plain":
        mlp = [names["up_proj"], names["down_proj"]]
    elif arch.get("mlp_layout", "separate") != "separate":
        mlp = [names["gate_up_proj"], names["down_proj"]]
    else:
        mlp = [names[k] for k in ("gate_proj", "up_proj", "down_proj")]
    return attention + mlp


SPECIAL_TOKENS = ("bos_token_id", "eos_token_id", "pad_token_id")


def transformers_config_fields(bp: Blueprint, arch: Mapping[str, Any]) -> list[dict[str, str]]:
    """The keys transformers' config of the family has that the generated code does not read (the
    blueprint's ``transformers_config``, and ``transformers_config_structure`` valued from the structure):
    fields of the configuration class, so that it accepts them and config.json carries them."""
    values = dict(bp.meta.get("transformers_config", {}))
    values |= {k: arch[v] for k, v in bp.meta.get("transformers_config_structure", {}).items()}
    return [
        {"name": k, "annotation": _annotation(k, v), "default": _code(v)}
        for k, v in values.items()
        if k not in SPECIAL_TOKENS
    ]


def plan(bp: Blueprint, model: Mapping[str, Any]) -> dict[str, Any]:
    """What the templates need besides the structure itself, derived from it here, once."""
    from . import schema

    arch = schema.structure_of(model)
    act = arch["hidden_act"]
    keys = set(bp.model_keys) | set(model)
    parts = plan_parts(arch)
    sources = part_sources()
    title, doc = describe(bp, arch)
    multi = arch["attention"] == "multi_head"
    if multi:
        heads = model.get("num_attention_heads")
        kv = model.get("num_key_value_heads", heads)
        heads_text = f"{heads} query heads and {kv} key/value heads, "
    else:
        heads_text = "one attention head, "
    sliding = "sliding_window" in keys and multi and arch["position_embedding"] != "alibi"
    writers = (f"{bp.names['o_proj']} and " if multi else f"{bp.names['v_proj']} and ") + bp.names[
        "down_proj"
    ]
    return {
        "title": title,
        "doc": doc,
        "heads_text": heads_text,
        "attention_doc": (
            ("Multi-head" if arch["qkv_layout"] == "fused_per_head" else "Grouped-query")
            + " self-attention"
            + (" with RoPE" if arch["position_embedding"] == "rope" else "")
            + (" with ALiBi biases" if arch["position_embedding"] == "alibi" else "")
        ),
        "mlp_doc": _mlp_doc(arch)[0].upper() + _mlp_doc(arch)[1:],
        "model_doc": (
            "Embeddings, the decoder layers and the final norm"
            if arch["norm_position"] != "post"
            else "Embeddings and the decoder layers"
        ),
        "parts": parts,
        "needs_math": arch["init"] == "scaled_normal" or any("math." in sources[p] for p in parts),
        "norm": NORM_CLASSES[arch["norm_type"]],
        "norm_eps": NORM_EPS[arch["norm_type"]],
        "act": TORCH_ACTIVATIONS.get(act, f'ACT2FN["{act}"]'),
        "act2fn": act not in TORCH_ACTIVATIONS,
        "sliding_window": sliding,
        # per-layer attention types (transformers' layer_types): one mask per type, chosen per layer
        "layer_types": bool({"layer_types", "sliding_window_pattern"} & keys)
        and multi
        and arch["position_embedding"] != "alibi",
        "model_keys": sorted(keys),
        "numeric_structure": list(schema.NUMERIC_STRUCTURE),
        "hidden_dropout": "hidden_dropout" in keys,
        "final_norm": arch["norm_position"] != "post",
        "positions": arch["position_embedding"] in ("rope", "sinusoidal", "learned"),
        "partial_rotary": partial_rotary(arch),
        # as the family's transformers class: a zeroed pad row that gets no gradient, or none
        "padding_idx": bp.meta.get("embedding_padding_idx", arch["init"] in ("scaled_normal", "normal")),
        "transformers_config": transformers_config_fields(bp, arch),
        "special_tokens": {
            k: _literal(bp.meta.get("transformers_config", {}).get(k)) for k in SPECIAL_TOKENS
        },
        # transformers' keys that say what the structure is: another value needs other code
        "structure_checks": [
            {"name": k, "structure": v, "value": _code(arch[v])}
            for k, v in bp.meta.get("transformers_config_structure", {}).items()
            if v != "partial_rotary_factor"  # read at run time, from rope_parameters
        ],
        # transformers' keys unset by default that the code cannot honour once set: key -> why
        "refused_keys": dict(bp.meta.get("transformers_config_refused", {})),
        "residual_writers": writers,
        "config_fields": config_fields(bp, arch),
        "lora_targets": lora_targets(arch, bp.names),
    }


def template_data(
    bp: Blueprint, m: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The data Copier renders a family's templates with (docs/architecture.md, section 4)."""
    from . import schema

    project = m.get("project", {})
    return {
        "project_name": project.get("name", ""),
        "preset": project.get("preset") or bp.default_preset,
        "overrides": dict(overrides or {}),
        "vocab_follows_tokenizer": "vocab_size" not in (dict(overrides or {}).get("model") or {}),
        # not questions: computed here, so not saved in the answers file
        "manifest": m,
        "manifest_toml": manifest.dumps(m).rstrip(),
        "parts": part_sources(),
        "architecture_mermaid": mermaid_block(project_structure(m, bp.structure)).rstrip(),
        "scaffold_version": __version__,
        "blueprint_name": bp.name,
        "blueprint_version": bp.version,
        "blueprint_description": bp.meta.get("description", ""),
        "family": bp.name,
        "prefix": bp.prefix,
        "config_class": bp.meta["config_class"],
        "arch": schema.structure_of(m.get("model", {})),
        "names": bp.names,
        "plan": plan(bp, m.get("model", {})),
        "plans": plans_for(bp, m.get("model", {})),  # tensor- and pipeline-parallel plans
    }


def _copier_render(bp: Blueprint, dest: Path, data: Mapping[str, Any]) -> None:
    import copier

    try:
        copier.run_copy(
            str(bp.template_path),
            dest,
            data=dict(data),
            defaults=True,
            overwrite=True,
            unsafe=False,
            quiet=True,
            cleanup_on_error=False,
        )
    except Exception as err:  # copier and jinja raise many kinds; all mean the blueprint is at fault
        raise template_error(err, bp) from err


def code_files(bp: Blueprint) -> list[str]:
    """The files of a project that a rendering writes and a user may edit: modeling, configuration, card."""
    return [bp.meta["modeling_file"], bp.meta["configuration_file"], "README.md"]


def render_files(bp: Blueprint, m: Mapping[str, Any]) -> dict[str, str]:
    """The code files of a project with the resolved manifest ``m``, rendered by Copier into a temporary
    folder: relative path -> text (the modeling file, the configuration file and the model card)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="scaffold-render-") as tmp:
        dest = Path(tmp) / "project"
        _copier_render(bp, dest, template_data(bp, m))
        return {
            name: (dest / name).read_text(encoding="utf-8")
            for name in code_files(bp)
            if (dest / name).is_file()
        }


def render(
    bp: Blueprint,
    dest: Path,
    name: str,
    preset: str | None,
    overrides: Mapping[str, Any] | None,
    *,
    project_dir: Path | None = None,
) -> Path:
    """Render ``bp`` into the (new or empty) folder ``dest``; returns ``dest``.

    ``project_dir`` is where the project lives (default ``dest``): the tokenizer's input paths are
    relative to it, and a tokenizer already there, made from the same inputs, is reused. The code as
    rendered is also kept under ``.scaffold/``: the base of later three-way merges with a user's edits.
    """
    from .update import write_rendering

    preset = preset or bp.default_preset
    m = new_manifest(bp, name, preset, overrides)
    tokenizer = make_for_new(m, overrides or {}, Path(project_dir or dest))
    _copier_render(bp, Path(dest), template_data(bp, m, overrides))
    _normalise_answers(dest / ANSWERS_FILE, bp)
    write_rendering(Path(dest), bp, code_files(bp))
    write_tokenizer(tokenizer, dest)
    return dest


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


def _normalise_answers(path: Path, bp: Blueprint) -> None:
    """Record the blueprint by its stable reference, not this machine's absolute path, and its version."""
    if path.is_file():
        path.write_text(answers_text(path.read_text(encoding="utf-8"), bp), encoding="utf-8")


def answers_text(text: str, bp: Blueprint) -> str:
    """An answers file's text naming ``bp`` by its reference and version (``_commit``: Copier's own field
    for the template version a project was made from, a git tag for Copier)."""
    text = re.sub(r"(?m)^_src_path: .*$", f"_src_path: {bp.ref}", text)
    text = re.sub(r"(?m)^_commit: .*\n", "", text)
    return re.sub(r"(?m)^(_src_path: .*)$", lambda m: f"_commit: {bp.version}\n{m.group(1)}", text, count=1)


def read_answers(project_dir: Path) -> dict[str, Any]:
    """The answers Copier recorded for a project (YAML, read with Copier's own dependency)."""
    import yaml

    path = project_dir / ANSWERS_FILE
    if not path.is_file():
        raise ProjectError("no Copier answers file; was this project made by `scaffold new`?", path=path)
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def create_project(
    name: str,
    blueprint: str | Path,
    *,
    projects_dir: str | Path = "projects",
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    force: bool = False,
    discard_edits: bool = False,
    backup: bool = False,
) -> Path:
    """Create ``projects_dir/name`` from a blueprint. Refuses to replace a project unless ``force``,
    and to replace one holding edits (generated files or manifest changed since scaffold wrote them)
    unless git holds them, ``backup`` (the old project is kept as ``NAME.backup-<time>``) or
    ``discard_edits``."""
    from .update import backup_path, committed, edited_files

    check_name(name)
    bp = load_blueprint(blueprint)
    projects_dir = Path(projects_dir)
    target = projects_dir / name
    new_manifest(bp, name, preset, overrides)  # validate before anything is written
    keep = None
    with atomic.locked(target):
        atomic.sweep(target)
        if target.exists() and not target.is_dir():
            raise ProjectError("exists and is not a folder", path=target)
        if target.exists() and not force:
            raise ProjectError(
                "already exists; pass --force to replace it (its files will be lost)", path=target
            )
        atomic.check_replaceable(target, accept="project")  # --force replaces only a scaffold project
        if target.exists():
            edited = edited_files(target)
            if edited and not (discard_edits or backup or committed(target, edited)):
                raise ProjectError(
                    f"holds edits that --force would lose ({', '.join(edited)}): commit them, pass --backup to "
                    "keep the project as it is beside the new one, or --discard-edits",
                    path=target,
                )
            keep = backup_path(target) if backup else None
        staging = atomic.make_staging(target, "new")
        try:
            render(bp, staging, name, preset, overrides, project_dir=target)
            atomic.apply_umask(staging)
            atomic.fault_point("new-staged")
            atomic.fsync_tree(staging)
            atomic.swap_in(staging, target, keep_old=keep)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if keep is not None:
        print(f"kept the previous project as {keep}", file=sys.stderr)
    return target


def rerender(project_dir: str | Path, dest: str | Path) -> Path:
    """Render a project again, from its answers and blueprint, into ``dest`` (for the sync check)."""
    project_dir = Path(project_dir)
    answers = read_answers(project_dir)
    m = manifest.load(project_dir)
    bp = load_blueprint(m.get("project", {}).get("blueprint") or answers.get("_src_path"))
    return render(
        bp,
        Path(dest),
        answers["project_name"],
        answers.get("preset"),
        answers.get("overrides") or {},
        project_dir=project_dir,
    )
