"""The built models where users take them: devices and backends the commands accept or refuse."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from scaffold.cli import cli
from scaffold.errors import EXIT_USAGE
from scaffold.smoke import resolve_device

from .conftest import make_project


def _flex_trains_on_cpu() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError:
        return False
    q = torch.zeros(1, 1, 2, 8, requires_grad=True)
    try:
        flex_attention(q, q, q).sum().backward()
    except NotImplementedError:
        return False
    return True


def test_show_accepts_meta_device(tmp_path):
    project = make_project(tmp_path)
    result = CliRunner().invoke(cli, ["show", str(project), "--device", "meta"])
    assert result.exit_code == 0, result.output
    assert "lm_head" in result.output
    assert "meta" in result.output


@pytest.mark.parametrize("spelling", ["cpu", "cpu:0", "auto"])
def test_device_spellings_torch_accepts(spelling):
    assert resolve_device(spelling).type in ("cpu", "cuda")


def test_test_refuses_meta_device_with_reason(tmp_path):
    project = make_project(tmp_path)
    result = CliRunner().invoke(cli, ["test", str(project), "--device", "meta", "--steps", "1"])
    assert result.exit_code == EXIT_USAGE
    assert "test.device" in result.output and "show --device meta" in result.output


@pytest.mark.skipif(_flex_trains_on_cpu(), reason="this torch trains flex_attention on CPU")
def test_flex_on_cpu_is_refused_up_front(tmp_path):
    project = make_project(tmp_path)
    result = CliRunner().invoke(
        cli,
        ["test", str(project), "--device", "cpu", "--attn-implementation", "flex_attention", "--steps", "1"],
    )
    assert result.exit_code == EXIT_USAGE, result.output
    line = result.output.strip().splitlines()[-1]
    assert "flex_attention" in line and "cannot train on cpu" in line and "sdpa" in line
    assert "Traceback" not in result.output
