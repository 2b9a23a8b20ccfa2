"""Hostile and damaged inputs (issue 19): blueprint data that would become code, templates that
would read the host, links out of a project, broken user code, damaged records, odd imports.

Each test drives the real CLI (click's CliRunner, or a real process where a hang is the bug) and
checks what a user sees: one error line with its exit code, and nothing of theirs changed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests import test_reliability as _reliability
from tests.test_reliability import REPO, TINY, invoke, one_error, sets, snapshot

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

base = _reliability.base  # the session fixture: a projects folder with a built tiny project
proj = _reliability.proj  # a private copy of it per test


def copy_family(tmp_path: Path, family: str = "llama") -> Path:
    """A private copy of a built-in family and the shared template beside it."""
    shutil.copytree(REPO / "blueprints" / family, tmp_path / "bp" / family)
    shutil.copytree(REPO / "blueprints" / "_shared", tmp_path / "bp" / "_shared")
    return tmp_path / "bp" / family


# -- blueprint data never becomes code ----------------------------------------------------------------

MARKER = "MARKER"
CODE = '__import__("os").system("touch MARKER")'
FIELD_PAYLOAD = f"x: int = 0\n    {CODE}\n    y"  # a config field that would run at import


def _set(data: dict, dotted: list, value) -> None:
    for part in dotted[:-1]:
        data = data.setdefault(part, {}) if isinstance(data, dict) else data[part]
    if isinstance(data, list):
        data[dotted[-1]] = value
    else:
        data[dotted[-1]] = value


def _rename_key(data: dict, dotted: list, new: str) -> None:
    for part in dotted[:-1]:
        data = data[part]
    data[new] = data.pop(dotted[-1])


# (what is set, how, the key the error names): every field of blueprint.toml that reaches a template
INJECTIONS = {
    "name": (["blueprint", "name"], f"llama\n{CODE}", "blueprint.name"),
    "version": (["blueprint", "version"], f"0.1.0\n{CODE}", "blueprint.version"),
    "description": (["blueprint", "description"], f'"""\n{CODE}\n"""', "blueprint.description"),
    "class_prefix": (["blueprint", "class_prefix"], f"Llama(object): pass\n{CODE}\nclass X", "blueprint.class_prefix"),
    "config_class": (["blueprint", "config_class"], f"C(object): pass\n{CODE}\nclass X", "blueprint.config_class"),
    "base_model_class": (["blueprint", "base_model_class"], "M; " + CODE, "blueprint.base_model_class"),
    "causal_lm_class": (["blueprint", "causal_lm_class"], "M; " + CODE, "blueprint.causal_lm_class"),
    "modeling_file": (["blueprint", "modeling_file"], "modeling_x;import os.py", "blueprint.modeling_file"),
    "configuration_file": (["blueprint", "configuration_file"], "c-x.py", "blueprint.configuration_file"),
    "transformers_class": (["blueprint", "transformers_class"], f'X``"""\n{CODE}\n"""', "blueprint.transformers_class"),
    "transformers_model_type": (["blueprint", "transformers_model_type"], f'llama"\n{CODE}', "blueprint.transformers_model_type"),
    "default_preset": (["blueprint", "default_preset"], f"4m\n{CODE}", "blueprint.default_preset"),
    "optional_model_keys": (["blueprint", "optional_model_keys", 0], FIELD_PAYLOAD, "blueprint.optional_model_keys[0]"),
    "attn_implementations": (["blueprint", "attn_implementations", 0], f"eager\n{CODE}", "blueprint.attn_implementations[0]"),
    "import_renames": (["blueprint", "import_renames", "x"], FIELD_PAYLOAD, "blueprint.import_renames.x"),
    "defaults-model-key": ("rename", ["defaults", "model", "rms_norm_eps"], "defaults.model."),
    "defaults-model-value": (["defaults", "model", "rope_theta"], "date", "defaults.model.rope_theta"),
    "preset-name": ("rename", ["presets", "4m"], "presets."),
    "preset-model-key": ("rename", ["presets", "4m", "model", "rope_theta"], "presets.4m.model."),
    "structure": (["structure", "hidden_act"], f'silu"]\n{CODE}\n["', "model.hidden_act"),
    "names": (["names", "q_proj"], f"q = None\n        {CODE}\n        self.x", "names.q_proj"),
    "parallel": (["parallel", "q_proj"], f'q": {CODE}, "x', "parallel.q_proj"),
    "parallel-styles": (["parallel", "styles", f'q": {CODE}, "x'], "colwise", "parallel.styles."),
}  # fmt: skip


@pytest.mark.parametrize("field", list(INJECTIONS), ids=list(INJECTIONS))
def test_blueprint_strings_never_become_code(tmp_path: Path, field: str, monkeypatch):
    """Rows: a data-only blueprint.toml whose strings would be pasted into the generated code (a config
    field running code at import, a class name closing its class...): every field is checked at load,
    `new` refuses with one line naming the key, nothing runs and nothing is written."""
    import datetime

    monkeypatch.chdir(tmp_path)  # where `touch MARKER` would land
    bp = copy_family(tmp_path)
    toml = bp / "blueprint.toml"
    data = tomllib.loads(toml.read_text())
    spec = INJECTIONS[field]
    if spec[0] == "rename":
        _rename_key(data, spec[1], FIELD_PAYLOAD)
        key = spec[2]
    else:
        path, value, key = spec
        _set(data, path, datetime.date(2024, 1, 1) if value == "date" else value)
    toml.write_text(tomli_w.dumps(data))
    r = invoke("new", "p", "--from", bp, "--projects-dir", tmp_path / "projects", *sets(TINY))
    assert r.exit_code == 2, r.output
    line = one_error(r.stderr)
    assert key in line, line
    assert not (tmp_path / MARKER).exists()
    assert not (tmp_path / "projects" / "p").exists()


def test_blueprint_changed_under_a_project_never_runs_at_build(proj: Path, tmp_path: Path, monkeypatch):
    """Row: the blueprint a project names gains a hostile optional_model_keys entry after `new`: the
    build refuses at load (exit 2 naming the key) before rendering or importing anything."""
    monkeypatch.chdir(tmp_path)
    bp = copy_family(tmp_path)
    manifest = proj / "scaffold.toml"
    manifest.write_text(manifest.read_text().replace('blueprint = "llama"', f'blueprint = "{bp}"'))
    toml = bp / "blueprint.toml"
    data = tomllib.loads(toml.read_text())
    data["blueprint"]["optional_model_keys"].append(FIELD_PAYLOAD)
    toml.write_text(tomli_w.dumps(data))
    before = snapshot(proj)
    r = invoke("build", proj, "--force")
    assert r.exit_code == 2, r.output
    assert "blueprint.optional_model_keys[3]" in one_error(r.stderr)
    assert not (tmp_path / MARKER).exists()
    assert snapshot(proj) == before


def test_project_name_in_the_manifest_never_becomes_code(proj: Path, tmp_path: Path, monkeypatch):
    """Row: project.name holding a newline (or a NUL) is pasted into the generated files' header
    comments: a usage error naming the key, before anything is rendered."""
    monkeypatch.chdir(tmp_path)
    manifest = proj / "scaffold.toml"
    data = tomllib.loads(manifest.read_text())
    assert data["project"]["name"] == "tiny"
    for bad in (f"tiny\n{CODE}", "ti\x00ny"):
        data["project"]["name"] = bad
        manifest.write_text(tomli_w.dumps(data))
        before = snapshot(proj)
        r = invoke("build", proj, "--force")
        assert r.exit_code == 2, r.output
        assert one_error(r.stderr).startswith(f"error: {manifest}: project.name: must be one line"), r.stderr
        assert snapshot(proj) == before
    assert not (tmp_path / MARKER).exists()


# -- templates cannot read the host -------------------------------------------------------------------

HOST_READS = {
    "expandvars": "{{ '$SCAFFOLD_TEST_SECRET' | expandvars }}",
    "expanduser": "{{ '~' | expanduser }}",
    "realpath": "{{ '.' | realpath }}",
    "relpath": "{{ '/' | relpath }}",
    "fileglob": "{{ '/etc/*' | fileglob }}",
}


@pytest.mark.parametrize("filter_name", list(HOST_READS), ids=list(HOST_READS))
def test_templates_have_no_filters_that_read_the_host(tmp_path: Path, filter_name: str):
    """Rows: a blueprint's template using Copier's default filters that read the environment, the
    home folder or the file system: the rendering environment offers none of them, so `new` fails
    with one line naming the template, and no secret lands in a file."""
    bp = copy_family(tmp_path)
    readme = tmp_path / "bp" / "_shared" / "template" / "README.md.jinja"
    readme.write_text(readme.read_text() + "\n" + HOST_READS[filter_name] + "\n")
    r = invoke(
        "new", "p", "--from", bp, "--projects-dir", tmp_path / "projects", *sets(TINY),
        env={"SCAFFOLD_TEST_SECRET": "hunter2-secret"},
    )  # fmt: skip
    assert r.exit_code == 2, r.output
    line = one_error(r.stderr)
    assert f"No filter named '{filter_name}'" in line and "README.md.jinja" in line, line
    assert not (tmp_path / "projects" / "p").exists()
    assert "hunter2-secret" not in r.output


# -- no reads through links out of the project, no waiting on FIFOs -----------------------------------


def scaffold_proc(*args, timeout: float = 120):
    """``scaffold`` as a real process (a hang is the bug: it is killed after ``timeout``)."""
    import subprocess

    from tests.test_reliability import proc_env, scaffold_cmd

    return subprocess.run(
        scaffold_cmd(*args), env=proc_env(), capture_output=True, text=True, timeout=timeout
    )


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("hunter2: the outside file\n")
    return secret


def test_link_planted_in_the_rendering_store_is_never_read(proj: Path, tmp_path: Path):
    """Row: a symlink in .scaffold/rendered/ pointing outside: `scaffold diff` (and build) refuse with
    one integrity line naming it, and print nothing of the outside file."""
    secret = _secret(tmp_path)
    planted = proj / ".scaffold" / "rendered" / "README.md"
    planted.unlink()
    planted.symlink_to(secret)
    for args in (["diff", proj], ["build", proj, "--force"]):
        r = invoke(*args)
        assert r.exit_code == 3, r.output
        line = one_error(r.stderr)
        assert line.startswith(f"error: {planted}: is a link to {secret}, outside"), line
        assert "hunter2" not in r.output


def test_generated_file_linked_outside_is_neither_read_nor_replaced(proj: Path, tmp_path: Path):
    """Row: the project's README.md is a symlink to a file outside; a manifest change re-renders it:
    the build refuses (exit 3 naming the link) instead of reading the outside file and replacing the
    link by a copy; the outside file and the link are as they were."""
    secret = _secret(tmp_path)
    readme = proj / "README.md"
    readme.unlink()
    readme.symlink_to(secret)
    manifest = proj / "scaffold.toml"
    manifest.write_text(manifest.read_text().replace("intermediate_size = 64", "intermediate_size = 96"))
    before = snapshot(proj)
    r = invoke("build", proj)
    assert r.exit_code == 3, r.output
    assert one_error(r.stderr).startswith(f"error: {readme}: is a link to {secret}, outside"), r.stderr
    assert readme.is_symlink() and secret.read_text() == "hunter2: the outside file\n"
    assert snapshot(proj) == before
    r = invoke("diff", proj)
    assert r.exit_code == 3 and "hunter2" not in r.output, r.output


@pytest.mark.parametrize("name", ["README.md", ".scaffold/rendered/README.md", "scaffold.toml"])
def test_fifo_in_place_of_a_project_file_never_hangs(proj: Path, name: str):
    """Rows: a FIFO in place of README.md, of its rendering in .scaffold/, of the manifest: diff and
    build answer at once with one line naming it (they used to wait forever on the FIFO)."""
    import os

    target = proj / name
    target.unlink()
    os.mkfifo(target)
    for command in ("diff", "build"):
        r = scaffold_proc(command, proj, timeout=90)
        assert r.returncode in (2, 3), r.stderr
        line = one_error(r.stderr)
        assert line.startswith(f"error: {target}:") and "FIFO" in line, line


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.write_text("[1, 2]"), "damaged: a JSON list"),
        (lambda p: p.write_bytes(b'{"manifest": "\xff\xfe"}'), "not UTF-8 text (byte 14)"),
        (lambda p: p.write_text("[" * 100000), "nested more than 200 levels deep"),
    ],
    ids=["json-list", "not-utf8", "deeply-nested"],
)
def test_damaged_rendering_record_is_integrity(proj: Path, damage, message: str):
    """Rows: .scaffold/rendering.json that is a JSON list, not UTF-8, or nested 100000 deep: exit 3
    naming the file (it used to be taken as no record at all, or a RecursionError)."""
    state = proj / ".scaffold" / "rendering.json"
    damage(state)
    before = snapshot(proj)
    for args in (["diff", proj], ["build", proj, "--force"]):
        r = invoke(*args)
        assert r.exit_code == 3, r.output
        line = one_error(r.stderr)
        assert line.startswith(f"error: {state}: ") and message in line, line
    assert snapshot(proj) == before


def test_generated_file_not_utf8_is_integrity_and_kept(proj: Path):
    """Row: the modeling file holds bytes that are not UTF-8: build (which would merge into it) stops
    with exit 3 naming the file and the byte, and the bytes are kept."""
    modeling = proj / "modeling_llama.py"
    modeling.write_bytes(modeling.read_bytes() + b"\n# caf\xe9\n")
    manifest = proj / "scaffold.toml"
    manifest.write_text(manifest.read_text().replace("intermediate_size = 64", "intermediate_size = 96"))
    before = snapshot(proj)
    r = invoke("build", proj)
    assert r.exit_code == 3, r.output
    line = one_error(r.stderr)
    assert line.startswith(f"error: {modeling}: not UTF-8 text (byte "), line
    assert snapshot(proj) == before


# -- scaffold import --------------------------------------------------------------------------------


def _base_model_folder(tmp_path: Path, *, chat_template: str | None = None) -> Path:
    """A transformers llama folder with a tokenizer, as a base checkpoint ships it (no chat template)."""
    from scaffold.project.tokenizer import byte_tokenizer_json
    from tests._parity import tiny_hf_model

    source = tmp_path / "base-llama"
    tiny_hf_model("llama").save_pretrained(source)
    (source / "tokenizer.json").write_text(byte_tokenizer_json())
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>"}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (source / "tokenizer_config.json").write_text(json.dumps(config))
    return source


def test_import_of_a_base_model_without_a_chat_template_builds(tmp_path: Path):
    """Row: `scaffold import` of a model whose tokenizer has no chat template (Llama 2, Mistral v0.1,
    Pythia) wrote chat_template = "inherit", and the build it advised failed. The project now has no
    chat template, and the advised build succeeds; a tokenizer with one still inherits it."""
    from transformers import AutoTokenizer

    source = _base_model_folder(tmp_path)
    r = invoke("import", source, "--projects-dir", tmp_path / "projects")
    assert r.exit_code == 0, r.output
    project = tmp_path / "projects" / "base-llama"
    tokenizer = tomllib.loads((project / "scaffold.toml").read_text())["tokenizer"]
    assert tokenizer["kind"] == "pretrained" and tokenizer["chat_template"] == "", tokenizer
    r = invoke("build", project, "--load-from-checkpoint", source, "--save-weights")
    assert r.exit_code == 0, r.output
    assert not AutoTokenizer.from_pretrained(project / "model").chat_template
    # a tokenizer that has a chat template is still inherited
    with_chat = _base_model_folder(tmp_path / "chat", chat_template="{{ messages[0]['content'] }}")
    r = invoke("import", with_chat, "--projects-dir", tmp_path / "projects", "--name", "chat")
    assert r.exit_code == 0, r.output
    manifest = tomllib.loads((tmp_path / "projects" / "chat" / "scaffold.toml").read_text())
    assert manifest["tokenizer"]["chat_template"] == "inherit"
    r = invoke("build", tmp_path / "projects" / "chat")
    assert r.exit_code == 0, r.output
    tok = AutoTokenizer.from_pretrained(tmp_path / "projects" / "chat" / "model")
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "hi"


ODD_CONFIGS = {
    "model_type-list": ({"model_type": ["llama"]}, "config.json: model_type: unsupported model_type ['llama']"),
    "rope_parameters-list": ({"rope_parameters": [1, 2]}, "config.json: rope_parameters: must be a JSON object (or null), got list"),
    "rope_theta-text": ({"rope_parameters": None, "rope_theta": "abc"}, "config.json: rope_theta: must be a number, got str 'abc'"),
    "rope_scaling-text": ({"rope_parameters": None, "rope_theta": 1e4, "rope_scaling": "yes"}, "config.json: rope_scaling: must be a JSON object (or null), got str 'yes'"),
    "hidden_size-1e22": ({"hidden_size": 1e22}, "config.json: hidden_size: cannot be reproduced: must be an integer, got float 1e+22"),
    "vocab_size-2^63": ({"vocab_size": 2**63}, "config.json: vocab_size: cannot be reproduced: must fit in 64 bits"),
    "vocab_size-2^40": ({"vocab_size": 2**40}, "config.json: vocab_size: cannot be reproduced: must be at most 2147483647"),
    "deeply-nested": ({"extra": "NESTED"}, "config.json: nested more than 200 levels deep"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ODD_CONFIGS), ids=list(ODD_CONFIGS))
def test_import_of_configs_with_odd_types(tmp_path: Path, case: str):
    """Rows: config.json values of types transformers never writes (model_type a list, rope_parameters
    a list, rope_theta a string, rope_scaling a string), sizes past int64 or past any model, JSON nested
    100000 deep: one usage line naming config.json and the key; no project is written."""
    source = _base_model_folder(tmp_path)
    config = json.loads((source / "config.json").read_text())
    edit, message = ODD_CONFIGS[case]
    config.update(edit)
    text = json.dumps(config).replace('"NESTED"', "[" * 100000 + "]" * 100000)
    (source / "config.json").write_text(text)
    r = invoke("import", source, "--projects-dir", tmp_path / "projects")
    assert r.exit_code == 2, r.output
    line = one_error(r.stderr)
    assert line.startswith("error: ") and f"{source}/{message}" in line, line
    assert not (tmp_path / "projects").exists()


@pytest.mark.parametrize("damage", ["binary", "fifo", "nested"])
def test_import_of_a_damaged_tokenizer_names_it(tmp_path: Path, damage: str):
    """Rows: the model folder's tokenizer.json is binary, a FIFO, or nested 100000 deep: one line
    naming it (it was an internal error, or a hang), before any project is written."""
    import os

    source = _base_model_folder(tmp_path)
    tok = source / "tokenizer.json"
    if damage == "binary":
        tok.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    elif damage == "fifo":
        tok.unlink()
        os.mkfifo(tok)
    else:
        tok.write_text("[" * 100000)
    r = scaffold_proc("import", source, "--projects-dir", tmp_path / "projects", timeout=90)
    assert r.returncode == 2, r.stderr
    assert one_error(r.stderr).startswith(f"error: {tok}: "), r.stderr
    assert not (tmp_path / "projects").exists()


# -- the user's own code broken -----------------------------------------------------------------------

BROKEN_CODE = {
    "syntax-modeling": ("modeling_llama.py", "def broken(:\n", "invalid syntax"),
    "stray-marker": ("modeling_llama.py", "=======\n", "invalid syntax"),
    "nul-byte": ("modeling_llama.py", "x = 1\0\n", "null bytes"),
    "missing-import": ("modeling_llama.py", "import not_installed_anywhere_xyz\n", "imports not_installed_anywhere_xyz, which is not installed"),
    "syntax-configuration": ("configuration_llama.py", "def broken(:\n", "invalid syntax"),
    "raise-configuration": ("configuration_llama.py", "raise RuntimeError('boom at import')\n", "the project's code raised RuntimeError: boom at import"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BROKEN_CODE), ids=list(BROKEN_CODE))
def test_broken_user_code_is_a_usage_error_naming_file_and_line(proj: Path, case: str):
    """Rows: the project's own code broken (a syntax error, a stray =======, a NUL, an import of a
    module that is not installed, a raise at import): build and show stop with exit 2 naming the file
    and the line (they were internal errors, the modeling file as <unknown>); nothing is changed."""
    name, added, message = BROKEN_CODE[case]
    path = proj / name
    line = path.read_text().count("\n") + 1
    with path.open("a") as f:
        f.write(added)
    before = snapshot(proj)
    for command in ("build", "show"):
        r = invoke(command, proj, *(["--force"] if command == "build" else []))
        assert r.exit_code == 2, (command, r.output)
        err = one_error(r.stderr)
        assert err.startswith(f"error: {path}:{line}: ") and message in err, err
    assert snapshot(proj) == before


def test_model_code_raising_at_import_names_the_file(proj: Path):
    """Row: the modeling file raises at import (which only loading it shows: `show`, `test`): exit 2
    naming the modeling file and line, not an internal error."""
    path = proj / "modeling_llama.py"
    line = path.read_text().count("\n") + 1
    with path.open("a") as f:
        f.write("raise RuntimeError('boom at import')\n")
    r = invoke("show", proj)
    assert r.exit_code == 2, r.output
    err = one_error(r.stderr)
    assert err.startswith(f"error: modeling_llama.py:{line}: the model's own code raised RuntimeError"), err


# -- damaged run records --------------------------------------------------------------------------------


def _run_folder(proj: Path, name: str = "20260101T000000Z-aaaaaa") -> Path:
    """A run record as `scaffold test` writes one: summary, options and two steps."""
    from scaffold.run.runs import OPTIONS_FILE, RUNS_DIR, STEPS_FILE, SUMMARY_FILE

    folder = proj / RUNS_DIR / name
    folder.mkdir(parents=True)
    summary = {"status": "passed", "project": "tiny", "steps_planned": 2, "device": "cpu"}
    (folder / SUMMARY_FILE).write_text(json.dumps(summary))
    (folder / OPTIONS_FILE).write_text(json.dumps({"test": {"steps": 2, "dtype": "float32"}}))
    steps = [{"step": 1, "loss": 5.5, "tokens": 32}, {"step": 2, "loss": 5.25, "tokens": 64}]
    (folder / STEPS_FILE).write_text("".join(json.dumps(s) + "\n" for s in steps))
    return folder


RUN_DAMAGE = {
    "step-list": ("steps.jsonl", b'[1, 2]\n{"step": 3, "loss": 5.0}\n'),
    "step-without-step": ("steps.jsonl", b'{"loss": 5.0}\n{"step": "3", "loss": 1}\n{"step": 3, "loss": 5.0}\n'),
    "steps-binary": ("steps.jsonl", b"\x89PNG\r\n\x1a\n\x00\xff\xfe"),
    "summary-binary": ("summary.json", b"\x00\xff\xfe\xfd"),
    "summary-list": ("summary.json", b"[1, 2, 3]"),
    "pid-not-int": ("summary.json", b'{"status": "running", "pid": "abc", "host": "HOST"}'),
    "pid-huge": ("summary.json", b'{"status": "running", "pid": 100000000000000000000, "host": "HOST"}'),
    "options-test-list": ("options.json", b'{"test": [1, 2]}'),
    "steps-nested": ("steps.jsonl", b"[" * 100000 + b"\n"),
    "summary-nested": ("summary.json", b"[" * 100000),
}  # fmt: skip


@pytest.mark.parametrize("case", list(RUN_DAMAGE), ids=list(RUN_DAMAGE))
def test_damaged_run_records_never_crash_runs(proj: Path, tmp_path: Path, case: str):
    """Rows: steps.jsonl lines that are lists or lack an integer step, binary files, a pid that is not
    an integer, JSON nested 100000 deep: `runs` lists the run from what is readable (damaged lines
    are skipped, as a torn last line is) and `runs --plot` draws it; neither crashes."""
    import socket

    folder = _run_folder(proj)
    name, content = RUN_DAMAGE[case]
    (folder / name).write_bytes(content.replace(b"HOST", socket.gethostname().encode()))
    r = invoke("runs", proj)
    assert r.exit_code == 0, r.output
    assert folder.name in r.output
    if case == "pid-not-int" or case == "pid-huge":
        assert "killed" in r.output
    out = tmp_path / "loss.png"
    r = invoke("runs", "--plot", f"{proj}:latest", "-o", out)
    assert r.exit_code == 0, r.output
    assert out.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("name", ["summary.json", "steps.jsonl"])
def test_fifo_in_a_run_record_never_hangs(proj: Path, tmp_path: Path, name: str):
    """Rows: a FIFO in place of summary.json or steps.jsonl: `runs` answers at once, exit 3 naming it."""
    import os

    folder = _run_folder(proj)
    (folder / name).unlink()
    os.mkfifo(folder / name)
    r = scaffold_proc("runs", proj, timeout=60)
    assert r.returncode == 3, r.stderr
    assert one_error(r.stderr) == f"error: {folder / name}: is a FIFO, not a regular file"


def test_plot_output_that_is_no_file_name(proj: Path):
    """Row: `runs --plot -o ''` (or a folder) named a temporary file in its error: the flag is named."""
    _run_folder(proj)
    for value in ("", ".", str(proj)):
        r = invoke("runs", "--plot", f"{proj}:latest", "-o", value)
        assert r.exit_code == 2, r.output
        assert "-o" in r.output and ".png" not in r.output and "tmp" not in r.output.replace(str(proj), ""), (
            r.output
        )
    assert one_error(invoke("runs", "--plot", f"{proj}:latest", "-o", "").stderr).startswith(
        "error: -o/--output-file must name a file to write"
    )


# -- deeply nested JSON and TOML anywhere -------------------------------------------------------------

DEEP = "[" * 100000


def _deep_manifest(proj: Path) -> list:
    (proj / "scaffold.toml").write_text((proj / "scaffold.toml").read_text() + f"\n[extra]\nx = {DEEP}\n")
    return ["build", proj, "--force"]


def _deep_record(proj: Path) -> list:
    (proj / "model" / "scaffold-build.json").write_text(DEEP)
    return ["verify", proj / "model"]


def _deep_config(proj: Path) -> list:
    from tests.test_reliability import restamp

    (proj / "model" / "config.json").write_text(DEEP)
    restamp(proj / "model")  # recorded as built: the parser itself meets the nesting
    return ["test", proj, "--steps", "1"]


def _deep_index(proj: Path) -> list:
    from tests.test_reliability import reshard, restamp

    reshard(proj / "model")
    (proj / "model" / "model.safetensors.index.json").write_text(DEEP)
    restamp(proj / "model")
    return ["test", proj, "--steps", "1"]


def _deep_dataset(proj: Path) -> list:
    folder = proj.parent / "data"
    folder.mkdir()
    (folder / "dataset.toml").write_text(f"[dataset]\nfiles = {DEEP}\n")
    return ["test", proj, "--steps", "1", "--dataset", folder]


DEEP_FILES = {
    "manifest": _deep_manifest,
    "build-record": _deep_record,
    "config.json": _deep_config,
    "weights-index": _deep_index,
    "dataset.toml": _deep_dataset,
}


@pytest.mark.parametrize("where", list(DEEP_FILES), ids=list(DEEP_FILES))
def test_deeply_nested_files_are_one_line(proj: Path, where: str):
    """Rows: JSON or TOML nested 100000 deep in the manifest, the build record, config.json, the
    weights index, a dataset manifest: one error line (exit 2 or 3) naming the file, never a
    RecursionError."""
    args = DEEP_FILES[where](proj)
    r = invoke(*args)
    assert r.exit_code in (2, 3), r.output
    line = one_error(r.stderr)
    assert "internal error" not in r.output and "RecursionError" not in line, line
    named = {
        "manifest": "scaffold.toml",
        "build-record": "scaffold-build.json",
        "weights-index": "model.safetensors.index.json",
    }
    assert f"{named.get(where, where)}: " in line, line  # the file is named


def test_fifo_dataset_is_named_as_a_fifo(proj: Path, tmp_path: Path):
    """Row: a FIFO given as the dataset was reported as "no such file" (or waited on): it is named as
    not a regular file, at once."""
    import os

    fifo = tmp_path / "corpus.txt"
    os.mkfifo(fifo)
    r = scaffold_proc("test", proj, "--steps", "1", "--dataset", fifo, timeout=120)
    assert r.returncode == 2, r.stderr
    line = one_error(r.stderr)
    assert line == f"error: {fifo}: not a regular file or folder (a FIFO, a device or a socket)", line


def test_show_edit_with_a_nul_in_the_model_name(proj: Path):
    """Row: `show -e` with a NUL in the model's name (--model-name) crashed making its temporary file:
    the name is refused as a usage error naming the key."""
    r = invoke("show", proj, "-e", "--model-name", "ti\x00ny")
    assert r.exit_code == 2, r.output
    assert "project.name" in one_error(r.stderr) and "one line" in r.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "1e300", "0"])
def test_timeout_must_be_a_finite_number_of_seconds(proj: Path, value: str):
    """Rows: `test --nproc 2 --timeout nan|inf|1e300` were accepted (no timer takes them)."""
    r = invoke("test", proj, "--nproc", "2", "--timeout", value)
    assert r.exit_code == 2, r.output
    assert "--timeout" in r.output and "at most 604800" in r.output, r.output


@pytest.mark.parametrize("value", ["", ".", ".."])
def test_output_dir_must_name_a_folder(proj: Path, value: str):
    """Rows: `--output-dir ''` or `.` would make the current folder the build's target."""
    before = snapshot(proj.parent)
    r = invoke("build", proj, "--output-dir", value)
    assert r.exit_code == 2, r.output
    assert one_error(r.stderr).startswith("error: --output-dir must name the model folder to write"), r.stderr
    assert snapshot(proj.parent) == before


def test_null_for_a_size_every_model_needs_names_the_key(proj: Path):
    """Row: `--set model.hidden_size=null` removed the blueprint's value and blamed scaffold's own
    README template; it names the key."""
    r = invoke("show", proj, "--set", "model.hidden_size=null")
    assert r.exit_code == 2, r.output
    assert one_error(r.stderr) == (
        "error: --set model.hidden_size=null: model.hidden_size cannot be null (only optional keys can; "
        "give an integer, see `scaffold schema`)"
    )


def test_save_weights_past_memory_is_refused_before_allocating(proj: Path, tmp_path: Path):
    """Row: `build --save-weights` of sizes no machine holds allocated until it died (test had an
    estimate, build none): refused before allocating, naming the parameters and the memory."""
    big = {"model.hidden_size": 1048576, "model.intermediate_size": 2000000}
    out = tmp_path / "big"
    r = invoke("build", proj, "--save-weights", *sets(big), "--output-dir", out)
    assert r.exit_code == 2, r.output
    line = one_error(r.stderr)
    assert "parameters need about" in line and "available" in line, line
    assert not out.exists()


@pytest.mark.parametrize("value", [2**31, 2**63])
def test_sizes_past_any_model_are_refused(proj: Path, value: int):
    """Rows: `vocab_size = 2**63` (past int64) or 2**31 were accepted and ended in C++ errors in show
    and test: a usage error naming the key."""
    r = invoke("show", proj, "--set", f"model.vocab_size={value}")
    assert r.exit_code == 2, r.output
    line = one_error(r.stderr)
    assert "model.vocab_size: must" in line, line


def test_model_card_linked_outside_is_never_copied_into_the_build(proj: Path, tmp_path: Path):
    """Row: README.md a symlink to a file outside the project: build copied the outside file into the
    model directory as its card; it refuses (exit 3 naming the link) and writes nothing."""
    secret = _secret(tmp_path)
    readme = proj / "README.md"
    readme.unlink()
    readme.symlink_to(secret)
    out = tmp_path / "out"
    r = invoke("build", proj, "--output-dir", out)
    assert r.exit_code == 3, r.output
    assert one_error(r.stderr).startswith(f"error: {readme}: is a link to {secret}, outside"), r.stderr
    assert not out.exists()
