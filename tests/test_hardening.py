"""Hardening: scaffold never deletes what it did not write, never runs template code, and gives a
one-line usage (2) or integrity (3) error for every bad input. One test per row of docs/errors.md's
"bad inputs" table; each asserts the exit code, the one line, and that nothing on disk was lost.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scaffold.files import BUILD_RECORD
from tests import test_reliability as _reliability
from tests.test_reliability import (
    REPO,
    TINY,
    error_lines,
    invoke,
    leftovers,
    one_error,
    proc_env,
    sets,
    snapshot,
)

base = _reliability.base  # the session fixture: a projects folder with a built tiny project
proj = _reliability.proj  # a private copy of it per test

SENTINEL = "my own notes: scaffold must never delete this"


def sentinel_folder(folder: Path) -> Path:
    """A user's folder holding a file scaffold did not write."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text(SENTINEL)
    return folder


# -- --force replaces only what scaffold wrote ------------------------------------------------------


@pytest.mark.parametrize(
    "case", ["project-folder", "projects-folder", "sibling-project", "user-folder", "home", "root", "file"]
)
def test_build_force_never_replaces_a_folder_scaffold_did_not_write(proj: Path, tmp_path: Path, case: str):
    """Row: `build --output-dir X --force` over the project, its projects folder, a sibling project, a
    user's folder, a home directory, `/` or a file: refused naming the folder; everything survives."""
    env = None
    if case == "project-folder":
        target = proj
    elif case == "projects-folder":
        target = proj.parent
    elif case == "sibling-project":
        assert (
            invoke("new", "sib", "--from", "llama", "--projects-dir", proj.parent, *sets(TINY)).exit_code == 0
        )
        target = proj.parent / "sib"
    elif case == "user-folder":
        target = sentinel_folder(tmp_path / "mine")
    elif case == "home":
        target = sentinel_folder(tmp_path / "home")
        env = {"HOME": str(target)}
    elif case == "root":
        target = Path("/")
    else:
        target = tmp_path / "notes.txt"
        target.write_text(SENTINEL)
    watched = tmp_path if case != "root" else proj
    before = snapshot(watched)
    r = invoke("build", proj, "--output-dir", target, "--force", env=env)
    assert r.exit_code == 2, r.output
    line = one_error(r.stderr)
    assert line.startswith(f"error: --output-dir {target}: "), line
    assert line.endswith("scaffold only replaces folders it wrote, --force included"), line
    assert snapshot(watched) == before
    assert leftovers(watched if case != "file" else tmp_path) == []


def test_build_force_replaces_its_own_build_but_not_one_holding_user_files(proj: Path, tmp_path: Path):
    """The rule's other side: a stale build scaffold wrote is replaced with --force; the same build
    with a user's file added is refused, and the file survives."""
    out = tmp_path / "out"
    assert invoke("build", proj, "--output-dir", out).exit_code == 0
    stale = sets({"model.initializer_range": 0.05})
    r = invoke("build", proj, "--output-dir", out, *stale)
    assert r.exit_code == 2 and "stale build" in one_error(r.stderr) and "pass --force" in r.stderr
    r = invoke("build", proj, "--output-dir", out, *stale, "--force")
    assert r.exit_code == 0, r.output
    (out / "notes.txt").write_text(SENTINEL)
    r = invoke("build", proj, "--output-dir", out, "--force")
    assert r.exit_code == 2
    assert "holds files scaffold did not write (" in one_error(r.stderr)
    assert (out / "notes.txt").read_text() == SENTINEL


def test_new_force_never_replaces_a_folder_that_is_not_a_project(tmp_path: Path):
    """Row: `new NAME --force` where NAME is a user's folder: refused; the folder is untouched."""
    projects = tmp_path / "projects"
    mine = sentinel_folder(projects / "mine")
    before = snapshot(tmp_path)
    r = invoke("new", "mine", "--from", "llama", "--projects-dir", projects, "--force", *sets(TINY))
    assert r.exit_code == 2
    assert one_error(r.stderr).startswith(f"error: {mine}: holds files scaffold did not write (notes.txt)")
    assert snapshot(tmp_path) == before
    assert leftovers(projects) == []


def test_checkpoint_save_never_replaces_a_user_folder(tmp_path: Path, tiny_llama_dir: Path):
    """Row: a checkpoint saved into a user's folder (it would be swapped whole): refused."""
    from scaffold.build.checkpoint import save_checkpoint
    from scaffold.build.construct import construct
    from scaffold.errors import ProjectError

    mine = sentinel_folder(tmp_path / "mine")
    (mine / "data").mkdir()
    (mine / "data" / "x.txt").write_text("x")
    before = snapshot(tmp_path)
    model = construct(tiny_llama_dir, device="cpu")
    with pytest.raises(ProjectError, match=r"holds files scaffold did not write \(data/, notes.txt\)"):
        save_checkpoint(mine, model)
    assert snapshot(tmp_path) == before
    report = save_checkpoint(tmp_path / "fresh", model)  # an empty or new folder is fine
    assert report.files == ["model.safetensors"]


def test_test_output_dir_never_replaces_a_user_folder(proj: Path, tmp_path: Path):
    """Row: `test`'s builds (--output-dir) follow the same rule, --force or not."""
    mine = sentinel_folder(tmp_path / "mine")
    before = snapshot(tmp_path)
    for extra in ([], ["--force"]):
        r = invoke("test", proj, "--output-dir", mine, *sets({"model.initializer_range": 0.05}), *extra)
        assert r.exit_code == 2, r.output
        assert one_error(r.stderr).startswith(
            f"error: --output-dir {mine}: holds files scaffold did not write"
        )
    assert snapshot(tmp_path) == before


def test_test_force_rebuilds_what_the_advice_says(proj: Path):
    """Row: `test` says "pass --force", and `test --force` rebuilds the damaged build."""
    config = proj / "model" / "config.json"
    config.write_text(config.read_text().replace('"model_type"', '"model_tipe"'))  # same size, garbled
    r = invoke("test", proj, "--steps", "1")
    assert r.exit_code == 3
    assert one_error(r.stderr).startswith(f"error: {config}: changed: its sha256 differs")
    assert "pass --force to rebuild" in r.stderr
    r = invoke("test", proj, "--steps", "1", "--force")
    assert r.exit_code == 0, r.output
    assert invoke("verify", proj).exit_code == 0


# -- template code never runs -----------------------------------------------------------------------

ESCAPES = {
    "cycler-globals": "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "joiner-globals": "{{ joiner.__init__.__globals__['os'].system('touch MARKER') }}",
    "str-mro": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "lipsum-globals": "{{ lipsum.__globals__['os'].popen('touch MARKER').read() }}",
    "format-attr": "{{ '{0.__class__.__init__.__globals__}'.format(cycler) }}",
}


@pytest.mark.parametrize("escape", list(ESCAPES), ids=list(ESCAPES))
def test_template_escapes_fail_in_the_sandbox(proj: Path, tmp_path: Path, escape: str):
    """Row: a blueprint's README.md.jinja that reaches Python internals: the model card re-rendered by
    build (and show, test) for a variant renders in Copier's sandbox (jinja2's SandboxedEnvironment),
    as `new` does; the escape fails and nothing runs."""
    shutil.copytree(REPO / "blueprints" / "llama", tmp_path / "evil" / "llama")
    shutil.copytree(REPO / "blueprints" / "_shared", tmp_path / "evil" / "_shared")
    bp = tmp_path / "evil" / "llama"
    marker = tmp_path / "ran"
    readme = tmp_path / "evil" / "_shared" / "template" / "README.md.jinja"
    readme.write_text(readme.read_text() + "\n" + ESCAPES[escape].replace("MARKER", str(marker)) + "\n")
    manifest = proj / "scaffold.toml"
    assert 'blueprint = "llama"' in manifest.read_text()
    manifest.write_text(manifest.read_text().replace('blueprint = "llama"', f'blueprint = "{bp}"'))
    before = snapshot(proj)
    r = invoke("build", proj, "--model-name", "renamed", "--output-dir", tmp_path / "out")
    assert r.exit_code == 2, r.output
    line = one_error(r.stderr)
    assert line.startswith(f"error: {readme}:"), line
    assert "sandbox" in line or "unsafe" in line, line
    assert not marker.exists()
    assert snapshot(proj) == before
    assert not (tmp_path / "out").exists()
    # `scaffold new` renders in Copier's sandbox: the same template is refused there too
    r = invoke("new", "p", "--from", bp, "--projects-dir", tmp_path / "projects", *sets(TINY))
    assert r.exit_code == 2, r.output
    assert not marker.exists()
    assert not (tmp_path / "projects" / "p").exists()


# -- paths from blueprints and records stay inside ---------------------------------------------------


@pytest.mark.parametrize("value", ["/etc/passwd", "../../outside.py", "sub/../../x.py"])
def test_blueprint_file_names_that_leave_the_project_are_refused(tmp_path: Path, value: str):
    """Row: blueprint.toml's modeling_file = "/etc/passwd" (or with ..): refused at load."""
    shutil.copytree(REPO / "blueprints" / "llama", tmp_path / "bp" / "llama")
    shutil.copytree(REPO / "blueprints" / "_shared", tmp_path / "bp" / "_shared")
    bp = tmp_path / "bp" / "llama"
    toml = bp / "blueprint.toml"
    text = toml.read_text()
    assert 'class_prefix = "Llama"\n' in text
    toml.write_text(
        text.replace('class_prefix = "Llama"\n', f'class_prefix = "Llama"\nmodeling_file = "{value}"\n')
    )
    r = invoke("new", "p", "--from", bp, "--projects-dir", tmp_path / "projects", *sets(TINY))
    assert r.exit_code == 2
    assert one_error(r.stderr) == (
        f"error: {toml}: blueprint.modeling_file: must be a file name inside the project, not a path that "
        f"leaves it: {value!r}"
    )
    assert not (tmp_path / "projects").exists()


@pytest.mark.parametrize(
    ("name", "entry", "problem"),
    [
        ("../../etc/hostname", {"size": 1, "sha256": "0" * 64}, "names a file outside the model directory"),
        ("/etc/hostname", {"size": 1, "sha256": "0" * 64}, "names a file outside the model directory"),
        ("config.json", "big", "must be a table with size and sha256, got str"),
        (
            "config.json",
            {"size": "1", "sha256": 3},
            "must be a table with an integer size and a sha256 string",
        ),
    ],
    ids=["dotdot", "absolute", "wrong-type", "wrong-field-types"],
)
def test_verify_never_reads_outside_and_names_bad_record_entries(proj: Path, name: str, entry, problem: str):
    """Rows: a record naming ../../etc/hostname; a record entry of the wrong type: integrity errors
    naming the entry (exit 3), also from build's quick check."""
    model = proj / "model"
    record = model / BUILD_RECORD
    stamp = json.loads(record.read_text())
    stamp["files"][name] = entry
    record.write_text(json.dumps(stamp))
    before = snapshot(proj)
    r = invoke("verify", model)
    assert r.exit_code == 3
    assert any(x.startswith(f"error: {record}: entry {name!r}: {problem}") for x in error_lines(r.stderr)), (
        r.stderr
    )
    b = invoke("build", proj, "--save-weights")
    assert b.exit_code == 3, b.output
    assert one_error(b.stderr).startswith(f"error: {record}: entry {name!r}: {problem}")
    assert snapshot(proj) == before


# -- manifest values that libraries reject later -----------------------------------------------------


def test_generation_settings_transformers_rejects(proj: Path):
    """Row: generation.top_p with do_sample = false: validated by transformers' GenerationConfig,
    the complaint in one line naming the keys; nothing written."""
    before = snapshot(proj)
    r = invoke("build", proj, *sets({"generation.top_p": 0.9}), "--force")
    assert r.exit_code == 2
    line = one_error(r.stderr)
    assert line.startswith(
        f"error: {proj / 'scaffold.toml'}: generation.top_p: transformers rejects top_p, do_sample as given: "
    ), line
    assert snapshot(proj) == before
    ok = invoke("build", proj, *sets({"generation.top_p": 0.9, "generation.do_sample": True}), "--force")
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize(
    ("values", "key", "message"),
    [
        (
            {"model.head_dim": 15},
            "model.head_dim",
            "the head width 15 is odd; rotary embeddings rotate pairs",
        ),
        (
            {
                "model.rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 4.0,
                    "high_freq_factor": 1.0,
                    "original_max_position_embeddings": 32,
                }
            },
            "model.rope_scaling.low_freq_factor",
            "4.0 must be below high_freq_factor = 1.0",
        ),
        (
            {"model.rope_scaling": {"rope_type": "linear", "factor": 2.0, "low_freq_factor": 1.0}},
            "model.rope_scaling.low_freq_factor",
            "unknown key for rope_type linear; expected factor",
        ),
        (
            {
                "model.rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192,
                }
            },
            "model.rope_scaling.original_max_position_embeddings",
            "8192 is longer than model.max_position_embeddings = 64",
        ),
    ],
    ids=["odd-head-dim", "low-above-high", "unknown-sub-key", "original-longer"],
)
def test_rope_mistakes_are_usage_errors(proj: Path, values: dict, key: str, message: str):
    """Row: an odd head_dim with RoPE; inconsistent rope_scaling."""
    before = snapshot(proj)
    args = [
        x
        for k, v in values.items()
        for x in (["--rope-scaling", json.dumps(v)] if k == "model.rope_scaling" else sets({k: v}))
    ]
    r = invoke("build", proj, *args, "--force")
    assert r.exit_code == 2
    assert one_error(r.stderr).startswith(f"error: {proj / 'scaffold.toml'}: {key}: {message}")
    assert snapshot(proj) == before


def test_partial_rotary_width_must_be_even():
    """Row: a partial rotary width that is odd (for families with partial_rotary_factor)."""
    from scaffold.spec import manifest

    model = {"hidden_size": 64, "num_attention_heads": 4, "rope_theta": 1e4, "partial_rotary_factor": 0.25}
    # 0.25 of a 16-wide head rotates 4 channels: fine; 0.3125 rotates 5: refused
    assert manifest._cross_checks({"model": model}) == []
    problems = manifest._cross_checks({"model": {**model, "partial_rotary_factor": 0.3125}})
    assert problems == [
        (
            "model.partial_rotary_factor",
            "gives a rotary width of 5 (of head width 16); it must be even and positive",
        )
    ]


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (
            ["--sequence-length", "1"],
            "--sequence-length: 1 token(s) leave no next token to predict; use 2 or more",
        ),
        (
            ["--sequence-length", "65"],
            "--sequence-length: 65 is longer than model.max_position_embeddings = 64",
        ),
    ],
    ids=["one-token", "longer-than-positions"],
)
def test_sequence_length_the_model_cannot_train_on(proj: Path, flag: list[str], message: str):
    """Rows: --sequence-length 1; max_position_embeddings shorter than the test's sequence."""
    before = snapshot(proj)
    r = invoke("test", proj, *flag)
    assert r.exit_code == 2
    assert one_error(r.stderr) == f"error: {message}"
    assert snapshot(proj) == before


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("model.rope_theta", "inf"),
        ("model.rms_norm_eps", "nan"),
        ("model.initializer_range", "1e309"),
        ("model.attention_dropout", "nan"),
        ("test.lr", "inf"),
    ],
)
def test_non_finite_numbers_are_refused(proj: Path, key: str, value: str):
    """Row: inf, nan, 1e309 (which TOML reads as inf) in rates, eps, theta, factors and --lr."""
    before = snapshot(proj)
    r = invoke("build", proj, "--set", f"{key}={value}", "--force")
    assert r.exit_code == 2
    shown = "inf" if value == "1e309" else value
    assert (
        one_error(r.stderr) == f"error: {proj / 'scaffold.toml'}: {key}: must be a finite number, got {shown}"
    )
    scaling = {"rope_type": "linear", "factor": float(value)}
    r = invoke("build", proj, "--rope-scaling", json.dumps(scaling))  # JSON's Infinity and NaN
    assert r.exit_code == 2
    assert "model.rope_scaling.factor: must be a positive number for linear" in one_error(r.stderr)
    r = invoke("test", proj, "--lr", value)
    assert r.exit_code == 2, r.output
    assert snapshot(proj) == before


def test_sizes_that_cannot_fit_are_refused_before_allocating(proj: Path):
    """Row: sizes whose parameters or activations cannot fit: the estimate and the free memory, exit 2,
    before anything is allocated (the process stays small)."""
    from scaffold.run.smoke import _peak_rss

    before = snapshot(proj)
    r = invoke("test", proj, *sets({"model.intermediate_size": 2**30}), "--steps", "1")
    assert r.exit_code == 2, r.output
    line = one_error(r.stderr)
    assert re.fullmatch(
        r"error: test\.device: [\d,]+ parameters with batch 2 x 16 need about [\d,.]+ (GiB|TiB) \(parameters .*, "
        r"gradients .*, AdamW state .*, activations .*\), but cpu has [\d,.]+ GiB available; .*",
        line,
    ), line
    assert _peak_rss() < 8 * 2**30  # nothing near the estimate was allocated
    assert snapshot(proj) == before


# -- files that are not what they should be -----------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda t: t.replace("[project]", 'project = "llama"\n[projectx]', 1),
            "project: must be a table ([project]), got str",
        ),
        (lambda t: "\ufeff" + t, "starts with a byte order mark"),
        (None, "not UTF-8 text (byte "),
    ],
    ids=["table-as-value", "bom", "not-utf8"],
)
def test_manifest_that_is_not_a_manifest(proj: Path, damage, message: str):
    """Rows: a table given as a value; a manifest with a BOM or that is not UTF-8."""
    manifest = proj / "scaffold.toml"
    if damage is None:
        manifest.write_bytes(manifest.read_bytes() + b'\ndescription = "\xff"\n')
    else:
        manifest.write_text(damage(manifest.read_text()), encoding="utf-8")
    before = snapshot(proj)
    r = invoke("build", proj, "--force")
    assert r.exit_code == 2, r.output
    assert one_error(r.stderr).startswith(f"error: {manifest}: {message}")
    assert snapshot(proj) == before


def test_corrupt_project_tokenizer_is_integrity(proj: Path):
    """Row: a project tokenizer.json that is truncated: integrity (3) naming it."""
    tok = proj / "tokenizer.json"
    tok.write_bytes(tok.read_bytes()[:300])
    before = snapshot(proj)
    r = invoke("build", proj, "--force")
    assert r.exit_code == 3, r.output
    assert one_error(r.stderr).startswith(f"error: {tok}: corrupt or truncated tokenizer (")
    assert snapshot(proj) == before


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"tokenizer.kind": "pretrained", "tokenizer.path": "scaffold.toml"},
            "not a tokenizers tokenizer.json",
        ),
        ({"tokenizer.kind": "bpe", "tokenizer.files": [1, 2]}, "tokenizer.files: must list file names"),
        (
            {"tokenizer.kind": "bpe", "tokenizer.files": ["blob.bin"]},
            "tokenizer.files: blob.bin: unsupported file type",
        ),
        ({"tokenizer.kind": "bpe", "tokenizer.files": ["blob.txt"]}, "cannot be read as text"),
    ],
    ids=["pretrained-not-a-tokenizer", "files-not-strings", "files-not-text-type", "files-not-text"],
)
def test_tokenizer_inputs_that_are_not_tokenizers_or_text(proj: Path, values: dict, message: str):
    """Rows: a pretrained tokenizer path that is not a tokenizer; BPE files that are not text or not strings."""
    blob = bytes(range(256)) * 8
    (proj / "blob.bin").write_bytes(blob)
    (proj / "blob.txt").write_bytes(blob)
    before = snapshot(proj)
    r = invoke("build", proj, *sets(values), "--force")
    assert r.exit_code == 2, r.output
    assert message in one_error(r.stderr)
    assert snapshot(proj) == before


def test_garbled_file_of_unchanged_size_caught_before_use(proj: Path):
    """Row: config.json garbled without changing its size: the quick check hashes small files (3)."""
    config = proj / "model" / "config.json"
    config.write_text(config.read_text().replace('"model_type"', '"model_tipe"'))
    before = snapshot(proj)
    r = invoke("build", proj, "--save-weights")
    assert r.exit_code == 3
    assert one_error(r.stderr).startswith(f"error: {config}: changed: its sha256 differs from {BUILD_RECORD}")
    assert snapshot(proj) == before


# -- the machine: full disks, permissions --------------------------------------------------------------


def _can_mount_tmpfs() -> bool:
    try:
        return subprocess.run(["unshare", "-Urm", "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare -Urm to mount a small tmpfs")
def test_full_disk_never_leaves_a_zero_byte_file(proj: Path, tmp_path: Path):
    """Row: `show -o` on a full disk: one line naming the file and the operation; the previous file is
    kept and no 0-byte or temporary file is left. The disk is a 64 KiB tmpfs in a private mount."""
    disk = tmp_path / "disk"
    disk.mkdir()
    cmd = " ".join(map(str, [sys.executable, "-m", "scaffold.cli", "show", proj, "-o", disk / "out.txt"]))
    script = (
        f"mount -t tmpfs -o size=64k tmpfs {disk} && echo previous > {disk}/out.txt && "
        f"(dd if=/dev/zero of={disk}/filler bs=4k 2>/dev/null; true) && "
        f"{cmd}; rc=$?; ls -A {disk} 1>&2; cat {disk}/out.txt 1>&2; exit $rc"
    )
    r = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", script], env=proc_env(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2, r.stderr
    line = one_error(r.stderr)
    assert line == f"error: {disk / 'out.txt'}: cannot write: no space left on the device", line
    rest = [x for x in r.stderr.splitlines() if not x.startswith("error: ")]
    assert rest == ["filler", "out.txt", "previous"], r.stderr


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs unshare -Urm to mount a read-only folder")
def test_unwritable_folder_names_path_and_operation(proj: Path, tmp_path: Path):
    """Row: an unwritable folder: `build --output-dir` inside a read-only mount is one line naming the
    path and the operation (a bind mount in a private namespace: root, too, cannot write there)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    cmd = " ".join(
        map(str, [sys.executable, "-m", "scaffold.cli", "build", proj, "--output-dir", ro / "model"])
    )
    script = f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && {cmd}"
    r = subprocess.run(
        ["unshare", "-Urm", "sh", "-c", script], env=proc_env(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2, r.stderr
    line = one_error(r.stderr)
    assert line.startswith(f"error: {ro}/") and line.endswith(
        ": cannot write: the file system is read-only"
    ), line
    assert list(ro.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file whatever its mode")
def test_unreadable_manifest_names_path_and_operation(proj: Path):
    """Row: an unreadable file (permissions): one line naming it and the operation."""
    manifest = proj / "scaffold.toml"
    manifest.chmod(0o000)
    try:
        r = invoke("build", proj)
    finally:
        manifest.chmod(0o644)
    assert r.exit_code == 2
    assert one_error(r.stderr) == f"error: {manifest}: cannot read: Permission denied"


# -- flags and environment -------------------------------------------------------------------------------


def test_seed_out_of_range(proj: Path):
    """Row: --seed out of range (torch takes 0 to 2^32 - 1 here)."""
    r = invoke("test", proj, "--seed", str(2**32))
    assert r.exit_code == 2
    assert "Invalid value for '--seed': 4294967296 is not in the range 0<=x<=4294967295" in r.stderr
    r = invoke("build", proj, *sets({"test.seed": 2**40}))
    assert r.exit_code == 2
    assert (
        one_error(r.stderr)
        == f"error: {proj / 'scaffold.toml'}: test.seed: must be in [0, 2^32 - 1], got {2**40}"
    )


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "soon"])
def test_lock_timeout_must_be_a_finite_number(proj: Path, value: str):
    """Row: SCAFFOLD_LOCK_TIMEOUT that is not a finite non-negative number."""
    r = invoke("build", proj, env={"SCAFFOLD_LOCK_TIMEOUT": value})
    assert r.exit_code == 2
    assert one_error(r.stderr) == (
        f"error: SCAFFOLD_LOCK_TIMEOUT: must be a finite number of seconds, 0 or more; got {value!r}"
    )


@pytest.mark.parametrize("name", ["tiny\n", "a\tb", "x\x1b[31m", "\x00", ""])
def test_project_names_with_control_characters_or_empty(tmp_path: Path, name: str):
    """Row: project names with control characters (a trailing newline) or empty."""
    r = invoke("new", name, "--from", "llama", "--projects-dir", tmp_path / "projects")
    assert r.exit_code == 2
    assert f"invalid project name {name!r}" in r.stderr
    assert not (tmp_path / "projects").exists()


def test_missing_checkpoint_is_usage(proj: Path, tmp_path: Path):
    """Row: a missing --load-from-checkpoint path is a usage error (2), not integrity (3)."""
    r = invoke("test", proj, "--load-from-checkpoint", tmp_path / "nowhere")
    assert r.exit_code == 2
    assert one_error(r.stderr) == f"error: {tmp_path / 'nowhere'}: no such checkpoint folder or file"


# -- float16 --------------------------------------------------------------------------------------------------

FAMILIES = {
    "llama": TINY,
    "causal_lm": {k: v for k, v in TINY.items() if k not in ("model.num_key_value_heads", "model.head_dim")},
    "deepone": {k: v for k, v in TINY.items() if k not in ("model.num_key_value_heads", "model.head_dim")},
    "single_head": {
        k: v
        for k, v in TINY.items()
        if k not in ("model.num_key_value_heads", "model.head_dim", "model.num_attention_heads")
    },
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_float16_is_mixed_precision_on_every_family(tmp_path: Path, family: str):
    """Row: `test --dtype float16` trains in mixed precision (float32 master weights, float16 autocast,
    GradScaler), says so, and its losses stay finite on every family."""
    projects = tmp_path / "projects"
    r = invoke("new", "p", "--from", family, "--projects-dir", projects, *sets(FAMILIES[family]))
    assert r.exit_code == 0, r.output
    r = invoke("test", projects / "p", "--dtype", "float16", "--steps", "4", "--lr", "3e-3")
    assert r.exit_code == 0, r.output
    assert (
        "float16 mixed precision (float32 master weights, float16 autocast, torch.amp.GradScaler)" in r.stdout
    )
    losses = [float(x) for x in re.findall(r"step \d+/4  loss (\S+)", r.stdout)]
    assert len(losses) == 4 and all(0 < x < 20 for x in losses), r.stdout
    r = invoke("test", projects / "p", "--dtype", "float16", "--fuse-optim-with-backward", "--steps", "1")
    assert r.exit_code == 2
    assert "float16 mixed precision steps after the gradient scaler" in one_error(r.stderr)


def test_verify_never_follows_a_link_out_of_the_model_directory(proj: Path, tmp_path: Path):
    """Row: verify never reads outside the model directory: a recorded file replaced by a symbolic link
    to a file elsewhere is named, not read (3)."""
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    config = proj / "model" / "config.json"
    config.unlink()
    config.symlink_to(outside)
    r = invoke("verify", proj)
    assert r.exit_code == 3
    assert one_error(r.stderr) == (
        f"error: {config}: is a symbolic link; a build writes plain files, and verify reads nothing outside the folder"
    )
