"""Run records of `scaffold test`, `scaffold runs` (table and --plot), and progress on a terminal or not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from scaffold.cli import cli
from scaffold.errors import TestFailure
from scaffold.run.runs import (
    CONFIG_FILE,
    OPTIONS_FILE,
    PLOT_FILE,
    STEP_KEYS,
    STEPS_FILE,
    SUMMARY_FILE,
    load_run,
    recording,
    runs_table,
)
from tests.conftest import ROOT, build_project, make_project

TINY_CAUSAL_LM = {
    "vocab_size": 300,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
TEST_FLAGS = ("--device", "cpu", "--steps", "3", "--sequence-length", "16", "--batch-size", "2")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def run_dirs(project: Path) -> list[Path]:
    root = project / "runs"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


@pytest.fixture(scope="module")
def two_projects(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny llama and a tiny causal_lm project, built, each with one recorded `scaffold test` run."""
    tmp = tmp_path_factory.mktemp("runs")
    llama = make_project(tmp, "tiny_llama")
    causal = make_project(tmp, "tiny_post", blueprint="causal_lm", model=TINY_CAUSAL_LM)
    for project in (llama, causal):
        build_project(project)
        result = invoke("test", project, *TEST_FLAGS)
        assert result.exit_code == 0, result.output
        assert result.stderr == ""  # no progress bar when stderr is not a terminal
    return llama, causal


def test_a_run_leaves_a_record_with_its_schema(two_projects):
    project = two_projects[0]
    (run,) = run_dirs(project)
    assert {p.name for p in run.iterdir()} == {OPTIONS_FILE, CONFIG_FILE, STEPS_FILE, SUMMARY_FILE, PLOT_FILE}
    options = json.loads((run / OPTIONS_FILE).read_text())
    assert options["run"] == run.name and options["schema"] == 1
    assert options["project"]["name"] == "tiny_llama" and options["project"]["blueprint"] == "llama"
    assert options["test"]["steps"] == 3 and options["test"]["sequence_length"] == 16
    assert options["device"] == "cpu" and set(options["versions"]) == {"scaffold", "torch", "transformers"}
    config = json.loads((run / CONFIG_FILE).read_text())
    assert config == json.loads((project / "model" / "config.json").read_text())

    steps = [json.loads(line) for line in (run / STEPS_FILE).read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3]
    for s in steps:
        assert tuple(s) == STEP_KEYS
        assert s["tokens"] == 2 * 16 and s["lr"] == pytest.approx(1e-3)
        assert s["loss"] > 0 and s["tokens_per_second"] > 0 and s["peak_memory_bytes"] > 2**20
    assert steps[0]["seconds"] < steps[1]["seconds"] < steps[2]["seconds"]

    summary = json.loads((run / SUMMARY_FILE).read_text())
    assert summary["status"] == "completed" and summary["error"] is None
    assert summary["steps"] == summary["steps_planned"] == 3
    assert summary["loss_first"] == steps[0]["loss"] and summary["loss_last"] == steps[-1]["loss"]
    assert summary["tokens"] == 3 * 2 * 16 and summary["plot"] == PLOT_FILE
    assert summary["data"] == "random tokens" and summary["parameters"] > 0
    from PIL import Image

    with Image.open(run / PLOT_FILE) as img:
        assert img.format == "PNG" and img.size[0] > 100
        assert json.loads(img.text["Description"]) == [f"tiny_llama:{run.name}"]


def test_runs_lists_the_runs_in_a_table(two_projects):
    project = two_projects[0]
    (run,) = run_dirs(project)
    result = invoke("runs", project)
    assert result.exit_code == 0
    header, row = result.output.splitlines()
    assert header.split()[:3] == ["run", "status", "steps"]
    loss = json.loads((run / SUMMARY_FILE).read_text())["loss_first"]
    assert row.startswith(run.name) and " completed " in row and " 3/3 " in row and f"{loss:.4f} ->" in row


def test_no_record_writes_nothing(tmp_path, two_projects):
    project = two_projects[1]
    before = run_dirs(project)
    result = invoke("test", project, *TEST_FLAGS, "--no-record")
    assert result.exit_code == 0 and "run record" not in result.output
    assert run_dirs(project) == before


def test_plot_draws_one_line_per_run_of_different_projects(two_projects, tmp_path):
    llama, causal = two_projects
    (llama_run,) = run_dirs(llama)
    causal_run = run_dirs(causal)[0]  # the fixture's
    out = tmp_path / "compare.png"
    result = invoke("runs", "--plot", f"{llama}:latest", causal_run, "-o", out)
    assert result.exit_code == 0, result.output
    from PIL import Image

    with Image.open(out) as img:
        img.verify()
    with Image.open(out) as img:
        labels = json.loads(img.text["Description"])
        colours = {
            img.convert("RGB").getpixel((x, y))
            for x in range(0, img.size[0], 4)
            for y in range(0, img.size[1], 4)
        }
    assert labels == [f"tiny_llama:{llama_run.name}", f"tiny_post:{causal_run.name}"]
    assert len(colours) > 4  # curves and text, not a blank canvas
    whole = invoke("runs", "--plot", llama, "-o", out)  # a project: all its runs (issue 26)
    assert whole.exit_code == 0 and f"tiny_llama:{llama_run.name}" in whole.stdout


def test_a_failed_run_says_so_in_its_summary(tiny_llama_dir, tmp_path):
    project = tmp_path / "p"
    project.mkdir()
    with pytest.raises(TestFailure), recording(project, {}, tiny_llama_dir, "cpu", 5, print) as rec:
        rec.step(1, 5.5, 32, 1e-3, 0.1)
        raise TestFailure("step 2: loss is nan; first bad parameter: model.norm.weight")
    run = load_run(run_dirs(project)[0])
    assert run.status == "failed" and run.summary["steps"] == 1
    assert run.summary["error"] == "step 2: loss is nan; first bad parameter: model.norm.weight"
    assert "failed" in runs_table(project)


KILLED = """
import os, signal, sys
from pathlib import Path
from scaffold.run.runs import RunRecorder
rec = RunRecorder.start(Path(sys.argv[1]), {}, Path(sys.argv[2]), "cpu", 10)
for step in (1, 2):
    rec.step(step, 6.0 - step, 32, 1e-3, 0.1 * step)
rec._steps.write('{"step": 3, "lo')  # killed in the middle of a line
rec._steps.flush()
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_run_leaves_a_readable_record(tiny_llama_dir, tmp_path):
    project = tmp_path / "p"
    project.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", KILLED, str(project), str(tiny_llama_dir)], env=env, check=False
    )
    assert proc.returncode == -9
    run = load_run(run_dirs(project)[0])
    assert [s["step"] for s in run.steps] == [1, 2]
    assert run.status == "killed"
    assert " killed " in runs_table(project) and " 2/10 " in runs_table(project)


PROGRESS = "from scaffold.progress import track\nfor _ in track(range(7), total=7, desc='work'):\n    pass\n"


def _in_pty(argv: list[str], env: dict) -> tuple[int, str]:
    """Run argv with stdin, stdout and stderr on a pseudo-terminal; (exit code, what it wrote)."""
    import fcntl
    import pty
    import struct
    import termios

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    proc = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child, env=env, close_fds=True)
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the child side is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    return proc.wait(), b"".join(chunks).decode("utf-8", "replace")


def test_progress_shows_on_a_terminal_and_is_silent_otherwise():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SCAFFOLD_PROGRESS", None)
    piped = subprocess.run(
        [sys.executable, "-c", PROGRESS], env=env, capture_output=True, text=True, check=True
    )
    assert piped.stdout == "" and piped.stderr == ""
    code, shown = _in_pty([sys.executable, "-c", PROGRESS], env)
    assert code == 0 and "work:" in shown and "/7 [" in shown and "it/s" in shown  # a tqdm bar
    code, shown = _in_pty([sys.executable, "-c", PROGRESS], {**env, "SCAFFOLD_PROGRESS": "0"})
    assert code == 0 and shown == ""


NO_MATPLOTLIB = (
    "import sys\nsys.modules['matplotlib'] = None\nfrom scaffold.cli import main\nmain(sys.argv[1:])\n"
)


def test_without_matplotlib_all_but_the_png_works_on_a_terminal(two_projects, tmp_path):
    """`scaffold test` in a terminal with matplotlib unimportable: the bar shows, the record is
    written without loss.png and says how to get it; `runs --plot` refuses with the same advice."""
    project = two_projects[1]
    before = run_dirs(project)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SCAFFOLD_PROGRESS", None)
    code, shown = _in_pty([sys.executable, "-c", NO_MATPLOTLIB, "test", str(project), *TEST_FLAGS], env)
    assert code == 0, shown
    assert "train:" in shown and "/3 [" in shown and "step/s" in shown  # the tqdm bar
    assert "loss.png not drawn: matplotlib is not installed: pip install 'scaffold[plot]'" in shown
    (run,) = set(run_dirs(project)) - set(before)
    assert {p.name for p in run.iterdir()} == {OPTIONS_FILE, CONFIG_FILE, STEPS_FILE, SUMMARY_FILE}
    assert json.loads((run / SUMMARY_FILE).read_text())["plot"] is None
    plot = subprocess.run(
        [sys.executable, "-c", NO_MATPLOTLIB, "runs", "--plot", str(run), "-o", str(tmp_path / "x.png")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert plot.returncode == 2 and "pip install 'scaffold[plot]'" in plot.stderr
    assert not (tmp_path / "x.png").exists()
