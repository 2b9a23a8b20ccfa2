"""Mixture-of-experts training step: the generated model against transformers' class of the family
with each of its experts implementations (eager: a Python loop over the experts hit; batched_mm: one
bmm over every (token, expert) pair's gathered weights; grouped_mm: torch's grouped matrix product).

A Qwen3-MoE (or Mixtral, Qwen2-MoE) project is made and built with scaffold's API; the generated model
(its default experts forward: the pairs sorted by expert, one grouped product per projection) and
transformers' class get the same weights (logits compared first), batch and AdamW. The cases train one
step at a time in a rotating order, so a noisy machine slows them alike; a ratio is the median over
rounds of the paired ratio of step times (generated over transformers' implementation). Peak memory:
two more steps each under a dispatch mode counting the bytes of live tensor storages (CPU), or
``torch.cuda.max_memory_allocated``.

    PYTHONPATH=$PWD python bench/moe.py                         # qwen3_moe, fp32, CPU, 1 thread
    PYTHONPATH=$PWD python bench/moe.py --family mixtral --experts 8 --top-k 2
    PYTHONPATH=$PWD python bench/moe.py --device cuda --dtype bfloat16 --batch 8 --seq 1024

Writes ``moe_<family>_<device>.json`` and ``.md`` under $RESULTS_DIR (default bench/results).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common as C  # noqa: E402

IMPLEMENTATIONS = ("eager", "batched_mm", "grouped_mm")


def build_pair(args, tmp: Path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from scaffold.build import build
    from scaffold.project import load_project
    from scaffold.project.new import create_project
    from scaffold.spec.blueprints import load as load_blueprint

    bp = load_blueprint(args.family)
    experts_key = "num_local_experts" if args.family == "mixtral" else "num_experts"
    width_key = "intermediate_size" if args.family == "mixtral" else "moe_intermediate_size"
    model = {
        "vocab_size": args.vocab,
        "hidden_size": args.hidden,
        "num_hidden_layers": args.layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        experts_key: args.experts,
        "num_experts_per_tok": args.top_k,
        width_key: args.width,
    }
    project = create_project("moe_bench", args.family, projects_dir=tmp, overrides={"model": model})
    out = build(load_project(project)).output_dir
    dtype = getattr(torch, args.dtype)
    config = AutoConfig.from_pretrained(out, trust_remote_code=True, attn_implementation="sdpa")
    ours = AutoModelForCausalLM.from_config(config, trust_remote_code=True, dtype=dtype).to(args.device)
    # transformers' config of the family from the generated one, key by key (RoPE, norm_topk_prob, eps, ...)
    skip = {"model_type", "architectures", "auto_map", "transformers_version", "dtype"}
    hf_config = AutoConfig.for_model(
        bp.meta["transformers_model_type"], **{k: v for k, v in config.to_dict().items() if k not in skip}
    )
    theirs = {}
    for impl in IMPLEMENTATIONS:
        m = AutoModelForCausalLM.from_config(  # a config each: the implementation is set on it
            copy.deepcopy(hf_config), dtype=dtype, attn_implementation="sdpa", experts_implementation=impl
        ).to(args.device)
        m.load_state_dict(ours.state_dict(), strict=True)
        assert m.config._experts_implementation == impl
        theirs[impl] = m
    atol = 1e-4 if args.dtype == "float32" else 5e-2
    diff = C.check_same_logits(ours, theirs["eager"], args.vocab, args.device, atol=atol)
    return ours, theirs, diff


def peak_bytes(trainer, device) -> int:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        trainer.step()
        trainer.step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    live = C.LiveTensorBytes()
    for t in list(trainer.model.parameters()) + list(trainer.model.buffers()):
        live.track(t)
    with live:
        trainer.step()
        trainer.step()
    return live.peak


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="qwen3_moe", choices=["qwen3_moe", "mixtral", "qwen2_moe"])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--width", type=int, default=256, help="each expert's intermediate size")
    p.add_argument("--vocab", type=int, default=2000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = Path(os.environ.get("RESULTS_DIR", HERE / "results"))
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs, diff = build_pair(args, Path(tmp))
        cases = {"generated": ours, **{f"transformers {k}": m for k, m in theirs.items()}}
        trainers = {name: C.Trainer(m, batch=args.batch, seq=args.seq) for name, m in cases.items()}
        times: dict[str, list[float]] = {name: [] for name in cases}
        names = list(cases)
        for r in range(args.warmup + args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                trainers[name].step()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                if r >= args.warmup:
                    times[name].append(time.perf_counter() - start)
        peaks = {name: peak_bytes(t, args.device) for name, t in trainers.items()}
    tokens = args.batch * args.seq
    rows = []
    for name in names:
        ratio = C.median([a / b for a, b in zip(times["generated"], times[name])])
        rows.append(
            {
                "case": name,
                "tokens_per_s": round(tokens / C.median(times[name])),
                "step_ms": round(1000 * C.median(times[name]), 1),
                "generated_time_ratio": round(ratio, 3),  # < 1: the generated step is faster
                "peak_mib": round(peaks[name] / 2**20, 1),
                "generated_memory_ratio": round(peaks["generated"] / peaks[name], 3),
            }
        )
    shape = (
        f"{args.family}: hidden {args.hidden}, {args.layers} layers, {args.experts} experts of width {args.width}, "
        f"top-{args.top_k}, batch {args.batch} x {args.seq}, {args.dtype} on {args.device} ({args.threads} thread(s)); "
        f"max logit difference {diff:.2e}"
    )
    stem = results / f"moe_{args.family}_{args.device.split(':')[0]}"
    C.write_json(stem.with_suffix(".json"), {"shape": shape, "rows": rows, "times": times})
    table = C.markdown_table(
        rows,
        [
            ("case", "case"),
            ("tokens_per_s", "tokens/s"),
            ("step_ms", "step ms"),
            ("generated_time_ratio", "generated / this, time"),
            ("peak_mib", "peak MiB"),
            ("generated_memory_ratio", "generated / this, memory"),
        ],
    )
    stem.with_suffix(".md").write_text(f"{shape}\n\n{table}\n", encoding="utf-8")
    print(shape)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
