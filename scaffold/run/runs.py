"""Run records: every ``scaffold test`` leaves a folder under ``PROJECT/runs/``, and ``scaffold runs``
lists and plots them.

A record is ``runs/<UTC time>-<short id>/`` holding

- ``options.json``: the resolved test options, the project, blueprint and library versions;
- ``config.json``: the model configuration that was trained (the model directory's);
- ``steps.jsonl``: one JSON object per step (step, loss, lr, tokens, tokens_per_second,
  peak_memory_bytes, seconds), appended and flushed as each step ends;
- ``summary.json``: written ``running`` at the start and replaced (atomically) at the end with the
  status (``completed``, ``failed``, ``interrupted``, ``error``) and the run's figures;
- ``loss.png``: the loss curve, when matplotlib is installed (the ``plot`` extra).

A run killed outright still leaves a readable record: every finished step is in ``steps.jsonl`` (a
torn last line is skipped when read) and ``summary.json`` says ``running`` with the process id, which
``scaffold runs`` reports as ``killed`` once that process is gone. Records are outputs, like the
model directory: never part of the project's generated files.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scaffold import atomic
from scaffold.devices import peak_memory
from scaffold.errors import ScaffoldError, TestFailure, UsageError

RUNS_DIR = "runs"
# Folders inside a project that scaffold's commands write (the default build, the run records):
# outputs, never part of the project's own files, so never a hand edit of it.
PROJECT_OUTPUTS = frozenset({"model", RUNS_DIR})
OPTIONS_FILE = "options.json"
CONFIG_FILE = "config.json"
STEPS_FILE = "steps.jsonl"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "loss.png"
SCHEMA_VERSION = 1
STEP_KEYS = ("step", "loss", "lr", "tokens", "tokens_per_second", "peak_memory_bytes", "seconds")
PLOT_HINT = "matplotlib is not installed: pip install 'scaffold[plot]' (or pip install matplotlib)"


def new_run_id(now: datetime | None = None) -> str:
    """``<UTC time>-<6 hex digits>``: sorts by time, unique across machines writing the same folder."""
    now = now or datetime.now(timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON so that readers see the old file or the new one, never half of one."""
    from scaffold.atomic import write_text

    write_text(path, json.dumps(data, indent=2) + "\n")


class RunRecorder:
    """Writes one run's record as it goes; ``step`` is called by the training loop after each step."""

    def __init__(self, folder: Path, device: Any, steps: int):
        self.folder = folder
        self.device = device
        self.steps_planned = steps
        self.summary: dict[str, Any] = {}
        self.losses: list[float] = []
        self._last = 0.0
        self._steps = open(folder / STEPS_FILE, "a", encoding="utf-8")

    @classmethod
    def start(
        cls, project_dir: Path, options: Mapping[str, Any], model_dir: Path, device: Any, steps: int
    ) -> RunRecorder:
        """Create ``project_dir/runs/<id>/`` with options.json, config.json and a ``running`` summary."""
        started = datetime.now(timezone.utc)
        root = project_dir / RUNS_DIR
        root.mkdir(exist_ok=True)
        config_path = Path(model_dir) / "config.json"  # read first: a damaged one leaves no record behind
        config = atomic.loads_json(atomic.read_text_inside(config_path, model_dir), config_path)
        folder = root / new_run_id(started)
        folder.mkdir()
        write_json(folder / OPTIONS_FILE, {"schema": SCHEMA_VERSION, "run": folder.name, **options})
        write_json(folder / CONFIG_FILE, config)
        rec = cls(folder, device, steps)
        rec.summary = {
            "schema": SCHEMA_VERSION,
            "run": folder.name,
            "project": options.get("project", {}).get("name", project_dir.name),
            "status": "running",
            "started": started.isoformat(timespec="seconds"),
            "finished": None,
            "steps_planned": steps,
            "steps": 0,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        write_json(folder / SUMMARY_FILE, rec.summary)
        return rec

    def step(self, step: int, loss: float, tokens: int, lr: float, seconds: float) -> None:
        """Append one step's line (flushed, so a killed run keeps every finished step); ``seconds``
        is the training time so far."""
        rate = tokens / (seconds - self._last) if seconds > self._last else 0.0
        self._last = seconds
        self.losses.append(loss)
        line = {
            "step": step,
            "loss": loss,
            "lr": lr,
            "tokens": tokens,
            "tokens_per_second": round(rate, 1),
            "peak_memory_bytes": peak_memory(self.device),
            "seconds": round(seconds, 4),
        }
        self._steps.write(json.dumps(line) + "\n")
        self._steps.flush()

    def finish(self, status: str, report: Any = None, error: str | None = None) -> list[str]:
        """Write the final summary and the loss curve; returns the lines to tell the user."""
        if report is not None and not self.losses and report.losses:  # a loop without the hook
            for step, loss in enumerate(report.losses, start=1):
                line = dict.fromkeys(STEP_KEYS)
                line.update(step=step, loss=loss)
                self._steps.write(json.dumps(line) + "\n")
            self.losses = list(report.losses)
        self._steps.close()
        s = self.summary
        s.update(status=status, finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        s["steps"] = len(self.losses)
        s["loss_first"] = self.losses[0] if self.losses else None
        s["loss_last"] = self.losses[-1] if self.losses else None
        if report is not None:  # a TestReport, or a multi-process run's report (fewer figures)
            for key in (
                "parameters",
                "tokens",
                "tokens_per_second",
                "peak_memory_bytes",
                "seconds",
                "device",
            ):
                value = getattr(report, key, None)
                s[key] = round(value, 3) if isinstance(value, float) else value
            s["data"] = getattr(report, "data", "") or "random tokens"
        s["error"] = error
        said = [f"run record: {self.folder}"]
        s["plot"] = None
        if self.losses:
            try:
                plot_runs([load_run(self.folder, summary=s)], self.folder / PLOT_FILE, title=self.folder.name)
                s["plot"] = PLOT_FILE
            except PlotUnavailable:
                said.append(f"{PLOT_FILE} not drawn: {PLOT_HINT}")
        write_json(self.folder / SUMMARY_FILE, s)
        return said


def record_options(
    project: Any, options: Any, device: Any, overrides: Any, model_dir: Path
) -> dict[str, Any]:
    """What a record's options.json holds besides the run id: the project, the resolved test options
    (a :class:`scaffold.run.smoke.TestOptions`), the override flags, where the weights came from, the model
    directory trained and the versions that ran it."""
    import dataclasses

    import torch
    import transformers

    from scaffold import __version__

    return {
        "project": {
            "name": project.name,
            "path": str(project.path.absolute()),
            "blueprint": project.blueprint.name,
            "blueprint_version": project.blueprint.version,
        },
        "test": dataclasses.asdict(options),
        "device": str(device),
        "overrides": list(overrides.flags_given()),
        "checkpoint": str(overrides.checkpoint) if overrides.checkpoint is not None else None,
        "no_init_weights": bool(overrides.no_init_weights),
        "model_dir": str(Path(model_dir).absolute()),
        "versions": {
            "scaffold": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }


@contextlib.contextmanager
def recording(
    project_dir: Path | None, options: Mapping[str, Any], model_dir: Path, device: Any, steps: int, echo: Any
) -> Iterator[RunRecorder | None]:
    """A :class:`RunRecorder` for the body (None when ``project_dir`` is None: ``--no-record``).

    The body calls ``rec.finish("completed", report)``; if it raises, the record is finished as
    ``failed`` (a test failure), ``interrupted`` (Ctrl-C) or ``error`` with the message, and the
    exception goes on. A project folder that cannot take a record costs the record, not the run.
    """
    if project_dir is None:
        yield None
        return
    try:
        rec = RunRecorder.start(project_dir, options, model_dir, device, steps)
    except OSError as err:
        echo(f"warning: no run record ({project_dir / RUNS_DIR}: {err.strerror or err})")
        yield None
        return
    try:
        yield rec
    except BaseException as err:
        status = (
            "failed"
            if isinstance(err, TestFailure)
            else "interrupted"
            if isinstance(err, KeyboardInterrupt)
            else "error"
        )
        message = str(err) or type(err).__name__
        if not isinstance(err, ScaffoldError | KeyboardInterrupt):
            message = f"{type(err).__name__}: {message}"
        for line in rec.finish(status, error=message):
            echo(line)
        raise


# -- reading records -------------------------------------------------------------------------------


@dataclass
class Run:
    folder: Path
    summary: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def project(self) -> str:
        return str(self.summary.get("project") or self.folder.parent.parent.name)

    @property
    def label(self) -> str:
        return f"{self.project}:{self.name}"

    @property
    def status(self) -> str:
        """The recorded status; ``running`` becomes ``killed`` once its process is gone (same host)."""
        status = str(self.summary.get("status", "unknown"))
        if status == "running" and self.summary.get("host") == socket.gethostname():
            pid = self.summary.get("pid")
            if type(pid) is not int or pid <= 0 or not atomic.pid_alive(pid):
                return "killed"
        return status


def read_steps(path: Path) -> list[dict[str, Any]]:
    """The steps of a steps.jsonl. A line that is not a step (a torn last line of a run killed
    mid-write, a list, an object without an integer ``step``, bytes that are not UTF-8, text nested
    too deeply) is skipped; a FIFO or a link out of the run is an IntegrityError naming it."""
    raw = atomic.read_bytes_inside(path, path.parent, missing_ok=True) or b""
    steps = []
    for line in raw.decode("utf-8", errors="replace").splitlines():  # read only: garbled lines are skipped
        if atomic.nesting_depth(line) > atomic.MAX_NESTING:
            continue
        try:
            step = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(step, dict) and type(step.get("step")) is int:
            steps.append(step)
    return steps


def _read_json(path: Path) -> dict[str, Any]:
    """A run's JSON record; absent, damaged or not an object: empty (the run shows what is readable).
    A FIFO or a link out of the run is an IntegrityError naming the file, never waited on or followed."""
    raw = atomic.read_bytes_inside(path, path.parent, missing_ok=True)
    if raw is None:
        return {}
    try:
        text = raw.decode("utf-8")
        data = json.loads(text) if atomic.nesting_depth(text) <= atomic.MAX_NESTING else None
    except (ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def load_run(folder: Path, summary: dict[str, Any] | None = None) -> Run:
    return Run(
        folder=folder,
        summary=summary if summary is not None else _read_json(folder / SUMMARY_FILE),
        options=_read_json(folder / OPTIONS_FILE),
        steps=read_steps(folder / STEPS_FILE),
    )


def is_run(folder: Path) -> bool:
    return folder.is_dir() and ((folder / SUMMARY_FILE).is_file() or (folder / STEPS_FILE).is_file())


def project_runs(project_dir: Path) -> list[Run]:
    """The runs recorded under ``project_dir``, oldest first."""
    if not project_dir.is_dir():
        raise UsageError("no such project folder", path=project_dir)
    root = project_dir / RUNS_DIR
    if not root.is_dir():
        return []
    return [load_run(p) for p in sorted(root.iterdir()) if is_run(p)]


def resolve_run(spec: str) -> Path:
    """A run folder from ``spec``: a run folder, or ``PROJECT:RUN`` (RUN a run id, a unique prefix of
    one, or ``latest``)."""
    path = Path(spec)
    if is_run(path):
        return path
    if ":" not in spec:
        if (path / RUNS_DIR).is_dir() or (path / "scaffold.toml").is_file():
            raise UsageError(f"{spec} is a project; name one of its runs: {spec}:RUN or {spec}:latest")
        raise UsageError(f"{spec}: no such run folder (give a run folder or PROJECT:RUN)")
    project, rid = spec.rsplit(":", 1)
    root = Path(project) / RUNS_DIR
    runs = sorted(p.name for p in root.iterdir() if is_run(p)) if root.is_dir() else []
    if not runs:
        raise UsageError(f"{spec}: {project} has no recorded runs")
    if rid == "latest":
        return root / runs[-1]
    found = [r for r in runs if r.startswith(rid)] if rid else []
    if len(found) != 1:
        what = "matches several runs" if found else "is not a run"
        raise UsageError(f"{spec}: {rid!r} {what} of {project} (scaffold runs {project} lists them)")
    return root / found[0]


def _mib(n: Any) -> str:
    return f"{n / 2**20:,.1f} MiB" if isinstance(n, int | float) else "-"


def runs_table(project_dir: Path) -> str:
    """The table ``scaffold runs PROJECT`` prints: one row per run, oldest first."""
    runs = project_runs(project_dir)
    if not runs:
        return f"no runs recorded in {project_dir / RUNS_DIR} (scaffold test records one per run)\n"
    head = [
        "run",
        "status",
        "steps",
        "loss first -> last",
        "tokens/s",
        "peak memory",
        "device",
        "dtype",
        "data",
    ]
    rows = [head]
    for r in runs:
        s, test = r.summary, r.options.get("test")
        test = test if isinstance(test, dict) else {}
        losses = [st["loss"] for st in r.steps if isinstance(st.get("loss"), int | float)]
        loss = f"{losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "-"
        rate = s.get("tokens_per_second")
        if rate is None and r.steps:
            rate = r.steps[-1].get("tokens_per_second")
        memory = s.get("peak_memory_bytes") or (r.steps[-1].get("peak_memory_bytes") if r.steps else None)
        planned = s.get("steps_planned") or test.get("steps")
        rows.append(
            [
                r.name,
                r.status,
                f"{len(r.steps)}/{planned}" if planned else str(len(r.steps)),
                loss,
                f"{rate:,.0f}" if isinstance(rate, int | float) else "-",
                _mib(memory),
                str(s.get("device") or r.options.get("device") or test.get("device") or "-"),
                str(test.get("dtype", "-")),
                str(s.get("data") or ("random tokens" if not test.get("dataset") else test["dataset"])),
            ]
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(head) - 1)]
    lines = ["  ".join([*(v.ljust(w) for v, w in zip(row, widths)), row[-1]]).rstrip() for row in rows]
    return "\n".join(lines) + "\n"


def is_project(path: Path) -> bool:
    return path.is_dir() and ((path / "scaffold.toml").is_file() or (path / RUNS_DIR).is_dir())


def runs_of(targets: Sequence[str]) -> list[Run]:
    """The runs ``scaffold runs --plot`` draws: a project stands for all its runs, oldest first."""
    chosen: list[Run] = []
    for target in targets:
        path = Path(target)
        if ":" not in target and not is_run(path) and is_project(path):
            found = project_runs(path)
            if not found:
                raise UsageError(f"{target} has no recorded runs (scaffold test records one per run)")
            chosen += found
        else:
            chosen.append(load_run(resolve_run(target)))
    return chosen


ALL_RUNS_PLOT = "all-runs.png"  # `scaffold runs --plot PROJECT`'s default output, in PROJECT/runs/


# -- plotting --------------------------------------------------------------------------------------


class PlotUnavailable(UsageError):
    """matplotlib (the ``plot`` extra) is not installed."""


def plot_runs(
    runs: Sequence[Run], output: Path, title: str | None = None, labels: Sequence[str] | None = None
) -> list[str]:
    """Draw the loss curves of ``runs`` on one figure, one line each (labelled ``labels``, default each
    run's PROJECT:RUN), and save it as a PNG at ``output`` (atomically). Returns the lines' labels, also
    stored in the PNG's metadata."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise PlotUnavailable(f"cannot plot: {PLOT_HINT}") from None

    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)  # the Agg backend: no display needed, no global pyplot state
    ax = fig.add_subplot()
    for i, run in enumerate(runs):
        points = [(s["step"], s["loss"]) for s in run.steps if isinstance(s.get("loss"), int | float)]
        label = labels[i] if labels is not None else run.label
        ax.plot([p[0] for p in points], [p[1] for p in points], label=label, linewidth=1.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or "loss")
    ax.grid(True, alpha=0.3)
    if runs:
        ax.legend(fontsize="small")
    fig.tight_layout()
    labels = [str(line.get_label()) for line in ax.get_lines()]
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".png", dir=output.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", metadata={"Title": title or "loss", "Description": json.dumps(labels)})
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return labels
