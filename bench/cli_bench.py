"""Wall time of the scaffold command line, each run in a fresh Python process, and what each imports.

Times ``python -c pass`` (the interpreter's own start-up, for scale), ``scaffold --help``,
``scaffold new`` (4m preset), ``scaffold build`` (fresh, then up to date) and ``scaffold test``
(4m, CPU, 3 steps), the median of several runs each. Every command also runs once under
``python -X importtime``; the table says whether it imported torch, transformers or copier. Commands
that need none of them must not import them: ``--help`` and ``new`` importing torch is a failure
(exit status 1).

    PYTHONPATH=$PWD python bench/cli_bench.py              # ~1-2 min on 2 cores
    PYTHONPATH=$PWD python bench/cli_bench.py --repeats 9

Writes ``cli_bench.json`` and ``cli_bench.md`` under $RESULTS_DIR (default bench/results).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _common as C  # noqa: E402

HEAVY = ("torch", "transformers", "copier")
# command -> heavy modules it must not import
MUST_NOT = {"--help": ("torch", "transformers", "copier"), "new": ("torch", "transformers")}


def scaffold(*args: str) -> list[str]:
    return [sys.executable, "-m", "scaffold.cli", *args]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), e.get("PYTHONPATH", "")) if p)
    return e


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return dt


def imported(cmd: list[str], cwd: Path) -> dict[str, Any]:
    """Top-level packages imported by ``cmd`` (from -X importtime) and their cumulative import ms."""
    proc = subprocess.run(
        [cmd[0], "-X", "importtime", *cmd[1:]], cwd=cwd, env=env(), capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    cumulative: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = [p.strip() for p in line[len("import time:") :].split("|")]
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        root = parts[2].split(".")[0]  # torch.nn -> torch; the top-level line has the largest figure
        cumulative[root] = max(cumulative.get(root, 0.0), int(parts[1]) / 1000)
    return {
        "heavy": [m for m in HEAVY if m in cumulative],
        "import_ms": {m: round(cumulative[m]) for m in HEAVY if m in cumulative},
        "top_imports_ms": dict(sorted(cumulative.items(), key=lambda kv: -kv[1])[:8]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="runs per command (default 5; scaffold test 3)")
    ap.add_argument("--results-dir", type=Path, default=Path(os.environ.get("RESULTS_DIR", HERE / "results")))
    args = ap.parse_args(argv)
    n, n_test = args.repeats, max(1, min(3, args.repeats))
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="scaffold-cli-bench-") as tmp:
        work = Path(tmp)

        def project(tag: str) -> Path:
            return work / tag / "llama_4m"

        def new(tag: str) -> list[str]:
            return scaffold("new", "llama_4m", "--from", "llama", "--projects-dir", str(project(tag).parent))

        # (name, runs, command for run tag, what must exist first: nothing, a project, a built project)
        cases: list[tuple[str, int, Any, str]] = [
            ("python -c pass", n, lambda t: [sys.executable, "-c", "pass"], ""),
            ("--help", n, lambda t: scaffold("--help"), ""),
            ("new", n, new, ""),
            ("build", n, lambda t: scaffold("build", str(project(t))), "project"),
            ("build (up to date)", n, lambda t: scaffold("build", str(project(t))), "built"),
            (
                "test",
                n_test,
                lambda t: scaffold("test", str(project(t)), "--device", "cpu", "--steps", "3"),
                "built",
            ),
        ]
        for k, (name, reps, make, needs) in enumerate(cases):
            times = []
            for i in range(reps + 1):  # the last run, untimed, is the import check
                tag = f"c{k}r{i}"
                if needs:
                    timed(new(tag), work)
                if needs == "built":
                    timed(scaffold("build", str(project(tag))), work)
                if i < reps:
                    times.append(timed(make(tag), work))
                elif name != "python -c pass":
                    info = imported(make(tag), work)
            if name == "python -c pass":
                info = {"heavy": [], "import_ms": {}}
            row = {
                "command": f"scaffold {name}" if name != "python -c pass" else name,
                "runs": reps,
                "median_s": statistics.median(times),
                "min_s": min(times),
                "imports": ", ".join(info["heavy"]) or "none of " + "/".join(HEAVY),
                "import_ms": info["import_ms"],
                "top_imports_ms": info.get("top_imports_ms", {}),
            }
            bad = [m for m in MUST_NOT.get(name, ()) if m in info["heavy"]]
            if bad:
                failures.append(f"scaffold {name} imports {', '.join(bad)}")
                row["check"] = "FAIL: imports " + ", ".join(bad)
            elif name in MUST_NOT:
                row["check"] = "ok: no " + ", ".join(MUST_NOT[name])
            rows.append(row)
            print(
                f"{row['command']:<28} median {row['median_s']:.3f} s  imports: {row['imports']}", flush=True
            )
    columns = [
        ("command", "command"),
        ("runs", "runs"),
        ("median_s", "median s"),
        ("min_s", "min s"),
        ("imports", "imports"),
        ("check", "check"),
    ]
    table = C.markdown_table(rows, columns)
    C.write_json(args.results_dir / "cli_bench.json", {"rows": rows, "failures": failures})
    (args.results_dir / "cli_bench.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
