"""What is the user's stays the user's: scaffold replaces or deletes only the files it rendered and can
prove unchanged, and a damaged record of its last rendering is an error, never a silently wrong build.

Every test runs the real pipeline (Copier renders, merge3 merges, git, transformers' save_pretrained)
through the CLI, and proves with checksums (a sentinel) that nothing of the user's was lost.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from tests.test_living import (
    CONSTANT,
    MODELING,
    NOTE,
    TINY,
    assert_edits_kept,
    edit,
    fixture_blueprint,
    invoke,
    leftovers,
    set_version,
    sets,
    snapshot,
    user_edits,
)

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]


@pytest.fixture
def projects(tmp_path: Path) -> Path:
    return tmp_path / "projects"


def new(projects: Path, *extra, blueprint: str | Path = "llama", name: str = "tiny"):
    return invoke("new", name, "--from", blueprint, "--projects-dir", projects, *sets(TINY), *extra)


def new_project(projects: Path, blueprint: str | Path = "llama") -> Path:
    r = new(projects, blueprint=blueprint)
    assert r.exit_code == 0, r.output
    return projects / "tiny"


def git(project: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=project, check=True, capture_output=True, text=True).stdout


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def user_files(project: Path) -> dict[str, str]:
    """Files a user adds to a project, scaffold never wrote them: a script and a corpus."""
    (project / "data").mkdir()
    (project / "train.py").write_text("print('my training loop')\n")
    (project / "data" / "corpus.txt").write_text("my corpus\n" * 10)
    return {name: sha(project / name) for name in ("train.py", "data/corpus.txt")}


# -- scaffold new --force ------------------------------------------------------------------------


@needs_git
def test_new_force_keeps_the_projects_own_git_repository(projects: Path):
    project = new_project(projects)
    user_edits(project)
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "mine")
    head = git(project, "rev-parse", "HEAD").strip()
    r = new(projects, "--force")
    assert r.exit_code == 0, r.output
    assert (project / ".git").is_dir()
    assert git(project, "rev-parse", "HEAD").strip() == head  # the history is there
    assert NOTE in git(project, "show", f"HEAD:{MODELING}")  # and git holds the edits
    assert CONSTANT[0] in (project / MODELING).read_text()  # the project is rendered afresh
    assert leftovers(projects) == []


@pytest.mark.parametrize("extra", [[], ["--discard-edits"], ["--backup"]], ids=["plain", "discard", "backup"])
def test_new_force_keeps_files_scaffold_never_wrote(projects: Path, extra: list[str]):
    project = new_project(projects)
    mine = user_files(project)
    (project / "runs").mkdir()
    (project / "runs" / "note.txt").write_text("a run of mine\n")
    mine["runs/note.txt"] = sha(project / "runs" / "note.txt")
    r = new(projects, "--force", *extra)
    assert r.exit_code == 0, r.output
    assert {name: sha(project / name) for name in mine} == mine
    assert "kept what scaffold did not write: data/, runs/, train.py" in r.stderr
    if extra == ["--backup"]:
        (backup,) = projects.glob("tiny.backup-*")
        assert {name: sha(backup / name) for name in mine} == mine
        (project / "train.py").write_text("changed in the new project\n")
        assert sha(backup / "train.py") == mine["train.py"]  # the backup is a copy, not the same file


def test_new_force_drops_the_old_familys_files_it_rendered(projects: Path, tmp_path: Path):
    """Files scaffold rendered and that are unchanged are its own to remove; the user's stay."""
    project = new_project(projects)
    mine = user_files(project)
    r = new(projects, "--force", blueprint="qwen2")
    assert r.exit_code == 0, r.output
    assert not (project / MODELING).exists() and (project / "modeling_qwen2.py").is_file()
    assert {name: sha(project / name) for name in mine} == mine


@needs_git
def test_new_force_does_not_trust_an_assume_unchanged_file(projects: Path):
    project = new_project(projects)
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "as rendered")
    user_edits(project)  # not committed, and hidden from `git status`
    git(project, "update-index", "--assume-unchanged", MODELING)
    assert git(project, "status", "--porcelain") == ""
    before = snapshot(project)
    r = new(projects, "--force")
    assert r.exit_code == 2, r.output
    assert f"holds edits that --force would lose ({MODELING})" in r.stderr
    assert snapshot(project) == before
    assert_edits_kept(project)


# -- trained weights in PROJECT/model ------------------------------------------------------------


def _train(model_dir: Path) -> None:
    """What README shows: load the build, change its weights (a training step's stand-in), save_pretrained."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    model.save_pretrained(model_dir)


def test_build_force_keeps_trained_weights_as_a_backup(projects: Path):
    project = new_project(projects)
    model_dir = project / "model"
    assert invoke("build", project, "--save-weights").exit_code == 0
    _train(model_dir)
    trained = snapshot(model_dir)
    edit(project / "scaffold.toml", 'hidden_act = "silu"', 'hidden_act = "gelu"')
    stale = invoke("build", project, "--save-weights")
    assert stale.exit_code == 2 and "stale build" in stale.stderr
    assert snapshot(model_dir) == trained
    r = invoke("build", project, "--save-weights", "--force")
    assert r.exit_code == 0, r.output
    (backup,) = projects.glob("tiny/model.backup-*")
    assert snapshot(backup) == trained  # the trained weights, whole
    assert "model.safetensors" in r.stdout and str(backup) in r.stdout
    assert sha(model_dir / "model.safetensors") != trained["model.safetensors"]
    # a build scaffold wrote and nobody touched is replaced without a backup
    edit(project / "scaffold.toml", 'hidden_act = "gelu"', 'hidden_act = "silu"')
    again = invoke("build", project, "--save-weights", "--force")
    assert again.exit_code == 0, again.output
    assert len(list(projects.glob("tiny/model.backup-*"))) == 1


# -- scaffold update keeps the manifest's comments -----------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    ["quoted", "inline"],
)
def test_update_never_drops_the_manifests_comments(projects: Path, tmp_path: Path, spelling: str):
    bp = fixture_blueprint(tmp_path / "bps")
    project = new_project(projects, bp)
    manifest = project / "scaffold.toml"
    text = manifest.read_text()
    if spelling == "quoted":
        text = text.replace('blueprint_version = "0.1.0"', '"blueprint_version" = "0.1.0"  # pinned')
    else:
        start = text.index("[project]\n")
        end = text.index("\n[", start + 1)
        body = [line for line in text[start:end].splitlines()[1:] if line.strip()]
        text = text[:start] + "project = { " + ", ".join(body) + " }\n" + text[end:]
    text = "# my own notes on this model\n" + text.replace("[model]\n", "[model]\n# widths I tried: 32, 64\n")
    manifest.write_text(text)
    assert invoke("build", project).exit_code == 0  # a manifest scaffold reads as it is
    set_version(bp, "0.1.1")
    before = snapshot(project)
    r = invoke("update", project)
    after = manifest.read_text()
    if spelling == "quoted":  # a quoted key is a key: edited in place, every comment kept
        assert r.exit_code == 0, r.output
        assert "# my own notes on this model" in after and "# widths I tried: 32, 64" in after
        assert tomllib.loads(after)["project"]["blueprint_version"] == "0.1.1"
        assert "# pinned" in after
    else:  # an inline table cannot be edited line by line: refused, naming the key, nothing written
        assert r.exit_code == 2, r.output
        assert r.stderr.startswith(
            f"error: {manifest}: project.blueprint_version: cannot be changed in place"
        )
        assert 'project.blueprint_version = "0.1.1"' in r.stderr
        assert snapshot(project) == before


# -- bytes that are not UTF-8 --------------------------------------------------------------------


def test_re_render_never_replaces_bytes_that_are_not_utf8(projects: Path):
    project = new_project(projects)
    modeling = project / MODELING
    modeling.write_bytes(b"# caf\xe9: my Latin-1 note\n" + modeling.read_bytes())
    edit(project / "scaffold.toml", 'hidden_act = "silu"', 'hidden_act = "gelu"')
    before = snapshot(project)
    r = invoke("build", project)
    assert r.exit_code == 3, r.output
    assert f"error: {modeling}: " in r.stderr and "UTF-8" in r.stderr and "merged" not in r.stderr
    assert snapshot(project) == before
    assert modeling.read_bytes().startswith(b"# caf\xe9")


# -- the record of the last rendering ------------------------------------------------------------


@pytest.mark.parametrize("record", ["listed", "older"])
@pytest.mark.parametrize("command", ["build", "update"])
def test_a_file_copied_into_the_rendering_record_is_not_deleted(
    projects: Path, tmp_path: Path, command: str, record: str
):
    bp = fixture_blueprint(tmp_path / "bps")
    project = new_project(projects, bp)
    (project / "train.py").write_text("print('mine')\n")
    rendered = project / ".scaffold" / "rendered"
    for name in ("scaffold.toml", "tokenizer.json", "train.py"):
        shutil.copy2(project / name, rendered / name)
    if record == "older":  # a record written before rendering.json listed its files
        state = project / ".scaffold" / "rendering.json"
        data = json.loads(state.read_text())
        del data["files"]
        state.write_text(json.dumps(data))
    if command == "build":
        edit(project / "scaffold.toml", "hidden_size = 32", "hidden_size = 64")
    else:
        set_version(bp, "0.1.1")
    kept = {name: sha(project / name) for name in ("tokenizer.json", "train.py")}
    r = invoke(command, project)
    assert r.exit_code == 0, r.output
    assert "no longer rendered" not in r.output
    assert (project / "scaffold.toml").is_file()
    assert {name: sha(project / name) for name in kept} == kept
    assert json.loads((project / ".scaffold" / "rendering.json").read_text())["files"].keys() == {
        MODELING,
        "configuration_llama.py",
        "README.md",
    }


def test_a_missing_base_rendering_is_damage_not_conflicts(projects: Path):
    project = new_project(projects)
    user_edits(project)
    base = project / ".scaffold" / "rendered" / MODELING
    base.unlink()
    edit(project / "scaffold.toml", 'hidden_act = "silu"', 'hidden_act = "gelu"')
    before = snapshot(project)
    r = invoke("build", project)
    assert r.exit_code == 3, r.output
    assert f"error: {base}: " in r.stderr
    assert "<<<<<<<" not in (project / MODELING).read_text()
    assert snapshot(project) == before and not (project / "model").exists()


@pytest.mark.parametrize("damage", ["{", "[]", '{"manifest": '], ids=["brace", "list", "truncated"])
def test_a_damaged_rendering_record_stops_the_build(projects: Path, damage: str):
    project = new_project(projects)
    state = project / ".scaffold" / "rendering.json"
    state.write_text(damage)
    edit(project / "scaffold.toml", 'norm_type = "rmsnorm"', 'norm_type = "layernorm"')
    before = snapshot(project)
    r = invoke("build", project)
    assert r.exit_code == 3, r.output
    assert r.stderr.startswith(f"error: {state}: ")
    assert len(r.stderr.strip().splitlines()) == 1
    assert snapshot(project) == before and not (project / "model").exists()
    for command in ("diff", "update"):
        other = invoke(command, project)
        assert other.exit_code == 3 and other.stderr.startswith(f"error: {state}: "), other.output
    refused = new(projects, "--force")  # cannot tell the edits: refused, naming the record
    assert refused.exit_code == 3 and refused.stderr.startswith(f"error: {state}: ")
    assert snapshot(project) == before
    # the way out it names: re-create the project (the user's files kept)
    fixed = new(projects, "--force", "--discard-edits")
    assert fixed.exit_code == 0, fixed.output
    assert invoke("build", project).exit_code == 0


# -- null for a key that cannot be null ----------------------------------------------------------


@pytest.mark.parametrize("command", ["build", "show", "test"])
def test_null_for_a_key_that_cannot_be_null(projects: Path, command: str):
    project = new_project(projects)
    before = snapshot(project)
    r = invoke(command, project, "--set", "model.norm_position=null")
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "model.norm_position" in r.stderr and "null" in r.stderr
    assert snapshot(project) == before and not (project / "model").exists()


def test_null_for_a_key_that_cannot_be_null_in_new(projects: Path):
    r = new(projects, "--set", "model.hidden_act=null")
    assert r.exit_code == 2, r.output
    assert "model.hidden_act" in r.stderr and "null" in r.stderr
    assert not (projects / "tiny").exists()


def test_null_still_removes_a_nullable_key(projects: Path):
    project = new_project(projects)
    r = invoke("show", project, "--set", "model.rope_scaling=null")
    assert r.exit_code == 0, r.output
