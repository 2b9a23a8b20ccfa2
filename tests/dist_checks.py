"""Run by tests/test_distributed.py under torch.distributed.run (2 gloo processes): every check of every
family in one launch, since starting the processes costs more than the checks.

``python -m torch.distributed.run --nproc-per-node 2 tests/dist_checks.py JOB.json OUT_DIR``: JOB.json
maps each family to a built model directory with saved float32 weights. Each rank compares what the
sharded model computes with what the same model computes whole in this process, and rank 0 writes
OUT_DIR/results.json; nothing is asserted here, so that one failing check does not hide the others.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from scaffold.build.checkpoint import load_checkpoint
from scaffold.build.construct import construct
from scaffold.run.distributed import _save_full, shard_fsdp2, split_batches

LR = 0.1  # plain SGD: an update proportional to the gradient, so sharded and whole training agree closely


def batch(vocab: int, rows: int = 4, length: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab, (rows, length), generator=g)


def load(model_dir: Path, **kwargs):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True, **kwargs)


def whole_step(model_dir: Path, ids: torch.Tensor, dtype=torch.float32):
    """Loss, gradients and SGD-stepped parameters of one step on the whole batch, in one process."""
    model = load(model_dir, dtype=dtype)
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad
    return loss.item(), grads, {n: p.detach().clone() for n, p in model.named_parameters()}


def sharded_loss(model, ids: torch.Tensor, rank: int, world: int):
    local = next(split_batches(iter([ids]), rank, world, torch.device("cpu")))
    loss = model(**local, labels=local["input_ids"], use_cache=False).loss
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    return total.item() / world


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def largest(a: dict, b: dict) -> float:
    return max((full(a[n]).float() - b[n].float()).abs().max().item() for n in b)


def check_family(model_dir: Path, out: Path, rank: int, world: int) -> dict:
    result: dict = {}
    ids = batch(json.loads((model_dir / "config.json").read_text())["vocab_size"])

    # tensor parallelism: from_pretrained(tp_plan="auto") gives the single-process logits
    with torch.no_grad():
        reference = load(model_dir).eval()(ids).logits
        tp = load(model_dir, tp_plan="auto").eval()
        result["tp_sharded"] = sorted({type(p).__name__ for p in tp.parameters()})
        result["tp_logits"] = (full(tp(ids).logits) - reference).abs().max().item()
    del tp

    loss, grads, stepped = whole_step(model_dir, ids)

    # DDP: each rank half the rows; the averaged gradients are the whole batch's
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(load(model_dir))
    result["ddp_loss"] = abs(sharded_loss(ddp, ids, rank, world) - loss)
    result["ddp_grads"] = largest(
        {n.removeprefix("module."): p.grad for n, p in ddp.named_parameters()}, grads
    )
    del ddp

    # FSDP2 in float32, gradients reduce-scattered with SUM then divided (gloo's AVG returns sums)
    inner = load(model_dir)
    fsdp = shard_fsdp2(inner, torch.float32, sum_reduction=True)
    result["fsdp2_loss"] = abs(sharded_loss(fsdp, ids, rank, world) - loss)
    result["fsdp2_grads"] = largest(dict((n, p.grad) for n, p in fsdp.named_parameters()), grads)
    with torch.no_grad():
        for p in fsdp.parameters():
            p -= LR * p.grad
    # the full state dict gathered on rank 0, saved with save_checkpoint, reloaded into a fresh model
    _save_full(inner, fsdp, "fsdp2", out / model_dir.parent.name, rank)
    gathered = {n: full(p).detach() for n, p in fsdp.named_parameters()}  # a collective: every rank
    if rank == 0:
        fresh = construct(model_dir, device="cpu", init_weights=False)
        load_checkpoint(out / model_dir.parent.name, fresh)
        result["fsdp2_reloaded"] = largest(dict(fresh.named_parameters()), stepped)
        result["fsdp2_reload_exact"] = all(
            torch.equal(gathered[n], p) for n, p in fresh.named_parameters() if n in gathered
        )
    del fsdp, inner

    # FSDP2 after from_pretrained(dtype=bfloat16): one parameter dtype, so fully_shard accepts it
    bf16 = load(model_dir, dtype=torch.bfloat16)
    result["bf16_dtypes"] = sorted(str(p.dtype) for p in {p.dtype: p for p in bf16.parameters()}.values())
    bf16_loss, _, _ = whole_step(model_dir, ids, dtype=torch.bfloat16)
    fsdp_bf16 = shard_fsdp2(bf16, torch.bfloat16, sum_reduction=True)
    result["fsdp2_bf16_loss"] = abs(sharded_loss(fsdp_bf16, ids, rank, world) - bf16_loss)
    result["fsdp2_bf16_grads_finite"] = all(
        torch.isfinite(full(p.grad)).all().item() for p in fsdp_bf16.parameters()
    )
    return result


def main() -> int:
    job, out = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for family, model_dir in job.items():
        try:
            results[family] = check_family(Path(model_dir), out, rank, world)
        except Exception:
            results[family] = {"error": traceback.format_exc()}
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if rank == 0:
        (out / "results.json").write_text(json.dumps(gathered, indent=1))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
