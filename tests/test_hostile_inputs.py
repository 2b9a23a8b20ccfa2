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
