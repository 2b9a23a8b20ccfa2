"""Living projects: a project's generated code is the user's to edit; manifest changes and blueprint
upgrades re-render it and merge three ways, never dropping an edit; kills leave it whole.

Everything runs for real: Copier renders, merge3 merges, the CLI runs in process (CliRunner) or as a
real process killed at a named point (SCAFFOLD_FAULT), and the merged code is built and trained.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from scaffold.cli import cli

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "model.vocab_size": 300,
    "model.hidden_size": 32,
    "model.num_hidden_layers": 2,
    "model.num_attention_heads": 2,
    "model.num_key_value_heads": 1,
    "model.head_dim": 16,
    "model.intermediate_size": 64,
    "model.max_position_embeddings": 64,
    "test.sequence_length": 16,
    "test.steps": 1,
    "test.device": "cpu",
}
MODELING = "modeling_llama.py"
LEFTOVER_RE = re.compile(r"^\..+\.(build|new|update|old|trash)-\w+$|^\..+\.lock$")
# a user's edits: a comment of their own and a changed constant
NOTE = "# my note: the init bound is 2.5 here\n"
CONSTANT = ("bound: float = 3.0", "bound: float = 2.5")


def sets(values: dict) -> list[str]:
    out: list[str] = []
    for key, value in values.items():
        out += ["--set", f"{key}={json.dumps(value)}"]
    return out


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def snapshot(root: Path) -> dict[str, str]:
    """The sha256 of every file under ``root`` (lock files aside: a killed run leaves them, harmlessly)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if LEFTOVER_RE.match(p.name))


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def user_edits(project: Path) -> None:
    """A comment at the top of the modeling file and a changed constant in it."""
    modeling = project / MODELING
    text = modeling.read_text()
    first_import = text.index("import math\n")
    modeling.write_text(text[:first_import] + NOTE + text[first_import:])
    edit(modeling, *CONSTANT)


def assert_edits_kept(project: Path) -> None:
    text = (project / MODELING).read_text()
    assert NOTE in text and CONSTANT[1] in text and CONSTANT[0] not in text


def fixture_blueprint(root: Path, version: str = "0.1.0") -> Path:
    """A private copy of the llama family (rendered from the built-in shared template) at ``version``."""
    bp = root / "llama"
    shutil.copytree(REPO / "blueprints" / "llama", bp)
    set_version(bp, version)
    return bp


def set_version(bp: Path, version: str) -> None:
    toml = bp / "blueprint.toml"
    toml.write_text(re.sub(r'(?m)^version = ".*"$', f'version = "{version}"', toml.read_text()))


def upgrade_to_0_2(bp: Path) -> None:
    """Version 0.2.0 of the fixture family: LayerNorm instead of RMSNorm. Its migration table renames
    the epsilon key to the one LayerNorm uses, drops a project's explicit norm_type (so the project
    takes the family's), and writes generation.repetition_penalty out."""
    toml = bp / "blueprint.toml"
    text = toml.read_text().replace("rms_norm_eps", "layer_norm_eps")
    text = text.replace('norm_type = "rmsnorm"', 'norm_type = "layernorm"')
    toml.write_text(text)
    set_version(bp, "0.2.0")
    with open(toml, "a") as f:
        f.write(
            "\n# 0.2.0: LayerNorm; the epsilon takes LayerNorm's key and projects take the family's norm.\n"
            '[[migrations]]\nversion = "0.2.0"\nrename = { "model.rms_norm_eps" = "model.layer_norm_eps" }\n'
            'remove = ["model.norm_type"]\nadd = { "generation.repetition_penalty" = 1.0 }\n'
        )


@pytest.fixture
def projects(tmp_path: Path) -> Path:
    return tmp_path / "projects"


def new_project(projects: Path, blueprint: str | Path = "llama", name: str = "tiny") -> Path:
    r = invoke("new", name, "--from", blueprint, "--projects-dir", projects, *sets(TINY))
    assert r.exit_code == 0, r.output
    return projects / name


# -- manifest changes re-render ------------------------------------------------------------------


def test_edit_survives_a_structural_change(projects: Path):
    project = new_project(projects)
    assert "self.act_fn = F.silu" in (project / MODELING).read_text()
    user_edits(project)
    edit(project / "scaffold.toml", 'hidden_act = "silu"', 'hidden_act = "gelu"')
    r = invoke("build", project)
    assert r.exit_code == 0, r.output
    assert f"{MODELING}: merged with your edits (manifest changed)" in r.stderr
    text = (project / MODELING).read_text()
    assert_edits_kept(project)
    assert "self.act_fn = F.gelu" in text and "F.silu" not in text  # the new structure
    assert (project / "model" / MODELING).read_text() == text  # the edited, merged code is what was built
    record = json.loads((project / "model" / "scaffold-build.json").read_text())
    assert record["inputs"]["edited"] == [MODELING]
    assert invoke("verify", project / "model").exit_code == 0
    again = invoke("build", project)  # re-rendered once: the next build is up to date
    assert again.exit_code == 0 and again.stdout.strip() == f"up to date, kept: {project / 'model'}"
    assert "merged" not in again.stderr


def test_size_change_renders_only_what_changed(projects: Path):
    project = new_project(projects)
    user_edits(project)
    edit(project / "scaffold.toml", "hidden_size = 32", "hidden_size = 64")
    r = invoke("build", project)
    assert r.exit_code == 0, r.output
    assert r.stderr.strip() == "README.md: updated (manifest changed)"  # the card states the width
    assert "width\n64" in (project / "README.md").read_text()
    assert_edits_kept(project)


def test_conflicting_edit_marks_the_file_and_refuses_until_resolved(projects: Path):
    project = new_project(projects)
    modeling = project / MODELING
    # the user's choice, on the very line the structure changes
    edit(modeling, "self.act_fn = F.silu", "self.act_fn = F.relu")
    edit(project / "scaffold.toml", 'hidden_act = "silu"', 'hidden_act = "gelu"')
    r = invoke("build", project)
    assert r.exit_code == 2
    assert f"{MODELING}: CONFLICT: 1 conflict(s) marked inline" in r.stderr
    text = modeling.read_text()
    line = text.splitlines().index("<<<<<<< yours") + 1
    assert "self.act_fn = F.relu" in text and "self.act_fn = F.gelu" in text  # both sides kept
    (error,) = [x for x in r.stderr.splitlines() if x.startswith("error: ")]
    assert error.startswith(f"error: {modeling}:{line}: unresolved merge conflict")
    assert not (project / "model").exists()
    t = invoke("test", project)
    assert t.exit_code == 2 and f"{modeling}:{line}: unresolved merge conflict" in t.stderr
    # resolved: keep the user's side
    modeling.write_text(re.sub(r"<<<<<<< yours\n(.*?)=======\n.*?>>>>>>> [^\n]*\n", r"\1", text, flags=re.S))
    r = invoke("build", project)
    assert r.exit_code == 0, r.output
    assert "self.act_fn = F.relu" in (project / "model" / MODELING).read_text()


def test_test_runs_the_edited_code(projects: Path):
    """Zeroed logits give a loss of exactly ln(vocab): only the edited forward can print that. In one
    Python process, after the unedited model was loaded (transformers then keeps its model class
    registered for the configuration class): the rebuilt model directory must still load the new code."""
    project = new_project(projects)
    first = invoke("test", project)
    assert first.exit_code == 0 and f"loss {math.log(300):.4f}" not in first.stdout, first.output
    edit(
        project / MODELING,
        "hidden = outputs.last_hidden_state",
        "hidden = 0 * outputs.last_hidden_state",
    )
    stale = invoke("test", project)
    assert (
        stale.exit_code == 2
        and "stale build" in stale.stderr
        and "changed sources: modeling_llama.py" in stale.stderr
    )
    r = invoke("test", project, "--force")
    assert r.exit_code == 0, r.output
    assert f"loss {math.log(300):.4f}" in r.stdout
    status = invoke("diff", project)
    assert status.exit_code == 0
    assert "edited since the last rendering: modeling_llama.py" in status.stdout
    assert "+        hidden = 0 * outputs.last_hidden_state" in status.stdout


# -- scaffold update -----------------------------------------------------------------------------


@pytest.fixture
def old_project(projects: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A project made from the fixture blueprint at 0.1.0, edited, and the blueprint then moved to 0.2.0."""
    bp = fixture_blueprint(tmp_path / "bps")
    project = new_project(projects, bp)
    user_edits(project)
    upgrade_to_0_2(bp)
    return project, bp


def test_update_dry_run_changes_nothing(old_project):
    project, _ = old_project
    before = snapshot(project)
    status = invoke("diff", project)
    assert "behind: blueprint llama 0.2.0 is installed" in status.stdout
    r = invoke("update", project, "--dry-run")
    assert r.exit_code == 0, r.output
    assert f"would update {project}: blueprint llama 0.1.0 -> 0.2.0" in r.stdout
    assert f"{MODELING}: merged with your edits" in r.stdout
    assert "model.rms_norm_eps renamed to model.layer_norm_eps (blueprint 0.2.0)" in r.stdout
    assert "-rms_norm_eps = 1e-05\n+layer_norm_eps = 1e-05" in r.stdout
    assert '-norm_type = "rmsnorm"\n' in r.stdout and "+        self.norm = nn.LayerNorm(" in r.stdout
    assert snapshot(project) == before
    assert leftovers(project.parent) == []


def test_update_keeps_edits_and_migrates_the_manifest(old_project):
    project, _ = old_project
    manifest = (project / "scaffold.toml").read_text()
    r = invoke("update", project)
    assert r.exit_code == 0, r.output
    assert f"updated {project}: blueprint llama 0.1.0 -> 0.2.0" in r.stdout
    assert_edits_kept(project)
    text = (project / MODELING).read_text()
    assert "nn.LayerNorm(" in text and "config.layer_norm_eps" in text and "RMSNorm" not in text
    new_manifest = (project / "scaffold.toml").read_text()
    assert "layer_norm_eps = 1e-05" in new_manifest and "rms_norm_eps" not in new_manifest
    assert "repetition_penalty = 1.0" in new_manifest and 'blueprint_version = "0.2.0"' in new_manifest
    # the user's layout and comments are kept: only the migrated lines differ
    assert manifest.splitlines()[:3] == new_manifest.splitlines()[:3]
    assert "_commit: 0.2.0" in (project / ".copier-answers.yml").read_text()
    assert json.loads((project / ".scaffold" / "rendering.json").read_text())["blueprint_version"] == "0.2.0"
    again = invoke("update", project)
    assert again.stdout.strip() == f"up to date: {project} is at blueprint llama 0.2.0"
    status = invoke("diff", project)
    assert "up to date with the installed blueprint llama 0.2.0" in status.stdout
    assert "edited since the last rendering: modeling_llama.py" in status.stdout
    b = invoke("build", project)
    assert b.exit_code == 0, b.output
    config = json.loads((project / "model" / "config.json").read_text())
    assert config["layer_norm_eps"] == 1e-5


def test_build_of_a_project_behind_its_blueprint_asks_for_update(old_project):
    project, _ = old_project
    manifest = project / "scaffold.toml"
    built = invoke("build", project)  # behind, unchanged: built from its own code as it is
    assert built.exit_code == 0, built.output
    assert "rendered" not in built.stderr and "RMSNorm(" in (project / "model" / MODELING).read_text()
    edit(manifest, "hidden_size = 32", "hidden_size = 64")
    r = invoke("build", project, "--force")
    assert r.exit_code == 2
    # (the fixture's 0.2.0 makes LayerNorm the family's own structure, so this RMSNorm project's classes
    # are warned about as named like transformers' while differing from the family)
    errors = "\n".join(line for line in r.stderr.splitlines() if not line.startswith("warning:"))
    assert errors.strip() == (
        f"error: {manifest}: changed since the project was last rendered, but the project is at blueprint llama "
        f"0.1.0 and 0.2.0 is installed: run `scaffold update {project}` to move it to 0.2.0 (it re-renders for "
        "this manifest too)"
    )
    edit(manifest, 'norm_type = "rmsnorm"\n', "")  # now the family's LayerNorm, which has no rms_norm_eps
    r = invoke("build", project, "--force")
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [
        f"error: {manifest}: model.rms_norm_eps: unknown key for this blueprint",
        f"error: {manifest}: project.blueprint_version: 0.1.0, but blueprint llama 0.2.0 is installed: "
        f"`scaffold update {project}` migrates the manifest to it",
    ]
    assert invoke("update", project).exit_code == 0
    assert_edits_kept(project)
    b = invoke("build", project, "--force")
    assert b.exit_code == 0, b.output
    assert "width\n64" in (project / "README.md").read_text()


def _scaffold(*args: str, fault: str | None = None, no_exchange: bool = False) -> subprocess.CompletedProcess:
    code = "import sys; from scaffold.cli import main; main(sys.argv[1:])"
    if no_exchange:  # the two-rename swap of systems without an atomic exchange
        code = "import scaffold.atomic as a; a.exchange = lambda *_: False; " + code
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("SCAFFOLD_DEBUG", None)
    if fault:
        env["SCAFFOLD_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("point", "no_exchange", "survivor"),
    [
        ("update-written", False, "previous"),  # merged files written into the staging copy
        ("update-staged", False, "previous"),  # staged and flushed, not swapped in
        (
            "swap",
            True,
            "previous",
        ),  # without the atomic exchange: the project aside, the new one not in place
        ("swapped", False, "updated"),  # swapped in, the old copy not yet deleted
    ],
)
def test_update_killed_leaves_the_project_whole(
    old_project, tmp_path: Path, point: str, no_exchange: bool, survivor: str
):
    project, _ = old_project
    reference = tmp_path / "reference" / project.name
    shutil.copytree(project, reference)
    assert invoke("update", reference).exit_code == 0
    before, updated = snapshot(project), snapshot(reference)
    killed = _scaffold("update", project, fault=f"{point}:kill", no_exchange=no_exchange)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert leftovers(project.parent)
    if point == "swap":
        assert not project.exists()
        (aside,) = project.parent.glob(f".{project.name}.old-*")
        assert snapshot(aside) == before
    else:
        assert snapshot(project) == (before if survivor == "previous" else updated)
    again = invoke("update", project)  # puts back a project left aside, sweeps the leftovers, updates
    assert again.exit_code == 0, again.output
    assert snapshot(project) == updated
    assert leftovers(project.parent) == []
    b = invoke("build", project)
    assert b.exit_code == 0, b.output
    assert_edits_kept(project)


# -- new --force over a project with edits -------------------------------------------------------


def test_new_force_refuses_over_edits_naming_them(projects: Path):
    project = new_project(projects)
    user_edits(project)
    edit(project / "scaffold.toml", "hidden_size = 32", "hidden_size = 32  # mine")
    before = snapshot(project)
    args = ["new", "tiny", "--from", "llama", "--projects-dir", projects, *sets(TINY), "--force"]
    r = invoke(*args)
    assert r.exit_code == 2
    assert r.stderr.strip() == (
        f"error: {project}: holds edits that --force would lose (modeling_llama.py, scaffold.toml): commit "
        "them, pass --backup to keep the project as it is beside the new one, or --discard-edits"
    )
    assert snapshot(project) == before
    kept = invoke(*args, "--backup")
    assert kept.exit_code == 0, kept.output
    (backup,) = projects.glob("tiny.backup-*")
    assert snapshot(backup) == before
    assert invoke("diff", project).stdout.splitlines()[1] == "no edits to the generated files"
    user_edits(project)
    assert invoke(*args, "--discard-edits").exit_code == 0
    assert CONSTANT[0] in (project / MODELING).read_text()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_new_force_over_committed_edits(projects: Path):
    project = new_project(projects)
    user_edits(project)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=projects, check=True)
    subprocess.run([*git, "add", "-A"], cwd=projects, check=True)
    subprocess.run([*git, "commit", "-qm", "mine"], cwd=projects, check=True)
    r = invoke("new", "tiny", "--from", "llama", "--projects-dir", projects, *sets(TINY), "--force")
    assert r.exit_code == 0, r.output
    shown = subprocess.run(
        ["git", "show", f"HEAD:tiny/{MODELING}"], cwd=projects, capture_output=True, text=True
    )
    assert NOTE in shown.stdout  # git still holds the edits


def test_build_killed_while_re_rendering_leaves_the_project_whole(projects: Path):
    """The re-render a build does is written like an update: killed before its swap, nothing changed."""
    project = new_project(projects)
    user_edits(project)
    edit(project / "scaffold.toml", "hidden_size = 32", "hidden_size = 64")
    before = snapshot(project)
    killed = _scaffold("build", project, fault="update-staged:kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert snapshot(project) == before
    assert leftovers(projects)
    r = invoke("build", project)
    assert r.exit_code == 0, r.output
    assert r.stderr.strip() == "README.md: updated (manifest changed)"
    assert leftovers(projects) == []
    assert_edits_kept(project)


# -- projects made before scaffold kept its renderings ---------------------------------------------


def test_update_takes_in_a_project_without_a_record(projects: Path):
    """A project without .scaffold/ builds as it is; `update` refuses to guess which differences are edits
    until --adopt, which keeps every file as it is and tracks the project from then on."""
    project = new_project(projects)
    shutil.rmtree(project / ".scaffold")
    user_edits(project)
    before = snapshot(project)
    r = invoke("update", project)
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: {project}: made before scaffold kept a record of its last rendering")
    assert f"{MODELING} differs from what blueprint llama" in r.stderr and "--adopt" in r.stderr
    dry = invoke("update", project, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert f"would take in {project}" in dry.stdout and f"{MODELING}: kept as it is" in dry.stdout
    assert snapshot(project) == before
    r = invoke("update", project, "--adopt")
    assert r.exit_code == 0, r.output
    assert f"took in {project}" in r.stdout
    assert_edits_kept(project)
    assert {k: v for k, v in snapshot(project).items() if not k.startswith(".scaffold/")} == before
    status = invoke("diff", project)
    assert status.exit_code == 0, status.output
    assert "edited since the last rendering: modeling_llama.py" in status.stdout
    assert "+# my note: the init bound is 2.5 here" in status.stdout
    # tracked now: a structural change re-renders and merges with the kept edits
    edit(project / "scaffold.toml", "[model]\n", "[model]\nmlp_bias = true\n")
    b = invoke("build", project)
    assert b.exit_code == 0, b.output
    assert_edits_kept(project)
    assert "bias=True" in (project / MODELING).read_text()


def test_update_adopts_an_unedited_project_without_asking(projects: Path):
    project = new_project(projects)
    shutil.rmtree(project / ".scaffold")
    r = invoke("update", project)
    assert r.exit_code == 0, r.output
    assert f"took in {project}" in r.stdout and "kept as it is" not in r.stdout
    assert (project / ".scaffold" / "rendering.json").is_file()
    assert invoke("diff", project).stdout.splitlines()[1] == "no edits to the generated files"
