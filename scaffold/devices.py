"""Devices and dtypes: which names scaffold accepts, what they resolve to, and how much memory there is.

Every other module asks here: the manifest's ``test.dtype`` is checked against :data:`TEST_DTYPE_NAMES`
(:mod:`scaffold.spec.schema`), ``scaffold test``, ``build`` and ``show`` resolve ``--dtype`` with
:func:`resolve_dtype` and ``--device`` with :func:`resolve_device`, construction and checkpoints take
any dtype name :func:`to_dtype` knows, and checkpoints name dtypes as safetensors does
(:data:`SAFETENSORS_DTYPES`). The name tables come first and need no torch, so the schema (and with it
``scaffold --help``) never imports it; the functions below them import torch when called.
"""

from __future__ import annotations

import os
import resource
import sys
from typing import Any

from scaffold.errors import DeviceError

# -- dtype names (no torch) ------------------------------------------------------------------------

# Every dtype name scaffold accepts -> torch's name for that dtype.
DTYPE_ALIASES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float64": "float64",
}
# The dtypes ``scaffold test`` trains in (float16 as mixed precision), in the order error messages
# list them; TEST_DTYPE_NAMES are all their spellings, what ``test.dtype`` and ``--dtype`` accept.
TEST_DTYPES = ("float32", "bfloat16", "float16")
TEST_DTYPE_NAMES = tuple(name for name, dtype in DTYPE_ALIASES.items() if dtype in TEST_DTYPES)
# Bytes per element of each dtype above.
ELEMENT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}
# safetensors' dtype strings (the "dtype" of each tensor in a file's header) -> torch's dtype names:
# every dtype safetensors 0.8 writes from torch (an older torch may lack some; see safetensors_dtype).
SAFETENSORS_DTYPE_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
    "F4": "float4_e2m1fn_x2",
}
UNKNOWN_DTYPE = "unknown dtype {name!r}; use one of " + ", ".join(TEST_DTYPES)


def dtype_name(name: str) -> str | None:
    """torch's name for a dtype name scaffold accepts (``bf16`` -> ``bfloat16``), else None."""
    return DTYPE_ALIASES.get(str(name).removeprefix("torch."))


def training_dtype_name(name: str) -> str | None:
    """The dtype ``scaffold test`` trains in for ``name`` (one of :data:`TEST_DTYPES`), else None."""
    return DTYPE_ALIASES.get(name) if name in TEST_DTYPE_NAMES else None


def element_bytes(name: str) -> int:
    """Bytes per element of a dtype given by any accepted name (``bf16`` -> 2)."""
    canonical = dtype_name(name)
    if canonical is None:
        raise DeviceError(UNKNOWN_DTYPE.format(name=name))
    return ELEMENT_BYTES[canonical]


# -- dtypes (torch) --------------------------------------------------------------------------------


def to_dtype(dtype: Any) -> Any:
    """A torch floating dtype from a dtype or its name (float32, bfloat16, bf16, float16, torch.half...)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    canonical = dtype_name(dtype)
    if canonical is None:
        raise DeviceError(UNKNOWN_DTYPE.format(name=dtype))
    return getattr(torch, canonical)


def resolve_dtype(name: str) -> Any:
    """The torch dtype ``scaffold test`` trains in for ``name`` (any of :data:`TEST_DTYPE_NAMES`)."""
    canonical = training_dtype_name(name)
    if canonical is None:
        raise DeviceError(UNKNOWN_DTYPE.format(name=name))
    return to_dtype(canonical)


def safetensors_dtype(code: str) -> Any:
    """The torch dtype of a safetensors dtype string (``BF16``), or None where torch has none."""
    import torch

    name = SAFETENSORS_DTYPE_NAMES.get(code)
    return getattr(torch, name, None) if name is not None else None


def torch_name(dtype: Any) -> str:
    """A torch dtype's name without the module (``torch.bfloat16`` -> ``bfloat16``)."""
    return str(dtype).removeprefix("torch.")


# -- devices ---------------------------------------------------------------------------------------


def available_devices() -> list[str]:
    """The devices of this machine, as ``--device`` spells them: cpu, cuda:N, mps."""
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(name: str | None, *, allow_meta: bool = False) -> Any:
    """A torch.device for ``name`` ('auto' = CUDA when available, else CPU), or a DeviceError.

    Any spelling torch accepts works (``cuda``, ``cuda:1``, ``cpu``); ``meta`` (construction without
    memory) only where the command merely constructs, as ``scaffold show`` does.
    """
    import torch

    name = (name or "auto").strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = available_devices() + (["meta"] if allow_meta else [])
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(
            f"no such device {name!r}; available: {', '.join(available)}", key="test.device"
        ) from None
    if device.type == "meta":
        if allow_meta:
            return device
        raise DeviceError(
            f"device {name!r} holds no data, so nothing can be trained there; use one of {', '.join(available)} "
            "(`scaffold show --device meta` constructs without memory)",
            key="test.device",
        )
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r}: CUDA is not available here; available: {', '.join(available)}",
                key="test.device",
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name!r} does not exist; available: {', '.join(available)}", key="test.device"
            )
        return device
    if str(device) not in available and device.type not in available:
        raise DeviceError(
            f"device {name!r} is not available here; available: {', '.join(available)}", key="test.device"
        )
    return device


# -- memory ----------------------------------------------------------------------------------------


def available_memory(device: Any) -> int | None:
    """Bytes free for a new allocation on ``device``: CUDA's free memory, or Linux's MemAvailable
    (with os.sysconf's free pages elsewhere); None where it cannot be told."""
    import torch

    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    available = _proc_bytes("/proc/meminfo", "MemAvailable")
    if available is not None:
        return available
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def reset_peak_memory(device: Any) -> None:
    """Start counting :func:`peak_memory` afresh (CUDA; a process's peak RSS cannot be reset)."""
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: Any, *, synchronize: bool = False) -> int:
    """Peak memory so far: CUDA's peak allocation on a GPU (``synchronize``: after the work queued
    there), the process's peak resident memory otherwise (:func:`peak_rss`)."""
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        if synchronize:
            torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss()


def peak_rss() -> int:
    """Peak resident memory of this process, in bytes: Linux's VmHWM, which (unlike ru_maxrss) does not
    carry over the peak of a parent process; ru_maxrss elsewhere."""
    peak = _proc_bytes("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _proc_bytes(path: str, field: str) -> int | None:
    """A ``field:  N kB`` line of a Linux /proc file, in bytes; None where there is none."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
