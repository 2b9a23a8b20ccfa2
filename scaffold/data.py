"""Datasets for ``scaffold test``: the user's own text, read from local files through ``datasets``.

A dataset is any of:

- a text (``.txt``), JSON Lines (``.jsonl``, ``.json``), CSV (``.csv``, ``.tsv``) or Parquet file;
- a folder of such files (all of them, in path order; hidden files are skipped);
- a folder written by ``datasets``' ``save_to_disk`` (a Dataset or a DatasetDict);
- ``sample:NAME``, a sample shipped with scaffold (:data:`SAMPLES`; ``sample:tinyshakespeare`` is the
  shipped llama_4m project's data);
- a dataset manifest, ``dataset.toml`` (or a folder holding one: a *dataset project*)::

      [dataset]
      description = "Tiny Shakespeare"
      files = ["shakespeare.txt"]      # relative to this file; folders and globs too;
                                       # or a table of splits: {train = [...], validation = [...]}
      # saved = "saved_folder"         # instead of files: a save_to_disk folder
      text_column = "text"             # JSON Lines, CSV, Parquet and saved datasets
      split = "train"
      sample_by = "paragraph"          # text files: line, paragraph or document
      default_config = "small"

      [configs.small]                  # named configurations override [dataset]'s keys
      files = ["small.txt"]

The documents of a text file are its paragraphs (blank-line separated) unless ``sample_by`` says
otherwise; elsewhere a document is a row's text column. Files are streamed (``streaming=True``), so
nothing is converted or cached and only what the run needs is read; downloads are switched off.

:class:`Batches` tokenizes the documents with the model's own tokenizer (its post-processor adds BOS;
EOS is appended) and makes batches of ``sequence_length`` tokens, pass after pass:

- one document per row: a longer document is cut, shorter ones are padded with PAD, and the batch
  carries ``attention_mask``; labels are -100 on padding.
- ``packed``: documents follow each other in every row, with ``position_ids`` restarting at 0 at
  each document (and at each row), no attention mask, and label -100 on each document's first token
  so that no document is asked to predict the next one. Restarting ``position_ids`` with no mask is
  transformers' mark of a packed row: its mask builders then keep attention inside each document
  (eager, sdpa, flex_attention). flash_attention recognises packing only in a single flattened row,
  so with ``flatten`` the batch is returned as one row of ``batch_size * sequence_length`` tokens.

Bad data raises a :class:`~scaffold.errors.DataError` naming the file, and the line or row.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaffold.atomic import sha256_file
from scaffold.errors import DataError, one_line

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DATASET_MANIFEST = "dataset.toml"
# file suffix -> datasets' packaged builder
BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".jsonl": "json",
    ".ndjson": "json",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
}
KIND_NAMES = {"text": "text", "json": "JSON Lines", "csv": "CSV", "parquet": "Parquet"}
SAVED_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")  # written by save_to_disk
SAMPLE_BY = ("line", "paragraph", "document")
MANIFEST_KEYS = ("description", "files", "saved", "text_column", "split", "sample_by")
TOKENIZE_CHUNK = 64  # documents tokenized per call

# Text shipped with the package (scaffold/samples/), named ``sample:NAME`` wherever a dataset goes.
# tinyshakespeare.txt: the first 200 KB (to a paragraph's end) of Andrej Karpathy's Tiny Shakespeare
# (char-rnn, data/tinyshakespeare/input.txt), a selection of Shakespeare's plays: public domain.
SAMPLE_PREFIX = "sample:"
SAMPLES = {"tinyshakespeare": ("tinyshakespeare.txt", "Tiny Shakespeare, 200 KB, shipped with scaffold")}


def is_sample(spec: str | Path) -> bool:
    """Whether a dataset spec names a shipped sample (``sample:NAME``) rather than a path."""
    return isinstance(spec, str) and spec.startswith(SAMPLE_PREFIX)


def sample_source(spec: str) -> DatasetSource:
    """The shipped sample ``spec`` names; an unknown name is a DataError listing the samples."""
    name = spec[len(SAMPLE_PREFIX) :]
    if name not in SAMPLES:
        known = ", ".join(SAMPLE_PREFIX + n for n in SAMPLES)
        raise DataError(f"{spec}: no such sample (shipped: {known})")
    file, description = SAMPLES[name]
    path = Path(__file__).resolve().parent / "samples" / file
    return DatasetSource(origin=path, files=[path], description=description)


@dataclass
class DatasetSource:
    """What to read and how: data files, or a save_to_disk folder."""

    origin: Path  # what the user named (file, folder or manifest); messages name it
    files: list[Path] = field(default_factory=list)
    saved: Path | None = None
    text_column: str = "text"
    split: str = "train"
    split_given: bool = False  # False: split is the default, and a one-split saved dataset may use its own
    sample_by: str = "paragraph"
    config: str | None = None
    description: str = ""

    def describe(self) -> str:
        name = str(self.origin) + (f" [{self.config}]" if self.config else "")
        return f"{name} ({self.description})" if self.description else name

    def record(self) -> dict[str, Any]:
        """What the data is, by content: for fingerprints (a BPE tokenizer trained on it)."""
        base = self.origin.parent if self.origin.is_file() else self.origin
        paths = self.files or sorted(p for p in self.saved.rglob("*") if p.is_file())  # type: ignore[union-attr]
        return {
            "config": self.config,
            "text_column": self.text_column,
            "split": self.split,
            "sample_by": self.sample_by,
            "files": [{"file": _relative(p, base), "sha256": sha256_file(p)} for p in paths],
        }


def _relative(path: Path, base: Path) -> str:
    try:
        return path.absolute().relative_to(base.absolute()).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------
# Finding the data
# ---------------------------------------------------------------------------------------------


def resolve(
    path: str | Path,
    config: str | None = None,
    *,
    manifest: Path | None = None,
    key: str | None = None,
) -> DatasetSource:
    """The dataset at ``path``; ``config`` names a configuration of a dataset manifest.

    ``manifest`` and ``key`` say where ``path`` was given (a project manifest's key), for messages.
    """
    if is_sample(path):
        if config:
            raise DataError(f"{path}: a sample has no configurations (got {config!r})")
        return sample_source(str(path))
    path = Path(path)
    if not path.exists():
        if manifest is not None:
            raise DataError(f"{path}: no such file or folder", path=manifest, key=key)
        raise DataError("no such file or folder", path=path)
    if not path.is_dir() and not path.is_file():  # never opened: reading a FIFO would wait forever
        where = {"path": manifest, "key": key} if manifest is not None else {"path": path}
        prefix = f"{path}: " if manifest is not None else ""
        raise DataError(f"{prefix}not a regular file or folder (a FIFO, a device or a socket)", **where)
    if path.is_dir() and (path / DATASET_MANIFEST).is_file():
        return read_manifest(path / DATASET_MANIFEST, config)
    if path.is_file() and path.suffix.lower() == ".toml":
        return read_manifest(path, config)
    if config:
        raise DataError(
            f"configuration {config!r} asked for, but only a dataset manifest ({DATASET_MANIFEST}) has configurations",
            path=path,
        )
    if path.is_dir():
        if _is_saved(path):
            return DatasetSource(origin=path, saved=path)
        files = data_files_in(path)
        if not files:
            raise DataError(
                f"no data files in this folder (expected {', '.join(sorted(BUILDERS))}, a {DATASET_MANIFEST}, "
                "or a folder written by save_to_disk)",
                path=path,
            )
        return DatasetSource(origin=path, files=files)
    _check_suffix(path)
    return DatasetSource(origin=path, files=[path])


def _is_saved(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def _check_suffix(file: Path, **where: Any) -> None:
    if file.suffix.lower() not in BUILDERS:
        raise DataError(
            f"{file.name}: unsupported file type; expected one of {', '.join(sorted(BUILDERS))}",
            **(where or {"path": file}),
        )


def data_files_in(folder: Path) -> list[Path]:
    """The data files under ``folder``, in path order, skipping hidden ones and saved datasets' bookkeeping."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).parts
        if any(part.startswith(".") for part in rel) or not p.is_file():
            continue
        if p.suffix.lower() in BUILDERS and p.name not in SAVED_MARKERS:
            out.append(p)
    return out


def read_manifest(path: Path, config: str | None = None) -> DatasetSource:
    """A dataset manifest (``dataset.toml``) with one of its configurations chosen."""
    from scaffold.atomic import MAX_NESTING, nesting_depth

    try:
        text = path.read_text(encoding="utf-8")
        if nesting_depth(text) > MAX_NESTING:
            raise DataError(f"nested more than {MAX_NESTING} levels deep", path=path)
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise DataError(f"not valid TOML: {err}", path=path) from None
    except UnicodeDecodeError:
        raise DataError("not UTF-8 text", path=path) from None
    for section in data:
        if section not in ("dataset", "configs"):
            raise DataError(
                "unknown section; a dataset manifest has [dataset] and [configs.NAME]", path=path, key=section
            )
    base = data.get("dataset", {})
    configs = data.get("configs", {})
    if not isinstance(base, Mapping) or not isinstance(configs, Mapping):
        raise DataError("[dataset] and [configs] must be tables", path=path)
    _check_keys(base, "dataset", (*MANIFEST_KEYS, "default_config"), path)
    for name, table in configs.items():
        if not isinstance(table, Mapping):
            raise DataError("must be a table", path=path, key=f"configs.{name}")
        _check_keys(table, f"configs.{name}", MANIFEST_KEYS, path)
    chosen = config or base.get("default_config")
    settings = {k: v for k, v in base.items() if k != "default_config"}
    prefix = "dataset"
    if chosen:
        if chosen not in configs:
            known = ", ".join(configs) or "none"
            raise DataError(
                f"no configuration {chosen!r}; configurations: {known}",
                path=path,
                key="dataset.default_config" if not config else None,
            )
        settings.update(configs[chosen])
        prefix = f"configs.{chosen}"
    elif configs and "files" not in settings and "saved" not in settings:
        raise DataError(f"choose a configuration (--dataset-config): {', '.join(configs)}", path=path)
    src = DatasetSource(origin=path, config=chosen or None)
    for key, kind in (("text_column", str), ("split", str), ("sample_by", str), ("description", str)):
        if key in settings:
            if not isinstance(settings[key], kind) or not settings[key]:
                raise DataError(
                    "must be a non-empty string", path=path, key=_where(key, prefix, configs, chosen)
                )
            setattr(src, key, settings[key])
    src.split_given = "split" in settings
    if src.sample_by not in SAMPLE_BY:
        raise DataError(
            f"must be one of {', '.join(SAMPLE_BY)}; got {src.sample_by!r}",
            path=path,
            key=_where("sample_by", prefix, configs, chosen),
        )
    has_files, has_saved = "files" in settings, "saved" in settings
    if has_files == has_saved:
        raise DataError("give exactly one of files and saved", path=path, key=prefix)
    if has_saved:
        key = _where("saved", prefix, configs, chosen)
        if not isinstance(settings["saved"], str):
            raise DataError("must be a string (a save_to_disk folder)", path=path, key=key)
        saved = path.parent / settings["saved"]
        if not (saved.is_dir() and _is_saved(saved)):
            raise DataError(f"{settings['saved']}: not a folder written by save_to_disk", path=path, key=key)
        src.saved = saved
        return src
    key = _where("files", prefix, configs, chosen)
    files = settings["files"]
    if isinstance(files, Mapping):  # a table of splits
        if src.split not in files:
            raise DataError(f"no split {src.split!r}; splits: {', '.join(files)}", path=path, key=key)
        key, files = f"{key}.{src.split}", files[src.split]
    if isinstance(files, str):
        files = [files]
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        raise DataError("must be a list of file names, folders or glob patterns", path=path, key=key)
    for pattern in files:
        src.files.extend(_expand(path, pattern, key))
    return src


def _where(key: str, prefix: str, configs: Mapping[str, Any], chosen: str | None) -> str:
    """The manifest key a setting came from: the chosen configuration's, else [dataset]'s."""
    if chosen and key in configs.get(chosen, {}):
        return f"configs.{chosen}.{key}"
    return f"dataset.{key}"


def _check_keys(table: Mapping[str, Any], prefix: str, allowed: tuple[str, ...], path: Path) -> None:
    for k in table:
        if k not in allowed:
            raise DataError(
                f"unknown key; expected one of {', '.join(allowed)}", path=path, key=f"{prefix}.{k}"
            )


def _expand(manifest: Path, pattern: str, key: str) -> list[Path]:
    base = manifest.parent
    target = base / pattern
    if any(ch in pattern for ch in "*?["):
        found = sorted(Path(p) for p in glob.glob(str(target), recursive=True))
        found = [p for p in found if p.is_file() and p.suffix.lower() in BUILDERS]
        if not found:
            raise DataError(f"{pattern}: matches no data files", path=manifest, key=key)
        return found
    if target.is_dir():
        found = data_files_in(target)
        if not found:
            raise DataError(f"{pattern}: no data files in this folder", path=manifest, key=key)
        return found
    if not target.is_file():
        raise DataError(
            f"{pattern}: no such file (paths are relative to the manifest)", path=manifest, key=key
        )
    _check_suffix(target, path=manifest, key=key)
    return [target]


# ---------------------------------------------------------------------------------------------
# Reading documents
# ---------------------------------------------------------------------------------------------


def _datasets():
    """The datasets library, offline and quiet (its reading errors are raised as DataErrors here)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(logging.CRITICAL)
    return datasets


def iter_texts(source: DatasetSource) -> Iterator[str]:
    """The documents of ``source``, in order, surrounding whitespace stripped, empty ones skipped."""
    if source.saved is not None:
        yield from _saved_texts(source)
        return
    for path in source.files:
        yield from _file_texts(path, source)


def _file_texts(path: Path, source: DatasetSource) -> Iterator[str]:
    if not path.is_file():
        raise DataError("no such file", path=path)
    if path.stat().st_size == 0:
        raise DataError("empty file", path=path)
    suffix = path.suffix.lower()
    kind = BUILDERS[suffix]
    kwargs: dict[str, Any] = {}
    if kind == "text":
        kwargs["sample_by"] = source.sample_by
    if suffix == ".tsv":
        kwargs["sep"] = "\t"
    column = "text" if kind == "text" else source.text_column
    datasets = _datasets()
    count = 0
    try:
        rows = datasets.load_dataset(kind, data_files=[str(path)], split="train", streaming=True, **kwargs)
        for index, row in enumerate(rows):
            if column not in row:
                raise _locate(path, kind, column) or DataError(
                    f"no column {column!r}; columns: {', '.join(row) or 'none'} "
                    "(a dataset manifest's text_column chooses another)",
                    path=path,
                )
            value = row[column]
            if value is None and kind != "json":  # an empty CSV cell or a Parquet null: no text
                continue
            if not isinstance(value, str):
                raise _locate(path, kind, column) or DataError(
                    f"row {index + 1}: column {column!r} holds {type(value).__name__}, not text", path=path
                )
            text = value.strip()
            if text:
                count += 1
                yield text
    except DataError:
        raise
    except Exception as err:  # pandas, pyarrow and datasets raise many kinds; all mean unreadable data
        raise _locate(path, kind, column) or DataError(
            f"cannot be read as {KIND_NAMES[kind]}: {one_line(err)}", path=path
        ) from None
    if count == 0:
        what = "no text" if kind == "text" else f"no text in column {column!r}"
        raise DataError(f"{what}: the file has no documents", path=path)


def _locate(path: Path, kind: str, column: str) -> DataError | None:
    """For a JSON Lines file, the first line that is not a JSON object with a text ``column``."""
    if kind != "json" or path.suffix.lower() not in (".jsonl", ".ndjson"):
        return None
    number = 0
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except RecursionError:
                    return DataError(f"line {number}: nested too deeply to be a document", path=path)
                except ValueError as err:
                    return DataError(f"line {number}: not valid JSON ({err})", path=path)
                if not isinstance(obj, dict):
                    return DataError(
                        f"line {number}: expected a JSON object, got {type(obj).__name__}", path=path
                    )
                if column not in obj:
                    fields = ", ".join(obj) or "none"
                    return DataError(f"line {number}: no {column!r} field (fields: {fields})", path=path)
                if not isinstance(obj[column], str):
                    return DataError(
                        f"line {number}: {column!r} is {type(obj[column]).__name__}, not text", path=path
                    )
    except UnicodeDecodeError:
        return DataError(f"line {number + 1}: not UTF-8 text", path=path)
    return None


def _saved_texts(source: DatasetSource) -> Iterator[str]:
    datasets = _datasets()
    path = source.saved
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:
        raise DataError(f"cannot be loaded with load_from_disk: {one_line(err)}", path=path) from None
    if isinstance(ds, datasets.DatasetDict):
        if source.split in ds:
            ds = ds[source.split]
        elif not source.split_given and len(ds) == 1:
            ds = next(iter(ds.values()))
        else:
            raise DataError(f"no split {source.split!r}; splits: {', '.join(ds)}", path=path)
    column = source.text_column
    if column not in ds.column_names:
        raise DataError(f"no column {column!r}; columns: {', '.join(ds.column_names)}", path=path)
    feature = ds.features[column]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise DataError(f"column {column!r} holds {feature}, not text", path=path)
    count = 0
    for start in range(0, len(ds), 1000):
        for value in ds[start : start + 1000][column]:
            text = (value or "").strip()
            if text:
                count += 1
                yield text
    if count == 0:
        raise DataError(f"no text in column {column!r}: the dataset has no documents", path=path)


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------


class Batches:
    """Training batches from a dataset, endlessly: the data is read again when it runs out.

    Each batch is a dict of long tensors: ``input_ids`` and ``labels``, with ``attention_mask``
    (one document per row) or ``position_ids`` (packed). See the module docstring.
    """

    def __init__(
        self,
        source: DatasetSource,
        tokenizer: Any,
        *,
        batch_size: int,
        sequence_length: int,
        packed: bool = False,
        flatten: bool = False,
    ):
        self.source = source
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.sequence_length = sequence_length
        self.packed = packed
        self.flatten = flatten and packed
        self.passes = 0  # complete passes over the data
        self.documents = 0
        self.tokens = 0  # tokens read from the data (BOS and EOS included)
        self.batches = 0  # batches made
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        self._eos = tokenizer.eos_token_id
        self._gen = self._packed() if packed else self._rows()

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self._gen)

    def describe(self) -> str:
        how = "packed" if self.packed else "one document per row"
        passes = f", {self.passes} full passes" if self.passes else ""
        return f"{self.source.describe()}, {how}: {self.documents:,} documents, {self.tokens:,} tokens read{passes}"

    def _documents(self) -> Iterator[list[int]]:
        """Token ids of each document, pass after pass; too little data for one batch is an error."""
        while True:
            before = self.batches
            chunk: list[str] = []
            for text in iter_texts(self.source):
                chunk.append(text)
                if len(chunk) == TOKENIZE_CHUNK:
                    yield from self._tokenize(chunk)
                    chunk = []
            if chunk:
                yield from self._tokenize(chunk)
            if self.passes == 0 and self.batches == before:
                self._too_little()
            self.passes += 1

    def _tokenize(self, texts: list[str]) -> Iterator[list[int]]:
        # verbose=False: a document longer than the model's context is expected here (it is cut or packed)
        for ids in self.tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]:
            if self._eos is not None and (not ids or ids[-1] != self._eos):
                ids = [*ids, self._eos]
            self.documents += 1
            self.tokens += len(ids)
            yield ids

    def _too_little(self) -> None:
        b, n = self.batch_size, self.sequence_length
        if self.packed:
            need = f"one packed batch needs batch size {b} x sequence length {n} = {b * n:,} tokens"
        else:
            need = f"one batch needs {b} documents"
        raise DataError(
            f"too little text for one batch: {self.documents:,} documents, {self.tokens:,} tokens; {need} "
            "(lower --batch-size or --sequence-length, or use more text)",
            path=self.source.origin,
        )

    def _rows(self) -> Iterator[dict[str, Any]]:
        """One document per row: cut to sequence_length, padded with PAD, with an attention mask."""
        n = self.sequence_length
        rows: list[list[int]] = []
        for ids in self._documents():
            rows.append(ids[:n])
            if len(rows) == self.batch_size:
                self.batches += 1
                yield self._padded(rows)
                rows = []

    def _padded(self, rows: list[list[int]]) -> dict[str, Any]:
        import torch

        n = self.sequence_length
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def _packed(self) -> Iterator[dict[str, Any]]:
        """Documents back to back; position ids restart at each document and at each row."""
        n = self.sequence_length
        rows: list[tuple[list[int], list[int], list[int]]] = []
        ids: list[int] = []
        pos: list[int] = []
        labels: list[int] = []
        for doc in self._documents():
            start = 0
            while start < len(doc):
                piece = doc[start : start + n - len(ids)]
                labels.extend([-100, *piece[1:]] if start == 0 else piece)
                ids.extend(piece)
                pos.extend(range(len(piece)))
                start += len(piece)
                if len(ids) == n:
                    rows.append((ids, pos, labels))
                    ids, pos, labels = [], [], []
                    if len(rows) == self.batch_size:
                        self.batches += 1
                        yield self._stacked(rows)
                        rows = []

    def _stacked(self, rows: list[tuple[list[int], list[int], list[int]]]) -> dict[str, Any]:
        import torch

        batch = {
            name: torch.tensor([row[i] for row in rows], dtype=torch.long)
            for i, name in enumerate(("input_ids", "position_ids", "labels"))
        }
        if self.flatten:  # one row: flash attention's varlen path reads the documents off position_ids
            batch = {k: v.reshape(1, -1) for k, v in batch.items()}
        return batch


def open_batches(
    path: str | Path,
    tokenizer: Any,
    *,
    config: str | None = None,
    batch_size: int,
    sequence_length: int,
    packed: bool = False,
    flatten: bool = False,
) -> Batches:
    """:class:`Batches` over the dataset at ``path``; the first batch is read now, so bad data fails early."""
    import itertools

    stream = Batches(
        resolve(path, config),
        tokenizer,
        batch_size=batch_size,
        sequence_length=sequence_length,
        packed=packed,
        flatten=flatten,
    )
    first = next(stream._gen)
    stream._gen = itertools.chain([first], stream._gen)
    return stream
