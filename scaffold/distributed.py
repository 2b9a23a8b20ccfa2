"""``scaffold test --nproc N``: the same training steps, sharded across N processes with torch's own
launcher and engine (torch.distributed.run, DistributedDataParallel, FSDP2, DTensor tensor parallelism).

The CLI process (:func:`launch`) writes a job file and starts ``python -m torch.distributed.run`` with
a rendezvous on 127.0.0.1 at a free port; each of the N workers (``python -m scaffold.distributed
JOBDIR``, :func:`worker`) loads the model directory as the single-process test does, wraps it and runs
:func:`scaffold.smoke.train` on it. gloo on the CPU, NCCL on CUDA (one GPU per process).

- ``ddp``: DistributedDataParallel; the global batch is split across the ranks by rows.
- ``fsdp2``: ``fully_shard`` on every decoder layer and on the root, parameters gathered and computed
  in ``--dtype``, gradients reduced in float32; the batch split as for ddp. On gloo the gradient
  reduce-scatter is forced to sum and divide (gloo's AVG reduce-scatter returns sums).
- ``tp``: ``from_pretrained(tp_plan="auto")`` shards the projections by the plans the generated
  configuration carries (:mod:`scaffold.plans`); every rank trains on the whole batch.

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

from .atomic import scratch_dir
from .errors import EXIT_INTERNAL, ScaffoldError, TestFailure, UsageError
from .smoke import TestOptions, TestReport

PARALLEL = ("ddp", "fsdp2", "tp")
DEFAULT_TIMEOUT = 900.0
JOB_FILE = "job.json"


@dataclass
class DistributedOptions:
    nproc: int = 2
    parallel: str = "ddp"
    timeout: float = DEFAULT_TIMEOUT  # seconds for the whole run; then every rank is stopped


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

    from .devices import training_dtype_name

    if dist.parallel not in PARALLEL:
        raise UsageError(f"--parallel must be one of {', '.join(PARALLEL)}, got {dist.parallel!r}")
    if dist.nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {dist.nproc}")
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
    if dist.parallel != "tp" and opts.batch_size % dist.nproc:
        raise UsageError(
            f"--batch-size {opts.batch_size} does not split across --nproc {dist.nproc} processes "
            f"({dist.parallel} gives each a share of the rows): use a multiple of {dist.nproc}"
        )
    if dist.parallel == "tp" and model_dir is not None:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        for key in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
            value = config.get(key)
            if isinstance(value, int) and value % dist.nproc:
                raise UsageError(
                    f"tensor parallelism over {dist.nproc} processes splits {key} = {value}: "
                    f"it must divide by {dist.nproc}",
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
    :func:`scaffold.checkpoint.save_checkpoint` (ddp and fsdp2).
    """
    from .devices import resolve_device

    device = resolve_device(opts.device)
    model_dir = Path(model_dir)
    check(dist, opts, device, model_dir)
    if dist.parallel == "tp" and (checkpoint is not None or no_init):
        raise UsageError(
            '--parallel tp loads the model directory\'s weights with from_pretrained(tp_plan="auto"); '
            "--load-from-checkpoint and --no-init-weights are not available with it"
        )
    if save_to is not None and dist.parallel == "tp":
        raise UsageError("saving the gathered state dict is offered for ddp and fsdp2")
    with scratch_dir("dist") as job:
        weights_dir = model_dir
        if dist.parallel == "tp" and not any(model_dir.glob("*.safetensors")):
            weights_dir = _with_initial_weights(model_dir, job / "model", opts)
        spec = {
            "model_dir": str(model_dir.resolve()),
            "weights_dir": str(Path(weights_dir).resolve()),
            "options": asdict(opts),
            "parallel": dist.parallel,
            "device_type": device.type,
            "backend": backend_for(device.type),
            "timeout": dist.timeout,
            "checkpoint": str(checkpoint) if checkpoint is not None else None,
            "no_init": no_init,
            "save_to": str(Path(save_to).resolve()) if save_to is not None else None,
        }
        (job / JOB_FILE).write_text(json.dumps(spec, indent=2), encoding="utf-8")
        _run_torchrun(job, dist, log)
        result = json.loads((job / "result.json").read_text(encoding="utf-8"))
    report = DistributedReport(**result)
    if compare:
        from .smoke import run

        log("one process, for comparison:")
        reference = run(model_dir, opts, log=lambda line: None, checkpoint=checkpoint, no_init=no_init)
        report.reference_losses = reference.losses
    return report


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
        "--nnodes", "1", "--nproc-per-node", str(dist.nproc),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0",  # port 0: the OS picks a free one
        "--max-restarts", "0",
        "--log-dir", str(job / "torchrun"),  # in the job folder, swept with it (default: a folder in /tmp)
        "-m", "scaffold.distributed", str(job),
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


def worker(job: Path) -> int:
    """One rank of a run: read the job, train, write the result (rank 0) or this rank's error."""
    from datetime import timedelta

    import torch
    import torch.distributed as tdist

    _die_with_launcher(job)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    # torchrun gives each worker its own session: the launcher stops a hung one by this pid
    (job / f"pid-{rank}").write_text(str(os.getpid()), encoding="ascii")
    from .atomic import fault_point

    fault_point(f"dist-start-rank{rank}")  # tests stop or kill one rank here (SCAFFOLD_FAULT)
    spec = json.loads((job / JOB_FILE).read_text(encoding="utf-8"))
    _mark(job, rank, JOINING)
    try:
        if spec["device_type"] == "cuda":
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        else:
            device = torch.device("cpu")
        tdist.init_process_group(
            spec["backend"],
            timeout=timedelta(seconds=spec["timeout"]),
            device_id=device if device.type == "cuda" else None,
        )
        _mark(job, rank, LOADING)
        result = _run_rank(job, spec, rank, world, device)
        (job / f"done-{rank}.json").write_text("{}", encoding="utf-8")
        if rank == 0:
            (job / "result.json").write_text(json.dumps(result), encoding="utf-8")
        code = 0
    except ScaffoldError as err:
        code = _write_error(job, rank, str(err).splitlines()[0], err.exit_code)
    except Exception as err:
        text = " ".join(str(err).split())
        code = _write_error(job, rank, f"internal error: {type(err).__name__}: {text[:500]}", EXIT_INTERNAL)
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()
    return code


def _write_error(job: Path, rank: int, message: str, exit_code: int) -> int:
    record = {"rank": rank, "message": message, "exit_code": exit_code, "time": time.time()}
    (job / f"error-{rank}.json").write_text(json.dumps(record), encoding="utf-8")
    return exit_code


def _run_rank(job: Path, spec: dict[str, Any], rank: int, world: int, device) -> dict[str, Any]:
    import torch
    import torch.distributed as tdist

    from . import smoke
    from .atomic import fault_point
    from .devices import resolve_dtype

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
    _mark(job, rank, _step_stage(0))  # how far this rank got, for naming a rank that hangs

    def loss_value(loss) -> float:
        nonlocal steps
        fault_point(f"dist-step-rank{rank}")  # tests stop or kill one rank here (SCAFFOLD_FAULT)
        steps += 1
        _mark(job, rank, _loss_stage(steps))
        if parallel == "tp":
            return loss.item()
        total = loss.detach().float().clone()
        tdist.all_reduce(
            total
        )  # each rank's loss is its share of the batch mean: the mean is the sum / world
        return total.item() / world

    def log(line: str) -> None:  # the losses are the whole batch's: rank 0 prints them once
        if rank == 0:
            print(line, flush=True)

    def on_step(step: int, *_: Any) -> None:
        _mark(job, rank, _step_stage(step))

    report = smoke.train(model, opts, data, device=device, log=log, loss_value=loss_value, on_step=on_step)
    if spec.get("save_to"):
        _save_full(inner, model, parallel, Path(spec["save_to"]), rank)
    gathered: list[Any] = [None] * world
    tdist.all_gather_object(gathered, asdict(report))
    if rank != 0:
        return {}
    return _combine(gathered, report, parallel, spec["backend"], str(device.type))


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

    from .smoke import attention_backend_errors

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

    from .checkpoint import save_checkpoint
    from .construct import construct

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


def main() -> None:  # python -m scaffold.distributed JOBDIR (started by torch.distributed.run)
    sys.exit(worker(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
