"""The override flags of build, test and show, and `scaffold show`, through click's CliRunner on real
builds of the llama blueprint: each flag reaches config.json and the constructed model; each bad
flag is an error with exit code and message, and leaves what is on disk as it was."""

from __future__ import annotations

import json
import re
import shutil
import stat
from pathlib import Path

import pytest
import torch

from scaffold.build.checkpoint import load_checkpoint, save_checkpoint
from scaffold.build.construct import construct
from scaffold.cli.overrides import FLAGS, TIE
from scaffold.codegen.parts.rotary import rope_inv_freq
from scaffold.spec import schema
from tests._construct_util import build_model_dir, config_of, invoke, load_model, make_project, snapshot

LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    root = tmp_path_factory.mktemp("projects")
    return {
        "plain": make_project(root, "plain"),
        "tied": make_project(root, "tied", tie_word_embeddings=True),
        "scaled": make_project(root, "scaled", rope_scaling=LLAMA3, sliding_window=16),
        "wide": make_project(root, "wide", hidden_size=48),
    }


@pytest.fixture(scope="module")
def checkpoints(projects, tmp_path_factory):
    """Sharded checkpoints of the plain project's model and of a wider one."""
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for name in ("plain", "wide"):
        model_dir = build_model_dir(projects[name], root / f"{name}-model")
        torch.manual_seed(123)
        save_checkpoint(root / name, load_model(model_dir), max_shard_size=20_000)
        out[name] = root / name
    return out


def built(project: Path, out: Path, *flags: str):
    result = invoke("build", project, "--output-dir", out, *flags)
    assert result.exit_code == 0, result.output
    return config_of(out), construct(out)


def first_layer(model):
    return model.model.layers[0]


def dropout_active(model) -> bool:
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    model.train()
    with torch.no_grad():
        return not torch.equal(model(ids).logits, model(ids).logits)


# (id, flags, check on config.json, check on the constructed model)
FLAG_CASES = [
    (
        "hidden-size",
        ["--hidden-size", "48"],
        lambda c: c["hidden_size"] == 48,
        lambda m: m.model.embed_tokens.weight.shape == (300, 48),
    ),
    (
        "num-attention-heads",
        ["--num-attention-heads", "8"],
        lambda c: c["num_attention_heads"] == 8,
        lambda m: first_layer(m).self_attn.q_proj.out_features == 8 * 8,
    ),
    (
        "num-kv-heads",
        ["--num-kv-heads", "1"],
        lambda c: c["num_key_value_heads"] == 1,
        lambda m: first_layer(m).self_attn.k_proj.out_features == 8,
    ),
    (
        "num-key-value-heads",
        ["--num-key-value-heads", "4"],
        lambda c: c["num_key_value_heads"] == 4,
        lambda m: first_layer(m).self_attn.v_proj.out_features == 32,
    ),
    (
        "d-head",
        ["--d-head", "16"],
        lambda c: c["head_dim"] == 16,
        lambda m: (
            first_layer(m).self_attn.q_proj.out_features == 4 * 16 and first_layer(m).self_attn.head_dim == 16
        ),
    ),
    (
        "head-dim",
        ["--head-dim", "4"],
        lambda c: c["head_dim"] == 4,
        lambda m: first_layer(m).self_attn.o_proj.in_features == 4 * 4,
    ),
    (
        "num-hidden-layers",
        ["--num-hidden-layers", "3"],
        lambda c: c["num_hidden_layers"] == 3,
        lambda m: len(m.model.layers) == 3,
    ),
    (
        "dim-feedforward",
        ["--dim-feedforward", "96"],
        lambda c: c["intermediate_size"] == 96,
        lambda m: first_layer(m).mlp.gate_proj.out_features == 96,
    ),
    (
        "intermediate-size",
        ["--intermediate-size", "80"],
        lambda c: c["intermediate_size"] == 80,
        lambda m: first_layer(m).mlp.down_proj.in_features == 80,
    ),
    (
        "rope-theta",
        ["--rope-theta", "500000"],
        lambda c: c["rope_parameters"]["rope_theta"] == 500000.0,
        lambda m: torch.equal(m.model.rotary_emb.inv_freq, rope_inv_freq(8, 500000.0)),
    ),
    (
        "rms-norm-eps",
        ["--rms-norm-eps", "1e-6"],
        lambda c: c["rms_norm_eps"] == 1e-6,
        lambda m: first_layer(m).input_layernorm.variance_epsilon == 1e-6,
    ),
    (
        "rope-scaling-json",
        ["--rope-scaling", json.dumps(LLAMA3)],
        lambda c: c["rope_parameters"] == {**LLAMA3, "rope_theta": 10000.0},
        lambda m: (
            torch.equal(m.model.rotary_emb.inv_freq, rope_inv_freq(8, 10000.0, LLAMA3))
            and not torch.equal(m.model.rotary_emb.inv_freq, rope_inv_freq(8, 10000.0))
        ),
    ),
    (
        "rope-scaling-toml",
        ["--rope-scaling", '{rope_type = "linear", factor = 2.0}'],
        lambda c: c["rope_parameters"] == {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        lambda m: torch.equal(m.model.rotary_emb.inv_freq, rope_inv_freq(8, 10000.0) / 2),
    ),
    (
        "sliding-window",
        ["--sliding-window", "16"],
        lambda c: c["sliding_window"] == 16,
        lambda m: first_layer(m).self_attn.sliding_window == 16,
    ),
    (
        "tie-word-embeddings",
        ["--tie-word-embeddings"],
        lambda c: c["tie_word_embeddings"] is True,
        lambda m: m.lm_head.weight is m.model.embed_tokens.weight,
    ),
    (
        "attention-dropout",
        ["--attention-dropout", "0.25"],
        lambda c: c["attention_dropout"] == 0.25,
        lambda m: m.config.attention_dropout == 0.25 and dropout_active(m),
    ),
]


@pytest.mark.parametrize(
    ("flags", "check_config", "check_model"), [c[1:] for c in FLAG_CASES], ids=[c[0] for c in FLAG_CASES]
)
def test_flag_reaches_config_and_model(projects, tmp_path, flags, check_config, check_model):
    config, model = built(projects["plain"], tmp_path / "out", *flags)
    assert check_config(config), json.dumps(config, indent=1)
    assert check_model(model)
    assert not (projects["plain"] / "model").exists(), "--output-dir was not honoured"


def test_without_flags_the_manifest_decides(projects, tmp_path):
    config, model = built(projects["plain"], tmp_path / "plain")
    assert config["attention_dropout"] == 0.0 and config["tie_word_embeddings"] is False
    assert config["sliding_window"] is None and config["rope_parameters"]["rope_type"] == "default"
    assert not dropout_active(model)
    config, model = built(projects["tied"], tmp_path / "tied")
    assert config["tie_word_embeddings"] is True and model.lm_head.weight is model.model.embed_tokens.weight


def test_no_tie_and_null_disable(projects, tmp_path):
    config, model = built(projects["tied"], tmp_path / "untied", "--no-tie-word-embeddings")
    assert (
        config["tie_word_embeddings"] is False and model.lm_head.weight is not model.model.embed_tokens.weight
    )
    config, model = built(projects["scaled"], tmp_path / "scaled")
    assert config["sliding_window"] == 16 and config["rope_parameters"]["rope_type"] == "llama3"
    config, model = built(
        projects["scaled"], tmp_path / "off", "--sliding-window", "null", "--rope-scaling", "null"
    )
    assert config["sliding_window"] is None and first_layer(model).self_attn.sliding_window is None
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert torch.equal(model.model.rotary_emb.inv_freq, rope_inv_freq(8, 10000.0))


def test_model_name_and_card_describe_the_build(projects, tmp_path):
    invoke(
        "build",
        projects["plain"],
        "--output-dir",
        tmp_path / "out",
        "--model-name",
        "my-model",
        "--hidden-size",
        "48",
    )
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.splitlines()[card.splitlines().index("---", 1) + 1] == "# my-model"
    assert "width\n48" in card, "the card still describes the manifest's width"
    assert config_of(tmp_path / "out")["hidden_size"] == 48


def test_set_still_works_and_must_agree_with_flags(projects, tmp_path):
    config, _ = built(
        projects["plain"], tmp_path / "a", "--set", "model.hidden_size=40", "--num-hidden-layers", "3"
    )
    assert config["hidden_size"] == 40 and config["num_hidden_layers"] == 3
    result = invoke(
        "build",
        projects["plain"],
        "--output-dir",
        tmp_path / "b",
        "--set",
        "model.hidden_size=40",
        "--hidden-size",
        "48",
    )
    assert result.exit_code == 2 and "--hidden-size and --set model.hidden_size disagree" in result.output
    assert not (tmp_path / "b").exists()


BAD_FLAGS = [
    (["--hidden-size", "abc"], "--hidden-size abc: model.hidden_size must be an integer"),
    (["--hidden-size", "0"], "--hidden-size 0: model.hidden_size must be positive, got 0"),
    (["--hidden-size", "null"], "model.hidden_size must not be null"),
    (["--num-hidden-layers", "2.5"], "model.num_hidden_layers must be an integer, got float 2.5"),
    (["--attention-dropout", "1.5"], "model.attention_dropout must be in [0, 1), got 1.5"),
    (["--sliding-window", "-4"], "model.sliding_window must be positive"),
    (["--rope-scaling", "[1, 2]"], "model.rope_scaling must be a table"),
    (
        ["--rope-scaling", '{"rope_type": "bogus"}'],
        "model.rope_scaling.rope_type: must be one of llama3, linear, yarn",
    ),
    (
        ["--rope-scaling", '{"rope_type": "llama3", "factor": 8}'],
        "model.rope_scaling.low_freq_factor: must be a positive number for llama3, got None (from --rope-scaling)",
    ),
    (
        ["--num-kv-heads", "3"],
        "model.num_key_value_heads: 3 does not divide num_attention_heads = 4 (from --num-kv-heads)",
    ),
    (["--dtype", "float8"], "--dtype float8: test.dtype must be one of float32, bfloat16, float16"),
    (["--attn-implementation", "magic"], "test.attn_implementation must be one of eager, sdpa"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_FLAGS, ids=lambda v: str(v)[:40])
@pytest.mark.parametrize("command", ["build", "show", "test"])
def test_bad_flag_is_an_error_and_nothing_is_written(projects, tmp_path, command, flags, message):
    existing = build_model_dir(projects["plain"], tmp_path / "existing")
    before = snapshot(existing)
    result = invoke(command, projects["plain"], "--output-dir", tmp_path / "existing", *flags)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert snapshot(existing) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"], "something was written beside it"


def test_a_key_the_family_lacks_is_an_error(tmp_path):
    """A blueprint without sliding_window: --sliding-window would change nothing."""
    bp = tmp_path / "nowindow"
    shutil.copytree(Path(__file__).resolve().parents[1] / "blueprints" / "llama", bp)
    text = (bp / "blueprint.toml").read_text()
    (bp / "blueprint.toml").write_text(text.replace('"rope_scaling", "sliding_window"', '"rope_scaling"'))
    project = make_project(tmp_path / "projects", "p", blueprint=bp)
    for command in ("build", "show", "test"):
        result = invoke(command, project, "--sliding-window", "8")
        assert result.exit_code == 2
        assert (
            "model.sliding_window: given by --sliding-window, but this project's blueprint has no such key"
            in (result.output)
        )
    assert not (project / "model").exists()


@pytest.mark.parametrize(
    ("command", "flags", "message"),
    [
        (
            "build",
            ["--attn-implementation", "eager"],
            "--attn-implementation does nothing for `scaffold build`",
        ),
        ("build", ["--device", "cpu"], "--device does nothing for `scaffold build` without --save-weights"),
        (
            "build",
            ["--dtype", "bfloat16"],
            "--dtype does nothing for `scaffold build` without --save-weights",
        ),
        ("build", ["--no-init-weights", "--save-weights"], "would save uninitialised weights"),
        (
            "show",
            ["--no-init-weights"],
            "--no-init-weights does nothing for `scaffold show` on the meta device",
        ),
        ("test", ["--no-init-weights"], "--no-init-weights leaves the weights uninitialised"),
    ],
)
def test_flag_that_would_do_nothing_is_an_error(projects, tmp_path, command, flags, message):
    result = invoke(command, projects["plain"], "--output-dir", tmp_path / "out", *flags)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_help_comes_from_the_schema_with_every_spelling():
    for command in ("build", "test", "show"):
        text = " ".join(invoke(command, "--help").output.split())
        for flag in (*FLAGS, TIE):
            for name in flag.names[0].split("/") if flag is TIE else flag.names:
                assert name in text, f"{command} --help lacks {name}"
            assert " ".join(flag.doc.split()) in text
        for seed in (
            "--num-kv-heads",
            "--d-head",
            "--dim-feedforward",
            "--num-key-value-heads",
            "--head-dim",
            "--intermediate-size",
            "--no-tie-word-embeddings",
        ):
            assert seed in text
    assert schema.BY_PATH["model.hidden_size"].doc in " ".join(invoke("show", "--help").output.split())


# ---------------------------------------------------------------------------------------------
# --load-from-checkpoint, --dtype, --device, --no-init-weights on build and test
# ---------------------------------------------------------------------------------------------


def same_as_checkpoint(model, checkpoint: Path) -> bool:
    reference = construct(model.name_or_path, device="meta")
    load_checkpoint(checkpoint, reference, dtype=next(model.parameters()).dtype)
    a, b = model.state_dict(), reference.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "extra", [[], ["--no-init-weights"], ["--device", "cpu"]], ids=["plain", "no-init", "device"]
)
def test_build_with_checkpoint_saves_its_weights(projects, checkpoints, tmp_path, extra):
    from transformers import AutoModelForCausalLM

    result = invoke(
        "build",
        projects["plain"],
        "--output-dir",
        tmp_path / "out",
        "--load-from-checkpoint",
        checkpoints["plain"],
        *extra,
    )
    assert result.exit_code == 0, result.output
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True)
    assert same_as_checkpoint(model, checkpoints["plain"])
    for p in (tmp_path / "out").iterdir():
        assert p.stat().st_mode & stat.S_IRGRP, f"{p.name} is not group-readable"
    again = invoke(
        "build",
        projects["plain"],
        "--output-dir",
        tmp_path / "out",
        "--load-from-checkpoint",
        checkpoints["plain"],
        *extra,
    )
    assert "up to date" in again.output


def test_build_with_checkpoint_in_bfloat16(projects, checkpoints, tmp_path):
    from transformers import AutoModelForCausalLM

    result = invoke(
        "build",
        projects["plain"],
        "--output-dir",
        tmp_path / "out",
        "--load-from-checkpoint",
        checkpoints["plain"],
        "--dtype",
        "bfloat16",
    )
    assert result.exit_code == 0, result.output
    assert config_of(tmp_path / "out")["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert same_as_checkpoint(model, checkpoints["plain"])


def test_build_save_weights_in_a_dtype(projects, tmp_path):
    result = invoke(
        "build",
        projects["tied"],
        "--output-dir",
        tmp_path / "out",
        "--save-weights",
        "--dtype",
        "float16",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
        assert "lm_head.weight" not in f.keys()


def test_build_with_a_checkpoint_that_does_not_fit_keeps_the_old_build(projects, checkpoints, tmp_path):
    out = tmp_path / "out"
    assert invoke("build", projects["plain"], "--output-dir", out).exit_code == 0
    before = snapshot(out)
    result = invoke(
        "build",
        projects["plain"],
        "--output-dir",
        out,
        "--force",
        "--load-from-checkpoint",
        checkpoints["wide"],
    )
    assert result.exit_code == 3
    assert (
        "does not fit the model" in result.output
        and "file shape [300, 48], model shape [300, 32]" in result.output
    )
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "staging left behind"
    result = invoke(
        "build",
        projects["plain"],
        "--output-dir",
        tmp_path / "new",
        "--load-from-checkpoint",
        tmp_path / "nowhere",
    )
    assert result.exit_code == 2 and "nowhere: no such checkpoint" in result.output
    assert not (tmp_path / "new").exists()


def first_loss(output: str) -> float:
    m = re.search(r"step 1/\d+\s+loss (\S+)", output)
    assert m, output
    return float(m.group(1))


def expected_first_loss(project: Path, checkpoint: Path, tmp_path: Path) -> float:
    """The loss of the checkpoint's weights on scaffold test's first batch, computed here."""
    from transformers import AutoTokenizer

    from scaffold.run.smoke import TestOptions, batches

    model_dir = build_model_dir(project, tmp_path / "reference")
    model = construct(model_dir, device="meta")
    load_checkpoint(checkpoint, model)
    opts = TestOptions(device="cpu", steps=1, batch_size=2, sequence_length=16)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    ids = next(batches(len(tokenizer), opts, "cpu"))
    model.train()
    with torch.no_grad():
        return model(ids, labels=ids, use_cache=False).loss.item()


@pytest.mark.parametrize("extra", [[], ["--no-init-weights"]], ids=["init", "no-init"])
def test_test_loads_the_checkpoint(projects, checkpoints, tmp_path, extra):
    out = tmp_path / "model"
    result = invoke(
        "test", projects["plain"], "--output-dir", out, "--load-from-checkpoint", checkpoints["plain"], *extra
    )
    assert result.exit_code == 0, result.output
    expected = expected_first_loss(projects["plain"], checkpoints["plain"], tmp_path)
    assert first_loss(result.output) == pytest.approx(expected, abs=1e-4)
    assert not any(out.glob("*.safetensors")), "test wrote weights into the model directory"


def test_test_in_bfloat16_converts_the_checkpoint_as_asked(projects, checkpoints, tmp_path):
    result = invoke(
        "test",
        projects["plain"],
        "--output-dir",
        tmp_path / "m",
        "--dtype",
        "bfloat16",
        "--load-from-checkpoint",
        checkpoints["plain"],
    )
    assert result.exit_code == 0, result.output
    assert "bfloat16" in result.output


def test_test_with_a_checkpoint_that_does_not_fit(projects, checkpoints, tmp_path):
    result = invoke(
        "test",
        projects["plain"],
        "--output-dir",
        tmp_path / "m",
        "--load-from-checkpoint",
        checkpoints["wide"],
    )
    assert result.exit_code == 3 and "does not fit the model" in result.output


def test_test_with_model_flags_builds_a_temporary_variant(projects, tmp_path):
    project = tmp_path / "p"
    shutil.copytree(projects["plain"], project)
    assert invoke("build", project).exit_code == 0
    before = snapshot(project)
    result = invoke("test", project, "--hidden-size", "48", "--model-name", "variant")
    assert result.exit_code == 0, result.output
    wide = sum(
        p.numel()
        for p in construct(build_model_dir(projects["wide"], tmp_path / "w"), device="meta").parameters()
    )
    assert f"parameters {wide:,}" in result.output
    assert "testing variant (llama)" in result.output
    assert "built a temporary model directory for --hidden-size --model-name" in result.output
    assert snapshot(project) == before, "testing a variant touched the project's build"


# ---------------------------------------------------------------------------------------------
# scaffold show
# ---------------------------------------------------------------------------------------------


def test_show_prints_configuration_tokenizer_tree_and_count(projects, tmp_path):
    result = invoke(
        "show",
        projects["plain"],
        "--hidden-size",
        "48",
        "--model-name",
        "shown",
        "--attn-implementation",
        "eager",
        "--dtype",
        "bfloat16",
    )
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.startswith("project     shown: blueprint llama")
    assert "overrides   --hidden-size --model-name --attn-implementation --dtype" in text
    assert '"hidden_size": 48' in text and "[model]\nvocab_size = 300\nhidden_size = 48" in text
    assert "tokens      262 (model vocab_size 300)" in text and "<|BOS|>=0" in text
    assert (
        "class       LlamaForCausalLM on meta, dtype bfloat16, attention eager, init none (meta device)"
        in text
    )
    real = construct(build_model_dir(projects["wide"], tmp_path / "w"))
    count = sum(p.numel() for p in real.parameters())
    assert f"parameters  {count:,}" in text
    assert (
        "(0-1): 2 x LlamaDecoderLayer(" in text and "(q_proj): Linear(in_features=48, out_features=32" in text
    )
    total_row = next(line for line in text.splitlines() if line.startswith("total "))
    assert total_row.split()[-1] == f"{count:,}"  # the parameter breakdown adds up
    assert "== structure ==\nstack       embed_tokens 300 x 48\n" in text  # drawn with the overrides
    assert "layer       x = x + attn(RMSNorm(x))" in text
    assert not (projects["plain"] / "model").exists(), "show built the project"


def test_show_to_file_and_editor(projects, tmp_path):
    printed = invoke("show", projects["tied"]).output
    result = invoke("show", projects["tied"], "-o", tmp_path / "desc" / "show.txt")
    assert result.exit_code == 0
    assert (tmp_path / "desc" / "show.txt").read_text() == printed
    assert "LlamaForCausalLM(" not in result.output
    assert "tied        model.embed_tokens.weight = lm_head.weight" in printed
    editor = tmp_path / "editor.sh"
    editor.write_text(f'#!/bin/sh\ncp "$1" {tmp_path / "edited.txt"}\n')
    editor.chmod(0o755)
    result = invoke("show", projects["tied"], "-e", env={"EDITOR": str(editor), "VISUAL": str(editor)})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "edited.txt").read_text() == printed


def test_show_reports_the_build_status(projects, tmp_path):
    out = tmp_path / "out"
    assert f"{out}: not built" in invoke("show", projects["plain"], "--output-dir", out).output
    invoke("build", projects["plain"], "--output-dir", out)
    assert f"{out}: up to date" in invoke("show", projects["plain"], "--output-dir", out).output
    stale = invoke("show", projects["plain"], "--output-dir", out, "--num-hidden-layers", "3").output
    assert f"{out}: stale (manifest" in stale


def test_show_checks_a_checkpoint(projects, checkpoints):
    ok = invoke("show", projects["plain"], "--load-from-checkpoint", checkpoints["plain"])
    assert ok.exit_code == 0 and "fits (checked from the file headers)" in ok.output
    assert "shards + index" in ok.output
    bad = invoke("show", projects["plain"], "--load-from-checkpoint", checkpoints["wide"])
    assert bad.exit_code == 3 and "file shape [300, 48], model shape [300, 32]" in bad.output
    loaded = invoke(
        "show",
        projects["plain"],
        "--device",
        "cpu",
        "--no-init-weights",
        "--load-from-checkpoint",
        checkpoints["plain"],
    )
    assert loaded.exit_code == 0, loaded.output
    assert (
        "on cpu" in loaded.output
        and "init none (--no-init-weights)" in loaded.output
        and "loaded (" in loaded.output
    )


def test_show_a_7b_preset_on_meta(tmp_path):
    from scaffold.project.new import create_project

    # the published count has Llama 2's 32,000-token vocabulary (a project's follows its tokenizer unless given)
    project = create_project(
        "big", "llama", projects_dir=tmp_path, preset="llama2_7b", overrides={"model": {"vocab_size": 32000}}
    )
    result = invoke("show", project)
    assert result.exit_code == 0, result.output
    assert "parameters  6,738,415,616 (6.74B)" in result.output
    assert "weights     25.10 GiB at float32" in result.output
    assert "(0-31): 32 x LlamaDecoderLayer(" in result.output
