"""save_checkpoint / load_checkpoint: the Hugging Face layout, ties, strictness, dtypes, interop with
save_pretrained / from_pretrained in both directions, corrupt files, and saves that die half way."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from scaffold.build.checkpoint import (
    INDEX_NAME,
    WEIGHTS_NAME,
    find_checkpoint,
    load_checkpoint,
    parse_size,
    save_checkpoint,
)
from scaffold.build.construct import construct, no_init_weights
from scaffold.errors import CheckpointError, UsageError
from tests._construct_util import REPO, build_model_dir, load_model, logits, make_project, snapshot

SMALL_SHARDS = 20_000  # bytes: the tiny model (~150 KB) splits into several shards


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    projects = tmp_path_factory.mktemp("projects")
    return {
        "untied": build_model_dir(make_project(projects, "untied")),
        "tied": build_model_dir(make_project(projects, "tied", tie_word_embeddings=True)),
        "wide": build_model_dir(make_project(projects, "wide", hidden_size=48)),
    }


def model_copy(model_dir: Path, dest: Path) -> Path:
    """A copy of a built model directory (code, config, tokenizer), for from_pretrained."""
    shutil.copytree(model_dir, dest)
    return dest


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def stored_names(folder: Path) -> set[str]:
    names: set[str] = set()
    for p in folder.glob("*.safetensors"):
        with safe_open(str(p), "pt") as f:
            names.update(f.keys())
    return names


@pytest.mark.parametrize("which", ["untied", "tied"])
@pytest.mark.parametrize("shard", [None, SMALL_SHARDS], ids=["single", "sharded"])
def test_round_trip_layout_and_ties(dirs, tmp_path, which, shard):
    model = load_model(dirs[which])
    kwargs = {"max_shard_size": shard} if shard else {}
    report = save_checkpoint(tmp_path / "ckpt", model, **kwargs)
    folder = tmp_path / "ckpt"
    unique = {id(p): p for p in model.state_dict(keep_vars=True).values()}
    total = sum(t.numel() * t.element_size() for t in unique.values())
    assert report.total_size == total
    tied = which == "tied"
    assert ("lm_head.weight" in stored_names(folder)) != tied, (
        "a tied head is stored once, under the embedding"
    )
    if shard:
        index = json.loads((folder / INDEX_NAME).read_text())
        assert index["metadata"]["total_size"] == total
        assert len(set(index["weight_map"].values())) == len(report.files) - 1 > 1
        assert set(index["weight_map"]) == stored_names(folder)
        n = len(report.files) - 1
        assert sorted(report.files[:-1]) == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
        assert not (folder / WEIGHTS_NAME).exists()
    else:
        assert report.files == [WEIGHTS_NAME] and not (folder / INDEX_NAME).exists()

    fresh = construct(dirs[which], device="meta")
    load_report = load_checkpoint(folder, fresh)
    assert same_weights(model, fresh)
    assert (fresh.lm_head.weight is fresh.model.embed_tokens.weight) == tied
    assert torch.equal(logits(fresh), logits(model)), "the rebuilt RoPE table or a weight differs"
    assert not load_report.missing and not load_report.unexpected


@pytest.mark.parametrize("which", ["untied", "tied"])
@pytest.mark.parametrize("shard", [None, SMALL_SHARDS], ids=["single", "sharded"])
def test_ours_loads_with_from_pretrained(dirs, tmp_path, which, shard):
    model = load_model(dirs[which])
    folder = model_copy(dirs[which], tmp_path / "m")
    save_checkpoint(folder, model, **({"max_shard_size": shard} if shard else {}))
    loaded = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    assert same_weights(model, loaded)
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == (which == "tied")
    assert torch.equal(logits(loaded), logits(model))


@pytest.mark.parametrize("which", ["untied", "tied"])
@pytest.mark.parametrize("shard", [None, SMALL_SHARDS], ids=["single", "sharded"])
def test_save_pretrained_loads_with_ours(dirs, tmp_path, which, shard):
    model = load_model(dirs[which])
    model.save_pretrained(tmp_path / "hf", **({"max_shard_size": shard} if shard else {}))
    assert (tmp_path / "hf" / INDEX_NAME).exists() == bool(shard)
    with no_init_weights():
        fresh = construct(dirs[which])
    load_checkpoint(tmp_path / "hf", fresh)
    assert same_weights(model, fresh)
    assert (fresh.lm_head.weight is fresh.model.embed_tokens.weight) == (which == "tied")
    assert torch.equal(logits(fresh), logits(model))


def test_same_layout_as_save_pretrained(dirs, tmp_path):
    model = load_model(dirs["untied"])
    model.save_pretrained(tmp_path / "hf", max_shard_size=SMALL_SHARDS)
    save_checkpoint(tmp_path / "ours", model, max_shard_size=SMALL_SHARDS)
    hf = json.loads((tmp_path / "hf" / INDEX_NAME).read_text())
    ours = json.loads((tmp_path / "ours" / INDEX_NAME).read_text())
    assert ours == hf


def test_load_to_device_and_keeps_parameter_objects(dirs, tmp_path):
    model = load_model(dirs["untied"])
    save_checkpoint(tmp_path / "c", model)
    target = load_model(dirs["untied"])
    params = list(target.parameters())
    load_checkpoint(tmp_path / "c", target, device="cpu")
    assert all(a is b for a, b in zip(params, target.parameters())), "an optimizer's references would break"
    assert same_weights(model, target)


def test_checkpoint_given_as_a_file(dirs, tmp_path):
    model = load_model(dirs["untied"])
    save_checkpoint(tmp_path / "c", model)
    fresh = construct(dirs["untied"], device="meta")
    load_checkpoint(tmp_path / "c" / WEIGHTS_NAME, fresh)
    assert same_weights(model, fresh)


def test_resave_changes_layout_without_leaving_stale_files(dirs, tmp_path):
    model = load_model(dirs["untied"])
    folder = model_copy(dirs["untied"], tmp_path / "m")
    others = {k: v for k, v in snapshot(folder).items()}
    save_checkpoint(folder, model, max_shard_size=SMALL_SHARDS)
    save_checkpoint(folder, model)  # sharded -> one file: the index and shards must go
    names = {p.name for p in folder.iterdir()}
    assert WEIGHTS_NAME in names and INDEX_NAME not in names
    assert not [n for n in names if n.startswith("model-")]
    after = snapshot(folder)
    assert all(after[k] == v for k, v in others.items()), "the folder's other files changed"
    save_checkpoint(folder, model, max_shard_size=SMALL_SHARDS)  # and back
    assert not (folder / WEIGHTS_NAME).exists() and (folder / INDEX_NAME).exists()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "staging folders left behind"
    fresh = construct(dirs["untied"], device="meta")
    load_checkpoint(folder, fresh)
    assert same_weights(model, fresh)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_readable_as_the_umask_says(dirs, tmp_path, umask):
    model = load_model(dirs["untied"])
    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "c", model, max_shard_size=SMALL_SHARDS)
    finally:
        os.umask(old)
    for p in (tmp_path / "c").iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p.name
    assert (tmp_path / "c").stat().st_mode & 0o777 == 0o777 & ~umask


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MiB") == 500 * 2**20
    assert parse_size("10kb") == 10_000
    assert parse_size(123) == 123
    for bad in ("lots", "-1GB", 0, "5 parsecs"):
        with pytest.raises(UsageError):
            parse_size(bad)


def test_save_refuses_a_meta_model(dirs, tmp_path):
    with pytest.raises(CheckpointError, match="meta device"):
        save_checkpoint(tmp_path / "c", construct(dirs["untied"], device="meta"))
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------------------------------------
# Strictness and mismatches
# ---------------------------------------------------------------------------------------------


def tensors_of(model) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def test_missing_and_unexpected_keys_are_listed(dirs, tmp_path):
    model = load_model(dirs["untied"])
    state = tensors_of(model)
    state.pop("model.norm.weight")
    state.pop("model.layers.1.mlp.up_proj.weight")
    state["model.extra.weight"] = torch.zeros(3)
    (tmp_path / "c").mkdir()
    save_file(state, str(tmp_path / "c" / WEIGHTS_NAME), metadata={"format": "pt"})
    fresh = construct(dirs["untied"], device="meta")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "c", fresh)
    msg = str(err.value)
    assert "missing from the checkpoint (2): model.layers.1.mlp.up_proj.weight, model.norm.weight" in msg
    assert "not in the model (1): model.extra.weight" in msg
    assert str(tmp_path / "c" / WEIGHTS_NAME) in msg
    assert err.value.exit_code == 3
    # not strict: loaded what fits, reported the rest, and initialised the missing tensors
    report = load_checkpoint(tmp_path / "c", fresh, strict=False)
    assert sorted(report.missing) == ["model.layers.1.mlp.up_proj.weight", "model.norm.weight"]
    assert report.unexpected == ["model.extra.weight"]
    assert torch.equal(
        fresh.model.layers[0].self_attn.q_proj.weight, model.model.layers[0].self_attn.q_proj.weight
    )
    assert torch.all(fresh.model.norm.weight == 1), "a missing tensor of a meta model is initialised"


def test_shape_mismatch_names_tensor_shapes_and_file(dirs, tmp_path):
    save_checkpoint(tmp_path / "c", load_model(dirs["wide"]), max_shard_size=SMALL_SHARDS)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "c", construct(dirs["untied"], device="meta"))
    msg = str(err.value)
    index = json.loads((tmp_path / "c" / INDEX_NAME).read_text())
    shard = index["weight_map"]["model.embed_tokens.weight"]
    assert f"model.embed_tokens.weight: file shape [300, 48], model shape [300, 32] (in {shard})" in msg
    assert "more mismatches" in msg  # every tensor differs: the list is cut, with a count


def test_dtype_mismatch_is_an_error_unless_asked(dirs, tmp_path):
    model = load_model(dirs["tied"]).to(torch.bfloat16)
    save_checkpoint(tmp_path / "c", model)
    fresh = construct(dirs["tied"], device="meta")
    with pytest.raises(CheckpointError, match=r"file dtype bfloat16, model dtype float32 .*pass dtype="):
        load_checkpoint(tmp_path / "c", fresh)
    load_checkpoint(tmp_path / "c", fresh, dtype="bfloat16")
    assert {p.dtype for p in fresh.parameters()} == {torch.bfloat16}
    assert fresh.model.rotary_emb.inv_freq.dtype == torch.float32
    assert same_weights(model, fresh)
    # and up: bfloat16 file into a float32 model, converted because asked
    up = construct(dirs["tied"], device="meta")
    load_checkpoint(tmp_path / "c", up, dtype=torch.float32)
    assert torch.equal(up.lm_head.weight, model.lm_head.weight.float())
    assert up.lm_head.weight is up.model.embed_tokens.weight


def test_tied_pair_stored_twice_must_agree(dirs, tmp_path):
    model = load_model(dirs["tied"])
    state = tensors_of(model)
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    (tmp_path / "same").mkdir()
    save_file(state, str(tmp_path / "same" / WEIGHTS_NAME), metadata={"format": "pt"})
    fresh = construct(dirs["tied"], device="meta")
    load_checkpoint(tmp_path / "same", fresh)  # torch-style checkpoints store both: fine when equal
    assert same_weights(model, fresh)
    state["lm_head.weight"] = state["lm_head.weight"] + 1
    (tmp_path / "differ").mkdir()
    save_file(state, str(tmp_path / "differ" / WEIGHTS_NAME), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="one tensor in the model but differ"):
        load_checkpoint(tmp_path / "differ", construct(dirs["tied"], device="meta"))


# ---------------------------------------------------------------------------------------------
# Broken files
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def sharded(dirs, tmp_path) -> Path:
    save_checkpoint(tmp_path / "c", load_model(dirs["untied"]), max_shard_size=SMALL_SHARDS)
    return tmp_path / "c"


def second_shard(folder: Path) -> Path:
    return sorted(folder.glob("model-*.safetensors"))[1]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_shard_is_named(dirs, sharded, damage):
    shard = second_shard(sharded)
    data = shard.read_bytes()
    shard.write_bytes({"truncate": data[:-10], "garbage": b"\xff" * 64, "empty": b""}[damage])
    model = load_model(dirs["untied"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=rf"{shard.name}: corrupt or truncated"):
        load_checkpoint(sharded, model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), (
        "a failed load changed the model"
    )


def test_missing_shard_is_named(dirs, sharded):
    shard = second_shard(sharded)
    shard.unlink()
    with pytest.raises(
        CheckpointError, match=rf"{INDEX_NAME}: shard file\(s\) named in the index are missing: {shard.name}"
    ):
        load_checkpoint(sharded, construct(dirs["untied"], device="meta"))


def test_index_listing_a_tensor_its_shard_lacks(dirs, sharded):
    index = json.loads((sharded / INDEX_NAME).read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    name = next(k for k, v in index["weight_map"].items() if v != first)
    index["weight_map"][name] = first
    (sharded / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"does not hold: {name} \(in {first}\)"):
        load_checkpoint(sharded, construct(dirs["untied"], device="meta"))


@pytest.mark.parametrize(
    "text", ["{not json", '{"weight_map": 3}', '{"weight_map": {"a": "../x.safetensors"}}']
)
def test_bad_index(dirs, sharded, text):
    (sharded / INDEX_NAME).write_text(text)
    with pytest.raises(CheckpointError, match=INDEX_NAME):
        load_checkpoint(sharded, construct(dirs["untied"], device="meta"))


def test_no_checkpoint_or_two_of_them(dirs, sharded, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        load_checkpoint(tmp_path, construct(dirs["untied"], device="meta"))
    with pytest.raises(UsageError, match="no such checkpoint"):  # a path that is not there: usage, not damage
        find_checkpoint(tmp_path / "nowhere")
    save_file({"x": torch.zeros(1)}, str(sharded / WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match="one of them is stale"):
        find_checkpoint(sharded)


# ---------------------------------------------------------------------------------------------
# A save that dies half way
# ---------------------------------------------------------------------------------------------

# Run in a child process: save a sharded checkpoint, and die (SIGKILL) or raise when the second
# shard is about to be written. The child is real scaffold code up to that point.
DIE_HALF_WAY = """
import os, signal, sys, torch
import safetensors.torch as st
sys.path.insert(0, {tests!r})
from _construct_util import load_model
from scaffold.build.checkpoint import save_checkpoint
real = st.save_file
calls = []
def dying(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        if {how!r} == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(28, "No space left on device")
    return real(*args, **kwargs)
st.save_file = dying
model = load_model({model_dir!r})
with torch.no_grad():
    for p in model.parameters():
        p.add_(1.0)  # different weights from the checkpoint already there
save_checkpoint({target!r}, model, max_shard_size={shard})
"""


@pytest.mark.parametrize("how", ["kill", "error"])
def test_save_that_dies_half_way_leaves_the_previous_checkpoint(dirs, tmp_path, how):
    model = load_model(dirs["untied"])
    target = model_copy(dirs["untied"], tmp_path / "m")
    save_checkpoint(target, model)  # the previous checkpoint: one file
    before = snapshot(target)
    code = DIE_HALF_WAY.format(
        tests=str(REPO / "tests"),
        how=how,
        model_dir=str(dirs["untied"]),
        target=str(target),
        shard=SMALL_SHARDS,
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if how == "kill":
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    else:
        assert proc.returncode == 1 and "No space left on device" in proc.stderr
    assert snapshot(target) == before, "the previous checkpoint changed"
    fresh = construct(dirs["untied"], device="meta")
    load_checkpoint(target, fresh)
    assert same_weights(model, fresh)
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".m.ckpt-")]
    assert (len(leftovers) == 1) == (how == "kill"), "an error cleans up at once; a kill leaves staging"
    save_checkpoint(target, model, max_shard_size=SMALL_SHARDS)  # the next save sweeps the leftovers
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.ckpt-")]
    assert (target / INDEX_NAME).exists() and not (target / WEIGHTS_NAME).exists()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_save_sweeps_leftovers_of_the_earlier_staging_names(dirs, tmp_path):
    """Saves of scaffold 0.1.0 staged in .NAME.ckpt-<pid>-XXXXXXXX and, without the atomic exchange,
    moved the previous folder aside as .NAME.ckpt-<pid>-XXXXXXXX-old: after an upgrade the next save
    puts back the folder moved aside, deletes the staging folder, and leaves alone one whose process
    still runs."""
    model = load_model(dirs["untied"])
    target = model_copy(dirs["untied"], tmp_path / "m")
    save_checkpoint(target, model)
    before = snapshot(target)
    dead, alive = _dead_pid(), os.getppid()
    staging = tmp_path / f".m.ckpt-{dead}-abcd1234"
    staging.mkdir()
    (staging / WEIGHTS_NAME).write_bytes(b"half a shard")
    running = tmp_path / f".m.ckpt-{alive}-efgh5678"
    running.mkdir()
    target.rename(tmp_path / f".m.ckpt-{dead}-ijkl9012-old")  # killed between its two renames
    with torch.no_grad():
        model.model.norm.weight.add_(1.0)
    save_checkpoint(target, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "m"]
    after = snapshot(target)  # the folder put back, its other files kept, the new weights in it
    assert after.keys() == before.keys() and after[WEIGHTS_NAME] != before[WEIGHTS_NAME]
    assert {k: v for k, v in after.items() if k != WEIGHTS_NAME} == {
        k: v for k, v in before.items() if k != WEIGHTS_NAME
    }
    fresh = construct(dirs["untied"], device="meta")
    load_checkpoint(target, fresh)
    assert same_weights(model, fresh)


KILLED_IN_SWAP = """
import sys
sys.path.insert(0, {tests!r})
import scaffold.atomic as atomic
atomic.exchange = lambda *_: False  # the two renames of systems without an atomic exchange
from _construct_util import load_model
from scaffold.build.checkpoint import save_checkpoint
save_checkpoint({target!r}, load_model({model_dir!r}), max_shard_size={shard})
"""


def test_save_killed_between_the_two_renames(dirs, tmp_path):
    """Without the atomic exchange the previous folder is renamed aside first: a save killed then
    leaves it whole beside the target, and the next save puts it back before it writes."""
    model = load_model(dirs["untied"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    target = model_copy(dirs["untied"], tmp_path / "m")
    save_checkpoint(target, model)
    before = snapshot(target)
    code = KILLED_IN_SWAP.format(
        tests=str(REPO / "tests"), model_dir=str(dirs["untied"]), target=str(target), shard=SMALL_SHARDS
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "SCAFFOLD_FAULT": "checkpoint-swap:kill",
    }
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not target.exists()
    (aside,) = tmp_path.glob(".m.old-*")
    assert snapshot(aside) == before
    save_checkpoint(target, model, max_shard_size=SMALL_SHARDS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert (target / INDEX_NAME).exists() and not (target / WEIGHTS_NAME).exists()
    assert (target / "config.json").read_bytes() == before["config.json"]
    fresh = construct(dirs["untied"], device="meta")
    load_checkpoint(target, fresh)
    assert same_weights(model, fresh)


def test_save_over_the_checkpoint_the_model_was_loaded_from(dirs, tmp_path):
    """Loaded tensors map the checkpoint's files: saving into the same folder must not corrupt them."""
    original = load_model(dirs["untied"])
    save_checkpoint(tmp_path / "c", original, max_shard_size=SMALL_SHARDS)
    model = construct(dirs["untied"], device="meta")
    load_checkpoint(tmp_path / "c", model)
    with torch.no_grad():
        model.model.norm.weight.add_(1.0)  # copy-on-write: the file keeps its values
    save_checkpoint(tmp_path / "c", model)
    assert same_weights(model, model)  # the mapped tensors are still readable
    again = construct(dirs["untied"], device="meta")
    load_checkpoint(tmp_path / "c", again)
    assert same_weights(model, again)
    assert torch.equal(again.model.norm.weight, original.model.norm.weight + 1)
