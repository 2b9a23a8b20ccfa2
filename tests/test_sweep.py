"""``scaffold sweep``: variants of one project trained and compared, resumed, failures kept to their row;
``scaffold runs --plot PROJECT``; and the shipped sample the README's main job trains on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from scaffold.cli import cli
from scaffold.cli.sweep import parse_grid, split_values
from scaffold.data import resolve
from scaffold.errors import EXIT_USAGE, DataError, UsageError
from scaffold.run.runs import project_runs
from tests.conftest import ROOT, make_project

TEST = {"device": "cpu", "steps": 3, "batch_size": 2, "sequence_length": 32}


def checksum(folder: Path) -> str:
    """The project's own files (not runs/, the records a sweep adds), by content."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and "runs" not in p.relative_to(folder).parts:
            h.update(p.relative_to(folder).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("sweep"), test=dict(TEST))


def sweep(project: Path, *args: str):
    return CliRunner().invoke(
        cli, ["sweep", str(project), "--set", "model.norm_position=pre,post", *args], catch_exceptions=False
    )


def test_a_sweep_trains_each_variant_once_resumes_and_leaves_the_project_as_it_was(project):
    """Two norm placements x a bad head count: the good variants train (one record each, same seed and
    data: the same first loss up to the norm), the bad ones say why in their row and the others still
    run; a rerun skips what completed; the project's files are unchanged."""
    before = checksum(project)
    args = ["--set", "model.num_attention_heads=4,3", "--dataset", "sample:tinyshakespeare", "--packed"]
    result = sweep(project, *args)
    assert result.exit_code == EXIT_USAGE, result.output  # the first failure's code
    lines = result.output.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("model.norm_position"))
    rows = lines[head + 1 : head + 5]
    assert [r.split()[:2] for r in rows] == [["pre", "4"], ["pre", "3"], ["post", "4"], ["post", "3"]]
    for heads_3 in (rows[1], rows[3]):
        assert "error:" in heads_3 and "does not divide" in heads_3
    for good in (rows[0], rows[2]):
        assert "completed (" in good and "->" in good and "MiB" in good
    assert "2 of 4 variants did not complete" in result.output
    runs = project_runs(project)
    assert len(runs) == 2 and all(r.status == "completed" for r in runs)
    variants = [r.options["sweep"]["variant"] for r in runs]
    assert variants == [
        {"model.norm_position": "pre", "model.num_attention_heads": 4},
        {"model.norm_position": "post", "model.num_attention_heads": 4},
    ]
    assert runs[0].options["test"]["seed"] == runs[1].options["test"]["seed"]
    assert all(r.options["test"]["dataset"] == "sample:tinyshakespeare" for r in runs)
    # the variants are different models: a post-norm decoder has no final norm
    assert runs[0].summary["parameters"] != runs[1].summary["parameters"]
    sweep_id = runs[0].options["sweep"]["id"]
    plot = project / "runs" / f"sweep-{sweep_id}.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert checksum(project) == before

    again = sweep(project, *args)
    assert again.output.count("completed before") == 4  # two progress lines, two rows
    assert len(project_runs(project)) == 2  # nothing trained twice
    assert checksum(project) == before

    # another sweep (other steps): its own id, nothing skipped
    other = sweep(project, "--steps", "2", "--device", "cpu")
    assert other.exit_code == 0, other.output
    assert "completed before" not in other.output
    assert len(project_runs(project)) == 4


def test_runs_plot_of_a_project_draws_every_run_into_runs(project):
    if not project_runs(project):
        pytest.skip("needs the sweep above")
    result = CliRunner().invoke(cli, ["runs", "--plot", str(project)])
    assert result.exit_code == 0, result.output
    out = project / "runs" / "all-runs.png"
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert f"{len(project_runs(project))} loss curves" in result.output


def test_runs_plot_of_two_projects_needs_an_output_file(project, tmp_path):
    result = CliRunner().invoke(cli, ["runs", "--plot", str(project), str(project)])
    assert result.exit_code == EXIT_USAGE
    assert "needs -o FILE" in result.output


@pytest.mark.parametrize(
    "sets, message",
    [
        (["model.norm_position=pre"], "nothing to sweep"),
        (["model.norm_position=pre,,post"], "an empty value"),
        (["model.norm_position=pre,pre"], "given twice"),
        (["model.nope=1,2"], "no such manifest key"),
        (["model.num_hidden_layers=2,0"], "model.num_hidden_layers"),
        (["model.norm_position=pre,post", "norm_position=pre,post"], "given twice"),
    ],
    ids=["one-value", "empty", "repeated-value", "unknown-key", "bad-value", "repeated-key"],
)
def test_a_bad_grid_is_a_usage_error_before_anything_trains(project, sets, message):
    with pytest.raises(UsageError, match=message):
        parse_grid(sets)
    args = [x for s in sets for x in ("--set", s)]
    result = CliRunner().invoke(cli, ["sweep", str(project), *args])
    assert result.exit_code == EXIT_USAGE and message in result.output


def test_values_split_at_top_level_commas():
    assert split_values("pre,post, sandwich") == ["pre", "post", "sandwich"]
    assert split_values("[1, 2],[3]") == ["[1, 2]", "[3]"]
    assert split_values('"a,b",{x = 1, y = 2}') == ['"a,b"', "{x = 1, y = 2}"]


def test_the_sample_is_shipped_and_named():
    source = resolve("sample:tinyshakespeare")
    (path,) = source.files
    assert path.is_file() and 100_000 < path.stat().st_size < 300_000
    assert path.read_text(encoding="utf-8").startswith("First Citizen:")
    with pytest.raises(DataError, match="no such sample"):
        resolve("sample:nope")


def test_the_shipped_llama_4m_trains_on_the_sample():
    """README's first command trains the shipped project on the shipped text, long enough to learn."""
    import tomllib

    with open(ROOT / "projects" / "llama_4m" / "scaffold.toml", "rb") as f:
        test = tomllib.load(f)["test"]
    assert test["dataset"] == "sample:tinyshakespeare" and test["packed"] is True
    assert test["steps"] >= 100
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"samples/*.txt"' in pyproject  # package data: installed with scaffold, not only in a checkout


def test_random_tokens_override_the_manifests_dataset(tmp_path):
    project = make_project(tmp_path, test={**TEST, "dataset": "sample:tinyshakespeare", "packed": True})
    result = CliRunner().invoke(cli, ["test", str(project), "--random-tokens", "--steps", "1", "--no-record"])
    assert result.exit_code == 0, result.output
    assert "data:" not in result.output  # random tokens: no data line
    clash = CliRunner().invoke(cli, ["test", str(project), "--random-tokens", "--packed"])
    assert clash.exit_code == EXIT_USAGE and "disagree" in clash.output
