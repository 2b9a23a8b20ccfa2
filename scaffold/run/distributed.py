"""``scaffold test --nproc N``: the same training steps, sharded across N processes with torch's own
launcher and engine (torch.distributed.run, DistributedDataParallel, FSDP2, DTensor tensor parallelism).

The CLI process (:func:`launch`) writes a job file and starts ``python -m torch.distributed.run`` with
a rendezvous on 127.0.0.1 at a free port; each of the N workers (``python -m scaffold.run.distributed
JOBDIR``, :func:`worker`) loads the model directory as the single-process test does, wraps it and runs
:func:`scaffold.run.smoke.train` on it. gloo on the CPU, NCCL on CUDA (one GPU per process).

- ``ddp``: DistributedDataParallel; the global batch is split across the ranks by rows.
- ``fsdp2``: ``fully_shard`` on every decoder layer and on the root, parameters gathered and computed
  in ``--dtype``, gradients reduced in float32; the batch split as for ddp. On gloo the gradient
  reduce-scatter is forced to sum and divide (gloo's AVG reduce-scatter returns sums).
- ``tp``: ``from_pretrained(tp_plan="auto")`` shards the projections by the plans the generated
  configuration carries (:mod:`scaffold.codegen.plans`); every rank trains on the whole batch.

Every rank sees the same data and seed as a single-process run; each rank's loss is its share of the
whole batch's mean (``num_items_in_batch``), so the losses printed (rank 0, summed over ranks) are the
single-process ones up to reduction order. A failing rank writes its one-line error to the job folder;
torchrun then stops the other ranks, and the CLI reports that rank's error with its exit code. A rank
that hangs is stopped with all the others after ``timeout`` seconds and named (the one that got least
far, by the marks each rank writes). float16 is mixed precision in every rank, as in one process.

torchrun and the ranks die with the CLI however it dies (``PR_SET_PDEATHSIG`` on Linux); the job folder
is a scratch folder (:func:`scaffold.atomic.scratch_dir`) that the next run sweeps if this one is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from scaffold.atomic import scratch_dir
from scaffold.errors import EXIT_INTERNAL, ScaffoldError, TestFailure, UsageError
from scaffold.run.smoke import TestOptions, TestReport

PARALLEL = ("ddp", "fsdp2", "tp")
DEFAULT_TIMEOUT = 900.0
JOB_FILE = "job.json"


@dataclass
class DistributedOptions:
    nproc: int = 2  # processes on this node
    parallel: str = "ddp"
    timeout: float = DEFAULT_TIMEOUT  # seconds for the whole run; then every rank is stopped
    nnodes: int = 1
    node_rank: int | None = None  # None: c10d rendezvous (ranks by arrival); else static
    rdzv_endpoint: str | None = None  # HOST:PORT; None on one node: 127.0.0.1 at a free port
    rdzv_id: str = "scaffold"

    @property
    def world(self) -> int:
        return self.nproc * self.nnodes


@dataclass
class DistributedReport:
    """What N processes did: the losses (of the whole batch), tokens/s summed over ranks, peak memory
    per rank."""

    __test__ = False

    parallel: str = ""
    nproc: int = 0
    backend: str = ""
    losses: list[float] = field(default_factory=list)
    parameters: int = 0
    tokens: int = 0
    seconds: float = 0.0
    tokens_per_second: float = 0.0  # summed over ranks
    peak_memory_bytes: list[int] = field(default_factory=list)  # per rank
    device: str = ""
    reference_losses: list[float] | None = None  # the single-process run's, when compared

    @property
    def largest_difference(self) -> float | None:
        if self.reference_losses is None:
            return None
        return max((abs(a - b) for a, b in zip(self.losses, self.reference_losses)), default=0.0)

    def summary(self) -> str:
        n = len(self.losses)
        memory = ", ".join(f"rank {r} {b / 2**20:,.1f} MiB" for r, b in enumerate(self.peak_memory_bytes))
        lines = [
            f"{self.parallel} over {self.nproc} processes ({self.backend}, {self.device}) | parameters "
            f"{self.parameters:,} | {n} steps in {self.seconds:.1f} s | loss {self.losses[0]:.4f} -> "
            f"{self.losses[-1]:.4f} | {self.tokens_per_second:,.0f} tokens/s (all ranks)",
            f"peak memory: {memory}",
        ]
        if self.reference_losses is not None:
            lines.append(
                f"one process: loss {self.reference_losses[0]:.4f} -> {self.reference_losses[-1]:.4f}; "
                f"largest loss difference {self.largest_difference:.3g}"
            )
        return "\n".join(lines)


def cpu_limit() -> int:
    """The most processes ``--nproc`` starts on the CPU: the cores this process may run on (its
    affinity where the system tells it, else ``os.cpu_count()``), one process per core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def backend_for(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def check(dist: DistributedOptions, opts: TestOptions, device, model_dir: Path | None = None) -> None:
    """Usage errors of a multi-process run, found before anything is launched."""
    import torch

    from scaffold.devices import training_dtype_name

    if dist.parallel not in PARALLEL:
        raise UsageError(f"--parallel must be one of {', '.join(PARALLEL)}, got {dist.parallel!r}")
    if dist.nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {dist.nproc}")
    check_nodes(dist)
    if device.type not in ("cpu", "cuda"):
        raise UsageError(
            f"--nproc runs on the CPU (gloo) or CUDA (NCCL), not on {device.type}", key="test.device"
        )
    if device.type == "cuda" and dist.nproc > torch.cuda.device_count():
        raise UsageError(
            f"--nproc {dist.nproc} needs {dist.nproc} GPUs (one per process); this machine has "
            f"{torch.cuda.device_count()}"
        )
    if device.type == "cpu" and dist.nproc > cpu_limit():
        raise UsageError(
            f"--nproc {dist.nproc} starts more processes than the {cpu_limit()} CPU cores this process may "
            "use: each loads torch and a whole copy of the model, and every step waits for the slowest, so "
            f"processes beyond one per core only add memory and time; use --nproc {cpu_limit()} or fewer"
        )
    if dist.timeout <= 0:
        raise UsageError(f"--timeout must be positive, got {dist.timeout}")
    if opts.fuse_optim_with_backward:
        raise UsageError(
            "--fuse-optim-with-backward steps each parameter before gradients are reduced "
            "across processes; it runs with one process only"
        )
    if dist.parallel == "tp" and training_dtype_name(opts.dtype) == "float16":
        raise UsageError(
            "--parallel tp cannot train in float16: float16 needs a GradScaler, and torch's cannot unscale "
            "tensor parallelism's mix of sharded (DTensor) and whole gradients; use --dtype bfloat16 or "
            "float32, or --parallel ddp or fsdp2",
            key="test.dtype",
        )
    check_world(dist.parallel, dist.world, opts, model_dir, _processes(dist))


def _processes(dist: DistributedOptions) -> str:
    if dist.nnodes == 1:
        return f"--nproc {dist.nproc} processes"
    return f"{dist.world} processes (--nproc {dist.nproc} on each of --nnodes {dist.nnodes})"


def check_nodes(dist: DistributedOptions) -> None:
    """Usage errors of the multi-node options."""
    if dist.nnodes < 1:
        raise UsageError(f"--nnodes must be at least 1, got {dist.nnodes}")
    if dist.nnodes > 1 and not dist.rdzv_endpoint:
        raise UsageError(
            f"--nnodes {dist.nnodes} needs --rdzv-endpoint HOST:PORT, the same on every node "
            "(where the nodes meet)"
        )
    if dist.rdzv_endpoint is not None:
        host, _, port = dist.rdzv_endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--rdzv-endpoint {dist.rdzv_endpoint!r}: give HOST:PORT (a port 1 to 65535)")
    if dist.node_rank is not None and not 0 <= dist.node_rank < dist.nnodes:
        raise UsageError(
            f"--node-rank {dist.node_rank} is not a node of --nnodes {dist.nnodes} (0 to {dist.nnodes - 1})"
        )
    if not dist.rdzv_id or any(c.isspace() for c in dist.rdzv_id):
        raise UsageError(f"--rdzv-id {dist.rdzv_id!r}: give a name without spaces")


def check_world(parallel: str, world: int, opts: TestOptions, model_dir: Path | None, processes: str) -> None:
    """Whether the batch (ddp, fsdp2) or the model (tp) splits across ``world`` processes."""
    if parallel != "tp" and opts.batch_size % world:
        raise UsageError(
            f"--batch-size {opts.batch_size} does not split across {processes} "
            f"({parallel} gives each a share of the rows): use a multiple of {world}"
        )
    if parallel == "tp" and model_dir is not None:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        for key in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
            value = config.get(key)
            if isinstance(value, int) and value % world:
                raise UsageError(
                    f"tensor parallelism over {world} processes splits {key} = {value}: "
                    f"it must divide by {world}",
                    key=f"model.{key}",
                )


def launch(
    model_dir: str | Path,
    opts: TestOptions,
    dist: DistributedOptions,
    *,
    checkpoint: str | Path | None = None,
    no_init: bool = False,
    compare: bool = True,
    save_to: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> DistributedReport:
    """Run ``opts`` on ``model_dir`` in ``dist.nproc`` processes; raises the failing rank's error.

    ``compare`` also runs the single-process test in this process and records its losses.
    ``save_to``: after training, the full state dict is gathered on rank 0 and saved there with
    :func:`scaffold.build.checkpoint.save_checkpoint` (ddp and fsdp2).
    """
    from scaffold.devices import resolve_device

    device = resolve_device(opts.device)
    model_dir = Path(model_dir)
    check(dist, opts, device, model_dir)
    _refuse_with_tp(dist.parallel, checkpoint, no_init, save_to)
    with scratch_dir("dist") as job:
        spec = job_spec(
            model_dir, job, opts, dist.parallel, device, dist.timeout, checkpoint, no_init, save_to
        )
        (job / JOB_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")
        _run_torchrun(job, dist, log)
        result = json.loads((job / "result.json").read_text(encoding="utf-8"))
    report = DistributedReport(**result)
    if compare:
        from scaffold.run.smoke import run

        log("one process, for comparison:")
        reference = run(model_dir, opts, log=lambda line: None, checkpoint=checkpoint, no_init=no_init)
        report.reference_losses = reference.losses
    return report


def _refuse_with_tp(parallel: str, checkpoint: Any, no_init: bool, save_to: Any) -> None:
    if parallel == "tp" and (checkpoint is not None or no_init):
        raise UsageError(
            '--parallel tp loads the model directory\'s weights with from_pretrained(tp_plan="auto"); '
            "--load-from-checkpoint and --no-init-weights are not available with it"
        )
    if save_to is not None and parallel == "tp":
        raise UsageError("saving the gathered state dict is offered for ddp and fsdp2")


def job_spec(
    model_dir: Path,
    scratch: Path,
    opts: TestOptions,
    parallel: str,
    device,
    timeout: float,
    checkpoint: str | Path | None,
    no_init: bool,
    save_to: str | Path | None = None,
) -> dict[str, Any]:
    """What every rank needs to know of a run (the launcher's job file). ``scratch`` holds the initial
    weights tensor parallelism loads when the model directory has none."""
    weights_dir = model_dir
    if parallel == "tp" and not any(model_dir.glob("*.safetensors")):
        weights_dir = _with_initial_weights(model_dir, scratch / "model", opts)
    return {
        "model_dir": str(model_dir.resolve()),
        "weights_dir": str(Path(weights_dir).resolve()),
        "options": asdict(opts),
        "parallel": parallel,
        "device_type": device.type,
        "backend": backend_for(device.type),
        "timeout": timeout,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "no_init": no_init,
        "save_to": str(Path(save_to).resolve()) if save_to is not None else None,
    }


def _with_initial_weights(model_dir: Path, out: Path, opts: TestOptions) -> Path:
    """A copy of ``model_dir`` with the weights the single-process test would initialise (same seed):
    ``from_pretrained(tp_plan="auto")`` needs weights on disk."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    shutil.copytree(model_dir, out)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    torch.manual_seed(opts.seed)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=True)
    model.save_pretrained(out)
    return out


def _run_torchrun(job: Path, dist: DistributedOptions, log: Callable[[str], None]) -> None:
    """Start the workers under torch.distributed.run; stream rank 0's lines; raise a failing rank's error."""
    import scaffold

    env = dict(os.environ)
    root = str(Path(scaffold.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default, set here so that it does not warn
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = [
        sys.executable, "-m", "torch.distributed.run",
        *rendezvous_args(dist),
        "--max-restarts", "0",
        "--log-dir", str(job / "torchrun"),  # in the job folder, swept with it (default: a folder in /tmp)
        "-m", "scaffold.run.distributed", str(job),
    ]  # fmt: skip
    stderr_path = job / "stderr.txt"
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            start_new_session=True,
            text=True,
            preexec_fn=_child_dies_with(os.getpid()),
        )
        deadline = time.monotonic() + dist.timeout
        try:
            _stream(proc, deadline, log)
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _stop(proc, job)
            steps = json.loads((job / JOB_FILE).read_text(encoding="utf-8"))["options"]["steps"]
            raise TestFailure(
                f"--nproc {dist.nproc}: {_hung(job, dist, steps)}; every rank was stopped"
            ) from None
        except BaseException:
            _stop(proc, job)
            raise
    if proc.returncode == 0 and (job / "result.json").is_file():
        return
    # torchrun names the first failure ("Root Cause"): its error if it wrote one, else how it died (a
    # signal). The others' errors (a peer closed the connection) and deaths (torchrun's SIGTERM) follow.
    errors = {
        e["rank"]: e for e in (json.loads(p.read_text(encoding="utf-8")) for p in job.glob("error-*.json"))
    }
    root = _root_cause(stderr_path.read_text(encoding="utf-8", errors="replace"))
    if root is not None and root[0] not in errors and root[1] != 0:
        raise TestFailure(f"--nproc {dist.nproc}: {_death(*root)}; every rank was stopped")
    if errors:
        first = (
            errors[root[0]]
            if root is not None and root[0] in errors
            else min(errors.values(), key=lambda e: e["time"])
        )
        err = ScaffoldError(f"rank {first['rank']}: {first['message']}")
        err.exit_code = first["exit_code"]
        raise err
    raise TestFailure(f"--nproc {dist.nproc}: torch.distributed.run exited with {proc.returncode}")


def rendezvous_args(dist: DistributedOptions) -> list[str]:
    """torch.distributed.run's options for ``dist``: one node meets on 127.0.0.1 at a free port (port 0:
    the OS picks one); several meet at ``rdzv_endpoint``, by c10d (ranks in order of arrival) or, with
    a node rank, statically (node 0 hosts the store at the endpoint)."""
    args = ["--nnodes", str(dist.nnodes), "--nproc-per-node", str(dist.nproc)]
    endpoint = dist.rdzv_endpoint or "127.0.0.1:0"
    if dist.node_rank is not None:
        host, _, port = endpoint.rpartition(":")
        return [*args, "--node-rank", str(dist.node_rank), "--master-addr", host, "--master-port", port]
    return [*args, "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", dist.rdzv_id]


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _prctl() -> Callable[..., int] | None:
    """libc's prctl, loaded now (a child between fork and exec must not import), or None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _child_dies_with(parent: int) -> Callable[[], None] | None:
    """For ``Popen(preexec_fn=...)``: the child is SIGKILLed by the kernel when ``parent`` (this
    process) dies, however it dies (``PR_SET_PDEATHSIG``); a parent already gone stops it at once.
    torchrun runs in a session of its own (a terminal's signals are the CLI's to handle), so nothing
    else would stop it."""
    prctl = _prctl()
    if prctl is None:
        return None

    def set_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return set_death_signal


def _die_with_launcher(job: Path) -> None:
    """In a worker: be SIGKILLed when torchrun (the parent) dies, as torchrun is when the CLI dies, so
    that a killed ``scaffold test`` leaves no rank running (holding its ports and memory). A worker
    whose torchrun is already gone (its parent is no longer the process running this job) exits."""
    prctl = _prctl()
    if prctl is None:
        return
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            launcher = str(job).encode() in f.read()
    except OSError:
        launcher = False
    if not launcher:
        os._exit(1)


def _hung(job: Path, dist: DistributedOptions, steps: int | None = None) -> str:
    """Which rank a run that timed out waited for: the one that got least far (:func:`_mark`), since
    every collective keeps the others at most one stage ahead of it, waiting."""
    done = {r for r in range(dist.nproc) if (job / f"done-{r}.json").is_file()}
    stage: dict[int, int] = {}
    for r in range(dist.nproc):
        try:
            stage[r] = int((job / f"progress-{r}").read_text(encoding="ascii"))
        except (OSError, ValueError):
            stage[r] = -1  # started, no mark yet
    waiting = [r for r in range(dist.nproc) if r not in done]
    if not waiting:
        return f"torch.distributed.run did not exit within {dist.timeout:g} s after every rank finished"
    least = min(stage[r] for r in waiting)
    stuck = [r for r in waiting if stage[r] == least]
    ranks = ", ".join(map(str, stuck))
    return f"rank {ranks} did not finish within {dist.timeout:g} s (stuck {_stage_words(least, steps)})"


# How far a rank got (written to progress-RANK): joining the process group, loading the model, then
# two marks a step, once its loss is known and once its optimizer has stepped.
JOINING, LOADING = 0, 1


def _loss_stage(step: int) -> int:
    return 2 * step + 1


def _step_stage(step: int) -> int:  # step 0: the model is ready for step 1
    return 2 * step + 2


def _mark(job: Path, rank: int, stage: int) -> None:
    (job / f"progress-{rank}").write_text(str(stage), encoding="ascii")


def _stage_words(stage: int, steps: int | None = None) -> str:
    """Where a rank whose last mark is ``stage`` is now."""
    if stage < JOINING:
        return "before joining the process group"
    if stage == JOINING:
        return "joining the process group"
    if stage == LOADING:
        return "loading the model"
    step, after_loss = divmod(stage - 1, 2)  # odd: step's loss known; even: step - 1 done
    if after_loss == 0:
        return f"in step {step}'s backward pass or optimizer step"
    if steps is not None and step >= steps:
        return "after its last step (gathering the results)"
    return f"in step {step + 1}'s forward pass"


def _stream(proc: subprocess.Popen, deadline: float, log: Callable[[str], None]) -> None:
    """Pass the workers' stdout (only rank 0 prints) to ``log`` until it closes or the deadline."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise subprocess.TimeoutExpired(proc.args, 0)
        if not sel.select(timeout=min(left, 1.0)):
            continue
        line = proc.stdout.readline()
        if not line:
            return
        log(line.rstrip("\n"))


def _stop(proc: subprocess.Popen, job: Path) -> None:
    """Stop torchrun and every worker with SIGKILL (a stopped process ignores anything gentler). The
    workers run in sessions of their own: each is found by the pid it wrote, if it still runs this job."""
    for path in job.glob("pid-*"):
        pid = int(path.read_text(encoding="ascii") or 0)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if str(job).encode() not in f.read():
                    continue
        except OSError:
            if sys.platform.startswith("linux"):
                continue  # gone already
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _root_cause(stderr: str) -> tuple[int, int] | None:
    """(rank, exit code) of the first failure torchrun observed, from its report on stderr."""
    import re

    block = stderr.rpartition("Root Cause")[2]
    rank = re.search(r"rank\s*:\s*(\d+)", block)
    code = re.search(r"exitcode\s*:\s*(-?\d+)", block)
    return (int(rank.group(1)), int(code.group(1))) if rank and code else None


def _death(rank: int, exit_code: int) -> str:
    how = f"was killed by signal {-exit_code}" if exit_code < 0 else f"exited with code {exit_code}"
    names = {-signal.SIGKILL: " (SIGKILL: out of memory?)", -signal.SIGSEGV: " (SIGSEGV)"}
    return f"rank {rank} {how}{names.get(exit_code, '')}"


# ---------------------------------------------------------------------------------------------
# The worker: one rank
# ---------------------------------------------------------------------------------------------


@dataclass
class Rank:
    """Where this process is among the ranks; ``job`` is the launcher's job folder (None when the
    user's own launcher started it), where it leaves its pid, progress marks, error and result."""

    rank: int
    local_rank: int
    world: int
    job: Path | None = None

    def mark(self, stage: int) -> None:
        if self.job is not None:
            _mark(self.job, self.local_rank, stage)


def worker(job: Path) -> int:
    """One rank of a run: read the job, train, write the result (each node's local rank 0) or this
    rank's error. Files in the job folder are named by local rank: each node's CLI has its own."""
    import torch.distributed as tdist

    _die_with_launcher(job)
    me = Rank(
        int(os.environ["RANK"]),
        int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
        int(os.environ["WORLD_SIZE"]),
        job,
    )
    # torchrun gives each worker its own session: the launcher stops a hung one by this pid
    (job / f"pid-{me.local_rank}").write_text(str(os.getpid()), encoding="ascii")
    from scaffold.atomic import fault_point

    fault_point(f"dist-start-rank{me.rank}")  # tests stop or kill one rank here (SCAFFOLD_FAULT)
    spec = json.loads((job / JOB_FILE).read_text(encoding="utf-8"))
    me.mark(JOINING)
    try:
        device = join_group(me, spec["device_type"], spec["backend"], spec["timeout"])
        me.mark(LOADING)
        result = run_rank(me, spec, device)
        (job / f"done-{me.local_rank}.json").write_text("{}", encoding="utf-8")
        if me.local_rank == 0:
            (job / "result.json").write_text(json.dumps(result), encoding="utf-8")
        code = 0
    except ScaffoldError as err:
        code = _write_error(me, str(err).splitlines()[0], err.exit_code)
    except Exception as err:
        text = " ".join(str(err).split())
        code = _write_error(me, f"internal error: {type(err).__name__}: {text[:500]}", EXIT_INTERNAL)
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()
    return code


def join_group(me: Rank, device_type: str, backend: str, timeout: float):
    """Join the process group (from the launcher's environment: MASTER_ADDR, MASTER_PORT, RANK,
    WORLD_SIZE); returns this rank's device (cuda: the GPU of its local rank)."""
    from datetime import timedelta

    import torch
    import torch.distributed as tdist

    if device_type == "cuda":
        torch.cuda.set_device(me.local_rank)
        device = torch.device("cuda", me.local_rank)
    else:
        device = torch.device("cpu")
    tdist.init_process_group(
        backend,
        timeout=timedelta(seconds=timeout),
        device_id=device if device.type == "cuda" else None,
    )
    return device


def _write_error(me: Rank, message: str, exit_code: int) -> int:
    record = {"rank": me.rank, "message": message, "exit_code": exit_code, "time": time.time()}
    assert me.job is not None
    (me.job / f"error-{me.local_rank}.json").write_text(json.dumps(record), encoding="utf-8")
    return exit_code


def run_rank(
    me: Rank, spec: dict[str, Any], device, on_step: Callable[..., None] | None = None
) -> dict[str, Any]:
    """Train this rank's share of the job ``spec`` (what :func:`launch` writes); every rank returns the
    combined result. ``on_step`` (rank 0's run record) is called after each step with the whole batch's
    loss."""
    import torch
    import torch.distributed as tdist

    from scaffold.atomic import fault_point
    from scaffold.devices import resolve_dtype
    from scaffold.run import smoke

    rank, world = me.rank, me.world
    opts = TestOptions(**spec["options"])
    opts.device = str(device)
    parallel = spec["parallel"]
    compute = resolve_dtype(opts.dtype)
    # float16 trains as one process does (smoke.mixed_precision): float32 master weights, float16
    # autocast and a GradScaler, whose check for overflowed gradients DTensor all-reduces across the
    # shards. Weights held in float16 lose AdamW's small updates, and its eps (1e-8) is 0 in float16: a
    # parameter with a zero gradient (an embedding row no token used) became 0 / 0 = nan at step 2.
    dtype = torch.float32 if smoke.mixed_precision(opts) else compute
    model_dir = Path(spec["model_dir"])
    tokenizer = smoke.load_tokenizer(model_dir)
    data = (
        smoke.dataset_batches(tokenizer, opts) if opts.dataset else smoke.batches(len(tokenizer), opts, "cpu")
    )
    if parallel == "tp":
        model = _load_tp(Path(spec["weights_dir"]), opts, dtype, device)
    else:
        data = split_batches(data, rank, world, device)
        checkpoint = spec["checkpoint"]
        model = smoke.load_model(
            model_dir, opts, device, dtype, checkpoint=checkpoint, no_init=spec["no_init"]
        )
    if opts.gradient_checkpointing:  # on the model itself, before a wrapper hides the method
        smoke.enable_checkpointing(model)
        opts = replace(opts, gradient_checkpointing=False)
    inner = model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    elif parallel == "fsdp2":
        model = shard_fsdp2(model, compute, sum_reduction=spec["backend"] == "gloo")

    steps = 0
    me.mark(_step_stage(0))  # how far this rank got, for naming a rank that hangs

    def loss_value(loss) -> float:
        nonlocal steps
        fault_point(f"dist-step-rank{rank}")  # tests stop or kill one rank here (SCAFFOLD_FAULT)
        steps += 1
        me.mark(_loss_stage(steps))
        if parallel == "tp":
            return loss.item()
        total = loss.detach().float().clone()
        tdist.all_reduce(
            total
        )  # each rank's loss is its share of the batch mean: the mean is the sum / world
        return total.item() / world

    def log(line: str) -> None:  # the losses are the whole batch's: each node's local rank 0 prints them
        if me.local_rank == 0:
            print(line, flush=True)

    def after_step(step: int, *args: Any) -> None:
        me.mark(_step_stage(step))
        if on_step is not None and rank == 0:
            on_step(step, *args)

    report = smoke.train(model, opts, data, device=device, log=log, loss_value=loss_value, on_step=after_step)
    if spec.get("save_to"):
        _save_full(inner, model, parallel, Path(spec["save_to"]), rank)
    gathered: list[Any] = [None] * world
    tdist.all_gather_object(gathered, asdict(report))
    return _combine(gathered, report, parallel, spec["backend"], str(device.type))


# ---------------------------------------------------------------------------------------------
# Under the user's own launcher (torchrun or srun on every node): each process is one rank
# ---------------------------------------------------------------------------------------------

SLURM_VARS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")


def launched(environ: dict[str, str] | None = None) -> Rank | None:
    """This process's rank when a launcher the user started runs it: torchrun (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or Slurm's srun (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
    taken only when MASTER_ADDR is set too, so that a plain command inside an allocation stays one
    process; they are copied to torch's names). None: not under a launcher."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK" if "LOCAL_RANK" in env else "RANK")
    elif all(v in env for v in SLURM_VARS[:2]) and "MASTER_ADDR" in env:
        names = SLURM_VARS if "SLURM_LOCALID" in env else (*SLURM_VARS[:2], "SLURM_PROCID")
    else:
        return None
    values = []
    for name in names:
        try:
            values.append(int(env[name]))
        except ValueError:
            raise UsageError(f"environment variable {name}={env[name]!r} is not a whole number") from None
    rank, world, local = values
    if not 0 <= rank < world:
        raise UsageError(f"environment variable {names[0]}={rank} is not a rank of {names[1]}={world}")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(name):
            raise UsageError(
                f"{names[0]} and {names[1]} are set (a launcher started this process) but {name} is not: "
                "set MASTER_ADDR to the first node's address and MASTER_PORT to a free port there"
            )
    if names[0] != "RANK":  # torch's env:// rendezvous reads these names
        env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(local))
    return Rank(rank, local, world)


@contextlib.contextmanager
def process_group(me: Rank, device, timeout: float) -> Iterator[Any]:
    """This process joined to the others its launcher started; yields this rank's device."""
    import torch
    import torch.distributed as tdist

    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"a distributed run trains on the CPU (gloo) or CUDA (NCCL), not on {device.type}")
    if device.type == "cuda" and me.local_rank >= torch.cuda.device_count():
        raise UsageError(
            f"local rank {me.local_rank} needs GPU {me.local_rank}; this node has {torch.cuda.device_count()}"
        )
    rank_device = join_group(me, device.type, backend_for(device.type), timeout)
    try:
        yield rank_device
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()


def in_turn(me: Rank, work: Callable[[], Any]) -> Any:
    """Run ``work`` (a build) on rank 0 first, then on each other node's local rank 0, then on the
    remaining ranks: on a shared file system the first builds and the rest find the build up to date;
    on separate ones each node builds its own, once."""
    import torch.distributed as tdist

    mine = 0 if me.rank == 0 else 1 if me.local_rank == 0 else 2
    result = None
    for turn in range(3):
        if turn == mine:
            result = work()
        tdist.barrier()
    return result


def train_as_rank(
    me: Rank,
    model_dir: Path,
    opts: TestOptions,
    parallel: str,
    device,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    checkpoint: str | Path | None = None,
    no_init: bool = False,
    on_step: Callable[..., None] | None = None,
) -> DistributedReport:
    """Train this rank's share of ``opts`` (inside :func:`process_group`); every rank gets the report."""
    _refuse_with_tp(parallel, checkpoint, no_init, None)
    check_world(parallel, me.world, opts, model_dir, f"the launcher's {me.world} processes (WORLD_SIZE)")
    if opts.fuse_optim_with_backward:
        raise UsageError("--fuse-optim-with-backward runs with one process only")
    with scratch_dir("dist") as scratch:
        spec = job_spec(Path(model_dir), scratch, opts, parallel, device, timeout, checkpoint, no_init)
        return DistributedReport(**run_rank(me, spec, device, on_step))


def _combine(
    ranks: list[dict[str, Any]], report: TestReport, parallel: str, backend: str, device: str
) -> dict:
    tokens = sum(r["tokens"] for r in ranks) if parallel != "tp" else report.tokens
    return {
        "parallel": parallel,
        "nproc": len(ranks),
        "backend": backend,
        "losses": report.losses,
        "parameters": report.parameters,
        "tokens": tokens,
        "seconds": max(r["seconds"] for r in ranks),
        # tensor parallel ranks share each token: its rate is the batch's, not a sum
        "tokens_per_second": sum(r["tokens_per_second"] for r in ranks)
        if parallel != "tp"
        else report.tokens_per_second,
        "peak_memory_bytes": [r["peak_memory_bytes"] for r in ranks],
        "device": device,
    }


def split_batches(data: Iterator[Any], rank: int, world: int, device) -> Iterator[dict[str, Any]]:
    """This rank's rows of each global batch, with ``num_items_in_batch`` set so that the rank's loss
    is its share of the whole batch's mean loss times ``world`` (DDP and FSDP average gradients)."""
    import torch
    import torch.distributed as tdist

    for batch in data:
        inputs = dict(batch) if isinstance(batch, dict) else {"input_ids": batch}
        rows = inputs["input_ids"].shape[0]
        if rows % world:
            raise UsageError(f"a batch of {rows} rows does not split across {world} processes")
        share = rows // world
        local = {k: v[rank * share : (rank + 1) * share] for k, v in inputs.items()}
        labels = local.get("labels", local["input_ids"])
        count = (labels[:, 1:] != -100).sum().to(device=device, dtype=torch.float32)
        tdist.all_reduce(count)  # label tokens in the whole batch (after the shift)
        local["num_items_in_batch"] = count / world
        yield local


def shard_fsdp2(model, dtype, *, sum_reduction: bool):
    """``fully_shard`` on each decoder layer (the classes the model names in ``_no_split_modules``) and on
    the root; parameters in ``dtype``, gradients reduced in float32."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dtypes = {p.dtype for p in model.parameters()}
    if len(dtypes) > 1:
        names = sorted(str(d).removeprefix("torch.") for d in dtypes)
        odd = next(
            n
            for n, p in model.named_parameters()
            if p.dtype != torch.get_default_dtype() and p.dtype != dtype
        )
        raise TestFailure(f"FSDP2 needs one parameter dtype, the model has {', '.join(names)} (e.g. {odd})")
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    layer_classes = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise TestFailure(
            f"FSDP2: found no decoder layers ({', '.join(sorted(layer_classes)) or 'no _no_split_modules'})"
        )
    for layer in layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    if sum_reduction:  # gloo's AVG reduce-scatter returns sums: reduce with SUM and divide by the world size
        for module in [*layers, model]:
            module.set_force_sum_reduction_for_comms(True)
    return model


def _load_tp(weights_dir: Path, opts: TestOptions, dtype, device):
    import torch
    from transformers import AutoModelForCausalLM

    from scaffold.run.smoke import attention_backend_errors

    torch.manual_seed(opts.seed)
    with attention_backend_errors(opts.attn_implementation):
        return AutoModelForCausalLM.from_pretrained(
            weights_dir,
            trust_remote_code=True,
            dtype=dtype,
            tp_plan="auto",
            attn_implementation=opts.attn_implementation,
        )


def _save_full(inner, model, parallel: str, out: Path, rank: int) -> None:
    """Gather the full state dict on rank 0 and save it with save_checkpoint (into a plain model)."""
    import torch.distributed as tdist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from scaffold.build.checkpoint import save_checkpoint
    from scaffold.build.construct import construct

    if parallel == "fsdp2":
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = {k: v.detach().cpu() for k, v in inner.state_dict().items()}
    if rank == 0:
        dtype = next(iter(state.values())).dtype
        plain = construct(inner.config, device="cpu", dtype=dtype, init_weights=False)
        plain.load_state_dict(state, strict=False)  # tied weights appear once or twice; checked below
        missing = set(plain.state_dict()) - set(state)
        tied = set(getattr(plain, "_tied_weights_keys", None) or {})
        if missing - tied:
            raise TestFailure(f"the gathered state dict lacks {', '.join(sorted(missing - tied))}")
        save_checkpoint(out, plain)
    tdist.barrier()


def main() -> None:  # python -m scaffold.run.distributed JOBDIR (started by torch.distributed.run)
    sys.exit(worker(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
