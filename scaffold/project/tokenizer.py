"""Tokenizers built locally: nothing is downloaded.

A project holds its tokenizer as ``tokenizer.json`` (the ``tokenizers`` library's format) next to
``tokenizer-source.json``, which records what it was made from: the kind, the settings, each input
file with its sha256, the special tokens, and a fingerprint of all that. Three kinds:

- ``byte`` needs no data: the special tokens, then one token per byte.
- ``bpe`` is a byte-level BPE trained with ``tokenizers`` on the files (or dataset) the manifest
  names, to ``tokenizer.vocab_size`` tokens, with the special tokens of the original presets
  (``<|BOS|>``=0 ``<|PAD|>``=1 ``<|EOS|>``=2 ``<|UNK|>``=3 ``<|im_start|>``=4 ``<|im_end|>``=5), NFC
  normalisation, a byte-level pre-tokenizer and decoder, and BOS added by the post-processor.
  Training is deterministic.
- ``pretrained`` copies a ``tokenizer.json`` file, or the tokenizer of a folder (its
  ``tokenizer.json`` with the special tokens and chat template of its ``tokenizer_config.json``).

``scaffold new`` makes the tokenizer, so a project is complete and ``model.vocab_size`` can follow
the tokenizer's size. ``scaffold build`` compares the recorded fingerprint with the inputs' current
one and remakes the tokenizer only when they differ, so an unchanged rebuild never retrains.
:func:`to_hf` wraps the project's tokenizer as a transformers fast tokenizer with its special tokens
and chat template, ready for ``save_pretrained`` into a model directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaffold import atomic
from scaffold.atomic import sha256_file
from scaffold.errors import DataError, one_line

# The special tokens of the original presets, in id order.
SPECIAL_TOKENS = ("<|BOS|>", "<|PAD|>", "<|EOS|>", "<|UNK|>", "<|im_start|>", "<|im_end|>")
BOS, PAD, EOS, UNK = SPECIAL_TOKENS[:4]
CHAT_TOKENS = SPECIAL_TOKENS[4:]
PRESET_SPECIALS: dict[str, Any] = {
    "bos_token": BOS,
    "eos_token": EOS,
    "pad_token": PAD,
    "unk_token": UNK,
    "additional_special_tokens": list(CHAT_TOKENS),
}
SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")

TOKENIZER_FILE = "tokenizer.json"
SOURCE_FILE = "tokenizer-source.json"
MANIFEST_FILE = "scaffold.toml"
# Bump when the way a tokenizer is made changes, so that projects remake theirs on the next build.
RECIPE = 1
DEFAULT_MIN_FREQUENCY = 2
INHERIT = "inherit"  # chat_template: the template that came with a pretrained tokenizer

CHAT_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
}


# ---------------------------------------------------------------------------------------------
# The kinds
# ---------------------------------------------------------------------------------------------


def byte_tokenizer_json() -> str:
    """A byte-level tokenizer: the special tokens, then one token per byte; BOS added to each text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(alphabet, key=lambda c: _byte_of(c)):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = _bos_processor()
    return tok.to_str(pretty=True)


def _bos_processor():
    from tokenizers import processors

    return processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, SPECIAL_TOKENS.index(BOS))]
    )


def _byte_of(ch: str) -> int:
    """The byte a ByteLevel alphabet character stands for (GPT-2's printable mapping)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    code = ord(ch)
    if code in printable:
        return code
    others = [b for b in range(256) if b not in printable]
    return others[code - 256]


def train_bpe_json(texts: Iterator[str], vocab_size: int, min_frequency: int = DEFAULT_MIN_FREQUENCY) -> str:
    """A byte-level BPE trained on ``texts`` (deterministic: the same texts give the same file)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    from scaffold import progress

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress.enabled(),  # tokenizers' own bars, on a terminal only
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = _bos_processor()
    return tok.to_str(pretty=True)


@dataclass
class Pretrained:
    """A tokenizer found on disk: its tokenizer.json text, special tokens and chat template."""

    json: str
    special_tokens: dict[str, Any]
    chat_template: str | None
    files: list[Path]  # what it was read from, for the fingerprint


def read_pretrained(path: Path, *, manifest: Path | None = None) -> Pretrained:
    """A ``tokenizer.json`` file, or a tokenizer folder (``tokenizer.json`` + ``tokenizer_config.json``)."""
    where = {"path": manifest or path, "key": "tokenizer.path"} if manifest else {"path": path}
    if path.is_dir():
        folder, file = path, path / TOKENIZER_FILE
        if not file.exists():  # a FIFO or a folder there is named by _read_input, not taken as missing
            raise DataError(
                f"{path}: no {TOKENIZER_FILE} in this folder; scaffold reuses fast (tokenizers) tokenizers only",
                **where,
            )
    elif path.exists():
        folder, file = None, path
    else:
        raise DataError(f"{path}: no such tokenizer file or folder", **where)
    text = _read_input(file)
    vocab = _vocab_of(text, file)
    files = [file]
    if folder is None:
        # a bare file says nothing of its special tokens: take the presets' where the vocabulary has them
        specials: dict[str, Any] = {
            k: v for k, v in PRESET_SPECIALS.items() if k in SPECIAL_KEYS and v in vocab
        }
        specials["additional_special_tokens"] = [t for t in CHAT_TOKENS if t in vocab]
        return Pretrained(text, specials, None, files)
    config, stmap = {}, {}
    for name, target in (("tokenizer_config.json", config), ("special_tokens_map.json", stmap)):
        p = folder / name
        if p.is_file():
            files.append(p)
            data = _json_input(p)
            if not isinstance(data, dict):
                raise DataError(f"must be a JSON object, got {type(data).__name__}", path=p)
            target.update(data)
    specials = {}
    for key in SPECIAL_KEYS:
        value = _token_text(config.get(key)) or _token_text(stmap.get(key))
        if value:
            specials[key] = value
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens")
    extra = extra or stmap.get("additional_special_tokens") or []
    if isinstance(extra, Mapping):  # named extra tokens (transformers 5)
        extra = list(extra.values())
    specials["additional_special_tokens"] = [t for t in (_token_text(x) for x in extra) if t]
    template = None
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        files.append(jinja)
        template = _read_input(jinja)
    elif isinstance(config.get("chat_template"), str):
        template = config["chat_template"]
    elif isinstance(config.get("chat_template"), list):  # named templates: take the default one
        named = {t.get("name"): t.get("template") for t in config["chat_template"] if isinstance(t, Mapping)}
        template = named.get("default") or next(iter(named.values()), None)
    return Pretrained(text, specials, template, files)


def _read_input(path: Path) -> str:
    """A tokenizer input's text: a FIFO, a folder or bytes that are not UTF-8 are a DataError naming it."""
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise DataError("no such file", path=path) from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DataError("not a regular file (a FIFO, a device or a folder)", path=path)
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text (byte {err.start}): not a tokenizer file", path=path) from None


def _json_input(path: Path) -> Any:
    """A tokenizer input's JSON, nesting bounded: anything else is a DataError naming the file."""
    from scaffold.atomic import MAX_NESTING, nesting_depth

    text = _read_input(path)
    if nesting_depth(text) > MAX_NESTING:
        raise DataError(f"nested more than {MAX_NESTING} levels deep", path=path)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise DataError(f"not valid JSON: {one_line(err)}", path=path) from None


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _vocab_of(text: str, path: Path) -> dict[str, int]:
    from tokenizers import Tokenizer

    from scaffold.atomic import MAX_NESTING, nesting_depth

    if nesting_depth(text) > MAX_NESTING:
        raise DataError(
            f"not a tokenizers tokenizer.json: nested more than {MAX_NESTING} levels deep", path=path
        )
    try:
        return Tokenizer.from_str(text).get_vocab(with_added_tokens=True)
    except Exception as err:  # tokenizers raises a bare Exception for a malformed file
        raise DataError(f"not a tokenizers tokenizer.json: {one_line(err)}", path=path) from None


# ---------------------------------------------------------------------------------------------
# Making a project's tokenizer, cached by the content of its inputs
# ---------------------------------------------------------------------------------------------


@dataclass
class MadeTokenizer:
    """A tokenizer.json text and the record that goes beside it (``tokenizer-source.json``)."""

    json: str
    source: dict[str, Any]
    reused: bool = False  # True when an up-to-date tokenizer was found and nothing was trained

    @property
    def size(self) -> int:
        """Ids the model must hold: one more than the largest id."""
        return max(_vocab_of(self.json, Path(TOKENIZER_FILE)).values()) + 1


def resolve_path(base_dir: Path, name: str) -> Path:
    """``name`` relative to ``base_dir`` (lexically, so the project folder need not exist yet)."""
    p = Path(os.path.expanduser(name))
    return Path(os.path.normpath(p if p.is_absolute() else Path(base_dir).absolute() / p))


def bpe_target_size(spec: Mapping[str, Any], model_vocab: int | None) -> int:
    """The vocabulary a BPE is trained to: tokenizer.vocab_size, else the model's."""
    return int(spec.get("vocab_size") or model_vocab or 0)


def plan(spec: Mapping[str, Any], base_dir: Path, model_vocab: int | None = None) -> dict[str, Any]:
    """What the tokenizer depends on: kind, settings and each input with its sha256.

    Raises a DataError naming the manifest key when an input is missing.
    """
    from scaffold.data import resolve as resolve_dataset

    manifest = Path(base_dir) / MANIFEST_FILE
    kind = spec.get("kind", "byte")
    record: dict[str, Any] = {"kind": kind, "recipe": RECIPE}
    if kind == "byte":
        return record
    if kind == "bpe":
        target = bpe_target_size(spec, model_vocab)
        if target < len(SPECIAL_TOKENS) + 256:
            raise DataError(
                f"a byte-level BPE needs at least {len(SPECIAL_TOKENS) + 256} tokens (specials and bytes), "
                f"got {target}",
                path=manifest,
                key="tokenizer.vocab_size",
            )
        record["settings"] = {
            "vocab_size": target,
            "min_frequency": int(spec.get("min_frequency", DEFAULT_MIN_FREQUENCY)),
        }
        inputs = []
        for i, name in enumerate(spec.get("files") or []):
            path = resolve_path(base_dir, name)
            if not path.is_file():
                raise DataError(
                    f"{name}: no such file (paths are relative to the project)",
                    path=manifest,
                    key=f"tokenizer.files[{i}]",
                )
            inputs.append({"file": name, "sha256": sha256_file(path)})
        record["files"] = inputs
        if spec.get("dataset"):
            source = resolve_dataset(
                resolve_path(base_dir, spec["dataset"]),
                spec.get("dataset_config") or None,
                manifest=manifest,
                key="tokenizer.dataset",
            )
            record["dataset"] = {"path": spec["dataset"], **source.record()}
        return record
    if kind == "pretrained":
        found = read_pretrained(resolve_path(base_dir, spec.get("path", "")), manifest=manifest)
        record["path"] = spec.get("path", "")
        record["files"] = [{"file": p.name, "sha256": sha256_file(p)} for p in found.files]
        return record
    raise DataError(f"unknown tokenizer kind {kind!r}", path=manifest, key="tokenizer.kind")


def fingerprint(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def read_source(project_dir: Path) -> dict[str, Any] | None:
    """The record beside a project's tokenizer.json, or None."""
    try:
        data = json.loads((Path(project_dir) / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def make(
    spec: Mapping[str, Any],
    base_dir: Path,
    *,
    model_vocab: int | None = None,
    reuse_from: Path | None = None,
) -> MadeTokenizer:
    """The tokenizer ``spec`` (a manifest's [tokenizer] table) asks for; input paths are relative to
    ``base_dir``. When ``reuse_from`` holds a tokenizer made from the same inputs, it is reused."""
    record = plan(spec, base_dir, model_vocab)
    fp = fingerprint(record)
    if reuse_from is not None:
        old = read_source(reuse_from)
        tok_file = Path(reuse_from) / TOKENIZER_FILE
        if old is not None and old.get("fingerprint") == fp and tok_file.is_file():
            return MadeTokenizer(tok_file.read_text(encoding="utf-8"), old, reused=True)
    kind = record["kind"]
    chat = None
    if kind == "byte":
        text, specials = byte_tokenizer_json(), dict(PRESET_SPECIALS)
    elif kind == "bpe":
        text, specials = (
            train_bpe_json(_training_texts(spec, base_dir), **record["settings"]),
            dict(PRESET_SPECIALS),
        )
    else:
        found = read_pretrained(resolve_path(base_dir, spec["path"]), manifest=Path(base_dir) / MANIFEST_FILE)
        text, specials, chat = found.json, found.special_tokens, found.chat_template
    source = {
        "generated_by": "scaffold: remade by `scaffold build` when its inputs change",
        "fingerprint": fp,
        "inputs": record,
        "special_tokens": specials,
        "chat_template": chat,
    }
    return MadeTokenizer(text, source)


def make_for_new(manifest: dict[str, Any], overrides: Mapping[str, Any], project_dir: Path) -> MadeTokenizer:
    """The tokenizer of a new project; settles the sizes in ``manifest`` (changed in place).

    A BPE's target size is written out (it defaults to model.vocab_size), and model.vocab_size
    follows the tokenizer (byte, trained or pretrained) unless it was set on the command line: rows
    of the embedding and the head past the tokenizer's last id would never be trained or used.
    """
    spec = manifest.setdefault("tokenizer", {})
    model = manifest.setdefault("model", {})
    kind = spec.get("kind", "byte")
    if kind == "bpe" and not spec.get("vocab_size"):
        spec["vocab_size"] = bpe_target_size(spec, model.get("vocab_size"))
    made = make(spec, project_dir, model_vocab=model.get("vocab_size"), reuse_from=project_dir)
    if "vocab_size" not in (overrides.get("model") or {}):
        model["vocab_size"] = made.size
    return made


def _training_texts(spec: Mapping[str, Any], base_dir: Path) -> Iterator[str]:
    from scaffold.data import DatasetSource, _check_suffix, iter_texts
    from scaffold.data import resolve as resolve_dataset

    manifest = Path(base_dir) / MANIFEST_FILE
    names = spec.get("files") or []
    for name in names:
        if not isinstance(name, str):
            raise DataError(
                f"must list file names (strings), got {type(name).__name__} {name!r}",
                path=manifest,
                key="tokenizer.files",
            )
    files = [resolve_path(base_dir, f) for f in names]
    for f in files:
        _check_suffix(f, path=manifest, key="tokenizer.files")
    if files:
        yield from iter_texts(DatasetSource(origin=manifest, files=files))
    if spec.get("dataset"):
        yield from iter_texts(
            resolve_dataset(
                resolve_path(base_dir, spec["dataset"]),
                spec.get("dataset_config") or None,
                manifest=manifest,
                key="tokenizer.dataset",
            )
        )


def write(made: MadeTokenizer, project_dir: Path) -> None:
    """Write tokenizer.json and its record into ``project_dir``, each file replaced atomically."""
    record = json.dumps(made.source, indent=2, sort_keys=True) + "\n"
    for name, text in ((TOKENIZER_FILE, made.json), (SOURCE_FILE, record)):
        atomic.write_text(Path(project_dir) / name, text)


def ensure_project_tokenizer(project_dir: Path, manifest: Mapping[str, Any]) -> str | None:
    """Remake the project's tokenizer if its inputs changed since it was made (``scaffold build``).

    Returns a line saying what was done, or None when the tokenizer was up to date. When the
    training files of an unchanged manifest have gone missing, the tokenizer already in the
    project is kept (it is what those files made) and the line says so.
    """
    project_dir = Path(project_dir)
    spec = manifest.get("tokenizer", {})
    model_vocab = manifest.get("model", {}).get("vocab_size")
    old = read_source(project_dir)
    try:
        made = make(spec, project_dir, model_vocab=model_vocab, reuse_from=project_dir)
    except DataError as err:
        if (
            old is not None
            and (project_dir / TOKENIZER_FILE).is_file()
            and _same_settings(old, spec, model_vocab)
        ):
            return f"kept the project's tokenizer: its inputs cannot be read ({err})"
        raise
    if made.reused:
        return None
    write(made, project_dir)
    what = {"bpe": "trained", "pretrained": "copied"}.get(spec.get("kind", "byte"), "made")
    why = "its inputs changed" if old is not None else "none was recorded"
    return f"tokenizer {what} ({why}): {project_dir / TOKENIZER_FILE}"


def _same_settings(old: Mapping[str, Any], spec: Mapping[str, Any], model_vocab: int | None) -> bool:
    """Whether the manifest still asks for the tokenizer recorded in ``old`` (inputs aside)."""
    inputs = old.get("inputs", {})
    kind = spec.get("kind", "byte")
    if inputs.get("kind") != kind or inputs.get("recipe") != RECIPE:
        return False
    if kind == "bpe":
        settings = {
            "vocab_size": bpe_target_size(spec, model_vocab),
            "min_frequency": int(spec.get("min_frequency", DEFAULT_MIN_FREQUENCY)),
        }
        return (
            inputs.get("settings") == settings
            and [f.get("file") for f in inputs.get("files", [])] == list(spec.get("files") or [])
            and (inputs.get("dataset") or {}).get("path") == (spec.get("dataset") or None)
        )
    return kind == "pretrained" and inputs.get("path") == spec.get("path")


def project_sources(project_dir: Path, spec: Mapping[str, Any]) -> list[Path]:
    """Project files besides tokenizer.json that a build depends on: the record, a chat template file."""
    out = [Path(project_dir) / SOURCE_FILE]
    name = spec.get("chat_template", "")
    if name and name not in CHAT_TEMPLATES and name != INHERIT:
        out.append(resolve_path(project_dir, name))
    return [p for p in out if p.is_file()]


# ---------------------------------------------------------------------------------------------
# The transformers tokenizer of a built model directory
# ---------------------------------------------------------------------------------------------


def build_tokenizer_json(spec: dict[str, Any], project_dir: Path) -> str:
    """The tokenizer.json text a manifest's [tokenizer] table asks for (made afresh)."""
    return make(spec, project_dir).json


def chat_template(spec: Mapping[str, Any], project_dir: Path, inherited: str | None = None) -> str | None:
    """The chat template text: a named one, ``inherit`` (a pretrained tokenizer's), a file relative
    to the project, or None."""
    name = spec.get("chat_template", "")
    if not name:
        return None
    if name in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[name]
    where = {"path": Path(project_dir) / MANIFEST_FILE, "key": "tokenizer.chat_template"}
    if name == INHERIT:
        if not inherited:
            raise DataError("'inherit' needs a pretrained tokenizer that comes with a chat template", **where)
        return inherited
    path = resolve_path(project_dir, name)
    if path.is_file():
        return path.read_text(encoding="utf-8")
    raise DataError(
        f"chat template {name!r} is neither a named template ({', '.join(CHAT_TEMPLATES)}, {INHERIT}) nor a file",
        **where,
    )


def to_hf(tokenizer_json: Path, spec: Mapping[str, Any], project_dir: Path):
    """A transformers fast tokenizer over ``tokenizer_json`` with its recorded special tokens."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from scaffold.errors import IntegrityError

    try:
        Tokenizer.from_file(str(tokenizer_json))
    except Exception as err:  # tokenizers raises a bare Exception for a malformed or truncated file
        raise IntegrityError(
            f"corrupt or truncated tokenizer ({one_line(err)}); delete it and `scaffold build` makes it again",
            path=tokenizer_json,
        ) from None
    source = read_source(Path(tokenizer_json).parent) or {}
    specials = source.get("special_tokens") or PRESET_SPECIALS
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_json),
        **{k: specials.get(k) for k in SPECIAL_KEYS},
        additional_special_tokens=list(specials.get("additional_special_tokens") or []),
        model_max_length=spec.get("model_max_length", 2048),
        clean_up_tokenization_spaces=False,
    )
    template = chat_template(spec, project_dir, source.get("chat_template"))
    if template:
        tok.chat_template = template
    return tok


def check_fits(tokenizer, vocab_size: int, *, path: Path) -> None:
    """Every id the tokenizer can produce, special ones included, must index the model's embedding."""
    from scaffold.errors import ProjectError

    size = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    if size > vocab_size:
        raise ProjectError(
            f"the tokenizer has {size} tokens but model.vocab_size is {vocab_size}; "
            f"raise model.vocab_size to at least {size}",
            path=path,
            key="model.vocab_size",
        )
    for token in tokenizer.all_special_tokens:
        tid = tokenizer.convert_tokens_to_ids(token)
        if tid is None or not 0 <= tid < vocab_size:
            raise ProjectError(
                f"special token {token!r} has id {tid}, outside model.vocab_size = {vocab_size}",
                path=path,
                key="model.vocab_size",
            )
