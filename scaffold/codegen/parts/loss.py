"""Chunked linear cross-entropy: the next-token loss of an output head, without the (tokens, vocab) logits.

A causal LM's loss is ``cross_entropy(hidden @ W.T + b, targets)``. Written that way, training holds the
whole logits tensor, its float32 copy, its log-softmax and their gradients: at a 152k vocabulary and
2048 tokens that is about 1.2 GB each, more than the rest of a small model's step. Here the tokens go
through the head a chunk at a time; each chunk's logits give its part of the loss and, in the same
pass, its part of the gradients of ``hidden``, ``W`` and ``b``, and are freed before the next chunk.
The matmuls are the three an ordinary forward and backward run (no recomputation); backward only
scales the gradients kept from the forward pass by the incoming gradient.
"""

import torch
import torch.nn.functional as F
from torch import nn


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T + bias`` (soft-capped when ``softcap`` is set) against
    ``targets``, computed in ``chunks`` runs of tokens; tokens whose target is ``ignore_index`` count zero.

    ``hidden``: (N, d) with N a multiple of ``chunks``; ``weight``: (V, d); ``bias``: (V,) or None;
    ``targets``: (N,) int64. Logits are
    taken in float32 as transformers' ``ForCausalLMLoss`` does. Returns a float32 scalar. The gradients
    are computed in forward when any input needs one, so backward may run once only (no ``retain_graph``).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunks: int, softcap, ignore_index: int = -100):
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = [] if ctx.needs_input_grad[0] else None
        # weight gradients summed over chunks in float32 (in place when the weights are float32 already)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if ctx.needs_input_grad[2] else None
        # (chunks * c, d) -> chunks of (c, d): the caller pads to a multiple of `chunks`
        for h, t in zip(hidden.view(chunks, -1, hidden.shape[-1]).unbind(0), targets.view(chunks, -1).unbind(0)):
            logits = (h @ weight.t() if bias is None else torch.addmm(bias, h, weight.t())).float()  # (c, V)
            if softcap is not None:
                capped = torch.tanh(logits / softcap)  # logits -> cap * tanh(logits / cap)
                logits = capped * softcap
            valid = t != ignore_index
            safe = torch.where(valid, t, 0)[:, None]  # (c, 1), ignored tokens read class 0, then count zero
            lse = torch.logsumexp(logits, dim=-1)  # (c,)
            total += ((lse - logits.gather(1, safe)[:, 0]) * valid).sum()
            if not needs_grad:
                continue
            # d loss / d logits = softmax - onehot(target), zero for ignored tokens; in place on the logits
            grad = logits.sub_(lse[:, None]).exp_()
            grad.scatter_add_(1, safe, torch.full_like(safe, -1, dtype=grad.dtype))
            grad.mul_(valid[:, None])
            if softcap is not None:
                grad.mul_(1 - capped * capped)  # d (cap * tanh(x / cap)) / dx
                del capped
            grad = grad.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden.append(grad @ weight)
            if grad_weight is not None:
                if grad_weight.dtype == h.dtype:
                    grad_weight.addmm_(grad.t(), h)
                else:
                    grad_weight += (grad.t() @ h).float()
            if grad_bias is not None:
                grad_bias += grad.sum(0, dtype=torch.float32)
            del grad, logits
        ctx.grads = (None if grad_hidden is None else torch.cat(grad_hidden), grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.grads is None:
            raise RuntimeError("ChunkedLinearCrossEntropy's backward ran twice: it keeps its gradients only once")
        grad_hidden, grad_weight, grad_bias = ctx.grads
        ctx.grads = None  # freed as soon as they are handed on
        weight_dtype, bias_dtype = ctx.dtypes
        if grad_hidden is not None:
            grad_hidden = grad_hidden.mul_(grad_output.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_output).to(weight_dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.mul_(grad_output).to(bias_dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def chunked_causal_lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor | None,
    softcap: float | None = None,
    num_items_in_batch: torch.Tensor | int | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """transformers' ``ForCausalLMLoss`` of the logits ``hidden @ weight.T + bias``, never materialising them.

    As transformers: ``labels`` (B, T) are shifted left inside (position t predicts label t + 1, the last
    position predicts nothing) unless ``shift_labels`` gives the targets already shifted; the loss is the
    mean over tokens whose label is not ``ignore_index``, or their sum divided by ``num_items_in_batch``
    when given (gradient accumulation). ``chunk_size`` tokens go through the head at once (by default as
    many as make about 32M logits, 128 MB in float32); under ``torch.compile`` the tokens are split into 16
    chunks instead, so that one compiled graph serves every sequence length.
    """
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    targets = shift_labels.reshape(-1).to(hidden.device)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    if targets.shape[0] != hidden.shape[0]:
        raise ValueError(f"{hidden.shape[0]} positions of hidden states but {targets.shape[0]} labels")
    if chunk_size is None:
        chunk_size = max(1, 2**25 // weight.shape[0])
    if torch.compiler.is_compiling():
        # a number of chunks fixed in advance: one computed from the number of tokens would specialise the
        # compiled graph on the sequence length, a recompile for each new length
        chunks = 16
    else:
        chunks = max(1, -(-hidden.shape[0] // chunk_size))
    pad = -hidden.shape[0] % chunks  # padding tokens: no target, so no loss and no gradient
    hidden, targets = F.pad(hidden, (0, 0, 0, pad)), F.pad(targets, (0, pad), value=ignore_index)
    total = ChunkedLinearCrossEntropy.apply(hidden, weight, bias, targets, chunks, softcap, ignore_index)
    if num_items_in_batch is None:
        return total / (targets != ignore_index).sum()  # 0 / 0 = nan without a target, as cross_entropy
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def is_plain_linear(module: nn.Module) -> bool:
    """Whether ``module`` computes exactly ``x @ weight.T + bias`` from its own tensors: an ``nn.Linear`` whose
    weight is an ordinary parameter (not PEFT's wrapper, a quantised or a tensor-parallel weight)."""
    hooked = bool(module._forward_hooks or module._forward_pre_hooks)
    return isinstance(module, nn.Linear) and type(module.weight) is nn.Parameter and not hooked
