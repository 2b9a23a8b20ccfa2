"""Processes and temporaries of a run: how many processes ``--nproc`` may start, float16 over several
processes, and what a signal to ``scaffold test --nproc 2`` or to a re-render leaves behind.

The signal tests start the real command line as a subprocess with its own ``TMPDIR`` (so that every
temporary folder, and every process working in one, is this test's), signal it mid-run, and check that
no process of the run survives and that the next scaffold run leaves no temporary folder.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scaffold import atomic
from scaffold.build import build
from scaffold.project import load_project
from scaffold.project.new import create_project
from scaffold.run.distributed import DistributedOptions, _hung, _loss_stage, _mark, _step_stage, cpu_limit
from tests._construct_util import TINY, invoke

ROOT = Path(__file__).resolve().parent.parent
TEST = {"device": "cpu", "steps": 3, "batch_size": 4, "sequence_length": 16}


def _project(root: Path, name: str, **model) -> Path:
    project = create_project(
        name, "llama", projects_dir=root, overrides={"model": {**TINY, **model}, "test": dict(TEST)}
    )
    build(load_project(project), save_weights=True)
    return project


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A tiny llama project built with its weights."""
    return _project(tmp_path_factory.mktemp("procs"), "p")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its new parent, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def processes_in(tmp: Path) -> set[int]:
    """Live processes whose command line names a path under ``tmp`` (torchrun and the ranks name the
    job folder)."""
    key = str(tmp).encode()
    return {
        int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and key in _cmdline(int(e.name))
    } - {os.getpid()}


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    env["TMPDIR"] = str(tmp)
    env.pop("SCAFFOLD_FAULT", None)
    env.update(extra)
    return env


def _scaffold(*args, tmp: Path, **extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "scaffold.cli", *map(str, args)],
        env=_env(tmp, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_for(what, timeout: float, why: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {why}")


def _leftovers(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith(("scaffold-", "torchelastic_")))


def _next_run(tmp: Path) -> None:
    proc = _scaffold("blueprints", tmp=tmp)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out


# ---------------------------------------------------------------------------------------------
# How many processes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [1, 1000], ids=["one-more", "1000"])
def test_more_processes_than_cpu_cores_is_refused_before_launch(project, tmp_path, extra):
    n = cpu_limit() + extra
    before = processes_in(tmp_path)
    result = invoke("test", project, "--nproc", n, "--batch-size", n, "--no-record")
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line == (
        f"error: --nproc {n} starts more processes than the {cpu_limit()} CPU cores this process may "
        "use: each loads torch and a whole copy of the model, and every step waits for the slowest, so "
        f"processes beyond one per core only add memory and time; use --nproc {cpu_limit()} or fewer"
    )
    assert "Traceback" not in result.output and processes_in(tmp_path) <= before


def test_tensor_parallel_heads_that_do_not_split_are_refused(tmp_path):
    """Within the cores: 3 heads over 2 processes (before: shown with --nproc 3, now refused on 2 cores)."""
    project = _project(
        tmp_path, "h3", hidden_size=48, num_attention_heads=3, num_key_value_heads=3, head_dim=16
    )
    result = invoke("test", project, "--nproc", 2, "--parallel", "tp", "--no-record")
    assert result.exit_code == 2, result.output
    assert "tensor parallelism over 2 processes splits num_attention_heads = 3: it must divide by 2" in (
        result.output
    )


# ---------------------------------------------------------------------------------------------
# float16 over several processes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("parallel", ["fsdp2", "ddp"])
def test_float16_over_two_processes_trains_as_one_process(project, parallel):
    """float16 is mixed precision in every rank as in one process (float32 master weights, autocast, a
    GradScaler); in float16 weights AdamW's eps is 0 and step 2 was nan."""
    result = invoke(
        "test", project, "--nproc", 2, "--parallel", parallel, "--dtype", "float16", "--no-record"
    )
    assert result.exit_code == 0, result.output
    assert "float16 mixed precision" in result.output
    losses = [float(x) for x in re.findall(r"step \d/3  loss (\S+)", result.output)]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses))), result.output
    difference = float(re.search(r"largest loss difference (\S+)", result.output).group(1))
    assert difference < 2e-3, result.output


def test_tensor_parallel_float16_is_refused(project):
    result = invoke("test", project, "--nproc", 2, "--parallel", "tp", "--dtype", "float16", "--no-record")
    assert result.exit_code == 2, result.output
    assert "--parallel tp cannot train in float16" in result.output and "bfloat16" in result.output


# ---------------------------------------------------------------------------------------------
# A hung rank
# ---------------------------------------------------------------------------------------------


def test_the_hung_rank_is_named_not_the_one_waiting_for_it(project):
    """Rank 1 stops before joining the process group, rank 0 waits for it there: rank 1 alone is named."""
    args = ("--nproc", 2, "--timeout", 15, "--no-compare", "--no-record")
    result = invoke("test", project, *args, env={"SCAFFOLD_FAULT": "dist-start-rank1:stop"})
    assert result.exit_code == 4, result.output
    errors = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert errors == [
        "error: --nproc 2: rank 1 did not finish within 15 s (stuck before joining the process group); "
        "every rank was stopped"
    ]


def test_hung_names_the_rank_that_got_least_far(tmp_path):
    """Each collective keeps the others one mark ahead of the rank they wait for."""
    dist = DistributedOptions(nproc=3, timeout=9)
    for rank, stage in ((0, _loss_stage(2)), (1, _step_stage(1)), (2, _loss_stage(2))):
        _mark(tmp_path, rank, stage)
    assert _hung(tmp_path, dist, 5) == "rank 1 did not finish within 9 s (stuck in step 2's forward pass)"
    _mark(tmp_path, 1, _loss_stage(2))
    assert _hung(tmp_path, dist, 5) == (
        "rank 0, 1, 2 did not finish within 9 s (stuck in step 2's backward pass or optimizer step)"
    )
    for rank in range(3):
        _mark(tmp_path, rank, _step_stage(5))
    assert "stuck after its last step" in _hung(tmp_path, dist, 5)


# ---------------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name)
def test_a_signal_to_scaffold_test_nproc_leaves_no_process_and_no_temporary(project, tmp_path, sig):
    """torchrun and the ranks die with the command (PR_SET_PDEATHSIG; SIGTERM and SIGHUP also unwind it,
    stopping them and deleting its folders); what SIGKILL leaves is swept by the next run."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = _scaffold("test", project, "--nproc", 2, "--steps", 100000, "--no-record", "--no-compare", tmp=tmp)
    try:

        def training() -> bool:  # both ranks have finished a step
            marks = list(tmp.glob("scaffold-dist-*/progress-*"))
            return len(marks) == 2 and all(int(p.read_text() or 0) >= _step_stage(1) for p in marks)

        _wait_for(training, 240, "both ranks to train")
        running = processes_in(tmp)
        assert len(running) == 3, running  # torchrun and two ranks
        os.kill(proc.pid, sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 128 + sig, out
        assert out.strip().splitlines()[-1] == f"interrupted by {sig.name}", out
    _wait_for(lambda: not any(_alive(p) for p in running), 30, f"{sorted(running)} to end")
    assert not processes_in(tmp)
    if sig == signal.SIGKILL:  # no chance to clean up: the job folder and the test's build are left
        assert {n.split("-")[1] for n in _leftovers(tmp)} == {"dist", "test"}, _leftovers(tmp)
    else:
        assert _leftovers(tmp) == []
    _next_run(tmp)
    assert _leftovers(tmp) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_signal_during_a_rendering_leaves_no_temporary(project, tmp_path, sig):
    """`scaffold diff` renders the project into a temporary folder: stopped there, then signalled."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = _scaffold("diff", project, tmp=tmp, SCAFFOLD_FAULT="render-scratch:stop")
    try:

        def stopped() -> bool:
            stat = Path(f"/proc/{proc.pid}/stat").read_text()
            return stat.rpartition(")")[2].split()[0] == "T"

        _wait_for(stopped, 120, "the rendering to stop at its fault point")
        assert [n.split("-")[1] for n in _leftovers(tmp)] == ["render"]
        os.kill(proc.pid, sig)
        os.kill(proc.pid, signal.SIGCONT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
        assert [n.split("-")[1] for n in _leftovers(tmp)] == ["render"]
    else:
        assert proc.returncode == 128 + sig and "interrupted by SIGTERM" in out, out
        assert _leftovers(tmp) == []
    _next_run(tmp)
    assert _leftovers(tmp) == []


def test_the_sweep_leaves_a_live_run_s_folders_and_other_files(tmp_path):
    """Only folders named by scaffold after a process that no longer runs are deleted."""
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        kept = [
            tmp_path / f"scaffold-dist-{live.pid}-abcd1234",  # a run in progress
            tmp_path / f"scaffold-dist-{os.getpid()}-abcd1234",  # this process's
            tmp_path / "scaffold-dist-abcd1234",  # no pid: not scaffold's naming
            tmp_path / f"scaffold-other-{dead.pid}-abcd1234",  # not one of scaffold's kinds
        ]
        for p in kept:
            p.mkdir()
            (p / "sentinel").write_text("kept")
        user_file = tmp_path / f"scaffold-show-{dead.pid}-abcd1234"  # a file (`show -e` writes files)
        user_file.write_text("kept")
        gone = [
            tmp_path / f"scaffold-{kind}-{dead.pid}-a_b{i}5678" for i, kind in enumerate(atomic.SCRATCH_KINDS)
        ]
        for p in gone:
            (p / "model").mkdir(parents=True)
            (p / "model" / "weights").write_bytes(b"0" * 100)
        removed = atomic.sweep_scratch(tmp_path)
    finally:
        live.kill()
        live.wait()
    assert sorted(removed) == sorted(gone)
    assert all((p / "sentinel").read_text() == "kept" for p in kept) and user_file.read_text() == "kept"
    assert not any(p.exists() for p in gone)
