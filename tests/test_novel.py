"""A combination no transformers class has (LayerNorm, per-head qk-norm, parallel residual, a plain
GELU MLP, ALiBi) from the decoder blueprint: it builds, loads with scaffold blocked, trains, and
passes the family checks every reproduced family passes (backends agree, cache equals
recomputation, packed equals alone)."""

from __future__ import annotations

import pytest
import torch

from scaffold.spec import schema
from tests._parity import assert_family_checks, scaffold_model
from tests.test_loading import run_loadcheck

NOVEL = {
    "norm_type": "layernorm",
    "qk_norm": "head",
    "parallel_residual": True,
    "mlp": "plain",
    "hidden_act": "gelu",
    "position_embedding": "alibi",
}
TINY = {
    "vocab_size": 300,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 128,
}


@pytest.mark.skipif(
    not {"qk_norm", "parallel_residual"} <= set(schema.STRUCTURE),
    reason="needs the qk_norm and parallel_residual structural keys",
)
def test_a_novel_combination_builds_loads_trains_and_passes_the_family_checks(tmp_path):
    model = scaffold_model(tmp_path, "decoder", {**TINY, **NOVEL})
    out = tmp_path / "projects" / "parity" / "model"
    modeling = (out / "modeling_decoder.py").read_text()
    assert "nn.LayerNorm" in modeling and "RMSNorm" not in modeling and "RotaryEmbedding" not in modeling
    layer = model.model.layers[0]
    assert type(layer.self_attn.q_norm).__name__ == "LayerNorm"  # qk-norm takes the model's norm
    assert layer.self_attn.q_norm.normalized_shape == (16,)  # per head: over head_dim
    (tmp_path / "work").mkdir()
    facts = run_loadcheck(out, tmp_path / "work")  # scaffold unimportable in that process
    assert facts["class"] == "DecoderForCausalLM" and facts["generated"] == 12
    assert_family_checks(model)
    torch.manual_seed(0)
    ids = torch.randint(3, 300, (4, 32))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses
