"""What llama.cpp's GGUF converter reads from a built model directory, read back with the ``gguf`` package.

``convert_hf_to_gguf.py`` takes a byte-level BPE tokenizer through transformers' tokenizer and
``gguf.SpecialVocab`` (special token ids, whether BOS is added, the merges, the chat template). These
tests read a built directory the way that class does: the part of the path scaffold's files decide.
README's "Exporting to GGUF (llama.cpp)" says which step needs the converter's own registry (the
pre-tokenizer check) and why the byte tokenizer has no merges to give it.
"""

from __future__ import annotations

import json

import pytest

from tests.test_tokenizers import SPECIAL_IDS, built, new, text_file  # noqa: F401  (fixture)

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install gguf)")


def _special_vocab(model_dir):
    return gguf.SpecialVocab(model_dir, load_merges=True)


def test_byte_tokenizer_specials_bos_and_chat_template_read_back(tmp_path):
    out = built(new(tmp_path, "byte"))
    vocab = _special_vocab(out)
    ids = {f"<|{k.upper()}|>": v for k, v in vocab.special_token_ids.items()}
    assert ids == {t: SPECIAL_IDS[t] for t in ("<|BOS|>", "<|EOS|>", "<|PAD|>", "<|UNK|>")}
    assert vocab.add_special_token.get("bos") is True  # BOS first, as the post-processor adds it
    assert not vocab.add_special_token.get("eos")
    assert vocab.chat_template and "<|im_start|>" in vocab.chat_template
    assert vocab.merges == []  # one token per byte: nothing to merge (README says what that costs)


def test_bpe_tokenizer_merges_read_back_in_order(tmp_path, text_file):  # noqa: F811
    out = built(new(tmp_path, "bpe", kind="bpe", files=[str(text_file)], vocab_size=320))
    merges = json.loads((out / "tokenizer.json").read_text())["model"]["merges"]
    vocab = _special_vocab(out)
    assert len(vocab.merges) == len(merges) > 0
    assert vocab.merges == [" ".join(pair) if isinstance(pair, list) else pair for pair in merges]
    # GPT-2's pre-tokenizer (ByteLevel with its regex): llama.cpp's "gpt2" pre-tokenizer is the same
    pre = json.loads((out / "tokenizer.json").read_text())["pre_tokenizer"]
    assert pre["type"] == "ByteLevel" and pre["use_regex"] is True and pre["add_prefix_space"] is False
