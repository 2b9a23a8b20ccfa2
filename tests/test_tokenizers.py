"""Tokenizers of every kind, built into real model directories and loaded back with transformers."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from scaffold.build import build
from scaffold.cli import cli
from scaffold.errors import DataError, ManifestError, ProjectError
from scaffold.project import load_project
from scaffold.project import tokenizer as tokmod
from scaffold.project.new import create_project, rerender
from scaffold.spec import manifest

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "intermediate_size": 64,
}
SPECIAL_IDS = {"<|BOS|>": 0, "<|PAD|>": 1, "<|EOS|>": 2, "<|UNK|>": 3, "<|im_start|>": 4, "<|im_end|>": 5}

WORDS = [
    "the",
    "king",
    "queen",
    "crown",
    "castle",
    "sword",
    "horse",
    "river",
    "night",
    "morning",
    "héros",
    "naïve",
]


def corpus(n: int = 300) -> str:
    """Made-up text with repeated words, so BPE has pairs to merge; deterministic."""
    lines = []
    for i in range(n):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(6 + i % 5)]
        lines.append(" ".join(words).capitalize() + ".")
        if i % 4 == 3:
            lines.append("")
    return "\n".join(lines) + "\n"


def new(tmp_path: Path, name: str, model: dict | None = None, **tokenizer) -> Path:
    overrides = {"model": {**TINY, **(model or {})}}
    if tokenizer:
        overrides["tokenizer"] = tokenizer
    return create_project(name, "llama", projects_dir=tmp_path / "projects", overrides=overrides)


def built(project: Path) -> Path:
    return build(load_project(project)).output_dir


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(corpus(), encoding="utf-8")
    return path


@pytest.fixture
def train_calls(monkeypatch) -> list[int]:
    """Counts BPE trainings (the real trainer still runs)."""
    calls: list[int] = []
    real = tokmod.train_bpe_json

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tokmod, "train_bpe_json", counting)
    return calls


def manifest_of(project: Path) -> dict:
    return manifest.load(project)


# --- byte ---------------------------------------------------------------------------------


def test_byte_round_trip_unicode(tmp_path):
    out = built(new(tmp_path, "byte", {"vocab_size": 300}))
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    text = "Héllo, wörld! 你好 🤖\n\ttabs  and  spaces ﬁ"
    ids = tok(text).input_ids
    assert ids[0] == 0  # BOS from the post-processor
    assert len(ids) == 1 + len(text.encode("utf-8"))  # one token per byte
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert len(tok) == 262
    assert {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_IDS} == SPECIAL_IDS
    # the byte tokenizer keeps the preset's model vocabulary
    assert manifest_of(out.parent)["model"]["vocab_size"] == 300


# --- bpe ----------------------------------------------------------------------------------


def test_bpe_trained_on_text(tmp_path, text_file):
    project = new(tmp_path, "bpe", kind="bpe", files=[str(text_file)], vocab_size=320)
    m = manifest_of(project)
    out = built(project)
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    assert 262 < len(tok) <= 320  # merges were learned, within the target
    assert m["model"]["vocab_size"] == len(tok)  # the model's vocabulary follows the tokenizer
    assert AutoConfig.from_pretrained(out, trust_remote_code=True).vocab_size == len(tok)
    assert {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_IDS} == SPECIAL_IDS
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    text = "The king and the queen rode to the castle at night. Héros naïve!"
    ids = tok(text).input_ids
    assert ids[0] == 0 and ids.count(0) == 1
    assert len(ids) < len(text.encode("utf-8")) // 2  # common words became single tokens
    assert tok.decode(ids, skip_special_tokens=True) == text
    # NFC: a decomposed é encodes as the composed one
    decomposed = unicodedata.normalize("NFD", "héros")
    assert decomposed != "héros" and tok(decomposed).input_ids == tok("héros").input_ids
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (0, 2, 1)


def test_bpe_is_deterministic(tmp_path, text_file):
    a = new(tmp_path, "a", kind="bpe", files=[str(text_file)], vocab_size=320)
    b = new(tmp_path, "b", kind="bpe", files=[str(text_file)], vocab_size=320)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_bpe_target_defaults_to_model_vocab(tmp_path, text_file):
    project = new(tmp_path, "p", {"vocab_size": 290}, kind="bpe", files=[str(text_file)])
    m = manifest_of(project)
    assert m["tokenizer"]["vocab_size"] == 290  # written out, so the build fingerprint is stable
    assert m["model"]["vocab_size"] == 290  # set on the command line: kept
    assert len(AutoTokenizer.from_pretrained(built(project), trust_remote_code=True)) == 290


def test_bpe_paths_relative_to_project(tmp_path, text_file, train_calls):
    (tmp_path / "projects").mkdir()
    project = new(tmp_path, "rel", kind="bpe", files=["../../corpus.txt"], vocab_size=300)
    assert train_calls == [1]
    assert len(AutoTokenizer.from_pretrained(built(project), trust_remote_code=True)) > 262


def test_bpe_training_is_cached(tmp_path, text_file, train_calls):
    project = new(tmp_path, "cached", kind="bpe", files=[str(text_file)], vocab_size=320)
    assert train_calls == [1]  # trained once, at `new`
    tok_file = project / "tokenizer.json"
    stat = tok_file.stat()
    first = build(load_project(project))
    assert first.built and train_calls == [1]  # the build reused it
    again = build(load_project(project))
    assert not again.built and train_calls == [1]
    assert tok_file.stat().st_mtime_ns == stat.st_mtime_ns  # untouched

    # a changed input is noticed: the tokenizer is retrained and the build is stale
    text_file.write_text(corpus(200) + "Entirely new words: zebra zebra zebra.\n", encoding="utf-8")
    with pytest.raises(ProjectError, match="stale build"):
        build(load_project(project))
    assert train_calls == [1, 1]
    assert tok_file.stat().st_mtime_ns != stat.st_mtime_ns
    result = build(load_project(project), force=True)
    assert result.built and train_calls == [1, 1]
    source = json.loads((project / "tokenizer-source.json").read_text())
    assert source["inputs"]["files"][0]["sha256"] == tokmod.sha256_file(text_file)

    # the same manifest with its training text gone keeps the project's tokenizer, and says so
    text_file.unlink()
    kept = build(load_project(project))
    assert "kept the project's tokenizer" in kept.message and not kept.built
    assert train_calls == [1, 1]


def test_test_notices_changed_training_text(tmp_path, text_file, train_calls):
    """`scaffold test` brings the project's tokenizer up to date before it decides whether the build it
    runs on is current: changed training text retrains it and makes that build stale."""
    from scaffold.build import build_for_test

    project = new(tmp_path, "fortest", kind="bpe", files=[str(text_file)], vocab_size=320)
    assert build_for_test(load_project(project)).built
    assert not build_for_test(load_project(project)).built and train_calls == [1]
    text_file.write_text(corpus(200) + "Entirely new words: zebra zebra zebra.\n", encoding="utf-8")
    with pytest.raises(
        ProjectError, match=r"stale build.*changed sources: tokenizer-source\.json, tokenizer\.json"
    ):
        build_for_test(load_project(project))
    assert train_calls == [1, 1]
    rebuilt = build_for_test(load_project(project), force=True)
    assert rebuilt.built and train_calls == [1, 1]
    loaded = AutoTokenizer.from_pretrained(rebuilt.output_dir)
    assert loaded.backend_tokenizer.to_str() == Tokenizer.from_file(str(project / "tokenizer.json")).to_str()


def test_rerender_reuses_the_tokenizer(tmp_path, text_file, train_calls):
    project = new(tmp_path, "sync", kind="bpe", files=[str(text_file)], vocab_size=320)
    dest = rerender(project, tmp_path / "again")
    assert train_calls == [1]
    for name in ("tokenizer.json", "tokenizer-source.json", "scaffold.toml"):
        assert (dest / name).read_bytes() == (project / name).read_bytes(), name


def test_bpe_from_a_dataset(tmp_path):
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": line}) + "\n" for line in corpus().splitlines() if line))
    project = new(tmp_path, "ds", kind="bpe", dataset=str(data), vocab_size=300)
    tok = AutoTokenizer.from_pretrained(built(project), trust_remote_code=True)
    assert 262 < len(tok) <= 300
    text = corpus().splitlines()[0]
    assert len(tok(text).input_ids) <= 1 + len(text) // 2  # merges learnt from the dataset's words


def test_bpe_missing_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"tokenizer\.files\[0\].*nope\.txt: no such file"):
        new(tmp_path, "missing", kind="bpe", files=["nope.txt"], vocab_size=300)
    assert not (tmp_path / "projects" / "missing").exists()


def test_bpe_needs_text(tmp_path):
    with pytest.raises(ManifestError, match=r"tokenizer\.files"):
        new(tmp_path, "notext", kind="bpe", vocab_size=300)


# --- pretrained ---------------------------------------------------------------------------


def test_pretrained_from_a_folder(tmp_path, text_file):
    source = built(new(tmp_path, "src", kind="bpe", files=[str(text_file)], vocab_size=320))
    project = new(tmp_path, "reuse", {"vocab_size": 2000}, kind="pretrained", path=str(source))
    assert (project / "tokenizer.json").read_text() == (source / "tokenizer.json").read_text()
    out = built(project)
    a = AutoTokenizer.from_pretrained(source, trust_remote_code=True)
    b = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    assert len(b) == len(a)
    text = "The queen's horse crossed the river."
    assert b(text).input_ids == a(text).input_ids
    assert {t: b.convert_tokens_to_ids(t) for t in SPECIAL_IDS} == SPECIAL_IDS


def test_pretrained_folder_with_its_own_specials(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path / "their_tokenizer"
    folder.mkdir()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{c: i + 4 for i, c in enumerate("abcdefgh ")}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.add_special_tokens(["<pad>", "<s>", "</s>", "<unk>"])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "pad_token": "<pad>", "unk_token": "<unk>"}
        )
    )
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    (folder / "chat_template.jinja").write_text(template)
    project = new(tmp_path, "theirs", kind="pretrained", path=str(folder), chat_template="inherit")
    assert manifest_of(project)["model"]["vocab_size"] == 13  # follows the tokenizer
    out = built(project)
    t = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    assert (t.bos_token, t.eos_token, t.pad_token, t.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    cfg = AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id, cfg.vocab_size) == (1, 2, 0, 13)
    assert (out / "chat_template.jinja").read_text() == template
    chat = t.apply_chat_template([{"role": "user", "content": "abc"}], tokenize=False)
    assert chat == "[user] abc\n"


def test_pretrained_from_a_file(tmp_path, text_file):
    source = new(tmp_path, "src", kind="bpe", files=[str(text_file)], vocab_size=300)
    project = new(tmp_path, "file", kind="pretrained", path=str(source / "tokenizer.json"))
    t = AutoTokenizer.from_pretrained(built(project), trust_remote_code=True)
    assert {tok: t.convert_tokens_to_ids(tok) for tok in SPECIAL_IDS} == SPECIAL_IDS
    assert t.bos_token == "<|BOS|>" and t.eos_token == "<|EOS|>"


def test_pretrained_errors(tmp_path):
    with pytest.raises(DataError, match=r"tokenizer\.path.*no such tokenizer"):
        new(tmp_path, "a", kind="pretrained", path=str(tmp_path / "nothing"))
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(DataError, match=r"no tokenizer\.json in this folder"):
        new(tmp_path, "b", kind="pretrained", path=str(tmp_path / "empty_folder"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a tokenizer"}')
    with pytest.raises(DataError, match=r"bad\.json: not a tokenizers tokenizer\.json"):
        new(tmp_path, "c", kind="pretrained", path=str(bad))


# --- vocabulary checks, chat templates, generation defaults -------------------------------


def test_tokenizer_larger_than_model_is_a_build_error(tmp_path, text_file):
    runner = CliRunner()
    projects = tmp_path / "projects"
    sets = [f"--set=model.{k}={v}" for k, v in TINY.items()]
    args = ["new", "big", "--from", "llama", "--projects-dir", str(projects), *sets,
            "--set=tokenizer.kind=bpe", f"--set=tokenizer.files=['{text_file}']",
            "--set=tokenizer.vocab_size=320", "--set=model.vocab_size=280"]  # fmt: skip
    assert runner.invoke(cli, args).exit_code == 0
    result = runner.invoke(cli, ["build", str(projects / "big")])
    assert result.exit_code == 2
    assert "scaffold.toml: model.vocab_size: the tokenizer has" in result.output
    assert "but model.vocab_size is 280" in result.output
    assert not (projects / "big" / "model").exists()


def test_chat_templates(tmp_path):
    out = built(new(tmp_path, "chatml", {"vocab_size": 300}))
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (
        text
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert (out / "chat_template.jinja").read_text() == tokmod.CHAT_TEMPLATES["chatml"]
    ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert 4 in ids and 5 in ids  # the chat tokens are single special tokens

    project = new(tmp_path, "custom", {"vocab_size": 300}, chat_template="templates/chat.jinja")
    (project / "templates").mkdir()
    (project / "templates" / "chat.jinja").write_text(
        "{% for m in messages %}<{{ m['content'] }}>{% endfor %}"
    )
    out = built(project)
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    assert tok.apply_chat_template(messages, tokenize=False) == "<Be brief.><Hi>"
    # the template file is an input of the build
    (project / "templates" / "chat.jinja").write_text("{{ messages[0]['content'] }}")
    with pytest.raises(ProjectError, match=r"stale build \(changed sources: chat.jinja\)"):
        build(load_project(project))

    bad = new(tmp_path, "bad", {"vocab_size": 300}, chat_template="nonesuch")
    with pytest.raises(DataError, match=r"tokenizer.chat_template: chat template 'nonesuch' is neither"):
        build(load_project(bad))


def test_generation_config(tmp_path):
    project = create_project(
        "gen",
        "llama",
        projects_dir=tmp_path,
        overrides={
            "model": {**TINY, "vocab_size": 300},
            "generation": {
                "max_new_tokens": 7,
                "do_sample": True,
                "temperature": 0.7,
                "top_k": 5,
                "top_p": 0.9,
            },
        },
    )
    out = built(project)
    gen = GenerationConfig.from_pretrained(out)
    assert (gen.max_new_tokens, gen.do_sample, gen.temperature, gen.top_k, gen.top_p) == (
        7,
        True,
        0.7,
        5,
        0.9,
    )
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (0, 2, 1)
