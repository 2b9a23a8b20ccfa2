"""``scaffold sweep``: train every combination of a few manifest values, and compare them.

``--set KEY=V1,V2,...`` gives a key several values (read as TOML, split at the commas outside
brackets and quotes); a key given one value is fixed for every variant. The variants are the product
of the lists, in the order given. Each trains as ``scaffold test`` would with those ``--set`` flags
(same seed, same data, same steps), on a model built into a temporary folder, so neither the project's
files nor its ``model/`` change; each leaves its own run record in ``PROJECT/runs/`` whose options.json
carries ``sweep: {id, variant}``.

The sweep's id is a hash of its grid and its test options: rerunning the same command finds the
variants already completed (by their records) and skips them, so a sweep stopped half way resumes
where it stopped. A variant that fails (a bad combination, a non-finite loss) is reported in its row
and the others go on. At the end one table compares every variant (parameters, loss first -> last,
best loss, tokens/s, peak memory) and one figure (``runs/sweep-<id>.png``) holds all their curves.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scaffold.errors import EXIT_INTERNAL, EXIT_USAGE, ScaffoldError, TestFailure, UsageError
from scaffold.spec import manifest, schema

SWEEP_KEY = "sweep"  # in a run record's options.json: {"id": ..., "variant": {key: value}}


@dataclass
class Axis:
    """One swept (or fixed) key: its manifest path and the values it takes, as TOML text and parsed."""

    path: str
    texts: list[str]
    values: list[Any]


@dataclass
class Variant:
    """One combination: the value of each key, and what became of it."""

    values: dict[str, Any]
    texts: dict[str, str]
    status: str = "pending"  # completed (now or before), skipped (completed before), failed, error
    error: str | None = None
    exit_code: int = 0  # of its error
    run: Any = None  # its scaffold.run.runs.Run, once it has a record

    @property
    def sets(self) -> tuple[str, ...]:
        return tuple(f"{k}={t}" for k, t in self.texts.items())

    @property
    def label(self) -> str:
        return " ".join(f"{k.rpartition('.')[2]}={t}" for k, t in self.texts.items()) or "(as the project)"


@dataclass
class Sweep:
    axes: list[Axis]
    variants: list[Variant] = field(default_factory=list)
    id: str = ""

    @property
    def swept(self) -> list[Axis]:
        return [a for a in self.axes if len(a.values) > 1]


def split_values(raw: str) -> list[str]:
    """``pre,post`` -> ``["pre", "post"]``; commas inside brackets, braces or quotes stay."""
    parts, depth, quote, start = [], 0, "", 0
    for i, c in enumerate(raw):
        if quote:
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(raw[start:i])
            start = i + 1
    parts.append(raw[start:])
    return [p.strip() for p in parts]


def parse_grid(sets: Sequence[str]) -> list[Axis]:
    """The ``--set`` flags of a sweep as axes; a bad key or value is a usage error naming the flag."""
    axes: dict[str, Axis] = {}
    for pair in sets:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set takes KEY=VALUE or KEY=V1,V2,..., got {pair!r}")
        texts = split_values(raw)
        if any(not t for t in texts):
            raise UsageError(f"--set {pair}: an empty value (two commas, or one at an end)")
        values = []
        path = None
        for text in texts:
            layer = manifest.parse_sets([f"{key.strip()}={text}"])  # the key looked up, the value read
            ((section, table),) = layer.items()
            ((name, value),) = table.items()
            path = f"{section}.{name}"
            problem = schema.BY_PATH[path].problem(value) if value is not None else None
            if problem:
                raise UsageError(f"--set {path}={text}: {path} {problem}")
            values.append(value)
        if len(set(map(json.dumps, values))) != len(values):
            raise UsageError(f"--set {pair}: a value is given twice")
        if path in axes:
            raise UsageError(f"--set {path} is given twice; list its values in one flag ({path}=A,B)")
        axes[path] = Axis(path, texts, values)
    if not any(len(a.values) > 1 for a in axes.values()):
        raise UsageError("nothing to sweep: give at least one --set KEY=V1,V2 with two values or more")
    return list(axes.values())


def plan(axes: list[Axis], test_options: Mapping[str, Any]) -> Sweep:
    """Every combination of the axes, in order, and the sweep's id (its grid and its test options)."""
    sweep = Sweep(axes)
    for combo in itertools.product(*(range(len(a.values)) for a in axes)):
        sweep.variants.append(
            Variant(
                values={a.path: a.values[i] for a, i in zip(axes, combo)},
                texts={a.path: a.texts[i] for a, i in zip(axes, combo)},
            )
        )
    identity = {
        "grid": [[a.path, a.values] for a in axes],
        "test": {k: v for k, v in test_options.items() if k != "device"},
    }
    sweep.id = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return sweep


def _same_variant(run: Any, sweep: Sweep, variant: Variant) -> bool:
    recorded = run.options.get(SWEEP_KEY) or {}
    return recorded.get("id") == sweep.id and recorded.get("variant") == json.loads(
        json.dumps(variant.values, default=str)
    )


def run_sweep(
    project_dir: Path,
    sets: Sequence[str],
    test_layer: Mapping[str, Any],
    *,
    echo: Callable[[str], None] = print,
    plot_file: Path | None = None,
) -> Sweep:
    """Train every variant of ``sets`` not completed before; returns the sweep with each variant's
    fate and run. ``test_layer``: the [test] keys the command line gives (steps, dataset...)."""
    from scaffold.cli.overrides import collect
    from scaffold.data import is_sample
    from scaffold.run.runs import RUNS_DIR, project_runs

    axes = parse_grid(sets)
    base = collect({}, ()).load_project(project_dir, {"test": dict(test_layer)})  # the project as it is
    options = dict(base.manifest["test"])
    dataset = options.get("dataset")
    if dataset and not is_sample(dataset) and not Path(dataset).is_absolute():
        options["dataset"] = str(base.path / dataset)
    sweep = plan(axes, options)
    done = [r for r in project_runs(base.path) if r.status == "completed"]
    for n, variant in enumerate(sweep.variants, start=1):
        before = next((r for r in reversed(done) if _same_variant(r, sweep, variant)), None)
        head = f"[{n}/{len(sweep.variants)}] {variant.label}"
        if before is not None:
            variant.status, variant.run = "skipped", before
            echo(f"{head}: completed before ({before.name}), skipped")
            continue
        echo(f"{head}:")
        try:
            variant.run = _train(base.path, sweep, variant, test_layer, echo)
            variant.status = "completed"
        except (ScaffoldError, OSError) as err:
            variant.status = "failed" if isinstance(err, TestFailure) else "error"
            variant.exit_code = getattr(err, "exit_code", EXIT_USAGE)
            variant.error = (
                "; ".join(" ".join(line.split()) for line in str(err).splitlines()) or type(err).__name__
            )
            echo(f"{head}: {variant.status}: {variant.error}")
        except Exception as err:  # a bug in a library for this variant: the others still run
            variant.status, variant.exit_code = "error", EXIT_INTERNAL
            variant.error = f"{type(err).__name__}: {' '.join(str(err).split())}"
            echo(f"{head}: error: {variant.error}")
    runs = [v.run for v in sweep.variants if v.run is not None and v.run.steps]
    out = plot_file or base.path / RUNS_DIR / f"sweep-{sweep.id}.png"
    if runs:
        from scaffold.run.runs import PLOT_HINT, PlotUnavailable, plot_runs

        labels = [v.label for v in sweep.variants if v.run is not None and v.run.steps]
        try:
            plot_runs(runs, out, title=f"{base.name}: sweep {sweep.id}", labels=labels)
            echo(f"wrote {out}: {len(runs)} loss curves")
        except PlotUnavailable:
            echo(f"{out.name} not drawn: {PLOT_HINT}")
    return sweep


def _train(
    project_dir: Path,
    sweep: Sweep,
    variant: Variant,
    test_layer: Mapping[str, Any],
    echo: Callable[[str], None],
) -> Any:
    """One variant as `scaffold test PROJECT --set ...` would run it, built into a temporary folder."""
    from scaffold.atomic import scratch_dir
    from scaffold.build import build_for_test
    from scaffold.cli.overrides import collect
    from scaffold.data import is_sample
    from scaffold.devices import resolve_device
    from scaffold.run.runs import load_run, record_options, recording
    from scaffold.run.smoke import TestOptions, run

    overrides = collect({}, variant.sets)
    proj = overrides.load_project(project_dir, {"test": dict(test_layer)})
    options = TestOptions(**proj.manifest["test"])
    if options.dataset and not is_sample(options.dataset) and not Path(options.dataset).is_absolute():
        options.dataset = str(proj.path / options.dataset)
    device = resolve_device(options.device)
    with scratch_dir("test") as tmp:
        result = build_for_test(proj, Path(tmp) / "model")
        record = record_options(proj, options, device, overrides, result.output_dir)
        record[SWEEP_KEY] = {"id": sweep.id, "variant": json.loads(json.dumps(variant.values, default=str))}
        with recording(proj.path, record, result.output_dir, device, options.steps, echo) as rec:
            report = run(result.output_dir, options, on_step=rec.step if rec else None, log=echo)
            said = rec.finish("completed", report) if rec else []
    for line in said:
        echo(line)
    if rec is None:
        raise UsageError("no run record could be written", path=proj.path)
    return load_run(rec.folder)


def table(sweep: Sweep) -> str:
    """One row per variant: its values, then parameters, loss first -> last, best loss, tokens/s,
    peak memory and status (with the reason of a failure)."""
    head = [
        *(a.path for a in sweep.swept),
        "parameters",
        "loss first -> last",
        "best",
        "tokens/s",
        "peak memory",
        "status",
    ]
    rows = [head]
    for v in sweep.variants:
        s = v.run.summary if v.run is not None else {}
        losses = [
            st["loss"]
            for st in (v.run.steps if v.run is not None else [])
            if isinstance(st.get("loss"), int | float)
        ]
        rate, memory, params = s.get("tokens_per_second"), s.get("peak_memory_bytes"), s.get("parameters")
        status = v.status if v.error is None else f"{v.status}: {v.error}"
        if v.status == "skipped":
            status = f"completed before ({v.run.name})"
        elif v.status == "completed":
            status = f"completed ({v.run.name})"
        rows.append(
            [
                *(v.texts[a.path] for a in sweep.swept),
                f"{params:,}" if isinstance(params, int) else "-",
                f"{losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "-",
                f"{min(losses):.4f}" if losses else "-",
                f"{rate:,.0f}" if isinstance(rate, int | float) else "-",
                f"{memory / 2**20:,.1f} MiB" if isinstance(memory, int | float) else "-",
                status,
            ]
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(head) - 1)]
    return (
        "\n".join("  ".join([*(x.ljust(w) for x, w in zip(r, widths)), r[-1]]).rstrip() for r in rows) + "\n"
    )


def failed(sweep: Sweep) -> list[Variant]:
    return [v for v in sweep.variants if v.status in ("failed", "error")]
