"""`scaffold test`'s training loop: the fused optimizer, non-finite checks and the memory options."""

from __future__ import annotations

import itertools

import pytest
import torch

from scaffold.errors import TestFailure
from scaffold.run.smoke import TestOptions, fused_optimizers, train
from tests.conftest import load_model


def fixed_batches(n: int = 4):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 262, (2, 16), generator=g) for _ in range(n)]


def test_fused_optimizer_matches_plain_adamw(tiny_llama_dir):
    torch.manual_seed(0)
    plain = load_model(tiny_llama_dir)
    fused = load_model(tiny_llama_dir)
    fused.load_state_dict(plain.state_dict())
    data = fixed_batches()
    quiet = lambda _: None  # noqa: E731
    r1 = train(plain, TestOptions(steps=4, lr=1e-2), iter(data), log=quiet)
    r2 = train(fused, TestOptions(steps=4, lr=1e-2, fuse_optim_with_backward=True), iter(data), log=quiet)
    assert r1.losses[-1] < r1.losses[0]
    torch.testing.assert_close(r1.losses, r2.losses, rtol=1e-4, atol=1e-4)
    for (name, a), (_, b) in zip(plain.named_parameters(), fused.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    assert all(p.grad is None for p in fused.parameters())  # gradients were freed as they were used


def test_each_parameter_stepped_once_per_backward(tiny_llama_dir):
    model = load_model(tiny_llama_dir).train()
    optimizers, hooks = fused_optimizers(model, 1e-3, [])
    ids = torch.randint(0, 262, (2, 8))
    for _ in range(2):
        model(ids, labels=ids).loss.backward()
    for h in hooks:
        h.remove()
    steps = {int(opt.state[p]["step"]) for p, opt in optimizers.items()}
    assert steps == {2}
    assert len(optimizers) == sum(1 for _ in model.parameters())


def test_non_finite_loss_stops_with_step_and_parameter(tiny_llama_dir):
    model = load_model(tiny_llama_dir)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(
        TestFailure, match=r"step 1: loss is nan; first bad parameter: model.layers.1.mlp.up_proj.weight"
    ):
        train(model, TestOptions(steps=2), iter(fixed_batches()), log=lambda _: None)


def test_non_finite_gradient_is_caught_in_fused_mode(tiny_llama_dir):
    model = load_model(tiny_llama_dir)
    hook = model.model.norm.weight.register_hook(lambda g: g * float("inf"))
    with pytest.raises(TestFailure, match=r"step 1: non-finite gradient; first bad parameter: "):
        train(
            model,
            TestOptions(steps=2, fuse_optim_with_backward=True),
            iter(fixed_batches()),
            log=lambda _: None,
        )
    hook.remove()


def test_gradient_checkpointing_option_trains(tiny_llama_dir):
    model = load_model(tiny_llama_dir)
    report = train(
        model,
        TestOptions(steps=3, lr=1e-2, gradient_checkpointing=True),
        itertools.cycle(fixed_batches(1)),
        log=lambda _: None,
    )
    assert model.model.layers[0].gradient_checkpointing
    assert report.losses[-1] < report.losses[0]
    assert "tokens/s" in report.summary() and "peak memory" in report.summary()
