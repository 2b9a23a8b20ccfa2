"""The multi-process GPU benchmark: ``scaffold test --nproc`` (ddp, fsdp2, tp) against one device.

For each shape it trains the same model with the same data in one process and then with each parallel
mode over N processes (one GPU each, NCCL; N = every power of two up to the GPUs present, 1 included,
so a one-GPU machine measures the cost of the wrappers alone), through scaffold's own launcher
(:func:`scaffold.run.distributed.launch`, the code ``scaffold test --nproc`` runs), and records tokens/s
(summed over ranks for ddp and fsdp2; the batch's for tp, whose ranks share every token), peak memory
per rank (``torch.cuda.max_memory_allocated``) and the largest loss difference from the single
process. bf16 weights (FSDP2: bf16 parameters, float32 gradient reduction), sdpa, random tokens; the
first step is included in the rates, so runs are long enough (``--steps``, default 30) to bury it.

    # here, with scaffold: build the model directories (no weights)
    PYTHONPATH=$PWD python bench/gpu_dist.py --prepare bench/gpu_dist_models
    # on the GPU machine (the repository copied there; needs torch, transformers, safetensors)
    PYTHONPATH=$PWD RESULTS_DIR=out python bench/gpu_dist.py --run bench/gpu_dist_models

``--run DIR --device cpu --quick`` runs it on 2 gloo processes with tiny shapes, to check the script.
Writes ``gpu_dist.jsonl`` (a line per case as it finishes), ``gpu_dist.json`` and ``gpu_dist.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        preset="4m",
        model=dict(vocab_size=320, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, intermediate_size=128, max_position_embeddings=256),
        batch=4, seq=64,
    ),
    # the 160M-class shape of gpu.py
    "llama_160m": dict(
        preset="4m",
        model=dict(vocab_size=32000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   num_key_value_heads=12, head_dim=64, intermediate_size=2048, max_position_embeddings=2048,
                   rope_theta=500000.0),
        batch=16, seq=2048,
    ),
    "llama_1b": dict(preset="llama3.2_1b", model={}, batch=8, seq=2048),
}  # fmt: skip
PARALLEL = ("fsdp2", "ddp", "tp")


def prepare(out_dir: Path) -> None:
    from _build import build_shapes

    plan = build_shapes(out_dir, SHAPES)
    shutil.rmtree(out_dir / ".work", ignore_errors=True)
    (out_dir / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    print(f"wrote {out_dir / 'plan.json'}; on the GPU machine: python bench/gpu_dist.py --run {out_dir}")


def process_counts(device: str) -> list[int]:
    import torch

    available = torch.cuda.device_count() if device == "cuda" else 2
    counts, n = [], 1
    while n <= available:
        counts.append(n)
        n *= 2
    return counts


def run_all(
    plan_dir: Path, results: Path, device: str, quick: bool, steps: int, timeout: float
) -> list[dict]:
    from scaffold.run.distributed import DistributedOptions, launch
    from scaffold.run.smoke import TestOptions, run

    plan = json.loads((plan_dir / "plan.json").read_text())
    shapes = ["tiny"] if quick else [s for s in plan["shapes"] if s != "tiny"]
    dtype = "float32" if device == "cpu" else "bfloat16"
    records = []
    results.mkdir(parents=True, exist_ok=True)
    jsonl = results / "gpu_dist.jsonl"
    for shape in shapes:
        info = plan["shapes"][shape]
        model_dir = plan_dir / info["dir"]
        opts = TestOptions(device=device, dtype=dtype, steps=3 if quick else steps, batch_size=info["batch"],
                           sequence_length=info["seq"], attn_implementation="sdpa")  # fmt: skip
        single = run(model_dir, opts, log=lambda line: None)
        base = {
            "shape": shape,
            "dtype": dtype,
            "steps": opts.steps,
            "batch": opts.batch_size,
            "seq": opts.sequence_length,
        }
        rec = {**base, "case": "single", "nproc": 1, "tokens_per_second": single.tokens_per_second,
               "peak_memory_bytes": [single.peak_memory_bytes], "losses": single.losses}  # fmt: skip
        records.append(rec)
        with jsonl.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(
            f"{shape} single: {single.tokens_per_second:,.0f} tok/s, {single.peak_memory_bytes / 2**30:.2f} GiB",
            flush=True,
        )
        for nproc in process_counts(device):
            for parallel in PARALLEL:
                if device == "cpu" and nproc == 1:
                    continue
                rec = {**base, "case": parallel, "nproc": nproc}
                try:
                    t0 = time.time()
                    report = launch(model_dir, opts, DistributedOptions(nproc=nproc, parallel=parallel, timeout=timeout),
                                    compare=False, log=lambda line: None)  # fmt: skip
                    diff = max(abs(a - b) for a, b in zip(report.losses, single.losses))
                    rec.update(tokens_per_second=report.tokens_per_second, peak_memory_bytes=report.peak_memory_bytes,
                               losses=report.losses, largest_loss_difference=diff, wall_s=time.time() - t0)  # fmt: skip
                    mem = ", ".join(f"{b / 2**30:.2f}" for b in report.peak_memory_bytes)
                    print(f"{shape} {parallel} x{nproc}: {report.tokens_per_second:,.0f} tok/s, "
                          f"peak GiB per rank [{mem}], loss diff {diff:.3g}", flush=True)  # fmt: skip
                except Exception as err:  # record and go on: one failing case must not hide the others
                    rec["error"] = f"{type(err).__name__}: {err}"
                    rec["traceback"] = traceback.format_exc()[-2000:]
                    print(f"{shape} {parallel} x{nproc}: {rec['error']}", flush=True)
                records.append(rec)
                with jsonl.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
    return records


def table(records: list[dict]) -> str:
    lines = [
        "| shape | case | processes | tokens/s | vs one device | peak memory per rank (GiB) | largest loss diff |",
        "|---|---|---|---|---|---|---|",
    ]
    single = {r["shape"]: r for r in records if r["case"] == "single"}
    for r in records:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['case']} | {r['nproc']} | error: {r['error'][:80]} | | | |")
            continue
        ratio = r["tokens_per_second"] / single[r["shape"]]["tokens_per_second"]
        mem = ", ".join(f"{b / 2**30:.2f}" for b in r["peak_memory_bytes"])
        diff = f"{r['largest_loss_difference']:.3g}" if "largest_loss_difference" in r else ""
        lines.append(
            f"| {r['shape']} | {r['case']} | {r['nproc']} | {r['tokens_per_second']:,.0f} | {ratio:.2f} | {mem} | {diff} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--prepare", type=Path, metavar="DIR", help="build the model directories into DIR (needs scaffold)"
    )
    mode.add_argument("--run", type=Path, metavar="DIR", help="run the cases on the model directories in DIR")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="the tiny shape only (checks the script)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per multi-process run")
    args = ap.parse_args(argv)
    if args.prepare:
        prepare(args.prepare)
        return 0
    results = Path(os.environ.get("RESULTS_DIR") or args.run / "results")
    records = run_all(args.run, results, args.device, args.quick, args.steps, args.timeout)
    (results / "gpu_dist.json").write_text(json.dumps(records, indent=1) + "\n")
    (results / "gpu_dist.md").write_text(table(records))
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
