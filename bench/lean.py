"""Training at a large vocabulary: the generated Qwen3 (chunked linear cross-entropy) against
transformers' ``Qwen3ForCausalLM``, same weights, side by side in one run, reported as ratios.

The shape is Qwen3's vocabulary (151,936 tokens) over small hidden sizes, so the output head and its
loss dominate the step as they do in small and mid-sized models: transformers' class holds the
(batch, seq, vocab) logits, their float32 log-softmax and their gradients; the generated class takes
the loss a chunk of tokens at a time (scaffold/codegen/parts/loss.py) and never holds them. Both models come
from one transformers model: it is saved, turned into a project with ``scaffold import``, built and
loaded as a user would (``trust_remote_code=True``), given transformers' weights with ``strict=True``,
and the logits and the training loss compared (the loss to 1e-5).

Measured, per case (``eager``; ``compiled``: ``torch.compile(model)`` on both sides):

- **speed**: one training step each (forward with labels, backward, AdamW) per round, alternating the
  order; the ratio is the median over rounds of the paired ratio transformers' step time / generated
  step time (above 1 = generated faster), from the timing thread's CPU time with one torch thread (as
  train_step.py: the machine is shared), the wall-time ratio beside it.
- **peak memory**: the exact peak of bytes held by live tensor storages over two steps with a fresh
  AdamW (weights, gradients, optimizer state, activations, temporaries; ``_common.LiveTensorBytes``,
  the CPU analogue of ``torch.cuda.max_memory_allocated``), eager only; and with ``--rss`` each
  side's peak resident set size in a fresh subprocess (VmHWM reset once the models exist, minus the
  resident size at that point).

    PYTHONPATH=$PWD python bench/lean.py                     # eager, 2 x 1024 tokens, fp32, CPU
    PYTHONPATH=$PWD python bench/lean.py --rss --compile     # and peak RSS, and compiled

Writes ``lean_<device>.json`` and ``lean_<device>.md`` under $RESULTS_DIR (default bench/results).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _build  # noqa: E402, F401  (puts this checkout's scaffold first on sys.path)
import _common as C  # noqa: E402
import families  # noqa: E402

# Qwen3's vocabulary over small hidden sizes: the head is 151,936 x 256, the decoder small.
SHAPE: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "intermediate_size": 768,
    "max_position_embeddings": 2048,
}


def make_pair(work: Path, dtype: str = "float32", device: str = "cpu"):
    """transformers' Qwen3ForCausalLM and the generated model imported from it (same weights, sdpa)."""
    import torch

    gen, hf, diff, _, _ = families.make_pair(
        "qwen3", "qwen3", work, getattr(torch, dtype), torch.device(device), "sdpa", SHAPE
    )
    return gen, hf, diff


def same_loss(gen, hf, batch: int, seq: int) -> float:
    """Training-mode loss of both on one batch (the generated one through its chunked path)."""
    import torch

    ids = torch.randint(0, SHAPE["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(2))
    ids = ids.to(next(gen.parameters()).device)
    gen.train(), hf.train()
    out = gen(input_ids=ids, labels=ids, use_cache=False)
    if out.logits is not None:
        raise RuntimeError("the generated model built the logits in training: the chunked path did not run")
    diff = abs(out.loss.item() - hf(input_ids=ids, labels=ids, use_cache=False).loss.item())
    if not diff <= 1e-5:
        raise RuntimeError(f"losses differ by {diff:.3g} (> 1e-5)")
    return diff


def peak_tensor_bytes(model, batch: int, seq: int) -> int:
    trainer = C.Trainer(model, batch=batch, seq=seq)
    tracker = C.LiveTensorBytes()
    for t in [*model.parameters(), *model.buffers(), trainer.ids]:
        tracker.track(t)
    with tracker:
        for _ in range(2):
            trainer.step()
    trainer.close()
    return tracker.peak


def time_steps(models: dict[str, Any], batch: int, seq: int, warmup: int, rounds: int, compiled: bool):
    trainers = {k: C.Trainer(m, batch=batch, seq=seq, compile_model=compiled) for k, m in models.items()}
    wall: dict[str, list[float]] = {k: [] for k in trainers}
    cpu: dict[str, list[float]] = {k: [] for k in trainers}
    for r in range(warmup + rounds):
        for impl in list(trainers)[:: 1 if r % 2 else -1]:
            t0, c0 = time.perf_counter(), time.thread_time()
            trainers[impl].step()
            if r >= warmup:
                wall[impl].append(time.perf_counter() - t0)
                cpu[impl].append(time.thread_time() - c0)
    for t in trainers.values():
        t.close()
    return wall, cpu


def rss_case(side: str, work: Path, batch: int, seq: int) -> dict[str, Any]:
    """In a fresh process: build the pair, keep ``side``, two training steps; the peak RSS they add."""
    gen, hf, _ = make_pair(work)
    model = gen if side == "generated" else hf
    del gen, hf
    gc.collect()
    trainer = C.Trainer(model, batch=batch, seq=seq)
    reliable = C.reset_peak_rss()
    base = C.current_rss()
    for _ in range(2):
        trainer.step()
    return {"rss_peak_bytes": C.peak_rss() - base, "rss_reliable": reliable}


def rss(side: str, work: Path, batch: int, seq: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--rss-case", side, "--work-dir", str(work), "--batch", str(batch)]
    proc = subprocess.run([*cmd, "--seq", str(seq)], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


COLUMNS = [
    ("case", "case"),
    ("batch x seq", "batch x seq"),
    ("generated tok/s", "generated tok/s"),
    ("transformers tok/s", "transformers tok/s"),
    ("speed", "speed ratio (CPU time)"),
    ("speed (wall)", "speed ratio (wall)"),
    ("gen_mib", "generated peak MiB"),
    ("hf_mib", "transformers peak MiB"),
    ("memory", "memory ratio"),
    ("gen_rss_mib", "generated peak RSS MiB"),
    ("hf_rss_mib", "transformers peak RSS MiB"),
    ("rss ratio", "RSS ratio"),
]


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--compile", action="store_true", help="also time both models under torch.compile")
    ap.add_argument("--rss", action="store_true", help="also each side's peak RSS in a fresh subprocess")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work-dir", type=Path)
    ap.add_argument("--rss-case", choices=["generated", "transformers"], help=argparse.SUPPRESS)
    ap.add_argument("--results-dir", type=Path, default=Path(os.environ.get("RESULTS_DIR", HERE / "results")))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="lean-bench-"))
    if args.rss_case:
        print(json.dumps(rss_case(args.rss_case, work, args.batch, args.seq)))
        return 0

    gen, hf, logits_diff = make_pair(work)
    loss_diff = same_loss(gen, hf, args.batch, args.seq)
    n_params = sum(p.numel() for p in gen.parameters())
    print(f"qwen3, {n_params:,} parameters: logits max diff {logits_diff:.2g}, loss diff {loss_diff:.2g}")
    tokens = args.batch * args.seq
    rows = []
    mem = {"generated": peak_tensor_bytes(gen, args.batch, args.seq)}
    mem["transformers"] = peak_tensor_bytes(hf, args.batch, args.seq)
    cases = ["eager"] + (["compiled"] if args.compile else [])
    for case in cases:
        wall, cpu = time_steps(
            {"generated": gen, "transformers": hf},
            args.batch,
            args.seq,
            args.warmup,
            args.rounds,
            case == "compiled",
        )
        row: dict[str, Any] = {
            "case": case,
            "batch x seq": f"{args.batch}x{args.seq}",
            "generated tok/s": tokens / C.median(wall["generated"]),
            "transformers tok/s": tokens / C.median(wall["transformers"]),
            "speed": C.median([h / g for g, h in zip(cpu["generated"], cpu["transformers"])]),
            "speed (wall)": C.median([h / g for g, h in zip(wall["generated"], wall["transformers"])]),
            "wall": wall,
            "cpu": cpu,
        }
        if case == "eager":
            row.update(gen_mib=mem["generated"] / 2**20, hf_mib=mem["transformers"] / 2**20)
            row["memory"] = mem["generated"] / mem["transformers"]
            if args.rss:
                r = {side: rss(side, work, args.batch, args.seq) for side in ("generated", "transformers")}
                row["gen_rss_mib"] = r["generated"]["rss_peak_bytes"] / 2**20
                row["hf_rss_mib"] = r["transformers"]["rss_peak_bytes"] / 2**20
                row["rss ratio"] = row["gen_rss_mib"] / row["hf_rss_mib"]
                row["rss_reliable"] = r["generated"]["rss_reliable"] and r["transformers"]["rss_reliable"]
        print(
            f"{case}: " + ", ".join(f"{k} {C._cell(row.get(k))}" for k, _ in COLUMNS[2:] if k in row),
            flush=True,
        )
        rows.append(row)
    C.write_json(
        args.results_dir / "lean_cpu.json",
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "shape": SHAPE,
            "parameters": n_params,
            "logits max diff": logits_diff,
            "loss diff": loss_diff,
            "rows": rows,
        },
    )
    table = C.markdown_table(rows, COLUMNS)
    (args.results_dir / "lean_cpu.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
