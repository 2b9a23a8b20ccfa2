"""Mixtral, Qwen2-MoE and Qwen3-MoE reproduced: each against transformers' own class of the family,
with the router's outputs, the load-balancing loss, a training step and the hub's per-expert layout."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests._parity import assert_parity, model_table, scaffold_model, tiny_hf_model

EXPERTS = {"num_experts_per_tok": 2, "moe_intermediate_size": 32}  # tiny experts, 2 of 6 per token

CASES = {
    "qwen3_moe-norm-topk": ("qwen3_moe", {**EXPERTS, "num_experts": 6, "norm_topk_prob": True}),
    # layer 0 dense (every 2nd layer sparse), the top-k scores as the softmax left them
    "qwen3_moe-sparse-step": ("qwen3_moe", {**EXPERTS, "num_experts": 6, "decoder_sparse_step": 2}),
    "mixtral-sliding": ("mixtral", {"num_local_experts": 6, "num_experts_per_tok": 2, "sliding_window": 6}),
    # a gated shared expert; layer 1 dense (mlp_only_layers)
    "qwen2_moe-shared-dense-layer": (
        "qwen2_moe",
        {**EXPERTS, "num_experts": 6, "shared_expert_intermediate_size": 48, "mlp_only_layers": [1]},
    ),
    "qwen2_moe-sliding-layer-types": (
        "qwen2_moe",
        {
            **EXPERTS,
            "num_experts": 6,
            "shared_expert_intermediate_size": 48,
            "norm_topk_prob": True,
            "use_sliding_window": True,
            "sliding_window": 6,
            "max_window_layers": 2,
        },
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_against_transformers(tmp_path, case):
    family, overrides = CASES[case]
    hf = tiny_hf_model(family, **overrides)
    ours = assert_parity(hf, family, tmp_path)
    assert type(ours).__name__ == type(hf).__name__  # transformers' class names, scaffold's code
    kinds = [type(layer.mlp).__name__ for layer in ours.model.layers]
    assert kinds == [type(layer.mlp).__name__ for layer in hf.model.layers]


def test_dense_and_sparse_layers_follow_the_config(tmp_path):
    hf = tiny_hf_model("qwen3_moe", **EXPERTS, num_experts=4, num_hidden_layers=4, decoder_sparse_step=2)
    ours = scaffold_model(tmp_path, "qwen3_moe", model_table(hf.config, "qwen3_moe"))
    assert [type(layer.mlp).__name__ for layer in ours.model.layers] == [
        "Qwen3MoeMLP",
        "Qwen3MoeSparseMoeBlock",
        "Qwen3MoeMLP",
        "Qwen3MoeSparseMoeBlock",
    ]


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral", "qwen2_moe"])
def test_router_logits_aux_loss_and_a_training_step(tmp_path, family):
    """output_router_logits: the same router logits, load-balancing loss and total loss (with padding),
    the same gradients, and after one AdamW step on each, the same next loss."""
    overrides = (
        {"num_local_experts": 6, "num_experts_per_tok": 2}
        if family == "mixtral"
        else {**EXPERTS, "num_experts": 6}
    )
    if family == "qwen2_moe":
        overrides["shared_expert_intermediate_size"] = 48
    hf = tiny_hf_model(family, router_aux_loss_coef=0.1, **overrides)
    ours = scaffold_model(tmp_path, family, model_table(hf.config, family))
    ours.load_state_dict(hf.state_dict(), strict=True)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 300, (2, 16), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids, "output_router_logits": True}
    losses = []
    for model in (ours, hf):
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        out = model(**batch)
        out.loss.backward()
        losses.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            losses[-1] += (model(**batch).loss,)
    (mine, my_grads, my_next), (theirs, their_grads, their_next) = losses
    assert len(mine.router_logits) == len(theirs.router_logits) == 2
    for a, b in zip(mine.router_logits, theirs.router_logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine.aux_loss, theirs.aux_loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(mine.loss, theirs.loss, atol=1e-5, rtol=1e-5)
    assert mine.aux_loss > 0.5  # the loss carries it: 0.1 * aux of about 1
    for name, grad in their_grads.items():
        torch.testing.assert_close(
            my_grads[name], grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}"
        )
    torch.testing.assert_close(my_next, their_next, atol=1e-5, rtol=1e-5)
    without = ours(input_ids=ids, labels=ids, output_router_logits=False)
    assert without.aux_loss is None and without.router_logits is None


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_a_checkpoint_transformers_saves_loads_and_saves_back(tmp_path, family):
    """transformers writes one tensor per expert (Mixtral's block_sparse_moe.experts.N.w1, ...); the
    generated model reads that layout through transformers' weight conversion, gives the same logits,
    and writes the same layout back, which transformers' class reads."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from scaffold.build import build
    from scaffold.project import load_project
    from scaffold.project.new import create_project

    overrides = {"num_local_experts": 4} if family == "mixtral" else {**EXPERTS, "num_experts": 4}
    hf = tiny_hf_model(family, **overrides)
    hf.save_pretrained(tmp_path / "hf")
    project = create_project(
        "ck", family, projects_dir=tmp_path / "p", overrides={"model": model_table(hf.config, family)}
    )
    out = build(load_project(project)).output_dir
    shutil.copy(tmp_path / "hf" / "model.safetensors", out / "model.safetensors")
    ours = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
    ids = torch.randint(3, 300, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)
    ours.save_pretrained(tmp_path / "ours")
    with safe_open(str(tmp_path / "ours" / "model.safetensors"), "pt") as f:
        with safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as g:
            assert sorted(f.keys()) == sorted(g.keys())
    back = type(hf).from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)


# One real preset per family: its parameter count equals transformers' own class at the same config
# (counted on the meta device, transformers 5.25) and the published figure.
REAL_PRESETS = {
    ("qwen3_moe", "30b-a3b"): 30_532_122_624,  # Qwen3-30B-A3B: 30.5B
    ("mixtral", "8x7b"): 46_702_792_704,  # Mixtral 8x7B: 46.7B
    ("qwen2_moe", "a2.7b"): 14_315_784_192,  # Qwen1.5-MoE-A2.7B: 14.3B
}


@pytest.mark.parametrize(("family", "preset"), REAL_PRESETS, ids=[f"{f}-{p}" for f, p in REAL_PRESETS])
def test_real_preset_parameter_count_on_meta(tmp_path, family, preset):
    from transformers import AutoConfig, AutoModelForCausalLM

    from scaffold.build import build
    from scaffold.project import load_project
    from scaffold.project.new import create_project
    from scaffold.spec.blueprints import load as load_blueprint

    model = load_blueprint(family).preset(preset)["model"]
    project = create_project(
        f"{family}_{preset}",
        family,
        projects_dir=tmp_path,
        preset=preset,
        overrides={"model": {"vocab_size": model["vocab_size"]}},
    )
    config = AutoConfig.from_pretrained(build(load_project(project)).output_dir, trust_remote_code=True)
    with torch.device("meta"):
        ours = AutoModelForCausalLM.from_config(config, trust_remote_code=True)
        theirs = AutoModelForCausalLM.from_config(
            AutoConfig.for_model(load_blueprint(family).meta["transformers_model_type"], **model)
        )
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters()) == REAL_PRESETS[(family, preset)]
