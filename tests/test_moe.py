"""A mixture of experts as structure: what mlp = "moe" resolves to per layer, the checks naming the
key at fault, the grouped experts' computation against a loop over tokens, a novel MoE on another
family, scaffold import of MoE configs, and the memory estimate."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from scaffold import arch
from scaffold.spec.blueprints import load as load_blueprint
from tests._parity import assert_family_checks, scaffold_model, tiny_hf_config
from tests.conftest import TINY_LLAMA


def resolved(family: str, **model):
    bp = load_blueprint(family)
    m = bp.resolve(bp.preset(None), {"model": model})["model"]
    return arch.for_blueprint(bp, m)


# ------------------------------------------------------------------------------------- resolution


@pytest.mark.parametrize(
    ("family", "model", "sparse"),
    [
        ("qwen3_moe", {}, [0, 1, 2, 3]),
        ("qwen3_moe", {"decoder_sparse_step": 2}, [1, 3]),
        ("qwen2_moe", {"mlp_only_layers": [0, 2]}, [1, 3]),
        ("mixtral", {}, [0, 1, 2, 3]),
        ("llama", {"mlp": "moe", "first_k_dense_replace": 1}, [1, 2, 3]),
        (
            "llama",
            {"mlp": "moe", "decoder_sparse_step": 2, "mlp_only_layers": [3], "first_k_dense_replace": 0},
            [1],
        ),
    ],
    ids=["all-sparse", "every-2nd", "mlp-only-layers", "mixtral", "first-k-dense", "combined"],
)
def test_each_layers_feed_forward(family, model, sparse):
    a = resolved(family, **model)
    assert a.sparse_layers == sparse
    assert [layer.mlp for layer in a.layers] == ["sparse" if i in sparse else "dense" for i in range(4)]


def test_experts_in_each_familys_spelling():
    mixtral = resolved("mixtral").mlp.experts
    assert (mixtral.num_experts_key, mixtral.intermediate_size_key, mixtral.pattern_keys) == (
        "num_local_experts",
        "intermediate_size",
        (),
    )
    assert mixtral.norm_topk_prob and mixtral.jitter
    qwen2 = resolved("qwen2_moe").mlp.experts
    assert (qwen2.num_experts, qwen2.experts_per_token, qwen2.intermediate_size) == (8, 2, 128)
    assert qwen2.shared_expert == "gated" and qwen2.shared_intermediate_size == 512
    assert qwen2.pattern_keys == ("mlp_only_layers", "decoder_sparse_step")
    assert resolved("llama").mlp.experts is None


def test_norm_topk_prob_is_still_transformers_network():
    """Qwen3-MoE's class reads norm_topk_prob from its config: either value is its network."""
    assert resolved("qwen3_moe", norm_topk_prob=True).transformers_class == "Qwen3MoeForCausalLM"
    assert resolved("qwen3_moe", norm_topk_prob=False).transformers_class == "Qwen3MoeForCausalLM"
    assert resolved("qwen3_moe", router="sigmoid").class_prefix == "ScaffoldQwen3Moe"
    assert resolved("mixtral", norm_topk_prob=False).class_prefix == "ScaffoldMixtral"


@pytest.mark.parametrize(
    ("blueprint", "sets", "key", "message"),
    [
        ("qwen3_moe", {"num_experts_per_tok": 9}, "model.num_experts_per_tok", "there are 8"),
        ("qwen3_moe", {"mlp_only_layers": [4]}, "model.mlp_only_layers", "names layer 4"),
        ("qwen3_moe", {"mlp_only_layers": [-1]}, "model.mlp_only_layers", "layer indices"),
        ("qwen3_moe", {"mlp_bias": True}, "model.mlp_bias", "no biases"),
        ("qwen3_moe", {"router": "top1"}, "model.router", "softmax, sigmoid"),
        ("llama", {"shared_expert": "gated"}, "model.shared_expert", 'mlp = "moe"'),
        ("llama", {"num_experts": 4}, "model.num_experts", "unknown key"),
        ("mixtral", {"mlp_only_layers": [1]}, "model.mlp_only_layers", "unknown key"),
    ],
    ids=[
        "top-k-beyond",
        "dense-layer-beyond",
        "negative-layer",
        "bias",
        "router",
        "shared-no-moe",
        "experts-no-moe",
        "mixtral-no-pattern",
    ],
)
def test_manifest_names_the_bad_key(tmp_path, blueprint, sets, key, message):
    from scaffold.errors import ManifestError
    from scaffold.project.new import create_project

    with pytest.raises(ManifestError) as err:
        create_project("bad", blueprint, projects_dir=tmp_path, overrides={"model": sets})
    assert key in str(err.value) and message in str(err.value)
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------- the part


def _loop_reference(h, index, weights, gate_up, down):
    out = torch.zeros_like(h)
    for t in range(h.shape[0]):
        for j in range(index.shape[1]):
            e = index[t, j]
            gate, up = (gate_up[e] @ h[t]).chunk(2)
            out[t] = out[t] + weights[t, j] * (down[e] @ (F.silu(gate) * up))
    return out


@pytest.mark.parametrize("path", ["grouped_mm", "padded_bmm"])
def test_grouped_experts_equal_a_loop_over_tokens(monkeypatch, path):
    """Both computations (torch's grouped_mm, the padded batched product), forward and gradients,
    with an expert no token chose."""
    from scaffold.codegen.parts import moe

    if path == "padded_bmm":
        monkeypatch.setattr(moe, "grouped_mm_usable", lambda x, w: False)
    elif not hasattr(F, "grouped_mm"):
        pytest.skip("this torch has no grouped_mm")
    g = torch.Generator().manual_seed(0)
    n, d, width, experts, k = 19, 16, 24, 6, 2
    h = torch.randn(n, d, generator=g, requires_grad=True)
    index = torch.stack([torch.randperm(experts - 1, generator=g)[:k] for _ in range(n)])  # expert 5 unused
    weights = torch.rand(n, k, generator=g, requires_grad=True)
    gate_up = (torch.randn(experts, 2 * width, d, generator=g) * 0.2).requires_grad_()
    down = (torch.randn(experts, d, width, generator=g) * 0.2).requires_grad_()
    leaves = (h, weights, gate_up, down)
    out = moe.grouped_experts_forward(h, index, weights, gate_up, down, F.silu)
    ref = _loop_reference(h, index, weights, gate_up, down)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    upstream = torch.randn(n, d, generator=g)
    ours = torch.autograd.grad(out, leaves, upstream)
    theirs = torch.autograd.grad(ref, leaves, upstream)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert ours[2][5].abs().sum() == 0  # the unused expert gets no gradient


def test_the_generated_experts_have_no_loop_over_experts(tmp_path):
    from scaffold.project.new import create_project

    project = create_project("moe", "qwen3_moe", projects_dir=tmp_path)
    source = (project / "modeling_qwen3_moe.py").read_text()
    experts = source[source.index("class Qwen3MoeExperts") : source.index("class Qwen3MoeSparseMoeBlock")]
    assert "for " not in experts and "grouped_experts_forward(" in experts
    for key in ("mlp", "router", "norm_topk_prob", "shared_expert"):  # resolved when generated
        assert (
            f"config.{key})" not in source
            and f"config.{key} " not in source
            and f"config.{key}:" not in source
        )


# ------------------------------------------------------------------------------------- a novel MoE


def test_a_novel_moe_builds_loads_and_trains(tmp_path):
    """Sigmoid routing, an ungated shared expert, a dense first layer and LayerNorm on Llama: not
    a transformers network (Scaffold* classes), yet it passes the checks that need no twin and trains."""
    model = {
        **TINY_LLAMA,
        "norm_type": "layernorm",
        "mlp": "moe",
        "router": "sigmoid",
        "norm_topk_prob": True,
        "shared_expert": "plain",
        "shared_expert_intermediate_size": 48,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "first_k_dense_replace": 1,
    }
    ours = scaffold_model(tmp_path, "llama", model)
    assert type(ours).__name__ == "ScaffoldLlamaForCausalLM"
    layers = ours.model.layers
    assert type(layers[0].mlp).__name__ == "ScaffoldLlamaMLP"
    assert type(layers[1].mlp).__name__ == "ScaffoldLlamaSparseMoeBlock"
    assert layers[1].mlp.experts.gate_up_proj.shape == (4, 64, 64)
    assert not hasattr(layers[1].mlp, "shared_expert_gate")
    assert_family_checks(ours)
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(ours.parameters(), lr=3e-3)
    ours.train()
    losses = []
    for _ in range(8):
        out = ours(input_ids=ids, labels=ids, output_router_logits=True)
        out.loss.backward()
        assert ours.model.layers[1].mlp.gate.weight.grad.abs().sum() > 0  # the router learns
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    assert len(out.router_logits) == 1 and out.router_logits[0].shape == (32, 4)
    assert losses[-1] < losses[0]


# ------------------------------------------------------------------------------------- import


@pytest.mark.parametrize(
    ("model_type", "config", "expect"),
    [
        (
            "qwen3_moe",
            {"num_experts": 6, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "norm_topk_prob": True},
            {"num_experts": 6},
        ),
        ("mixtral", {"num_local_experts": 4}, {"num_local_experts": 4}),
        (
            "qwen2_moe",
            {
                "num_experts": 6,
                "num_experts_per_tok": 2,
                "shared_expert_intermediate_size": 48,
                "mlp_only_layers": [1],
            },
            {"mlp_only_layers": [1], "shared_expert_intermediate_size": 48},
        ),
    ],
    ids=["qwen3_moe", "mixtral", "qwen2_moe"],
)
def test_import_maps_moe_configs(tmp_path, model_type, config, expect):
    from scaffold.project.importer import import_project
    from scaffold.spec.manifest import load

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(tiny_hf_config(model_type, **config).to_dict()))
    project = import_project(folder, name="imported", projects_dir=tmp_path / "projects")
    model = load(project)["model"]
    assert {k: model[k] for k in expect} == expect
    assert "num_experts" not in model if model_type == "mixtral" else "num_local_experts" not in model


def test_import_still_refuses_deepseek_routing(tmp_path):
    from scaffold.errors import UsageError
    from scaffold.project.importer import import_project

    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "deepseek_v3", "n_routed_experts": 256}))
    with pytest.raises(UsageError, match="n_routed_experts"):
        import_project(folder, projects_dir=tmp_path / "projects")
    assert not (tmp_path / "projects").exists()


# ------------------------------------------------------------------------------------- memory


def test_memory_estimate_counts_the_experts():
    """Parameters are counted on the meta device (every expert); activations count each token's
    top-k experts: more experts per token, a larger estimate."""
    from types import SimpleNamespace

    from scaffold.run.smoke import TestOptions, estimate_memory

    base = {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "vocab_size": 2000}
    dense = estimate_memory(SimpleNamespace(**base), 10**6, TestOptions(device="cpu"))
    moe = SimpleNamespace(**base, num_experts_per_tok=8, moe_intermediate_size=256)
    sparse = estimate_memory(moe, 10**6, TestOptions(device="cpu"))
    assert sparse.activations > dense.activations
