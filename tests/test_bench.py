"""The benchmark helpers measure what they say: same model on both sides, real memory options,
exact tensor memory, and a start-up that does not import torch. No timings are asserted here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import _common as C  # noqa: E402
from _build import build_model_dir  # noqa: E402

TINY = dict(
    vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    head_dim=8, intermediate_size=64, max_position_embeddings=128,
)  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("bench"), "tiny", "4m", TINY)


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_transformers_config_has_the_generated_shapes(tmp_path, tie):
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32}  # fmt: skip
    d = build_model_dir(tmp_path, "t", "4m", {**TINY, "tie_word_embeddings": tie, "rope_scaling": rope})
    gen = C.load_generated(d, torch.float32, "cpu")
    hf = C.load_hf(gen.config, torch.float32, "cpu")
    assert type(hf).__module__.startswith("transformers.models.llama")
    for key in C.SHARED_KEYS:
        assert getattr(hf.config, key) == getattr(gen.config, key), key
    assert sorted(gen.state_dict()) == sorted(hf.state_dict())
    # same weights, same logits: the two sides of every comparison compute the same function
    assert C.check_same_logits(gen, hf, gen.config.vocab_size, "cpu", atol=1e-5) <= 1e-5


def test_memory_options_train_the_same(model_dir):
    """Checkpointing and the optimizer fused into backward change memory, not the numbers."""

    def one_step(**options):
        torch.manual_seed(0)
        model = C.load_generated(model_dir, torch.float32, "cpu")
        trainer = C.Trainer(model, batch=2, seq=16, lr=1e-2)
        trainer.step(**options)
        return {n: p.detach().clone() for n, p in model.named_parameters()}, trainer

    torch.manual_seed(0)
    init = dict(C.load_generated(model_dir, torch.float32, "cpu").named_parameters())
    base, _ = one_step()
    assert all(not torch.equal(base[n], init[n]) for n in base)  # every parameter took a step
    for options in ({"ckpt": True}, {"fused": True}, {"ckpt": True, "fused": True}):
        params, trainer = one_step(**options)
        for name, p in params.items():
            torch.testing.assert_close(p, base[name], rtol=0, atol=1e-6, msg=f"{options} {name}")
        assert (trainer.adamw is None) == bool(options.get("fused"))  # one optimizer state, not two


def test_trainer_switches_options_between_steps(model_dir):
    model = C.load_generated(model_dir, torch.float32, "cpu")
    trainer = C.Trainer(model, batch=2, seq=16)
    trainer.step(ckpt=True)
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    trainer.step(ckpt=False, fused=True)
    assert not any(layer.gradient_checkpointing for layer in model.model.layers)
    assert all(p.grad is None for p in model.parameters())  # every gradient was used and freed
    assert not any(p._post_accumulate_grad_hooks for p in model.parameters())  # hooks removed


def test_live_tensor_bytes_is_exact():
    tracker = C.LiveTensorBytes()
    with tracker:
        a = torch.empty(1000, dtype=torch.float32)  # 4000 bytes
        b = torch.empty(500, dtype=torch.float64)  # 4000 bytes
        view = a[:10]  # same storage: not counted again
        del b
        c = torch.ones(250, dtype=torch.float32)  # 1000 bytes
    assert tracker.peak == 8000
    assert tracker.current == 5000
    del a, view, c
    assert tracker.current == 0


def test_live_tensor_bytes_sees_activations_and_backward(model_dir):
    model = C.load_generated(model_dir, torch.float32, "cpu")
    peaks = {}
    for ckpt in (False, True):
        trainer = C.Trainer(model, batch=4, seq=128)
        tracker = C.LiveTensorBytes()
        for p in model.parameters():
            tracker.track(p)
        weights = tracker.current
        with tracker:
            trainer.step(ckpt=ckpt)
        trainer.close()
        peaks[ckpt] = tracker.peak
        assert tracker.peak > 3 * weights  # gradients and AdamW's two moments on top of the weights
    assert peaks[True] < peaks[False]  # checkpointing keeps fewer activations


@pytest.mark.parametrize("argv", [["--help"], ["new", "p", "--from", "llama"]], ids=["help", "new"])
def test_cli_start_up_does_not_import_torch(tmp_path, argv):
    code = (
        "import sys; from scaffold.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *argv, *(["--projects-dir", str(tmp_path)] if argv[0] == "new" else [])],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, out.stdout


def test_family_bench_compares_the_same_function(tmp_path):
    """bench/families.py: the generated model of each reproduced family against its transformers
    class, same weights (strict load, logits compared) before any timing."""
    import families

    assert families.reproduced_families()["llama"] == "llama"
    tiny = {**TINY, "intermediate_size": 64}
    row = families.measure("llama", "llama", tmp_path, batch=2, seq=16, warmup=0, rounds=2, shape=tiny)
    assert row["logits max diff"] <= 1e-5
    assert len(row["cpu"]["generated"]) == len(row["cpu"]["transformers"]) == 2
    assert row["ratio"] > 0 and row["parameters"] > 0
    assert row["attention"] == "sdpa" and row["attention note"] == ""


def test_family_bench_picks_eager_where_a_side_has_no_sdpa():
    """Gemma 2's soft-capped scores have no sdpa path (transformers' class says so, and ours): the
    family bench runs it on eager by itself and says why; others keep the attention asked for."""
    import families
    from transformers import Gemma2ForCausalLM, LlamaForCausalLM

    attn, note = families.choose_attention(
        "sdpa", {"transformers'": Gemma2ForCausalLM, "ours": LlamaForCausalLM}
    )
    assert attn == "eager" and note == "eager attention: transformers' Gemma2ForCausalLM has no sdpa path"
    assert families.choose_attention("sdpa", {"transformers'": LlamaForCausalLM}) == ("sdpa", "")
    assert families.choose_attention("flex_attention", {"transformers'": Gemma2ForCausalLM}) == (
        "flex_attention",
        "",
    )
