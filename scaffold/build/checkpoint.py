"""Saving and loading model weights as safetensors, in the Hugging Face layout.

A checkpoint folder holds either one ``model.safetensors`` or shards
``model-00001-of-0000N.safetensors`` with ``model.safetensors.index.json`` (``metadata.total_size``:
bytes of the stored tensors; ``weight_map``: tensor name -> shard file), exactly as
``save_pretrained`` writes them, so either side reads the other's checkpoints.

Rules:

- Tied weights (one tensor under several names, e.g. a tied output head) are stored once, under
  the name transformers keeps (the source of ``_tied_weights_keys``), and tied again on load.
- Saving is all or nothing, as every folder scaffold replaces (:mod:`scaffold.atomic`): under the
  folder's lock, the new files are written into a staging folder beside the target
  (``.TARGET.ckpt-*``), with the target's other files hard-linked in, and the two folders are
  exchanged at the end. A save that dies half way leaves the previous checkpoint as it was; stale
  shards and a stale index of an earlier layout disappear with the swap; leftovers of a killed save
  are swept by the next. The new files are made readable as the umask says (safetensors writes them
  0600); the folder keeps its mode.
- Loading is strict by default: one :class:`~scaffold.errors.CheckpointError` lists the missing
  and unexpected tensors, each shape mismatch (tensor, file shape, model shape, file) and each
  dtype mismatch. A corrupt, truncated or missing shard is an error naming the shard.
- No silent casts: a tensor whose dtype differs from the model's is an error unless ``dtype=`` is
  given; with ``dtype=`` the model's floating-point tensors become that dtype and the file's are
  converted to it. Integer tensors are never converted.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scaffold import atomic
from scaffold.build.construct import alias_groups, get_tensor, initialize_weights, to_empty
from scaffold.devices import safetensors_dtype, to_dtype, torch_name
from scaffold.errors import CheckpointError, UsageError, one_line
from scaffold.progress import track

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
SHARD_RE = re.compile(r"^model-(\d{5})-of-(\d{5})\.safetensors$")
DEFAULT_MAX_SHARD_SIZE = "50GB"  # transformers' save_pretrained default
MAX_LISTED = 10  # names listed per kind of problem before "and N more"

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "t": 10**12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like ``"5GB"`` (10^9) or ``"500MiB"`` (2^20), as transformers reads it."""
    if isinstance(size, bool):
        raise UsageError(f"max_shard_size must be a size like 5GB, got {size!r}")
    if isinstance(size, int):
        value = size
    else:
        m = _SIZE_RE.match(str(size))
        if not m:
            raise UsageError(f"max_shard_size must be a size like 5GB or 500MiB, got {size!r}")
        unit = (m.group(2) or "").lower().removesuffix("b")
        value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise UsageError(f"max_shard_size must be positive, got {size!r}")
    return value


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


@dataclass
class SaveReport:
    path: Path
    files: list[str]
    tensors: int
    total_size: int  # bytes of the stored tensors, as in the index
    tied: list[list[str]] = field(default_factory=list)


def checkpoint_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], list[list[str]]]:
    """The tensors a checkpoint stores (tied names once) and the alias groups of the model."""
    groups = alias_groups(model)
    dropped = {name for names in groups for name in names[1:]}
    ignore = set(getattr(model, "_keys_to_ignore_on_save", None) or ())
    state = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if t is None or name in dropped or name in ignore:
            continue
        if t.is_meta:
            raise CheckpointError(
                "the model has tensors on the meta device (nothing to save); load or materialise it first",
                key=name,
            )
        state[name] = t.detach()
    return state, groups


def plan_shards(state: dict[str, torch.Tensor], max_shard_size: int) -> list[list[str]]:
    """Names per shard, as transformers' save_pretrained (huggingface_hub) splits them: in
    state_dict order, a shard closes before it would pass ``max_shard_size``, and a tensor larger
    than that gets a shard of its own at once (the open shard carries on)."""
    shards: list[list[str]] = []
    current: list[str] = []
    size = 0
    for name, t in state.items():
        n = _tensor_bytes(t)
        if n > max_shard_size:
            shards.append([name])
            continue
        if size + n > max_shard_size:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += n
    if current or not shards:
        shards.append(current)
    return shards


def shard_name(i: int, n: int) -> str:
    return WEIGHTS_NAME if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"


def is_checkpoint_file(name: str) -> bool:
    return name in (WEIGHTS_NAME, INDEX_NAME) or SHARD_RE.match(name) is not None


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    metadata: dict[str, str] | None = None,
) -> SaveReport:
    """Save the weights of ``model`` into the folder ``path`` (created if needed) in the HF layout.

    Other files in the folder (config.json, tokenizer, code) are kept. Replaces any earlier
    checkpoint there in one step; see the module docs.
    """
    from safetensors.torch import save_file

    limit = parse_size(max_shard_size)
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise CheckpointError("exists and is not a folder", path=target)
    # the folder is swapped whole: only an empty folder, a checkpoint or a model directory qualifies
    atomic.check_replaceable(target, accept="checkpoint")
    target = target.resolve()
    state, groups = checkpoint_state(model)
    shards = plan_shards(state, limit)
    n = len(shards)
    meta = {"format": "pt", **(metadata or {})}

    with atomic.locked(target):  # another save (or a build) of this folder finishes first
        atomic.sweep(target)  # what an interrupted save left beside it
        staging = atomic.make_staging(target, "ckpt")
        try:
            if target.exists():  # the folder's other files are kept: linked into the new one
                atomic.link_tree(target, staging, skip=is_checkpoint_file)
            weight_map: dict[str, str] = {}
            files = []
            for i, names in track(enumerate(shards, start=1), total=n, desc="saving shards", unit="shard"):
                fname = shard_name(i, n)
                tensors = _unshare({k: state[k] for k in names})
                save_file(tensors, str(staging / fname), metadata=meta)
                files.append(fname)
                weight_map.update(dict.fromkeys(names, fname))
                del tensors
            total_size = sum(_tensor_bytes(t) for t in state.values())
            if n > 1:
                index = {
                    "metadata": {"total_size": total_size, "total_parameters": _count_parameters(model)},
                    "weight_map": dict(sorted(weight_map.items())),
                }
                text = json.dumps(index, indent=2, sort_keys=True) + "\n"
                (staging / INDEX_NAME).write_text(text, encoding="utf-8")
                files.append(INDEX_NAME)
            # the new files readable as the umask says; the folder keeps the mode of the one it replaces
            atomic.apply_umask(staging, files=files, like=target if target.exists() else None)
            atomic.fsync_tree(staging, files=files)
            atomic.swap_in(staging, target, faults="checkpoint-")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return SaveReport(path=target, files=files, tensors=len(state), total_size=total_size, tied=groups)


def _count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, each with storage of its own (safetensors refuses shared memory)."""
    seen: set[int] = set()
    out = {}
    for name, t in tensors.items():
        t = t.contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in seen:  # a second view of one storage: give it its own
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        if ptr is not None:
            seen.add(ptr)
        out[name] = t
    return out


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


@dataclass
class CheckpointFiles:
    """A checkpoint on disk: its shard files and which tensor lives in which."""

    path: Path
    index: Path | None
    shards: list[Path]
    weight_map: dict[str, Path]  # tensor name -> shard file


def find_checkpoint(path: str | Path) -> CheckpointFiles:
    """The files of the checkpoint at ``path`` (a folder, or a .safetensors / index file)."""
    path = Path(path)
    if path.is_file():
        if path.name.endswith(".index.json"):
            folder, index, single = path.parent, path, None
        else:
            folder, index, single = path.parent, None, path
    elif path.is_dir():
        folder = path
        index = path / INDEX_NAME if (path / INDEX_NAME).is_file() else None
        single = path / WEIGHTS_NAME if (path / WEIGHTS_NAME).is_file() else None
        if index and single:
            raise CheckpointError(
                f"holds both {WEIGHTS_NAME} and {INDEX_NAME}; one of them is stale (left by another tool): "
                "remove it",
                path=path,
            )
        if not index and not single:
            others = sorted(p.name for p in path.glob("*.safetensors"))
            hint = f" (found {', '.join(others[:5])})" if others else ""
            raise CheckpointError(
                f"no checkpoint here: neither {WEIGHTS_NAME} nor {INDEX_NAME}{hint}", path=path
            )
    else:
        raise UsageError("no such checkpoint folder or file", path=path)
    if single is not None:
        return CheckpointFiles(folder, None, [single], {})
    assert index is not None
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CheckpointError(f"not a readable index: {one_line(err)}", path=index) from None
    wmap = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wmap, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in wmap.items()
    ):
        raise CheckpointError("weight_map is missing or not a table of tensor name -> file name", path=index)
    bad = sorted({v for v in wmap.values() if Path(v).name != v or v in (".", "..")})
    if bad:
        raise CheckpointError(f"weight_map names files outside the folder: {_listing(bad)}", path=index)
    shards = sorted({folder / v for v in wmap.values()})
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise CheckpointError(
            f"shard file(s) named in the index are missing: {_listing(missing)}", path=index
        )
    return CheckpointFiles(folder, index, shards, {k: folder / v for k, v in wmap.items()})


@dataclass
class TensorInfo:
    name: str
    shard: Path
    shape: tuple[int, ...]
    dtype: torch.dtype | None
    dtype_name: str


@contextlib.contextmanager
def open_checkpoint(files: CheckpointFiles) -> Iterator[tuple[dict[str, TensorInfo], dict[Path, Any]]]:
    """Open every shard (headers are checked here) and describe every tensor the checkpoint holds."""
    from safetensors import safe_open

    with contextlib.ExitStack() as stack:
        handles: dict[Path, Any] = {}
        infos: dict[str, TensorInfo] = {}
        for shard in files.shards:
            try:
                f = stack.enter_context(safe_open(str(shard), framework="pt", device="cpu"))
                keys = list(f.keys())
                for key in keys:
                    s = f.get_slice(key)
                    name = s.get_dtype()
                    infos.setdefault(
                        key, TensorInfo(key, shard, tuple(s.get_shape()), safetensors_dtype(name), name)
                    )
            except Exception as err:  # safetensors raises its own error type for every corruption
                raise CheckpointError(
                    f"corrupt or truncated safetensors file: {one_line(err)}", path=shard
                ) from None
            handles[shard] = f
        if files.index is not None:
            wrong = sorted(k for k, p in files.weight_map.items() if k not in infos or infos[k].shard != p)
            if wrong:
                where = ", ".join(f"{k} (in {files.weight_map[k].name})" for k in wrong[:MAX_LISTED])
                raise CheckpointError(
                    f"the index lists tensors their shard does not hold: {where}"
                    + (f" and {len(wrong) - MAX_LISTED} more" if len(wrong) > MAX_LISTED else ""),
                    path=files.index,
                )
            infos = {k: v for k, v in infos.items() if k in files.weight_map}
        yield infos, handles


@dataclass
class LoadReport:
    path: Path
    files: list[str]
    loaded: list[str]
    missing: list[str] = field(default_factory=list)  # model tensors the checkpoint lacks (strict=False)
    unexpected: list[str] = field(default_factory=list)  # checkpoint tensors the model lacks (strict=False)
    bytes: int = 0


def check_fit(
    files: CheckpointFiles,
    infos: dict[str, TensorInfo],
    model: nn.Module,
    *,
    strict: bool = True,
    dtype: torch.dtype | None = None,
) -> tuple[dict[str, str], list[str], list[str]]:
    """Match checkpoint tensors to the model. Returns (model name -> checkpoint name, missing,
    unexpected); raises one CheckpointError listing every problem."""
    state = model.state_dict(keep_vars=True)
    groups = alias_groups(model)
    group_of = {name: names for names in groups for name in names}
    plan: dict[str, str] = {}
    missing, unexpected, problems = [], [], []
    for name in state:
        names = group_of.get(name, [name])
        if name != names[0]:
            continue
        present = [n for n in names if n in infos]
        if not present:
            missing.append(name)
            continue
        plan[name] = present[0]
    known = set(state)
    unexpected = sorted(k for k in infos if k not in known)
    for model_name, file_name in plan.items():
        t, info = state[model_name], infos[file_name]
        if tuple(t.shape) != info.shape:
            problems.append(
                f"{file_name}: file shape {list(info.shape)}, model shape {list(t.shape)} (in {info.shard.name})"
            )
            continue
        if info.dtype is None:
            problems.append(f"{file_name}: dtype {info.dtype_name} is not supported (in {info.shard.name})")
            continue
        want = t.dtype
        if dtype is not None and t.dtype.is_floating_point:
            want = dtype
        if info.dtype != want:
            if dtype is not None and info.dtype.is_floating_point and want.is_floating_point:
                continue  # converted, as asked
            hint = "" if dtype is not None else "; pass dtype= (--dtype) to convert"
            problems.append(
                f"{file_name}: file dtype {torch_name(info.dtype)}, model dtype {torch_name(want)} "
                f"(in {info.shard.name}){hint}"
            )
    lines = []
    if strict and missing:
        lines.append(f"missing from the checkpoint ({len(missing)}): {_listing(missing)}")
    if strict and unexpected:
        lines.append(f"not in the model ({len(unexpected)}): {_listing(unexpected)}")
    lines += problems[:MAX_LISTED]
    if len(problems) > MAX_LISTED:
        lines.append(f"... and {len(problems) - MAX_LISTED} more mismatches")
    if lines:
        where = files.index or files.shards[0]
        raise CheckpointError("does not fit the model:\n  " + "\n  ".join(lines), path=where)
    return plan, missing, unexpected


def _model_device(model: nn.Module) -> torch.device | None:
    for t in list(model.parameters()) + list(model.buffers()):
        if not t.is_meta:
            return t.device
    return None


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    device: torch.device | str | None = None,
    strict: bool = True,
    dtype: torch.dtype | str | None = None,
) -> LoadReport:
    """Load the checkpoint at ``path`` into ``model`` (in place) and return what was loaded.

    ``device``: where the weights end up (default: where the model is; CPU for a model on the
    meta device). A model on the meta device, or built under ``no_init_weights``, is allocated
    there first. ``strict=False`` lets tensors be missing or unexpected (they are reported; on a
    meta model the missing ones are initialised as construction would); shapes and dtypes must
    still match. ``dtype``: convert floating-point tensors to it (the model too).
    """
    want_dtype = to_dtype(dtype) if dtype is not None else None
    files = find_checkpoint(path)
    with open_checkpoint(files) as (infos, handles):
        plan, missing, unexpected = check_fit(files, infos, model, strict=strict, dtype=want_dtype)
        groups = alias_groups(model)
        for names in groups:  # a tied pair stored twice must hold the same values
            stored = [n for n in names if n in infos]
            if len(stored) > 1:
                first = handles[infos[stored[0]].shard].get_tensor(stored[0])
                for other in stored[1:]:
                    if not torch.equal(first, handles[infos[other].shard].get_tensor(other)):
                        raise CheckpointError(
                            f"{stored[0]} and {other} are one tensor in the model but differ in the checkpoint",
                            path=infos[other].shard,
                        )
        current = _model_device(model)
        target = torch.device(device) if device is not None else (current or torch.device("cpu"))
        has_meta = any(t.is_meta for t in model.state_dict(keep_vars=True).values()) or any(
            m._buffers[a].is_meta for m, a in _np_buffers(model)
        )
        if want_dtype is not None:
            model.to(dtype=want_dtype)
        if has_meta or (current is not None and current != target and not missing):
            # every tensor is about to be replaced: allocate, do not copy what is there
            to_empty(model, target)
            if missing:
                initialize_weights(model)
        elif current is not None and current != target:
            model.to(target)
        loaded = []
        total = 0
        with torch.no_grad():
            for model_name, file_name in plan.items():
                info = infos[file_name]
                # safetensors maps the file (copy-on-write): on the CPU in the same dtype the tensor
                # is used as it is, without a copy; the parameter object stays the same
                src = handles[info.shard].get_tensor(file_name)
                dst = get_tensor(model, model_name)
                if src.dtype != dst.dtype or src.device != dst.device:
                    src = src.to(device=dst.device, dtype=dst.dtype)
                dst.data = src
                loaded.append(file_name)
                total += _tensor_bytes(src)
                del src
    return LoadReport(
        path=files.path,
        files=[p.name for p in files.shards],
        loaded=loaded,
        missing=missing,
        unexpected=unexpected,
        bytes=total,
    )


def _np_buffers(model: nn.Module) -> list[tuple[nn.Module, str]]:
    from scaffold.build.construct import non_persistent_buffers

    return non_persistent_buffers(model)
