"""scaffold/devices.py: the one table of dtype names, and the device and memory questions.

The manifest's schema, ``scaffold test``, construction and checkpoints all read the same table, so a
name one accepts the others accept, and resolve to the same dtype.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file

from scaffold import devices
from scaffold.build import construct
from scaffold.cli import cli
from scaffold.devices import (
    DTYPE_ALIASES,
    SAFETENSORS_DTYPE_NAMES,
    TEST_DTYPE_NAMES,
    TEST_DTYPES,
    element_bytes,
    resolve_device,
    resolve_dtype,
    safetensors_dtype,
    to_dtype,
)
from scaffold.errors import EXIT_USAGE, DeviceError
from scaffold.run import smoke
from scaffold.spec import schema

REPO = Path(__file__).resolve().parents[1]
# names no table should accept: other dtypes, other spellings, torch's module prefix where the
# command line does not take it
NOT_NAMES = ["float8", "int8", "double", "Float32", "BF16", "fp8", "", " float32", "torch.float32", "cuda"]


@pytest.mark.parametrize("name", TEST_DTYPE_NAMES)
def test_every_training_alias_is_the_same_dtype_everywhere(name):
    dtype = resolve_dtype(name)
    assert to_dtype(name) is dtype
    assert construct.to_dtype(name) is dtype  # the old import path is the same function
    assert to_dtype(f"torch.{name}") is dtype
    assert dtype is getattr(torch, DTYPE_ALIASES[name])
    assert str(dtype).removeprefix("torch.") in TEST_DTYPES
    assert element_bytes(name) == torch.empty(0, dtype=dtype).element_size()


@pytest.mark.parametrize("name", sorted(set(DTYPE_ALIASES) - set(TEST_DTYPE_NAMES)))
def test_construction_only_names(name):
    """float64 constructs (and converts checkpoints) but is not a dtype scaffold test trains in."""
    assert to_dtype(name) is getattr(torch, DTYPE_ALIASES[name])
    assert element_bytes(name) == torch.empty(0, dtype=to_dtype(name)).element_size()
    with pytest.raises(DeviceError, match=r"^unknown dtype .*; use one of float32, bfloat16, float16$"):
        resolve_dtype(name)


def _runtime_accepts(name: str) -> bool:
    try:
        resolve_dtype(name)
    except DeviceError:
        return False
    return True


@pytest.mark.parametrize("name", [*DTYPE_ALIASES, *NOT_NAMES])
def test_schema_accepts_exactly_what_scaffold_test_accepts(name):
    """A second table of names (one in the schema, one at run time) would break this both ways."""
    problem = schema.BY_PATH["test.dtype"].problem(name)
    assert (problem is None) == _runtime_accepts(name), problem
    if problem is not None:
        assert problem == f"must be one of float32, bfloat16, float16; got {name!r}"


def test_schema_table_is_the_runtime_table():
    assert schema.DTYPES is devices.TEST_DTYPES
    assert smoke.resolve_dtype is devices.resolve_dtype and smoke.resolve_device is devices.resolve_device


def _torch_dtypes() -> list[torch.dtype]:
    found = {getattr(torch, n) for n in dir(torch) if isinstance(getattr(torch, n), torch.dtype)}
    return sorted(found, key=str)


def test_safetensors_dtype_strings_round_trip(tmp_path):
    """Every dtype safetensors writes for a tiny tensor has its header string in the table, and the
    string maps back to that dtype; every string in the table is one safetensors writes."""
    written: dict[str, torch.dtype] = {}
    for dtype in _torch_dtypes():
        try:
            with warnings.catch_warnings():  # complex32 and the quantized dtypes warn that they are odd
                warnings.simplefilter("ignore")
                tensor = torch.zeros(2, dtype=dtype)
            save_file({"x": tensor}, str(tmp_path / "x.safetensors"))
        except Exception:  # a dtype safetensors (or torch's zeros) does not take: nothing to name
            continue
        with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as f:
            code = f.get_slice("x").get_dtype()
            assert f.get_tensor("x").dtype == dtype
        assert safetensors_dtype(code) == dtype, (code, dtype)
        written[code] = dtype
    assert {"F32", "BF16", "F16", "I64", "BOOL"} <= set(written)
    assert set(written) == {c for c in SAFETENSORS_DTYPE_NAMES if safetensors_dtype(c) is not None}
    assert safetensors_dtype("F6_E2M3_NOT_A_DTYPE") is None


def test_unknown_dtype_and_device_are_one_line_device_errors():
    with pytest.raises(DeviceError) as err:
        to_dtype("float8")
    assert str(err.value) == "unknown dtype 'float8'; use one of float32, bfloat16, float16"
    assert err.value.exit_code == EXIT_USAGE
    with pytest.raises(DeviceError, match="unknown dtype"):
        element_bytes("int4")
    for name, message in [
        ("gpu", "no such device 'gpu'; available: "),
        ("meta", "device 'meta' holds no data"),
        ("cuda:7" if torch.cuda.is_available() else "cuda", "available: cpu"),
    ]:
        with pytest.raises(DeviceError) as err:
            resolve_device(name)
        assert message in str(err.value) and "\n" not in str(err.value)
        assert err.value.key == "test.device" and err.value.exit_code == EXIT_USAGE
    assert resolve_device("meta", allow_meta=True).type == "meta"


def test_available_memory_of_this_machine():
    cpu = torch.device("cpu")
    free = devices.available_memory(cpu)
    assert free is not None and 0 < free < 2**50
    assert devices.available_memory(torch.device("meta")) is None
    assert 0 < devices.peak_memory(cpu) <= devices.peak_rss()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A copy of the shipped 4M Llama project (its files only: nothing is built)."""
    dest = tmp_path_factory.mktemp("devices") / "llama_4m"
    shutil.copytree(REPO / "projects" / "llama_4m", dest)
    return dest


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_unknown_device_exits_2_with_one_line_and_writes_nothing(project):
    before = _files(project.parent)
    result = CliRunner().invoke(cli, ["test", str(project), "--device", "gpu"])
    assert result.exit_code == EXIT_USAGE, result.output
    assert result.output.strip().splitlines() == [
        f"error: test.device: no such device 'gpu'; available: {', '.join(devices.available_devices())}"
    ]
    assert _files(project.parent) == before


def test_cli_accepts_a_dtype_alias(project):
    """`--dtype bf16` passes the schema and constructs in bfloat16 (show, on the meta device)."""
    result = CliRunner().invoke(cli, ["show", str(project), "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    assert "dtype bfloat16" in result.output


def test_schema_stays_free_of_torch():
    """The name table needs no torch, so validating a manifest (and `scaffold --help`) never loads it."""
    code = "import sys, scaffold.spec.schema, scaffold.devices, scaffold.run.smoke; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"
