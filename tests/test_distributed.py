"""Beyond one device: parallel plans, dtype uniformity, and ``scaffold test --nproc`` on 2 gloo processes.

Starting processes costs more than the checks, so every family's sharded checks (tensor parallelism,
DDP, FSDP2 in float32 and bfloat16, the gathered state dict) run in one launch of tests/dist_checks.py,
and the command line is launched once for a run and once each for a rank that dies and one that hangs.
Cases that need more than 2 processes or CUDA skip with the reason.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from scaffold.arch import for_blueprint
from scaffold.build import build
from scaffold.build.construct import construct, default_dtype
from scaffold.codegen.plans import attention_styles, base_model_tp_plan, mlp_styles, plans_for
from scaffold.errors import BlueprintError
from scaffold.project import load_project
from scaffold.project.new import create_project
from scaffold.spec.blueprints import load as load_blueprint
from scaffold.spec.parallel import Layout, layout_from
from tests._construct_util import invoke

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("llama", "causal_lm", "deepone", "single_head")
# tiny shapes; deepone with trainable slopes (the parameter that had its own dtype)
SHAPES = {
    "llama": {"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
              "tie_word_embeddings": True},
    "causal_lm": {"hidden_size": 32, "num_attention_heads": 4},
    "deepone": {"hidden_size": 32, "num_attention_heads": 4, "alibi_trainable": True},
    "single_head": {"hidden_size": 32},
}  # fmt: skip
COMMON = {"num_hidden_layers": 2, "intermediate_size": 64, "vocab_size": 300, "max_position_embeddings": 64}
TEST = {"device": "cpu", "steps": 2, "batch_size": 4, "sequence_length": 16}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """One built model directory per family, with saved float32 weights."""
    root = tmp_path_factory.mktemp("dist")
    out = {}
    for family in FAMILIES:
        project = create_project(
            f"d_{family}",
            family,
            projects_dir=root / "projects",
            overrides={"model": {**COMMON, **SHAPES[family]}, "test": dict(TEST)},
        )
        out[family] = build(load_project(project), save_weights=True).output_dir
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"
    return env


def scaffold_processes() -> set[int]:
    """Worker processes of scaffold test --nproc that are alive now."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"scaffold.run.distributed" in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module")
def sharded(model_dirs, tmp_path_factory) -> list[dict]:
    """Every family's checks, run on 2 gloo processes in one launch: each rank's results."""
    out = tmp_path_factory.mktemp("dist_checks")
    job = out / "job.json"
    job.write_text(json.dumps({f: str(d) for f, d in model_dirs.items()}))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0", "--max-restarts", "0",
        str(ROOT / "tests" / "dist_checks.py"), str(job), str(out),
    ]  # fmt: skip
    proc = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def _family(sharded: list[dict], family: str) -> list[dict]:
    ranks = [r[family] for r in sharded]
    for r in ranks:
        assert "error" not in r, r.get("error")
    return ranks


# ---------------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_plans_name_every_projection_of_the_built_model(model_dirs, family):
    """Each pattern of the generated plans names real Linear modules, and every Linear of a decoder
    layer is in the plan: transformers would otherwise silently leave it whole."""
    model = construct(model_dirs[family], device="meta")
    config_plan = type(model.config).base_model_tp_plan
    assert config_plan and type(model.config).base_model_pp_plan
    base = model.model
    linears = {n for n, m in base.named_modules() if isinstance(m, nn.Linear)}
    for pattern in config_plan:
        assert fnmatch.filter(linears, pattern.replace("*", "[0-9]*")), pattern
    layer_linears = {n for n in linears if n.startswith("layers.0.")}
    covered = {n for n in layer_linears if any(fnmatch.fnmatch(n, p.replace("*", "0")) for p in config_plan)}
    assert covered == layer_linears
    assert list(type(model.config).base_model_pp_plan)[:2] == ["embed_tokens", "layers"]
    assert type(model)._tp_plan == {"lm_head": "colwise_rep"}
    children = {n for n, _ in base.named_children()}
    assert set(type(model.config).base_model_pp_plan) <= children


def test_plan_styles_follow_the_layout():
    # heads independent: split by heads
    assert attention_styles(Layout()) == {
        "q_proj": "colwise",
        "k_proj": "colwise",
        "v_proj": "colwise",
        "o_proj": "rowwise",
    }
    assert attention_styles(Layout(qk_norm="head"))["q_proj"] == "colwise"
    # a q/k norm over all heads (OLMo 2), ALiBi's slope vector, one head: gathered
    for layout in (Layout(qk_norm="full"), Layout(heads="whole")):
        assert set(attention_styles(layout).values()) == {"colwise_rep", "rowwise_rep"}
    # fused qkv: interleaved per head splits by heads, [q; k; v] blocks are gathered
    fused = {"q_proj": "", "k_proj": "", "v_proj": "", "qkv_proj": "query_key_value", "o_proj": "dense"}
    assert attention_styles(Layout(**fused, qkv_layout="interleaved")) == {
        "query_key_value": "colwise",
        "dense": "rowwise",
    }
    assert attention_styles(Layout(**fused, qkv_layout="blocks")) == {
        "query_key_value": "colwise_rep",
        "dense": "rowwise_rep",
    }
    assert (
        attention_styles(Layout(**fused, qkv_layout="interleaved", qk_norm="full"))["query_key_value"]
        == "colwise_rep"
    )
    assert mlp_styles(Layout(gate_proj="", up_proj="", gate_up_proj="gate_up_proj")) == {
        "gate_up_proj": "colwise_rep", "down_proj": "rowwise_rep"}  # fmt: skip
    # a family's data may set a style outright; "replicate" leaves the module out of the plan
    plan = base_model_tp_plan(Layout(styles={"k_proj": "colwise_rep", "v_proj": "replicate"}))
    assert plan["layers.*.self_attn.k_proj"] == "colwise_rep" and "layers.*.self_attn.v_proj" not in plan


@pytest.mark.parametrize(
    ("table", "key"),
    [({"qk_nrom": "full"}, "parallel.qk_nrom"), ({"heads": "some"}, "parallel.heads"),
     ({"styles": {"q_proj": "diagonal"}}, "parallel.styles.q_proj")],
)  # fmt: skip
def test_bad_parallel_table_names_the_key(table, key):
    with pytest.raises(BlueprintError) as err:
        layout_from(table, path="blueprints/x/blueprint.toml")
    assert err.value.key == key and "blueprint.toml" in str(err.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_shipped_projects_carry_the_plans_of_their_structure(family):
    """The plans follow from the family's structure and names: the shipped project carries exactly them."""
    from scaffold.spec import manifest

    bp = load_blueprint(family)
    project = ROOT / "projects" / f"{family}_4m"
    plans = plans_for(bp, for_blueprint(bp, manifest.load(project)["model"]))
    assert plans.config in (project / bp.meta["configuration_file"]).read_text()
    assert plans.causal_lm in (project / bp.meta["modeling_file"]).read_text()


def test_a_structural_change_changes_the_plan():
    """Llama's heads split; with ALiBi (one slope vector over all heads) they are gathered instead, and a
    post-norm decoder with a plain MLP has no final norm and no gate in its plans."""
    llama = load_blueprint("llama")
    assert "colwise_rep" not in plans_for(llama, for_blueprint(llama, {})).config
    alibi = plans_for(llama, for_blueprint(llama, {"position_embedding": "alibi"})).config
    assert (
        '"layers.*.self_attn.q_proj": "colwise_rep"' in alibi
        and '"layers.*.self_attn.o_proj": "rowwise_rep"' in alibi
    )
    post = plans_for(llama, for_blueprint(llama, {"norm_position": "post", "mlp": "plain"})).config
    assert "gate_proj" not in post and '"norm":' not in post


# ---------------------------------------------------------------------------------------------
# One dtype for every parameter
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_every_parameter_follows_the_requested_dtype(model_dirs, family):
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = model_dirs[family]
    loaded = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.bfloat16)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    with default_dtype(torch.bfloat16):
        constructed = type(loaded)(config)
    moved = AutoModelForCausalLM.from_config(config, trust_remote_code=True).to(torch.bfloat16)
    for route, model in (("from_pretrained", loaded), ("default_dtype", constructed), (".to", moved)):
        dtypes = {n: p.dtype for n, p in model.named_parameters() if p.dtype != torch.bfloat16}
        assert not dtypes, f"{route}: {dtypes}"
    # ALiBi's fixed slopes (a buffer) stay float32, and the bias is computed from them in float32
    for m in loaded.modules():
        if type(m).__name__ == "AlibiSlopes" and not m.trainable:
            assert m.slopes.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# Sharded on 2 processes (gloo), against the same model whole in one process
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_tensor_parallel_logits_match_one_process(sharded, family):
    for r in _family(sharded, family):
        assert "DTensor" in r["tp_sharded"]
        assert r["tp_logits"] < 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_ddp_loss_and_gradients_match_one_process(sharded, family):
    for r in _family(sharded, family):
        assert r["ddp_loss"] < 1e-5 and r["ddp_grads"] < 1e-6


@pytest.mark.parametrize("family", FAMILIES)
def test_fsdp2_gradients_are_averages_and_the_gathered_state_dict_reloads(sharded, family):
    """FSDP2 with the gradient reduce-scatter forced to SUM and divided: gradients equal the whole batch's
    (a sum would be twice them); the full state dict gathered after the step saves and reloads equal."""
    ranks = _family(sharded, family)
    for r in ranks:
        assert r["fsdp2_loss"] < 1e-5 and r["fsdp2_grads"] < 1e-6
    assert ranks[0]["fsdp2_reload_exact"] is True
    assert ranks[0]["fsdp2_reloaded"] < 1e-6  # the same SGD step taken on the whole batch in one process


@pytest.mark.parametrize("family", FAMILIES)
def test_fsdp2_in_bfloat16_after_from_pretrained(sharded, family):
    for r in _family(sharded, family):
        assert r["bf16_dtypes"] == ["torch.bfloat16"]
        assert r["fsdp2_bf16_loss"] < 2e-2 and r["fsdp2_bf16_grads_finite"]


# ---------------------------------------------------------------------------------------------
# scaffold test --nproc
# ---------------------------------------------------------------------------------------------


def _project(model_dirs, family: str = "llama") -> Path:
    return model_dirs[family].parent


def test_nproc_fsdp2_prints_each_step_once_and_matches_one_process(model_dirs):
    result = invoke("test", _project(model_dirs), "--nproc", 2, "--parallel", "fsdp2")
    assert result.exit_code == 0, result.output
    out = result.output
    for step in (1, 2):
        assert out.count(f"step {step}/2 ") == 1, out
    assert "fsdp2 over 2 processes (gloo, cpu)" in out and "tokens/s (all ranks)" in out
    assert re.search(r"peak memory: rank 0 [\d,.]+ MiB, rank 1 [\d,.]+ MiB", out)
    difference = float(re.search(r"largest loss difference (\S+)", out).group(1))
    assert difference < 1e-5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--nproc", 0], "--nproc must be at least 1"),
        (["--parallel", "fsdp2"], "--parallel needs --nproc"),
        (["--nproc", 2, "--batch-size", 3], "--batch-size 3 does not split across --nproc 2"),
        (["--nproc", 2, "--fuse-optim-with-backward"], "runs with one process only"),
    ],  # heads that do not split over tensor parallel ranks: tests/test_processes.py (within the cores)
    ids=["zero", "parallel-alone", "batch", "fused"],
)
def test_bad_nproc_is_a_usage_error(model_dirs, args, message):
    before = scaffold_processes()
    result = invoke("test", _project(model_dirs), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert scaffold_processes() <= before  # refused before anything was launched


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: more processes than GPUs is refused")
def test_more_processes_than_gpus_is_a_usage_error(model_dirs):
    result = invoke(
        "test", _project(model_dirs), "--device", "cuda", "--nproc", torch.cuda.device_count() + 1
    )
    assert result.exit_code == 2 and "GPUs" in result.output


def test_an_error_in_the_ranks_is_one_line_with_its_exit_code(model_dirs):
    """A learning rate that blows the weights up: the non-finite loss or gradient stops the ranks (exit 4), reported
    once with the rank that raised it, no traceback."""
    result = invoke(
        "test", _project(model_dirs), "--nproc", 2, "--parallel", "ddp", "--lr", "1e30", "--steps", 3
    )
    assert result.exit_code == 4, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.match(r"error: rank [01]: step [23]: (loss is|non-finite)", errors[0]), (
        errors
    )
    assert "Traceback" not in result.output


def test_a_rank_that_dies_ends_every_rank_with_one_line(model_dirs):
    before = scaffold_processes()
    result = invoke(
        "test", _project(model_dirs), "--nproc", 2, env={"SCAFFOLD_FAULT": "dist-start-rank1:kill"}
    )
    assert result.exit_code == 4, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: --nproc 2: rank 1 was killed by signal 9 (SIGKILL: out of memory?); every rank was stopped"
    ]
    assert "Traceback" not in result.output
    assert scaffold_processes() <= before


def test_a_rank_that_hangs_is_stopped_at_the_timeout(model_dirs):
    """Rank 1 stops at its first step while rank 0 waits for it in the loss's all-reduce: after the
    timeout every process is gone and the rank that got least far is named."""
    before = scaffold_processes()
    args = ("--nproc", 2, "--timeout", 25, "--no-compare")
    result = invoke("test", _project(model_dirs), *args, env={"SCAFFOLD_FAULT": "dist-step-rank1:stop"})
    assert result.exit_code == 4, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("error:"))
    named = re.search(r"rank ([\d, ]+) did not finish within 25 s", line)
    # rank 1 alone once both got through start-up (rank 0 then reached step 1); both if start-up took longer
    assert named and "1" in named.group(1).split(", "), line
    assert scaffold_processes() <= before  # the stopped rank too
