"""Datasets for `scaffold test`: every form read through `datasets`, batches, packing, and bad data."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from scaffold.build import build
from scaffold.cli import cli
from scaffold.data import Batches, iter_texts, open_batches, resolve
from scaffold.errors import DataError
from scaffold.project import load_project
from scaffold.project.new import create_project
from scaffold.run.smoke import log_interval
from tests.conftest import skip_unreliable_flex

TINY = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "intermediate_size": 64,
    "vocab_size": 300,
}

# Projects the packing test runs on: (id, blueprint, [model] overrides). Add every family here.
_SMALL = {"vocab_size": 300, "num_hidden_layers": 2, "intermediate_size": 96, "max_position_embeddings": 256}
PACKING_PROJECTS = [
    ("llama", "llama", TINY),
    ("causal_lm", "causal_lm", {**_SMALL, "hidden_size": 64, "num_attention_heads": 4}),
    ("deepone", "deepone", {**_SMALL, "hidden_size": 64, "num_attention_heads": 4}),
    ("single_head", "single_head", {**_SMALL, "hidden_size": 64}),
]
PACKING_BACKENDS = ["eager", "sdpa", "flex_attention"]

DOCS = [
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "All:\nSpeak, speak.",
    "First Citizen:\nYou are all resolved rather to die than to famish?",
    "All:\nResolved. resolved.",
    "First Citizen:\nFirst, you know Caius Marcius is chief enemy to the people.",
    "All:\nWe know't, we know't.",
    "First Citizen:\nLet us kill him, and we'll have corn at our own price.",
    "Second Citizen:\nOne word, good citizens. Ünïcödé 你好!",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    projects = tmp_path_factory.mktemp("projects")
    project = create_project("tiny", "llama", projects_dir=projects, overrides={"model": TINY})
    return build(load_project(project)).output_dir


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)


# --- every form of dataset ----------------------------------------------------------------


def write_txt(folder: Path, docs: list[str], name: str = "docs.txt") -> Path:
    path = folder / name
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def write_jsonl(folder: Path, docs: list[str], name: str = "docs.jsonl", column: str = "text") -> Path:
    path = folder / name
    path.write_text(
        "".join(json.dumps({"id": i, column: d}) + "\n" for i, d in enumerate(docs)), encoding="utf-8"
    )
    return path


def write_csv(folder: Path, docs: list[str], name: str = "docs.csv", column: str = "text") -> Path:
    import csv

    path = folder / name
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", column])
        w.writerows([i, d] for i, d in enumerate(docs))
    return path


def write_parquet(folder: Path, docs: list[str], name: str = "docs.parquet", column: str = "text") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / name
    pq.write_table(pa.table({"id": list(range(len(docs))), column: docs}), path)
    return path


def make_txt(folder):
    return write_txt(folder, DOCS)


def make_jsonl(folder):
    return write_jsonl(folder, DOCS)


def make_csv(folder):
    return write_csv(folder, DOCS)


def make_parquet(folder):
    return write_parquet(folder, DOCS)


def make_folder(folder):
    data = folder / "mixed"
    (data / "sub").mkdir(parents=True)
    write_txt(data, DOCS[:2], "a.txt")
    write_jsonl(data, DOCS[2:4], "b.jsonl")
    write_csv(data / "sub", DOCS[4:6], "c.csv")
    write_parquet(data / "sub", DOCS[6:], "d.parquet")
    (data / "notes.toml.bak").write_text("ignored")
    (data / ".hidden.txt").write_text("ignored")
    return data


def make_saved(folder):
    import datasets

    path = folder / "saved"
    datasets.Dataset.from_dict({"text": DOCS, "n": list(range(len(DOCS)))}).save_to_disk(str(path))
    return path


def make_saved_dict(folder):
    import datasets

    path = folder / "saved_dict"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"body": DOCS}),
            "validation": datasets.Dataset.from_dict({"body": ["x"]}),
        }
    ).save_to_disk(str(path))
    (folder / "dataset.toml").write_text('[dataset]\nsaved = "saved_dict"\ntext_column = "body"\n')
    return folder / "dataset.toml"


def make_manifest(folder):
    (folder / "shards").mkdir()
    for i in range(0, len(DOCS), 2):
        write_jsonl(folder / "shards", DOCS[i : i + 2], f"part-{i:02}.jsonl", column="content")
    write_txt(folder, ["Not this."], "other.txt")
    (folder / "dataset.toml").write_text(
        '[dataset]\ndescription = "citizens"\ntext_column = "content"\ndefault_config = "all"\n'
        '[configs.all]\nfiles = {train = ["shards/*.jsonl"], validation = ["other.txt"]}\n'
        '[configs.other]\nfiles = ["other.txt"]\n'
    )
    return folder  # a dataset project: a folder holding dataset.toml


FORMS = {
    "txt": make_txt,
    "jsonl": make_jsonl,
    "csv": make_csv,
    "parquet": make_parquet,
    "folder": make_folder,
    "save_to_disk": make_saved,
    "save_to_disk_dict": make_saved_dict,
    "manifest": make_manifest,
}


@pytest.mark.parametrize("form", list(FORMS))
def test_every_form_gives_the_documents(tmp_path, form, tokenizer):
    path = FORMS[form](tmp_path)
    source = resolve(path)
    assert list(iter_texts(source)) == DOCS
    batch = next(Batches(source, tokenizer, batch_size=2, sequence_length=16))
    assert batch["input_ids"].shape == (2, 16)
    assert batch["input_ids"][0, 0] == tokenizer.bos_token_id


def test_manifest_configurations_and_splits(tmp_path):
    path = make_manifest(tmp_path)
    assert list(iter_texts(resolve(path, "other"))) == ["Not this."]
    src = resolve(path / "dataset.toml", "all")
    assert src.config == "all" and src.description == "citizens" and len(src.files) == 4
    (path / "dataset.toml").write_text(
        (path / "dataset.toml")
        .read_text()
        .replace('default_config = "all"', 'split = "validation"\ndefault_config = "all"')
    )
    assert list(iter_texts(resolve(path))) == ["Not this."]
    with pytest.raises(DataError, match=r"no configuration 'nope'; configurations: all, other"):
        resolve(path, "nope")


def test_text_files_by_line_and_document(tmp_path):
    write_txt(tmp_path, ["one\ntwo", "three"])
    (tmp_path / "dataset.toml").write_text(
        '[dataset]\nfiles = ["docs.txt"]\nsample_by = "line"\n[configs.whole]\nsample_by = "document"\n'
    )
    assert list(iter_texts(resolve(tmp_path))) == ["one", "two", "three"]
    assert list(iter_texts(resolve(tmp_path, "whole"))) == ["one\ntwo\n\nthree"]


# --- batches ------------------------------------------------------------------------------


def test_unpacked_rows_are_cut_and_padded(tmp_path, tokenizer):
    stream = open_batches(write_txt(tmp_path, DOCS), tokenizer, batch_size=4, sequence_length=24)
    batch = next(stream)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape == (4, 24)
    assert "position_ids" not in batch
    for row, doc in enumerate(DOCS[:4]):
        expected = [*tokenizer(doc).input_ids, tokenizer.eos_token_id][:24]  # BOS doc EOS, cut
        n = len(expected)
        assert ids[row, :n].tolist() == expected
        assert mask[row].tolist() == [1] * n + [0] * (24 - n)
        assert (ids[row, n:] == tokenizer.pad_token_id).all()
        assert labels[row, :n].tolist() == expected and (labels[row, n:] == -100).all()


def test_packed_rows_restart_positions_at_each_document(tmp_path, tokenizer):
    stream = open_batches(write_txt(tmp_path, DOCS), tokenizer, batch_size=2, sequence_length=40, packed=True)
    batches = [next(stream) for _ in range(8)]  # more than the documents hold: a second pass begins
    stream_ids = []
    for batch in batches:
        assert set(batch) == {"input_ids", "position_ids", "labels"}  # no attention mask: packed
        ids, pos, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
        assert ids.shape == pos.shape == (2, 40)
        for row in range(2):
            assert pos[row, 0] == 0
            for t in range(1, 40):
                starts = ids[row, t] == tokenizer.bos_token_id
                assert pos[row, t] == (0 if starts else pos[row, t - 1] + 1)
                # no document is asked to predict the next one's first token
                assert (labels[row, t] == -100) == bool(starts)
                if not starts:
                    assert labels[row, t] == ids[row, t]
            stream_ids += ids[row].tolist()
    expected = []
    for doc in DOCS * 3:
        expected += [*tokenizer(doc).input_ids, tokenizer.eos_token_id]
    assert stream_ids == expected[: len(stream_ids)]  # every token, in order, across passes
    assert stream.passes >= 1


def test_flattened_packed_batch_for_flash(tmp_path, tokenizer):
    path = write_txt(tmp_path, DOCS)
    plain = next(open_batches(path, tokenizer, batch_size=3, sequence_length=20, packed=True))
    flat = next(open_batches(path, tokenizer, batch_size=3, sequence_length=20, packed=True, flatten=True))
    assert flat["input_ids"].shape == (1, 60)
    for key in plain:
        assert torch.equal(flat[key], plain[key].reshape(1, -1))


def doc_segments(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    starts = [i for i, p in enumerate(position_ids.tolist()) if p == 0] + [len(position_ids)]
    return list(itertools.pairwise(starts))


@pytest.mark.parametrize("attn", PACKING_BACKENDS)
@pytest.mark.parametrize(
    ("blueprint", "model"), [p[1:] for p in PACKING_PROJECTS], ids=[p[0] for p in PACKING_PROJECTS]
)
def test_packed_logits_equal_each_document_alone(tmp_path, blueprint, model, attn):
    """Packed rows give each document exactly the logits it gets alone: nothing crosses a boundary."""
    skip_unreliable_flex(attn)
    project = create_project("packing", blueprint, projects_dir=tmp_path, overrides={"model": model})
    out = build(load_project(project)).output_dir
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    lm = AutoModelForCausalLM.from_config(config, trust_remote_code=True, attn_implementation=attn)
    lm.eval()
    batch = next(open_batches(write_txt(tmp_path, DOCS), tok, batch_size=2, sequence_length=96, packed=True))
    with torch.no_grad():
        packed = lm(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        checked = 0
        for row in range(2):
            segments = doc_segments(batch["position_ids"][row])
            assert len(segments) >= 2
            for a, b in segments:
                alone = lm(input_ids=batch["input_ids"][row : row + 1, a:b], use_cache=False).logits[0]
                torch.testing.assert_close(packed[row, a:b], alone, rtol=1e-4, atol=1e-5)
                checked += 1
        # and the packing is what keeps them apart: one causal row would mix the documents
        mixed = lm(input_ids=batch["input_ids"], use_cache=False).logits
    assert checked >= 4
    assert not torch.allclose(mixed, packed, atol=1e-3)


# --- a real run through the command line --------------------------------------------------


def test_scaffold_test_on_a_dataset_learns(tmp_path, model_dir):
    data = write_txt(tmp_path, DOCS)
    args = ["test", str(model_dir.parent), "--device", "cpu", "--dataset", str(data), "--packed",
            "--steps", "30", "--batch-size", "2", "--sequence-length", "32", "--lr", "1e-2"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    steps = [line for line in lines if line.startswith("step ")]
    assert [s.split()[1] for s in steps] == ["1/30", *[f"{i}/30" for i in range(2, 31, 2)]]  # every 2 steps
    assert any(line.startswith("data: ") and "packed" in line for line in lines)
    summary = lines[-1]
    for part in ("30 steps in", "loss ", "mean of first 3", "tokens/s", "peak memory"):
        assert part in summary, summary
    first, last = (float(x) for x in summary.split("loss ")[1].split(" (")[0].split(" -> "))
    assert last < first - 1.0  # eight short documents are quickly learnt


def test_log_interval():
    assert [log_interval(n) for n in (1, 20, 21, 100, 300, 1000, 5000)] == [1, 1, 2, 5, 20, 50, 500]


# --- bad data -----------------------------------------------------------------------------


def run_test(model_dir: Path, *extra: str) -> tuple[int, str]:
    args = ["test", str(model_dir.parent), "--device", "cpu", "--steps", "1", "--batch-size", "2",
            "--sequence-length", "16", *extra]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.output


def bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, the message expected after 'error: FILE: ')."""
    (folder / "empty.txt").write_text("")
    (folder / "blank.txt").write_text("\n\n   \n")
    (folder / "malformed.jsonl").write_text(
        '{"text": "fine"}\n{"text": "fine"}\n{"text": "cut off\n{"text": "x"}\n'
    )
    (folder / "not_object.jsonl").write_text('{"text": "fine"}\n\n[1, 2]\n')
    (folder / "no_field.jsonl").write_text('{"text": "fine"}\n{"text": "fine"}\n{"body": "where"}\n')
    (folder / "number.jsonl").write_text('{"text": "fine"}\n{"text": 12}\n')
    (folder / "column.jsonl").write_text('{"body": "a"}\n{"body": "b"}\n')
    write_csv(folder, DOCS, "column.csv", column="body")
    (folder / "ragged.csv").write_text("text,id\nhello,1\nworld,2\nbad,3,4\n")
    write_parquet(folder, DOCS, "column.parquet", column="body")
    (folder / "corrupt.parquet").write_bytes(b"PAR1 not really parquet")
    (folder / "tiny.txt").write_text("One short document.\n")
    (folder / "data.xlsx").write_text("?")
    return {
        "empty": (folder / "empty.txt", "empty file"),
        "blank": (folder / "blank.txt", "no text: the file has no documents"),
        "malformed": (folder / "malformed.jsonl", "line 3: not valid JSON"),
        "not_object": (folder / "not_object.jsonl", "line 3: expected a JSON object, got list"),
        "no_field": (folder / "no_field.jsonl", "line 3: no 'text' field (fields: body)"),
        "number": (folder / "number.jsonl", "line 2: 'text' is int, not text"),
        "column_jsonl": (folder / "column.jsonl", "line 1: no 'text' field (fields: body)"),
        "column_csv": (folder / "column.csv", "no column 'text'; columns: id, body"),
        "ragged_csv": (folder / "ragged.csv", "Expected 2 fields in line 4, saw 3"),
        "column_parquet": (folder / "column.parquet", "no column 'text'; columns: id, body"),
        "corrupt_parquet": (folder / "corrupt.parquet", "cannot be read as Parquet"),
        "too_little": (folder / "tiny.txt", "too little text for one batch: 1 documents"),
        "suffix": (folder / "data.xlsx", "data.xlsx: unsupported file type"),
        "missing": (folder / "nowhere.txt", "no such file or folder"),
    }


BAD = [
    "empty", "blank", "malformed", "not_object", "no_field", "number", "column_jsonl", "column_csv",
    "ragged_csv", "column_parquet", "corrupt_parquet", "too_little", "suffix", "missing",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD)
def test_bad_data_is_an_error_naming_the_file(tmp_path, model_dir, case):
    path, message = bad_files(tmp_path)[case]
    code, output = run_test(model_dir, "--dataset", str(path))
    assert code == 2, output
    assert f"error: {path.absolute()}: " in output and message in output, output
    assert "step 1" not in output  # nothing ran
    assert "Traceback" not in output


def test_too_little_text_for_a_packed_batch(tmp_path, model_dir):
    path = write_txt(tmp_path, DOCS[:2])
    code, output = run_test(model_dir, "--dataset", str(path), "--packed", "--sequence-length", "64")
    assert code == 2
    assert f"{path.absolute()}: too little text for one batch" in output
    assert "one packed batch needs batch size 2 x sequence length 64 = 128 tokens" in output


def test_bad_file_in_a_folder_is_named(tmp_path, model_dir):
    folder = tmp_path / "data"
    folder.mkdir()
    write_txt(folder, DOCS, "a.txt")
    (folder / "b.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    code, output = run_test(model_dir, "--dataset", str(folder))
    assert code == 2 and f"{folder.absolute() / 'b.jsonl'}: line 2: not valid JSON" in output


def test_dataset_option_errors(tmp_path, model_dir):
    make_manifest(tmp_path)
    code, output = run_test(model_dir, "--dataset-project", str(tmp_path), "--dataset-config", "nope")
    assert code == 2 and "dataset.toml: no configuration 'nope'; configurations: all, other" in output
    code, output = run_test(model_dir, "--dataset", str(make_txt(tmp_path)), "--dataset-config", "x")
    assert code == 2 and "only a dataset manifest (dataset.toml) has configurations" in output
    code, output = run_test(model_dir, "--packed")
    assert code == 2 and "--packed needs a dataset" in output
    code, output = run_test(model_dir, "--dataset", str(tmp_path), "--dataset-project", str(tmp_path))
    assert code == 2 and "not both" in output
    code, output = run_test(model_dir, "--dataset-project", str(tmp_path / "shards"))
    assert code == 2 and "shards/dataset.toml: no such file or folder" in output
    (tmp_path / "dataset.toml").write_text('[dataset]\nfiles = ["missing/*.txt"]\ncolumn = "x"\n')
    code, output = run_test(model_dir, "--dataset-project", str(tmp_path))
    assert code == 2 and "dataset.toml: dataset.column: unknown key" in output


def test_dataset_project_runs(tmp_path, model_dir):
    make_manifest(tmp_path)
    code, output = run_test(
        model_dir, "--dataset-project", str(tmp_path), "--dataset-config", "all", "--packed"
    )
    assert code == 0, output
    assert "data: " in output and "[all] (citizens), packed" in output


def test_manifest_dataset_is_relative_to_the_project(tmp_path):
    project = create_project("rel", "llama", projects_dir=tmp_path, overrides={"model": TINY})
    (project / "data").mkdir()
    write_txt(project / "data", DOCS)
    args = ["test", str(project), "--device", "cpu", "--steps", "2", "--set", 'test.dataset="data/docs.txt"']
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"data: {project / 'data' / 'docs.txt'}, one document per row" in result.output
