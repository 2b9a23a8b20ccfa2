"""Every failure of /work/shared/reference/reliability.md, provoked for real.

Each test asserts the exit code, the one-line message (naming the file and the key or tensor) and
that nothing already on disk was lost. Kills and locks use real processes: the build is stopped or
killed at a named point with SCAFFOLD_FAULT (see scaffold.atomic.fault_point), or killed from outside.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from scaffold.build import record_files
from scaffold.cli import cli
from scaffold.files import BUILD_RECORD
from scaffold.run.runs import RUNS_DIR

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
    "test.steps": 2,
    "test.device": "cpu",
}
LEFTOVER_RE = re.compile(r"^\..+\.(build|new|old|trash)-\w+$|^\..+\.lock$")


def sets(values: dict) -> list[str]:
    out: list[str] = []
    for key, value in values.items():
        out += ["--set", f"{key}={json.dumps(value)}"]
    return out


def invoke(*args: str, env: dict[str, str] | None = None):
    """Run the CLI in this process (fast: torch stays imported)."""
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def scaffold_cmd(*args: str, no_exchange: bool = False) -> list[str]:
    """The command line of a real ``scaffold`` process (optionally without the atomic exchange)."""
    args = [str(a) for a in args]
    if no_exchange:  # force the two-rename swap that the non-Linux path uses
        code = (
            "import sys, scaffold.atomic as a; a.exchange = lambda *_: False; "
            "from scaffold.cli import main; main(sys.argv[1:])"
        )
        return [sys.executable, "-c", code, *args]
    return [sys.executable, "-m", "scaffold.cli", *args]


def proc_env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("SCAFFOLD_DEBUG", None)
    e.update(extra)
    return e


def run(*args: str, fault: str | None = None, no_exchange: bool = False) -> subprocess.CompletedProcess:
    """Run ``scaffold`` as a real process, optionally stopping or killing itself at a fault point."""
    return subprocess.run(
        scaffold_cmd(*args, no_exchange=no_exchange),
        env=proc_env(**({"SCAFFOLD_FAULT": fault} if fault else {})),
        capture_output=True,
        text=True,
        timeout=300,
    )


def error_lines(stderr: str) -> list[str]:
    """The error lines of a run; a user's mistake never shows a traceback."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def one_error(stderr: str) -> str:
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    return lines[0]


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Mode and sha256 of every file under ``root``; equal snapshots mean nothing was lost or changed.
    Run records (``runs/``) are left out: every `scaffold test` adds one, failed or not."""
    out = {}
    for p in sorted(root.rglob("*")):
        if RUNS_DIR in p.relative_to(root).parts:
            continue
        if p.is_file() and not p.is_symlink():
            out[p.relative_to(root).as_posix()] = (
                p.stat().st_mode & 0o777,
                hashlib.sha256(p.read_bytes()).hexdigest(),
            )
    return out


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if LEFTOVER_RE.match(p.name))


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    """A projects folder holding the tiny project ``tiny``, built with weights."""
    root = tmp_path_factory.mktemp("base")
    projects = root / "projects"
    r = invoke("new", "tiny", "--from", "llama", "--projects-dir", projects, *sets(TINY))
    assert r.exit_code == 0, r.output
    r = invoke("build", projects / "tiny", "--save-weights")
    assert r.exit_code == 0, r.output
    return projects


@pytest.fixture
def proj(base: Path, tmp_path: Path) -> Path:
    """A private copy of the built tiny project."""
    shutil.copytree(base, tmp_path / "projects", symlinks=True)
    return tmp_path / "projects" / "tiny"


def reshard(model_dir: Path) -> list[str]:
    """Split model.safetensors into two shards with an index, as save_pretrained does for big models,
    and record them as the build's files (a sharded build). Returns the shard names."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(model_dir / "model.safetensors")
    names = sorted(tensors)
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map = {}
    for shard, keys in zip(shards, halves):
        save_file({k: tensors[k] for k in keys}, model_dir / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, shard))
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
        "weight_map": weight_map,
    }
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (model_dir / "model.safetensors").unlink()
    restamp(model_dir)
    return shards


def restamp(model_dir: Path) -> None:
    """Record the directory's current files as what the build wrote."""
    stamp = json.loads((model_dir / BUILD_RECORD).read_text())
    stamp["files"] = record_files(model_dir)
    (model_dir / BUILD_RECORD).write_text(json.dumps(stamp, indent=2))


def wait_for(predicate, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def stopped(pid: int) -> bool:
    """Whether process ``pid`` has stopped itself (SIGSTOP at a fault point)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


# -- two builds into one output folder at once ---------------------------------------------------


def test_two_builds_at_once_second_waits_then_refuses(proj: Path, tmp_path: Path):
    """Row: two builds at once. The second waits for the lock (here 1 s), then refuses; a third,
    patient one waits until the first is done and finds its build up to date. Never a mix."""
    model = proj / "model"
    before = snapshot(model)
    new_inputs = [*sets({"model.initializer_range": 0.05}), "--force", "--save-weights"]
    first = subprocess.Popen(
        scaffold_cmd("build", proj, *new_inputs),
        env=proc_env(SCAFFOLD_FAULT="build-staged:stop"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    waiter_err = tmp_path / "waiter.err"
    waiter = None
    try:
        wait_for(lambda: stopped(first.pid), "the first build to stop before its swap")
        second = invoke("build", proj, *new_inputs, env={"SCAFFOLD_LOCK_TIMEOUT": "1"})
        assert second.exit_code == 2, second.output
        line = one_error(second.stderr)
        assert line.startswith(
            f"error: {model}: another scaffold process (pid {first.pid}) is writing this folder"
        )
        assert snapshot(model) == before  # the first build is staged but not yet swapped in

        with open(waiter_err, "w") as err:
            waiter = subprocess.Popen(
                scaffold_cmd("build", proj, *new_inputs),
                env=proc_env(SCAFFOLD_LOCK_TIMEOUT="120"),
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        wait_for(
            lambda: "waiting for another scaffold process" in waiter_err.read_text(), "the third to wait"
        )
        assert waiter.poll() is None
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert "built" in out
    out, _ = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, waiter_err.read_text()
    assert out.strip() == f"up to date, kept: {model}"
    assert invoke("verify", model).exit_code == 0
    assert snapshot(model) != before
    assert leftovers(proj) == []


def test_two_news_at_once_second_refused(tmp_path: Path):
    """Row: two writers at once, for `scaffold new` of the same project."""
    projects = tmp_path / "projects"
    args = ["new", "other", "--from", "llama", "--projects-dir", projects, *sets(TINY)]
    first = subprocess.Popen(
        scaffold_cmd(*args),
        env=proc_env(SCAFFOLD_FAULT="new-staged:stop"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: stopped(first.pid), "the first `new` to stop before its swap")
        second = invoke(*args, env={"SCAFFOLD_LOCK_TIMEOUT": "0.5"})
        assert second.exit_code == 2, second.output
        assert one_error(second.stderr).startswith(
            f"error: {projects / 'other'}: another scaffold process (pid {first.pid}) is writing this folder"
        )
        assert not (projects / "other").exists()
    finally:
        os.kill(first.pid, signal.SIGCONT)
    first.communicate(timeout=120)
    assert first.returncode == 0
    made = snapshot(projects / "other")
    again = invoke(*args)
    assert again.exit_code == 2
    assert (
        one_error(again.stderr) == f"error: {projects / 'other'}: already exists; pass --force to render it "
        "afresh (files scaffold did not write are kept)"
    )
    assert snapshot(projects / "other") == made
    assert leftovers(projects) == []


# -- build killed half way ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("point", "no_exchange", "survivor"),
    [
        ("build-written", False, "previous"),  # weights and config written, no record yet
        ("build-staged", False, "previous"),  # complete and flushed, not swapped in
        ("swap", True, "previous"),  # without the atomic exchange: old folder aside, new not in place
        ("swapped", False, "new"),  # swapped in, the old folder not yet deleted
    ],
)
def test_build_killed_leaves_a_whole_build(proj: Path, point: str, no_exchange: bool, survivor: str):
    """Row: build killed half way (SIGKILL). The folder holds the previous build or the new one, whole;
    the next run sweeps the leftovers (and puts back a folder moved aside)."""
    model = proj / "model"
    before = snapshot(model)
    v1 = ["--save-weights"]
    v2 = [*sets({"model.initializer_range": 0.05}), "--save-weights"]
    killed = run("build", proj, *v2, "--force", fault=f"{point}:kill", no_exchange=no_exchange)
    assert killed.returncode == -signal.SIGKILL
    assert leftovers(proj), "the kill should have left something to sweep"
    if survivor == "previous":
        if point == "swap":
            assert not model.exists()
            (aside,) = proj.glob(".model.old-*")
            assert snapshot(aside) == before  # whole, and put back by the next run
        else:
            assert snapshot(model) == before
        again = invoke("build", proj, *v1)
        assert again.exit_code == 0, again.output
        assert again.stdout.strip() == f"up to date, kept: {model}"
        assert snapshot(model) == before
    else:
        assert snapshot(model) != before
        assert invoke("verify", model).exit_code == 0
        again = invoke("build", proj, *v2)
        assert again.stdout.strip() == f"up to date, kept: {model}"
    assert leftovers(proj) == []
    assert invoke("verify", model).exit_code == 0


def test_build_killed_from_outside_while_writing(proj: Path):
    """Row: build killed half way, by a SIGKILL from another process as soon as it writes its files."""
    from transformers import AutoModelForCausalLM

    model = proj / "model"
    before = snapshot(model)
    big = sets({"model.intermediate_size": 8192, "model.hidden_size": 256})  # ~50 MB of weights
    proc = subprocess.Popen(
        scaffold_cmd("build", proj, *big, "--force", "--save-weights"),
        env=proc_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def writing_weights() -> bool:
        return any(
            p.suffix == ".safetensors" or p.name.startswith("config") for p in proj.glob(".model.build-*/*")
        )

    try:
        wait_for(lambda: writing_weights() or proc.poll() is not None, "the build to start writing")
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    assert snapshot(model) == before
    AutoModelForCausalLM.from_pretrained(model, trust_remote_code=True)  # the previous build still loads
    assert leftovers(proj)
    again = invoke("build", proj, "--save-weights")
    assert again.exit_code == 0 and again.stdout.strip() == f"up to date, kept: {model}"
    assert leftovers(proj) == []


def test_new_killed_leaves_previous_project(proj: Path):
    """Row: build killed half way, for `scaffold new --force` over a project."""
    projects = proj.parent
    before = snapshot(proj)
    killed = run(
        "new",
        "tiny",
        "--from",
        "llama",
        "--projects-dir",
        projects,
        "--force",
        *sets(TINY),
        fault="new-staged:kill",
    )
    assert killed.returncode == -signal.SIGKILL
    # the lock of model/ (kept by --force, so locked while the project is swapped) is left, harmlessly
    (proj / ".model.lock").unlink()
    assert snapshot(proj) == before
    assert any(projects.glob(".tiny.new-*"))
    refused = invoke("new", "tiny", "--from", "llama", "--projects-dir", projects)
    assert refused.exit_code == 2
    assert leftovers(projects) == []  # swept under the lock before the refusal
    assert snapshot(proj) == before


# -- re-saving a sharded folder as one file -------------------------------------------------------


def test_rebuild_over_sharded_build_leaves_no_stale_index(proj: Path):
    """Row: re-saving a sharded folder as one file. The rebuild is a fresh folder swapped in whole."""
    model = proj / "model"
    reshard(model)
    assert invoke("verify", model).exit_code == 0  # a sharded build verifies
    r = invoke("build", proj, "--save-weights", "--force", *sets({"model.initializer_range": 0.05}))
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in model.glob("*.safetensors*")) == ["model.safetensors"]
    assert invoke("verify", model).exit_code == 0


# -- truncated or corrupt safetensors; a bit flipped in tensor data --------------------------------


def _truncate(p: Path) -> None:
    os.truncate(p, p.stat().st_size - 100)


def _garble_header(p: Path) -> None:
    with open(p, "r+b") as f:
        f.seek(10)
        f.write(b"\xff\xfe\xfd")


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (
            _truncate,
            "does not load: Error while deserializing header: incomplete metadata, file not fully covered",
        ),
        (_garble_header, "does not load: Error while deserializing header: invalid UTF-8 in header"),
    ],
    ids=["truncated", "corrupt-header"],
)
def test_corrupt_weights_named_by_verify_and_test(proj: Path, damage, expected: str):
    """Row: truncated or corrupt safetensors: an error naming the shard, from verify and from test."""
    model = proj / "model"
    weights = model / "model.safetensors"
    damage(weights)
    before = snapshot(proj)
    r = invoke("verify", proj)  # a project folder stands for its model/
    assert r.exit_code == 3
    assert one_error(r.stderr).startswith(f"error: {weights}: {expected}")
    t = run("test", proj)
    assert t.returncode == 3, t.stderr
    line = one_error(t.stderr)
    assert line.startswith(f"error: {weights}: {expected}")
    assert "pass --force to rebuild" in line
    assert snapshot(proj) == before  # nothing deleted or "repaired" behind the user's back


def test_bit_flip_in_tensor_data_caught_by_verify(proj: Path):
    """Row: a bit flipped in tensor data loads silently; the recorded checksum catches it."""
    from safetensors.torch import load_file

    weights = proj / "model" / "model.safetensors"
    with open(weights, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0x01]))
    load_file(weights)  # safetensors alone does not notice
    before = snapshot(proj)
    r = invoke("verify", proj / "model")
    assert r.exit_code == 3
    assert one_error(r.stderr) == f"error: {weights}: changed: its sha256 differs from {BUILD_RECORD}"
    assert snapshot(proj) == before


def test_verify_names_missing_changed_and_extra_files(proj: Path):
    """verify lists every problem at once, one line per file."""
    model = proj / "model"
    (model / "tokenizer_config.json").unlink()
    with open(model / "config.json", "a") as f:
        f.write(" ")
    (model / "notes.txt").write_text("mine")
    r = invoke("verify", model)
    assert r.exit_code == 3
    assert error_lines(r.stderr) == [
        f"error: {model / 'config.json'}: changed: {(model / 'config.json').stat().st_size} bytes, "
        f"{(model / 'config.json').stat().st_size - 1} recorded in {BUILD_RECORD}",
        f"error: {model / 'tokenizer_config.json'}: missing (recorded in {BUILD_RECORD})",
        f"error: {model / 'notes.txt'}: extra: not written by the build (not in {BUILD_RECORD})",
    ]
    assert (model / "notes.txt").read_text() == "mine"


def test_verify_ok_line_and_no_record(proj: Path, tmp_path: Path):
    r = invoke("verify", proj / "model")
    assert r.exit_code == 0
    assert (
        r.stdout.strip()
        == f"OK {proj / 'model'}: 10 files match {BUILD_RECORD}; 1 weight file(s), 21 tensors load"
    )
    bare = tmp_path / "bare"
    bare.mkdir()
    r = invoke("verify", bare)
    assert r.exit_code == 3
    assert one_error(r.stderr).startswith(f"error: {bare / BUILD_RECORD}: missing;")


# -- index names a missing shard / a key is missing -----------------------------------------------


def test_missing_shard_named_by_verify_and_test(proj: Path):
    """Row: the index names a missing shard: verify and test name the shard, not FileNotFoundError."""
    model = proj / "model"
    shards = reshard(model)
    (model / shards[1]).unlink()
    before = snapshot(proj)
    r = invoke("verify", model)
    assert r.exit_code == 3
    line = one_error(r.stderr)
    assert re.fullmatch(
        rf"error: {re.escape(str(model / shards[1]))}: missing: model\.safetensors\.index\.json names this "
        r"shard for \d+ tensors \(model\.\S+, .*\)",
        line,
    ), line
    t = run("test", proj)
    assert t.returncode == 3, t.stderr
    assert one_error(t.stderr).startswith(
        f"error: {model / shards[1]}: missing: model.safetensors.index.json"
    )
    assert snapshot(proj) == before


def test_tensor_missing_from_shard_named_by_verify(proj: Path):
    """Row: a key is missing: the shard lacks a tensor its index names; verify names the tensor."""
    from safetensors.torch import load_file, save_file

    model = proj / "model"
    shards = reshard(model)
    tensors = load_file(model / shards[0])
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, model / shards[0], metadata={"format": "pt"})
    restamp(model)  # a writer that recorded its own mistake: only the index check can tell
    r = invoke("verify", model)
    assert r.exit_code == 3
    assert one_error(r.stderr) == (
        f"error: {model / shards[0]}: tensors named by model.safetensors.index.json are not in this file: {dropped}"
    )


# -- shards written 0600 --------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_readable_as_umask_says(tmp_path: Path, umask: int):
    """Row: safetensors writes 0600; scaffold's project and model files follow the umask."""
    projects = tmp_path / "projects"
    previous = os.umask(umask)
    try:
        assert invoke("new", "p", "--from", "llama", "--projects-dir", projects, *sets(TINY)).exit_code == 0
        r = invoke("build", projects / "p", "--save-weights")
    finally:
        os.umask(previous)
    assert r.exit_code == 0, r.output
    assert (projects / "p" / "model" / "model.safetensors").is_file()
    for p in [projects / "p", *(projects / "p").rglob("*")]:
        want = (0o777 if p.is_dir() else 0o666) & ~umask
        assert p.stat().st_mode & 0o777 == want, f"{p}: {oct(p.stat().st_mode & 0o777)}"


# -- manifest problems ----------------------------------------------------------------------------


def _edit_manifest(proj: Path, old: str, new: str) -> None:
    m = proj / "scaffold.toml"
    text = m.read_text()
    assert old in text
    m.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("hidden_size = 32", "hidden_size = 32\nhidden_sise = 32", ["model.hidden_sise: unknown key"]),
        (
            "[model]",
            "[modle]\nx = 1\n\n[model]",
            ["modle: unknown section; expected one of project, model, tokenizer, generation, test"],
        ),
        ("hidden_size = 32", 'hidden_size = "32"', ["model.hidden_size: must be an integer, got str '32'"]),
        (
            "num_hidden_layers = 2",
            "num_hidden_layers = -2",
            ["model.num_hidden_layers: must be positive, got -2"],
        ),
        (
            "num_key_value_heads = 1",
            "num_key_value_heads = 3",
            ["model.num_key_value_heads: 3 does not divide num_attention_heads = 2"],
        ),
        ("vocab_size = 300", "vocab_size = 0", ["model.vocab_size: must be positive, got 0"]),
        ("[model]", "[model", ["not valid TOML: Expected ']' at the end of a table declaration (at line"]),
        (
            "vocab_size = 300\nhidden_size = 32\nnum_hidden_layers = 2\nnum_attention_heads = 2\nnum_key_value_heads = 1",
            'vocab_size = 0\nhidden_size = "wide"\nnum_hidden_layers = -1\nnum_attention_heads = 2\n'
            "num_key_value_heads = 3\nnum_experts = 8",
            [
                "model.vocab_size: must be positive, got 0",
                "model.hidden_size: must be an integer, got str 'wide'",
                "model.num_hidden_layers: must be positive, got -1",
                "model.num_experts: unknown key",
                "model.num_key_value_heads: 3 does not divide num_attention_heads = 2",
            ],
        ),
    ],
    ids=[
        "unknown-key",
        "unknown-section",
        "wrong-type",
        "negative",
        "kv-heads",
        "vocab-0",
        "bad-toml",
        "several",
    ],
)
def test_manifest_problems_listed_with_key_paths(proj: Path, old: str, new: str, expected: list[str]):
    """Row: manifest problems: every one listed at once, each with its TOML key path; nothing built."""
    _edit_manifest(proj, old, new)
    before = snapshot(proj)
    r = invoke("build", proj, "--force")
    assert r.exit_code == 2, r.output
    lines = error_lines(r.stderr)
    manifest = proj / "scaffold.toml"
    assert len(lines) == len(expected), r.stderr
    for line, want in zip(lines, expected):
        assert line.startswith(f"error: {manifest}: {want}"), (line, want)
    assert snapshot(proj) == before
    assert leftovers(proj) == []


def test_heads_not_dividing_hidden(proj: Path):
    """Row: heads not dividing hidden (where the head width is derived, i.e. head_dim unset)."""
    before = snapshot(proj)
    r = invoke(
        "build", proj, *sets({"model.num_attention_heads": 3}), "--set", "model.head_dim=null", "--force"
    )
    assert r.exit_code == 2
    assert one_error(r.stderr) == (
        f"error: {proj / 'scaffold.toml'}: model.num_attention_heads: 3 does not divide hidden_size = 32; "
        "set model.head_dim to choose the head width"
    )
    assert snapshot(proj) == before


def test_manifest_problems_at_new_write_nothing(tmp_path: Path):
    projects = tmp_path / "projects"
    r = invoke(
        "new",
        "p",
        "--from",
        "llama",
        "--projects-dir",
        projects,
        *sets({"model.vocab_size": 0, "model.hidden_size": -4, "model.num_key_value_heads": 3}),
    )
    assert r.exit_code == 2
    assert error_lines(r.stderr) == [
        "error: p/scaffold.toml: model.vocab_size: must be positive, got 0",
        "error: p/scaffold.toml: model.hidden_size: must be positive, got -4",
        "error: p/scaffold.toml: model.num_key_value_heads: 3 does not divide num_attention_heads = 4",
    ]
    assert not projects.exists()


# -- names that escape their folder ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "ABSOLUTE", ".hidden", "a/b", "..", ""])
def test_project_names_that_escape_are_refused(tmp_path: Path, name: str):
    """Row: project name `../../x` or absolute: refused before anything is written."""
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    if name == "ABSOLUTE":
        name = str(tmp_path / "abs")
    r = invoke("new", name, "--from", "llama", "--projects-dir", work / "projects")
    assert r.exit_code == 2
    assert one_error(r.stderr).startswith(f"error: invalid project name {name!r}: use letters, digits")
    assert sorted(tmp_path.rglob("*")) == [tmp_path / "a", tmp_path / "a" / "b", work]


# -- blueprints that run code or reach outside ----------------------------------------------------


@pytest.fixture
def blueprint(tmp_path: Path) -> Path:
    """A copy of the llama family beside a copy of the shared template; returns the template's folder
    (copier.yml, template/), which is what a family renders with."""
    shutil.copytree(REPO / "blueprints" / "llama", tmp_path / "bp" / "llama")
    shutil.copytree(REPO / "blueprints" / "_shared", tmp_path / "bp" / "_shared")
    return tmp_path / "bp" / "_shared"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('_tasks:\n  - "touch {marker}"\n', "_tasks"),
        ('"_tasks": ["touch {marker}"]\n', "_tasks"),
        ("_jinja_extensions:\n  - jinja2_time.TimeExtension\n", "_jinja_extensions"),
        ('_migrations:\n  - version: "0.0.1"\n    command: "touch {marker}"\n', "_migrations"),
    ],
    ids=["tasks", "tasks-quoted", "jinja-extensions", "migrations"],
)
def test_blueprint_asking_to_run_code_is_refused(blueprint: Path, tmp_path: Path, text: str, key: str):
    """Row: a template with `_tasks`: never trusted silently."""
    marker = tmp_path / "ran"
    copier_yml = blueprint / "copier.yml"
    copier_yml.write_text(copier_yml.read_text() + text.format(marker=marker))
    r = invoke("new", "p", "--from", blueprint.parent / "llama", "--projects-dir", tmp_path / "projects")
    assert r.exit_code == 2
    assert one_error(r.stderr) == (
        f"error: {copier_yml}: {key}: asks to run code at render time ({key}); scaffold never runs template code"
    )
    assert not marker.exists()
    assert not (tmp_path / "projects").exists()


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_blueprint_symlink_leaving_template_is_refused(blueprint: Path, tmp_path: Path, kind: str):
    """Row: a symlink leaving the template: refused, and nothing it points to is copied."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("do not copy")
    link = blueprint / "template" / ("secret.txt" if kind == "file" else "stuff")
    link.symlink_to(outside / "secret.txt" if kind == "file" else outside)
    r = invoke("new", "p", "--from", blueprint.parent / "llama", "--projects-dir", tmp_path / "projects")
    assert r.exit_code == 2
    target = outside / "secret.txt" if kind == "file" else outside
    assert one_error(r.stderr) == f"error: {link}: symlink leaves the blueprint (points to {target})"
    assert not (tmp_path / "projects").exists()


# -- re-running new over an edited project --------------------------------------------------------


def test_new_over_edited_project_refused_edits_kept(proj: Path):
    """Row: re-running `new` over an edited project: refused; the edits are kept."""
    _edit_manifest(proj, "hidden_size = 32", "hidden_size = 32  # my edit")
    with open(proj / "modeling_llama.py", "a") as f:
        f.write("\n# my note\n")
    before = snapshot(proj)
    r = invoke("new", "tiny", "--from", "llama", "--projects-dir", proj.parent, *sets(TINY))
    assert r.exit_code == 2
    assert (
        one_error(r.stderr)
        == f"error: {proj}: already exists; pass --force to render it afresh (files scaffold did not write are kept)"
    )
    assert snapshot(proj) == before


# -- misspelt template variable -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "old", "new", "line", "variable"),
    [
        ("README.md.jinja", "{{ project_name }}", "{{ project_nme }}", 8, "project_nme"),
        ("README.md.jinja", "manifest.model.hidden_size", "manifest.model.hiden_size", 11, "hiden_size"),
        (
            "modeling_{{ family }}.py.jinja",
            "{{ blueprint_version }}",
            "{{ blueprint_verison }}",
            3,
            "blueprint_verison",
        ),
    ],
)
def test_misspelt_template_variable_names_file_and_variable(
    blueprint: Path, tmp_path: Path, file: str, old: str, new: str, line: int, variable: str
):
    """Row: a misspelt template variable: an error naming the file (and line) and the variable."""
    template = blueprint / "template" / file
    template.write_text(template.read_text().replace(old, new, 1))
    projects = tmp_path / "projects"
    r = invoke("new", "p", "--from", blueprint.parent / "llama", "--projects-dir", projects)
    assert r.exit_code == 2
    msg = one_error(r.stderr)
    assert msg.startswith(f"error: {template}:{line}: {variable}: undefined template variable ("), msg
    assert msg.endswith("); is it misspelt?")
    assert not (projects / "p").exists()
    assert leftovers(projects) == []


# -- tokenizer larger than the model's vocabulary -------------------------------------------------


def test_tokenizer_larger_than_vocab_caught_at_build(proj: Path, tmp_path: Path):
    """Row: tokenizer larger than the model's vocab: caught at build time, not on the device."""
    before = snapshot(proj)
    r = invoke("build", proj, *sets({"model.vocab_size": 100}), "--force", "--save-weights")
    assert r.exit_code == 2
    assert one_error(r.stderr) == (
        f"error: {proj / 'scaffold.toml'}: model.vocab_size: the tokenizer has 262 tokens but model.vocab_size "
        "is 100; raise model.vocab_size to at least 262"
    )
    assert snapshot(proj) == before
    assert leftovers(proj) == []
    # the same for a project created with too small a vocabulary: no model folder appears
    projects = tmp_path / "fresh"
    assert (
        invoke(
            "new",
            "small",
            "--from",
            "llama",
            "--projects-dir",
            projects,
            *sets({**TINY, "model.vocab_size": 100}),
        ).exit_code
        == 0
    )
    r = invoke("test", projects / "small")
    assert r.exit_code == 2
    assert "model.vocab_size: the tokenizer has 262 tokens" in one_error(r.stderr)
    assert not (projects / "small" / "model").exists()


# -- non-finite loss ------------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [False, True], ids=["adamw", "fused-optimizer"])
def test_non_finite_loss_stops_with_step_and_parameter(proj: Path, fused: bool):
    """Row: NaN or inf loss / gradients: stop (exit 4) with the step, the loss or gradient and the first
    bad parameter (or that the parameters are finite and the computation overflowed)."""
    before, records = snapshot(proj), set((proj / RUNS_DIR).glob("*/summary.json"))
    # an AdamW step of lr 1e30 makes the weights ~1e30: step 1 trains, step 2's products overflow
    # float32 and its loss or its gradients are not finite
    args = ["test", proj, "--lr", "1e30", "--steps", "3"]
    args += ["--fuse-optim-with-backward"] if fused else []
    r = invoke(*args)
    assert r.exit_code == 4, r.output
    msg = one_error(r.stderr)
    param = (
        r"((model|lm_head)\.\S+|none \(the parameters are finite; the input or the computation overflowed\))"
    )
    assert re.fullmatch(
        rf"error: step 2: (loss is (nan|inf|-inf); first bad parameter: {param}"
        rf"|non-finite gradient(; first bad parameter:| in parameter) {param})",
        msg,
    ), msg
    assert "step 1/3  loss" in r.stdout
    assert snapshot(proj) == before
    (record,) = set((proj / RUNS_DIR).glob("*/summary.json")) - records  # the failed run is recorded
    summary = json.loads(record.read_text())
    assert summary["status"] == "failed" and summary["error"] == msg.removeprefix("error: ")


# -- devices that do not exist --------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "gpu", "tpu:0"])
def test_missing_device_refused_before_build(tmp_path: Path, device: str):
    """Row: device `cuda` without CUDA, `cuda:7` on one GPU, `gpu`: the available devices are listed,
    before any build is written."""
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > (7 if device == "cuda:7" else 0):
        pytest.skip("this machine has that device")
    projects = tmp_path / "projects"
    assert invoke("new", "p", "--from", "llama", "--projects-dir", projects, *sets(TINY)).exit_code == 0
    before = snapshot(projects)
    r = invoke("test", projects / "p", "--device", device)
    assert r.exit_code == 2
    msg = one_error(r.stderr)
    assert msg.startswith("error: test.device: ") and repr(device) in msg, msg
    from scaffold.devices import available_devices

    assert msg.endswith("available: " + ", ".join(available_devices())), msg
    assert snapshot(projects) == before
    assert not (projects / "p" / "model").exists()


# -- errors in general ----------------------------------------------------------------------------


def test_debug_shows_traceback_and_plain_run_does_not(tmp_path: Path):
    plain = run("build", tmp_path / "nope")
    assert plain.returncode == 2
    assert one_error(plain.stderr) == f"error: {tmp_path / 'nope'}: no such project folder"
    debug = run("--debug", "build", tmp_path / "nope")
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.rstrip().endswith(
        f"scaffold.errors.ProjectError: {tmp_path / 'nope'}: no such project folder"
    )


def test_help_documents_exit_codes():
    r = invoke("--help")
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    for code, what in [("1", "internal error"), ("2", "usage"), ("3", "integrity"), ("4", "test failure")]:
        assert f"{code} {what}" in text
