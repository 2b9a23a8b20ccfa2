"""Lean training: the chunked linear cross-entropy of every generated ``ForCausalLM`` (scaffold/codegen/parts/loss.py)
gives transformers' loss and gradients without the (batch, seq, vocab) logits, the logits stay there for
whoever asks for them, and ``torch.compile`` trains the model with no graph break and no recompile across
sequence lengths. Speed and memory are measured in bench/lean.py, never asserted here."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers.loss.loss_utils import ForCausalLMLoss

from scaffold.codegen.parts.loss import ChunkedLinearCrossEntropy, chunked_causal_lm_loss
from tests._families import tiny
from tests.conftest import TINY_LLAMA, build_project, load_model, make_project

VOCAB = 300


def _head(bias: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(2, 13, 32, generator=g, requires_grad=True)
    weight = (torch.randn(VOCAB, 32, generator=g) * 0.3).requires_grad_()
    b = (torch.randn(VOCAB, generator=g) * 0.3).requires_grad_() if bias else None
    labels = torch.randint(0, VOCAB, (2, 13), generator=g)
    labels[0, :4] = -100  # a prompt the loss ignores
    labels[1, -2:] = -100  # padding
    return hidden, weight, b, labels


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("chunk_size", [1, 5, 26, None], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize(
    "bias,softcap,items,pre_shifted",
    [
        (False, None, None, False),
        (True, None, None, False),
        (False, 3.0, None, False),
        (True, 3.0, torch.tensor(7), False),
        (False, None, 9, True),
    ],
    ids=["plain", "bias", "softcap", "bias-softcap-num_items", "num_items-shift_labels"],
)
def test_part_gives_transformers_loss_and_gradients(chunk_size, bias, softcap, items, pre_shifted):
    hidden, weight, b, labels = _head(bias)
    kwargs = {"num_items_in_batch": items} if items is not None else {}
    if pre_shifted:  # targets already shifted (TRL, context parallelism): no shift inside
        kwargs["shift_labels"] = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:].contiguous()
    logits = hidden @ weight.t() + (b if bias else 0)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    expected = ForCausalLMLoss(logits, None if pre_shifted else labels, VOCAB, **kwargs)
    loss = chunked_causal_lm_loss(
        hidden, weight, b, None if pre_shifted else labels, softcap, chunk_size=chunk_size, **kwargs
    )
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    for got, want in zip(_grads(loss, (hidden, weight, b)), _grads(expected, (hidden, weight, b))):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_part_without_any_target_is_nan_as_cross_entropy():
    hidden, weight, _, labels = _head(False)
    labels = torch.full_like(labels, -100)
    assert chunked_causal_lm_loss(hidden, weight, None, labels).isnan()


def test_second_backward_is_an_error_not_a_doubled_gradient():
    hidden, weight, _, labels = _head(False)
    loss = chunked_causal_lm_loss(hidden, weight, None, labels, chunk_size=4)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_part_grad_free_forward_keeps_no_gradients():
    hidden, weight, _, labels = _head(False)
    with torch.no_grad():
        targets = labels.reshape(-1)
        total = ChunkedLinearCrossEntropy.apply(hidden.reshape(-1, 32), weight, None, targets, 2, None, -100)
    assert total.requires_grad is False and total > 0


class LargestTensor(TorchDispatchMode):
    """The largest number of elements of any tensor with a last dimension of ``size`` an op makes (logits
    and their gradients: the vocabulary is no other width of the tiny models), views aside, forward and backward."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.untyped_storage().data_ptr() in inputs:
                continue  # a view (weight.t()) or an in-place result
            if t.ndim and t.shape[-1] == self.size:
                self.largest = max(self.largest, t.numel())
        return out


# llama (no bias, no cap), gemma2 (final logit soft-capping), a decoder whose head has a bias
CASES = {
    "llama": ("llama", TINY_LLAMA),
    "gemma2": ("gemma2", tiny("gemma2")),
    "decoder-lm_head_bias": ("decoder", {**tiny("decoder"), "lm_head_bias": True}),
}


@pytest.fixture(scope="module", params=list(CASES))
def built(request, tmp_path_factory):
    blueprint, model = CASES[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    return build_project(make_project(tmp, name="lean", blueprint=blueprint, model=model))


def _step(model, ids, labels, **kwargs):
    model.zero_grad(set_to_none=True)
    probe = LargestTensor(model.config.vocab_size)
    with probe:
        out = model(input_ids=ids, labels=labels, use_cache=False, **kwargs)
        out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads, probe.largest


def test_training_never_builds_the_logits_and_matches_the_full_loss(built):
    model = load_model(built).train()
    model.config.loss_chunk_size = 16  # 80 tokens: five chunks
    batch, seq, vocab = 2, 40, model.config.vocab_size
    ids = torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :7] = -100
    items = {"num_items_in_batch": torch.tensor(50)}
    for kwargs in ({}, items):
        chunked, chunked_grads, chunked_largest = _step(model, ids, labels, **kwargs)
        model.config.chunked_loss = False
        full, full_grads, full_largest = _step(model, ids, labels, **kwargs)
        model.config.chunked_loss = True
        assert chunked.logits is None and full.logits.shape == (batch, seq, vocab)
        assert full_largest >= batch * seq * vocab  # the probe sees the logits when they are built
        assert chunked_largest == 16 * vocab  # one chunk's logits at most
        torch.testing.assert_close(chunked.loss, full.loss, atol=1e-5, rtol=1e-5)
        assert chunked_grads.keys() == full_grads.keys()
        for name in full_grads:
            torch.testing.assert_close(chunked_grads[name], full_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_logits_whenever_they_are_asked_for(built):
    model = load_model(built)
    ids = torch.randint(3, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    shape = (2, 12, model.config.vocab_size)
    model.train()
    assert model(input_ids=ids).logits.shape == shape  # no labels
    with torch.no_grad():  # evaluation loops under no_grad, even in train mode
        out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == shape and out.loss is not None
    model.eval()  # Trainer's evaluate / prediction_step: eval() and labels, logits for compute_metrics
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == shape and out.loss is not None
    assert model(input_ids=ids, logits_to_keep=1).logits.shape == (2, 1, model.config.vocab_size)
    generated = model.generate(ids[:1, :4], max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 7)


def test_trainer_evaluation_gets_logits_for_compute_metrics(tiny_llama_dir, tmp_path):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = load_model(tiny_llama_dir)
    ids = torch.randint(3, 300, (8, 16), generator=torch.Generator().manual_seed(3)).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    seen = []

    def compute_metrics(pred):
        seen.append(pred.predictions.shape)
        return {"top1": float((pred.predictions[:, :-1].argmax(-1) == pred.label_ids[:, 1:]).mean())}

    args = TrainingArguments(
        tmp_path / "out",
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=data, eval_dataset=data, compute_metrics=compute_metrics
    )
    trainer.train()
    metrics = trainer.evaluate()
    assert seen == [(8, 16, 300)] and "eval_top1" in metrics and metrics["eval_loss"] > 0


def test_compiled_training_has_no_graph_break_and_no_recompile_across_lengths(tiny_llama_dir):
    import torch._dynamo as dynamo

    torch.manual_seed(0)
    model = load_model(tiny_llama_dir).train()
    reference = load_model(tiny_llama_dir).train()
    reference.load_state_dict(model.state_dict())
    ids = torch.randint(3, 300, (2, 16))
    explained = dynamo.explain(lambda ids: model(input_ids=ids, labels=ids, use_cache=False).loss)(ids)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    try:
        # the first length compiles static, the second recompiles once with the length marked dynamic
        # (dynamic=None's automatic marking); from then on no length may recompile
        for i, seq in enumerate((16, 24, 40, 17, 33)):
            with dynamo.config.patch(error_on_recompile=i >= 2):
                ids = torch.randint(3, 300, (2, seq))
                loss = compiled(input_ids=ids, labels=ids, use_cache=False).loss
                loss.backward()
            expected = reference(input_ids=ids, labels=ids, use_cache=False).loss
            expected.backward()
            torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
            for p, q in zip(model.parameters(), reference.parameters()):
                torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4)
            model.zero_grad(), reference.zero_grad()
    finally:
        dynamo.reset()
