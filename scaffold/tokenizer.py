"""Tokenizers built locally: nothing is downloaded.

A project holds its tokenizer as ``tokenizer.json`` (the ``tokenizers`` library's format). ``byte``
needs no data: 256 byte tokens after the special tokens the original presets use. :func:`to_hf`
wraps it as a transformers fast tokenizer with its special tokens and chat template, ready for
``save_pretrained`` into a model directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import DataError

# The special tokens of the original presets, in id order.
SPECIAL_TOKENS = ("<|BOS|>", "<|PAD|>", "<|EOS|>", "<|UNK|>", "<|im_start|>", "<|im_end|>")
BOS, PAD, EOS, UNK = SPECIAL_TOKENS[:4]
CHAT_TOKENS = SPECIAL_TOKENS[4:]

CHAT_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
}


def byte_tokenizer_json() -> str:
    """A byte-level tokenizer: the special tokens, then one token per byte; BOS added to each text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(alphabet, key=lambda c: _byte_of(c)):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 0)]
    )
    return tok.to_str(pretty=True)


def _byte_of(ch: str) -> int:
    """The byte a ByteLevel alphabet character stands for (GPT-2's printable mapping)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    code = ord(ch)
    if code in printable:
        return code
    others = [b for b in range(256) if b not in printable]
    return others[code - 256]


def build_tokenizer_json(spec: dict[str, Any], project_dir: Path) -> str:
    """The tokenizer.json text a manifest's [tokenizer] table asks for."""
    kind = spec.get("kind", "byte")
    if kind == "byte":
        return byte_tokenizer_json()
    raise DataError(f"tokenizer kind {kind!r} is not supported yet", path=project_dir / "scaffold.toml", key="tokenizer.kind")


def chat_template(spec: dict[str, Any], project_dir: Path) -> str | None:
    """The chat template text: a named one, a file relative to the project, or None."""
    name = spec.get("chat_template", "")
    if not name:
        return None
    if name in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[name]
    path = project_dir / name
    if path.is_file():
        return path.read_text(encoding="utf-8")
    raise DataError(
        f"chat template {name!r} is neither a named template ({', '.join(CHAT_TEMPLATES)}) nor a file",
        path=project_dir / "scaffold.toml",
        key="tokenizer.chat_template",
    )


def to_hf(tokenizer_json: Path, spec: dict[str, Any], project_dir: Path):
    """A transformers fast tokenizer over ``tokenizer_json`` with the presets' special tokens."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_json),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(CHAT_TOKENS),
        model_max_length=spec.get("model_max_length", 2048),
        clean_up_tokenization_spaces=False,
    )
    template = chat_template(spec, project_dir)
    if template:
        tok.chat_template = template
    return tok
