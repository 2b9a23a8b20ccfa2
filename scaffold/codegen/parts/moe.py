"""A mixture of experts' computation: every expert at once, never a Python loop over experts.

The experts' weights are stored as transformers 5 stores them: ``gate_up_proj`` (experts, 2 * width,
hidden), [gate; up] stacked along each expert's output, and ``down_proj`` (experts, hidden, width).
The (token, expert) pairs a router chose are sorted by expert, so that each expert's rows are one
contiguous segment, and each projection is one grouped matrix product over the segments
(``torch.nn.functional.grouped_mm`` where torch has it for the device and dtype; else the segments
padded to the longest and one batched product). The load-balancing loss is transformers' (Switch
Transformer's equations 4 to 6), so that a training step's loss equals theirs.
"""

import torch
import torch.nn.functional as F


def grouped_mm_usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``torch.nn.functional.grouped_mm`` computes ``x`` with ``weight`` here: torch 2.10 and
    later on the CPU (16-byte aligned operands), bfloat16 on a CUDA GPU of compute capability 8.0 or later."""
    if not hasattr(F, "grouped_mm") or (torch.compiler.is_compiling() and weight.dtype != torch.bfloat16):
        return False
    if weight.device.type == "cpu":
        return weight.data_ptr() % 16 == 0 and x.data_ptr() % 16 == 0
    if weight.device.type == "cuda":
        return weight.dtype == torch.bfloat16 and torch.cuda.get_device_capability(weight.device) >= (8, 0)
    return False


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, expert_ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``x[i] @ weight[expert_ids[i]].T`` for every row, the rows of ``x`` (S, in) sorted by expert
    (``expert_ids``, with ``counts`` rows per expert); ``weight`` is (experts, out, in). Returns (S, out)."""
    if grouped_mm_usable(x, weight):
        offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)  # where each expert's segment ends
        return F.grouped_mm(x.to(weight.dtype), weight.transpose(-2, -1), offs=offsets)
    # each expert's segment padded to the longest one: (experts, longest, in) @ (experts, in, out)
    starts = torch.cumsum(counts, dim=0) - counts
    slot = torch.arange(x.shape[0], device=x.device) - starts[expert_ids]  # the row's place in its segment
    padded = x.new_zeros(weight.shape[0], int(counts.max()), x.shape[-1])
    padded[expert_ids, slot] = x.to(weight.dtype)
    return torch.bmm(padded, weight.transpose(-2, -1))[expert_ids, slot]


def grouped_experts_forward(
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    act_fn,
) -> torch.Tensor:
    """Each token (N, hidden) through its top-k experts (``top_k_index`` (N, k)), the outputs weighted
    by ``top_k_weights`` (N, k) and summed: ``sum_j w_j * down_j(act(gate_j(x)) * up_j(x))``."""
    num_tokens, hidden = hidden_states.shape
    top_k = top_k_index.shape[-1]
    expert_ids, order = torch.sort(top_k_index.reshape(-1), stable=True)  # (S,) pairs grouped by expert
    counts = torch.bincount(expert_ids, minlength=gate_up_proj.shape[0])
    x = hidden_states[order // top_k]  # (S, hidden): each pair's token
    gate, up = grouped_linear(x, gate_up_proj, expert_ids, counts).chunk(2, dim=-1)  # (S, width) each
    out = grouped_linear(act_fn(gate) * up, down_proj, expert_ids, counts)  # (S, hidden)
    out = out * top_k_weights.reshape(-1)[order, None].to(out.dtype)
    # back to (token, k) order, then each token's k outputs summed (deterministic, unlike index_add_)
    unsorted = torch.empty_like(out)
    unsorted[order] = out
    return unsorted.view(num_tokens, top_k, hidden).sum(dim=1).to(hidden_states.dtype)


def load_balancing_loss(
    router_logits: tuple[torch.Tensor, ...] | None,
    num_experts: int,
    top_k: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor | int:
    """The Switch Transformer's auxiliary loss over every sparse layer's router logits (each
    (batch * sequence, experts)): ``num_experts * sum_e f_e * P_e``, f_e the fraction of top-k
    assignments to expert e and P_e its mean router probability, padding (``attention_mask`` 0)
    left out; 0 without router logits. As transformers' ``load_balancing_loss_func``."""
    if not router_logits or not isinstance(router_logits, tuple):
        return 0
    device = router_logits[0].device
    counted = torch.zeros(num_experts, dtype=torch.float32, device=device)
    probability = torch.zeros(num_experts, dtype=torch.float32, device=device)
    rows = 0.0
    mask = None
    if attention_mask is not None:
        mask = attention_mask.reshape(-1).to(device=device, dtype=torch.float32)
    for logits in router_logits:
        probs = torch.softmax(logits.to(device), dim=-1)
        _, chosen = torch.topk(probs, top_k, dim=-1)
        if mask is None:
            bins = torch.float32 if device.type in ("cpu", "mps") else torch.int32
            counted = counted + torch.histc(chosen.reshape(-1).to(bins), bins=num_experts, min=0, max=num_experts)
            probability = probability + probs.float().sum(dim=0)
            rows = rows + probs.shape[0]
        else:
            ones = torch.zeros(num_experts, dtype=torch.float32, device=device)
            counted = counted + ones.scatter_add_(0, chosen.reshape(-1), mask.repeat_interleave(top_k))
            probability = probability + (probs.float() * mask.unsqueeze(-1)).sum(dim=0)
            rows = rows + mask.sum()
    return torch.sum((counted / rows) * (probability / rows).unsqueeze(0)) * num_experts
