"""Reading, merging, validating and writing ``scaffold.toml`` manifests.

Precedence is command line > manifest > blueprint defaults: :func:`resolve` merges the three and
:func:`validate` reports every problem at once, each with its TOML key path.
"""

from __future__ import annotations

import copy
import hashlib
import math
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import tomli_w

from scaffold import atomic
from scaffold.errors import IntegrityError, ManifestError, UsageError
from scaffold.spec import schema, structure

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MANIFEST_NAME = "scaffold.toml"
Manifest = dict[str, dict[str, Any]]

ROPE_SCALING_KEYS = {
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "linear": ("factor",),
    "yarn": ("factor", "original_max_position_embeddings"),
    "dynamic": ("factor",),
    "longrope": (),
}
# Keys a scaling type requires as lists of positive numbers (longrope's factors, one per frequency).
ROPE_SCALING_LISTS = {"longrope": ("short_factor", "long_factor")}


def _positive_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


# Keys a scaling type may add (positive numbers, or a boolean for yarn's truncate), as transformers has them.
ROPE_SCALING_OPTIONAL = {
    "yarn": ("beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim"),
    "longrope": ("factor", "attention_factor", "original_max_position_embeddings"),
}


def load(path: str | Path) -> Manifest:
    """Parse a manifest file; syntax errors become a :class:`ManifestError` naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:  # never through a link out of the project folder, never blocking on a FIFO
        raw = atomic.read_bytes_inside(path, path.parent)
    except FileNotFoundError:
        raise ManifestError([("", "no such manifest; is this a scaffold project?")], path=path) from None
    except IntegrityError as err:
        raise ManifestError([("", err.message)], path=path) from None
    except OSError as err:
        raise ManifestError([("", f"cannot read: {err.strerror or err}")], path=path) from None
    if raw.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        raise ManifestError(
            [("", "starts with a byte order mark; TOML is UTF-8 without one: save it without the BOM")],
            path=path,
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ManifestError(
            [("", f"not UTF-8 text (byte {err.start}); TOML files are UTF-8")], path=path
        ) from None
    if atomic.nesting_depth(text) > atomic.MAX_NESTING:
        raise ManifestError([("", f"nested more than {atomic.MAX_NESTING} levels deep")], path=path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ManifestError([("", f"not valid TOML: {err}")], path=path) from None
    return data


def dumps(manifest: Mapping[str, Mapping[str, Any]], header: str = "") -> str:
    """The manifest as TOML text, sections in schema order, keys in schema order, nulls left out."""
    order = {f.path: i for i, f in enumerate(schema.FIELDS)}
    out: dict[str, dict[str, Any]] = {}
    for section in schema.SECTIONS:
        values = manifest.get(section) or {}
        keys = sorted(
            (k for k, v in values.items() if v is not None), key=lambda k: order.get(f"{section}.{k}", 1e9)
        )
        if keys:
            out[section] = {k: values[k] for k in keys}
    body = tomli_w.dumps(out)
    return (header.rstrip() + "\n\n" if header else "") + body


def fingerprint(manifest: Mapping[str, Any]) -> str:
    """A short content hash of a resolved manifest, used to tell stale builds."""
    return hashlib.sha256(dumps(manifest).encode()).hexdigest()[:16]


def merge(*layers: Mapping[str, Mapping[str, Any]] | None) -> Manifest:
    """Merge manifests section by section; later layers win. A None value removes a key."""
    out: Manifest = {}
    for layer in layers:
        for section, values in (layer or {}).items():
            if not isinstance(values, Mapping):
                out[section] = values  # left for validate() to report
                continue
            target = out.setdefault(section, {})
            for key, value in values.items():
                target[key] = copy.deepcopy(value)
    for values in out.values():
        if isinstance(values, dict):
            for key in [k for k, v in values.items() if v is None]:
                del values[key]
    return out


def parse_value(text: str) -> Any:
    """A command-line value read as TOML (numbers, booleans, arrays, inline tables); else a string."""
    if text.strip().lower() in ("null", "none"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_sets(pairs: Iterable[str]) -> Manifest:
    """Turn ``--set key=value`` pairs into a manifest layer; bare keys are looked up in the schema."""
    layer: Manifest = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set takes key=value, got {pair!r}")
        f = schema.lookup(key)
        if f is None:
            hint = "; use section.key" if any(x.key == key for x in schema.FIELDS) else ""
            raise UsageError(f"--set {key}: no such manifest key{hint} (see `scaffold schema`)")
        value = parse_value(raw)
        if value is None and not f.nullable:
            # null removes a key, and the blueprint's default would then be built in silence
            raise UsageError(
                f"--set {f.path}=null: {f.path} cannot be null (only optional keys can; "
                f"give {'an' if f.type_name[0] in 'aeiou' else 'a'} {f.type_name}, see `scaffold schema`)"
            )
        layer.setdefault(f.section, {})[f.key] = value
    return layer


def validate(
    manifest: Mapping[str, Any], *, model_keys: Iterable[str] | None = None, path: Path | None = None
) -> None:
    """Check a resolved manifest against the schema; raise one ManifestError listing every problem."""
    problems: list[tuple[str, str]] = []
    allowed_model = set(model_keys) if model_keys is not None else None
    model = manifest.get("model")
    if allowed_model is not None and isinstance(model, Mapping):
        # every family accepts the structural keys, and the number keys its structure needs
        allowed_model = structure.accepted_keys(allowed_model, schema.structure_of(model))
    for section, values in manifest.items():
        if section not in schema.SECTIONS:
            problems.append((section, f"unknown section; expected one of {', '.join(schema.SECTIONS)}"))
            continue
        if not isinstance(values, Mapping):
            problems.append((section, f"must be a table, got {type(values).__name__}"))
            continue
        for key, value in values.items():
            f = schema.BY_PATH.get(f"{section}.{key}")
            if f is None or (section == "model" and allowed_model is not None and key not in allowed_model):
                family = " for this blueprint" if f is not None else ""
                problems.append((f"{section}.{key}", f"unknown key{family}"))
                continue
            msg = f.problem(value)
            if msg:
                problems.append((f.path, msg))
    if allowed_model is not None and isinstance(model, Mapping):
        # sizes every model needs: absent only when a `--set KEY=null` removed the blueprint's value
        for key in schema.REQUIRED_MODEL_KEYS:
            if key in allowed_model and key not in model:
                problems.append(
                    (
                        f"model.{key}",
                        "missing: every model needs it (null removes the blueprint's value; give a number)",
                    )
                )
    problems.extend(_cross_checks(manifest, skip={key for key, _ in problems}))
    if problems:
        raise ManifestError(problems, path=path)


def _cross_checks(m: Mapping[str, Any], skip: Iterable[str] = ()) -> list[tuple[str, str]]:
    """Checks that involve more than one key; keys already reported (``skip``) are left out."""
    skip = set(skip)

    def section(name: str) -> Mapping[str, Any]:
        values = m.get(name, {})
        if not isinstance(values, Mapping) or name in skip:
            return {}
        return {k: v for k, v in values.items() if f"{name}.{k}" not in skip}

    problems: list[tuple[str, str]] = []
    model = section("model")
    heads = model.get("num_attention_heads")
    kv = model.get("num_key_value_heads")
    hidden = model.get("hidden_size")
    if heads and kv and heads % kv:
        problems.append(("model.num_key_value_heads", f"{kv} does not divide num_attention_heads = {heads}"))
    if heads and hidden and "head_dim" not in (m.get("model") or {}) and hidden % heads:
        problems.append(
            (
                "model.num_attention_heads",
                f"{heads} does not divide hidden_size = {hidden}; set model.head_dim to choose the head width",
            )
        )
    scaling = model.get("rope_scaling")
    if isinstance(scaling, Mapping):
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in ROPE_SCALING_KEYS:
            problems.append(
                (
                    "model.rope_scaling.rope_type",
                    f"must be one of {', '.join(ROPE_SCALING_KEYS)}; got {kind!r}",
                )
            )
        else:
            bad = set()
            for k in ROPE_SCALING_KEYS[kind]:
                v = scaling.get(k)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                    problems.append(
                        (f"model.rope_scaling.{k}", f"must be a positive number for {kind}, got {v!r}")
                    )
                    bad.add(k)
            for k in ROPE_SCALING_LISTS.get(kind, ()):
                v = scaling.get(k)
                numbers = isinstance(v, list) and v and all(_positive_number(x) for x in v)
                if not numbers:
                    problems.append(
                        (
                            f"model.rope_scaling.{k}",
                            f"must be a list of positive numbers for {kind}, got {v!r}",
                        )
                    )
            if kind == "llama3" and not bad & {"low_freq_factor", "high_freq_factor"}:
                low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
                if low >= high:
                    problems.append(
                        (
                            "model.rope_scaling.low_freq_factor",
                            f"{low} must be below high_freq_factor = {high}",
                        )
                    )
            for k in ROPE_SCALING_OPTIONAL.get(kind, ()):
                v = scaling.get(k)
                if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
                    problems.append(
                        (f"model.rope_scaling.{k}", f"must be a positive number for {kind}, got {v!r}")
                    )
            if kind == "yarn" and not isinstance(scaling.get("truncate", True), bool):
                problems.append(
                    ("model.rope_scaling.truncate", f"must be true or false, got {scaling['truncate']!r}")
                )
            known = {"rope_type", "type", *ROPE_SCALING_KEYS[kind], *ROPE_SCALING_OPTIONAL.get(kind, ())}
            known |= set(ROPE_SCALING_LISTS.get(kind, ()))
            known |= {"truncate"} if kind == "yarn" else set()
            expected = ", ".join(
                [
                    *ROPE_SCALING_KEYS[kind],
                    *ROPE_SCALING_LISTS.get(kind, ()),
                    *ROPE_SCALING_OPTIONAL.get(kind, ()),
                ]
            )
            for k in sorted(set(scaling) - known):
                problems.append(
                    (f"model.rope_scaling.{k}", f"unknown key for rope_type {kind}; expected {expected}")
                )
            original = scaling.get("original_max_position_embeddings")
            longest = model.get("max_position_embeddings")
            if (
                "original_max_position_embeddings" in ROPE_SCALING_KEYS[kind]
                and "original_max_position_embeddings" not in bad
            ):
                if isinstance(longest, int) and original > longest:
                    problems.append(
                        (
                            "model.rope_scaling.original_max_position_embeddings",
                            f"{original} is longer than model.max_position_embeddings = {longest}; "
                            "scaling extends a shorter original context",
                        )
                    )
    head_dim = model.get("head_dim") or (hidden // heads if heads and hidden and not hidden % heads else None)
    if "rope_theta" in model and isinstance(head_dim, int) and head_dim % 2:
        key = "model.head_dim" if "head_dim" in model else "model.hidden_size"
        problems.append(
            (key, f"the head width {head_dim} is odd; rotary embeddings rotate pairs of channels")
        )
    partial = model.get("partial_rotary_factor")
    if (
        "rope_theta" in model
        and isinstance(head_dim, int)
        and isinstance(partial, (int, float))
        and not isinstance(partial, bool)
    ):
        width = int(head_dim * partial)
        if width % 2 or width <= 0:
            problems.append(
                (
                    "model.partial_rotary_factor",
                    f"gives a rotary width of {width} (of head width {head_dim}); it must be even and positive",
                )
            )
    generation = section("generation")
    # max_new_tokens and do_sample alone (the defaults) cannot conflict; any other key is judged by
    # transformers, which is imported only then (`scaffold new` of a plain project stays light)
    if set(generation) - {"max_new_tokens", "do_sample"} and not any(
        k.startswith("generation.") for k in skip
    ):
        problems.extend(generation_problems(generation))
    problems.extend(structure.problems(model, m.get("test")))
    tok = section("tokenizer")
    kind = tok.get("kind", "byte")
    files = tok.get("files")
    if isinstance(files, list) and not all(isinstance(f, str) and f for f in files):
        wrong = next(f for f in files if not (isinstance(f, str) and f))
        problems.append(
            (
                "tokenizer.files",
                f"must list file names (non-empty strings), got {type(wrong).__name__} {wrong!r}",
            )
        )
    if kind == "bpe" and not tok.get("files") and not tok.get("dataset"):
        problems.append(
            ("tokenizer.files", "a bpe tokenizer needs text files (or tokenizer.dataset) to train on")
        )
    if kind == "pretrained" and not tok.get("path"):
        problems.append(
            ("tokenizer.path", "a pretrained tokenizer needs a path to a tokenizer.json or folder")
        )
    return problems


def generation_problems(table: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The [generation] table checked as transformers will check it: ``GenerationConfig(**table)``
    and its strict ``validate``; its complaints in one line naming the keys (transformers' rules are
    not copied here, so they follow the installed version)."""
    import re

    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the non-strict check in __init__ would log the same complaint
    try:
        GenerationConfig(**table).validate(strict=True)
    except (ValueError, TypeError) as err:
        text = str(err)
        named = list(dict.fromkeys(re.findall(r"`(\w+)`", text)))
        keys = [k for k in named if k in table] or sorted(table)
        first = " ".join(text.replace("GenerationConfig is invalid:", "").split())
        first = re.sub(r"\s*If you're using a pretrained model.*$", "", first).lstrip("- ")
        first = re.split(r" - `\w+`: ", first)[0]  # the first complaint; the keys name the others
        return [(f"generation.{keys[0]}", f"transformers rejects {', '.join(keys)} as given: {first}")]
    finally:
        hf_logging.set_verbosity(verbosity)
    return []
