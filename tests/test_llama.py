"""The generated Llama against transformers' own LlamaForCausalLM, and its backends, cache and buffers."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY_LLAMA, build_project, load_model, make_project, skip_unreliable_flex

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}

CASES = {
    "gqa-untied": {},
    "mha-tied": {"num_key_value_heads": 4, "tie_word_embeddings": True},
    "mqa-llama3-rope": {"num_key_value_heads": 1, "rope_theta": 500000.0, "rope_scaling": LLAMA3_SCALING},
    "head-dim-not-hidden-over-heads": {"head_dim": 24},
}


def transformers_llama(config):
    """transformers' own Llama with the generated model's shapes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps,
        rope_parameters=dict(config.rope_parameters),
        tie_word_embeddings=config.tie_word_embeddings,
        pad_token_id=config.pad_token_id,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(hf_config).eval()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One built model directory per parity case."""
    dirs = {}
    for case, extra in CASES.items():
        tmp = tmp_path_factory.mktemp(case)
        dirs[case] = build_project(make_project(tmp, model={**TINY_LLAMA, **extra}))
    return dirs


@pytest.mark.parametrize("case", CASES)
def test_transformers_llama_state_dict_loads_strictly_and_gives_same_logits(built, case):
    torch.manual_seed(0)
    ours = load_model(built[case], attn_implementation="eager")
    theirs = transformers_llama(ours.config)
    with torch.no_grad():  # randomise norms too, so a swapped norm would show
        for name, p in theirs.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.uniform_(0.5, 1.5)
    missing_unexpected = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not missing_unexpected.missing_keys and not missing_unexpected.unexpected_keys
    ids = torch.randint(0, ours.config.vocab_size, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=2e-5, rtol=1e-5)


def test_tied_heads_share_storage(built):
    model = load_model(built["mha-tied"])
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model = load_model(built["gqa-untied"])
    assert model.lm_head.weight is not model.model.embed_tokens.weight


def backends():
    out = ["eager", "sdpa", "flex_attention"]
    try:
        import flash_attn  # noqa: F401

        out.append("flash_attention_2")
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("backend", backends())
def test_backends_agree_with_eager(tiny_llama_dir, backend):
    skip_unreliable_flex(backend)
    torch.manual_seed(0)
    reference = load_model(tiny_llama_dir, attn_implementation="eager")
    model = load_model(tiny_llama_dir, attn_implementation=backend)
    model.load_state_dict(reference.state_dict())
    ids = torch.randint(0, 262, (2, 24))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding on the second row
    with torch.no_grad():
        for kwargs in ({}, {"attention_mask": mask}):
            a = reference(ids, **kwargs).logits
            b = model(ids, **kwargs).logits
            keep = mask.bool() if kwargs else torch.ones_like(mask, dtype=torch.bool)
            torch.testing.assert_close(a[keep], b[keep], atol=1e-4, rtol=1e-4)


def test_flex_backward_or_reason(tiny_llama_dir):
    model = load_model(tiny_llama_dir, attn_implementation="flex_attention").train()
    ids = torch.randint(0, 262, (1, 16))
    try:
        model(ids, labels=ids).loss.backward()
    except Exception as err:  # some torch versions cannot run flex backward on the CPU
        pytest.skip(f"flex_attention backward does not run on this CPU build: {type(err).__name__}")
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None


def test_sliding_window_limits_what_a_token_sees(tmp_path):
    model_dir = build_project(
        make_project(tmp_path, model={**TINY_LLAMA, "num_hidden_layers": 1, "sliding_window": 4})
    )
    for backend in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = load_model(model_dir, attn_implementation=backend)
        ids = torch.randint(0, 262, (1, 12))
        changed = ids.clone()
        changed[0, 0] = (ids[0, 0] + 1) % 262
        with torch.no_grad():
            a, b = model(ids).logits, model(changed).logits
        torch.testing.assert_close(a[0, 4:], b[0, 4:])  # position 0 is outside every later window
        assert not torch.allclose(a[0, :4], b[0, :4])
        kw = dict(max_new_tokens=10, do_sample=False, pad_token_id=1)
        assert torch.equal(
            model.generate(ids, use_cache=True, **kw), model.generate(ids, use_cache=False, **kw)
        )


def test_rope_table_stays_exact_across_dtype_moves(tiny_llama_dir):
    model = load_model(tiny_llama_dir)
    rotary = model.model.rotary_emb
    exact = rotary.compute_inv_freq()
    model.to(torch.bfloat16)
    assert rotary.inv_freq.dtype == torch.float32 and torch.equal(rotary.inv_freq, exact)
    model.to(torch.float32)
    assert torch.equal(rotary.inv_freq, exact)


def test_from_pretrained_recomputes_non_persistent_buffers(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model = load_model(tiny_llama_dir)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=True, dtype=torch.bfloat16)
    assert torch.equal(loaded.model.rotary_emb.inv_freq, model.model.rotary_emb.compute_inv_freq())


def test_init_follows_the_spec(tiny_llama_dir):
    """torchtitan-style init: residual-writing projections smaller, head d^-0.5, norms one."""
    torch.manual_seed(0)
    model = load_model(tiny_llama_dir)
    c = model.config
    std, out_std = c.initializer_range, c.initializer_range / (2 * c.num_hidden_layers) ** 0.5
    layer = model.model.layers[0]
    assert abs(layer.self_attn.q_proj.weight.std().item() - std * 0.9) < std * 0.15  # truncated at 3 std
    assert abs(layer.mlp.down_proj.weight.std().item() - out_std * 0.99) < out_std * 0.15
    assert layer.self_attn.o_proj.weight.abs().max().item() <= 3 * out_std + 1e-6
    head = model.lm_head.weight
    assert abs(head.std().item() - c.hidden_size**-0.5) < 0.2 * c.hidden_size**-0.5
    assert abs(model.model.embed_tokens.weight.std().item() - 1.0) < 0.05
    assert torch.equal(model.model.norm.weight, torch.ones_like(model.model.norm.weight))


def test_gradient_checkpointing_gives_the_same_gradients(tiny_llama_dir):
    torch.manual_seed(0)
    plain = load_model(tiny_llama_dir).train()
    ckpt = load_model(tiny_llama_dir).train()
    ckpt.load_state_dict(plain.state_dict())
    enable = getattr(ckpt, "activation_checkpointing_enable", None) or ckpt.gradient_checkpointing_enable
    enable()
    assert ckpt.model.layers[0].gradient_checkpointing
    ids = torch.randint(0, 262, (2, 16))
    plain(ids, labels=ids).loss.backward()
    ckpt(ids, labels=ids).loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_gradients_match_transformers_llama_pad_row_included(built):
    """Training parity, not only logits: same loss and gradients, the pad token's row frozen in both."""
    torch.manual_seed(0)
    ours = load_model(built["gqa-untied"], attn_implementation="eager").train()
    theirs = transformers_llama(ours.config).train()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ids = torch.randint(0, ours.config.vocab_size, (2, 24))
    ids[:, ::5] = ours.config.pad_token_id
    a, b = ours(ids, labels=ids).loss, theirs(ids, labels=ids).loss
    torch.testing.assert_close(a, b)
    a.backward()
    b.backward()
    pad = ours.config.pad_token_id
    assert ours.model.embed_tokens.weight.grad[pad].abs().sum() == 0
    for (name, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
