"""Beyond one machine: ``scaffold test`` across nodes, simulated on this one.

Two "nodes" are two launcher processes on 127.0.0.1 with one rank each, meeting by c10d rendezvous at
a free port: either two ``scaffold test --nproc 1 --nnodes 2`` commands (scaffold starts
torch.distributed.run on each), or two torchruns the user started, each running ``-m scaffold test``
as one rank. Either way the loss is the single-process run's. World size 2: this machine has two cores.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from scaffold.cli import cli
from scaffold.errors import EXIT_USAGE, UsageError
from scaffold.run.distributed import DistributedOptions, Rank, launched, rendezvous_args
from tests.conftest import ROOT, build_project, make_project

TEST = {"device": "cpu", "steps": 3, "batch_size": 2, "sequence_length": 32}
LOSS = re.compile(r"step (\d+)/\d+\s+loss (\d+\.\d+)")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    project = make_project(tmp_path_factory.mktemp("multinode"), test=dict(TEST))
    build_project(project)
    return project


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [out.get("PYTHONPATH")])])
    out["OMP_NUM_THREADS"] = "1"
    return out


def start_both(commands: list[list[str]], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Start every "node" at once (the rendezvous waits for all), then wait for each."""
    procs = [
        subprocess.Popen(c, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for c in commands
    ]
    out = []
    for p, c in zip(procs, commands):
        try:
            stdout, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append(subprocess.CompletedProcess(c, p.returncode, stdout, ""))
    return out


def losses(output: str) -> list[float]:
    return [float(m.group(2)) for m in LOSS.finditer(output)]


def one_process_losses(project: Path) -> list[float]:
    result = CliRunner().invoke(cli, ["test", str(project), "--no-record"])
    assert result.exit_code == 0, result.output
    return losses(result.output)


def test_two_scaffold_launchers_meet_by_c10d_and_train_as_one_process(project):
    """`scaffold test --nproc 1 --nnodes 2 --rdzv-endpoint 127.0.0.1:PORT` on two "nodes": each prints
    the whole batch's loss, the same on both, equal to one process's."""
    port = free_port()
    scaffold = [sys.executable, "-m", "scaffold", "test", str(project), "--no-record", "--no-compare"]
    node = [*scaffold, "--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", f"127.0.0.1:{port}"]
    a, b = start_both([node, node], project.parent)
    assert a.returncode == 0 and b.returncode == 0, a.stdout + b.stdout
    assert "ddp over 1 process on each of 2 nodes" in a.stdout
    assert "ddp over 2 processes" in a.stdout and "ddp over 2 processes" in b.stdout
    reference = one_process_losses(project)
    assert len(reference) == TEST["steps"]
    for node_out in (a.stdout, b.stdout):
        assert losses(node_out) == pytest.approx(reference, abs=1e-5)


def test_under_the_users_torchrun_each_process_is_one_rank(project):
    """Two torchruns (--nnodes 2, one rank each, c10d on 127.0.0.1) each start `python -m scaffold
    test PROJECT --parallel fsdp2`: rank 0 prints the run and records it once, and its comparison with
    one process shows the same losses."""
    runs = project / "runs"
    before = set(runs.iterdir()) if runs.is_dir() else set()
    port = free_port()
    torchrun = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "t",
        "--max-restarts", "0",
        "-m", "scaffold", "test", str(project), "--parallel", "fsdp2", "--compare",
    ]  # fmt: skip
    a, b = start_both([torchrun, torchrun], project.parent)
    assert a.returncode == 0 and b.returncode == 0, a.stdout + b.stdout
    rank0 = next(o.stdout for o in (a, b) if "as rank 0 of 2" in o.stdout)
    assert "fsdp2 over 2 processes (gloo, cpu)" in rank0
    difference = float(re.search(r"largest loss difference (\S+)", rank0).group(1))
    assert difference < 1e-5
    assert losses(rank0) == pytest.approx(one_process_losses(project), abs=1e-5)
    new = set(runs.iterdir()) - before
    assert len(new) == 1, new  # rank 0 alone keeps a record
    summary = json.loads((new.pop() / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == TEST["steps"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--nnodes", "2"], "--nnodes needs --nproc"),
        (["--nproc", "1", "--nnodes", "2"], "--nnodes 2 needs --rdzv-endpoint HOST:PORT"),
        (["--nproc", "1", "--nnodes", "0"], "--nnodes must be at least 1"),
        (["--nproc", "1", "--node-rank", "1"], "--node-rank needs --nnodes above 1"),
        (["--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", "nohost"], "give HOST:PORT"),
        (["--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", "h:1", "--node-rank", "2"], "is not a node"),
        (["--nproc", "1", "--nnodes", "3", "--rdzv-endpoint", "h:1"], "does not split across 3 processes"),
    ],
    ids=["no-nproc", "no-endpoint", "zero-nodes", "rank-alone", "bad-endpoint", "rank-range", "batch-split"],
)
def test_bad_multinode_flags_are_one_line_usage_errors(project, flags, message):
    before = sorted(p.name for p in project.rglob("*"))
    result = CliRunner().invoke(cli, ["test", str(project), *flags])
    assert result.exit_code == EXIT_USAGE, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert sorted(p.name for p in project.rglob("*")) == before  # nothing launched, nothing recorded


def test_rendezvous_options_passed_to_torchrun():
    one = rendezvous_args(DistributedOptions(nproc=2))
    assert one == ["--nnodes", "1", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
                   "--rdzv-endpoint", "127.0.0.1:0", "--rdzv-id", "scaffold"]  # fmt: skip
    static = rendezvous_args(DistributedOptions(nproc=4, nnodes=2, node_rank=1, rdzv_endpoint="n0:29500"))
    assert static[-6:] == ["--node-rank", "1", "--master-addr", "n0", "--master-port", "29500"]


def test_the_launchers_environment_is_read():
    assert launched({}) is None
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "n0", "MASTER_PORT": "1"}
    assert launched(torchrun) == Rank(3, 1, 4)
    # srun's variables count only with MASTER_ADDR set: a plain command inside an allocation stays one process
    slurm = {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0"}
    assert launched(dict(slurm)) is None
    full = {**slurm, "MASTER_ADDR": "n0", "MASTER_PORT": "29500"}
    assert launched(full) == Rank(1, 0, 2)
    assert (full["RANK"], full["WORLD_SIZE"], full["LOCAL_RANK"]) == ("1", "2", "0")  # for env://
    with pytest.raises(UsageError, match="MASTER_PORT is not"):
        launched({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "n0"})
    with pytest.raises(UsageError, match="RANK=2 is not a rank of WORLD_SIZE=2"):
        launched({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "n0", "MASTER_PORT": "1"})


def test_multinode_flags_under_a_launcher_are_refused(project, monkeypatch):
    for name, value in {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "1",
    }.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli, ["test", str(project), "--nnodes", "2"])
    assert result.exit_code == EXIT_USAGE, result.output
    assert "already runs under a launcher" in result.output
