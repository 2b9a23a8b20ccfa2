"""Training-step throughput and peak memory: the generated Llama against transformers' LlamaForCausalLM.

For each preset, the project is made and built with scaffold's API (``create_project`` + ``build``),
the generated model is loaded as a user would (``AutoModelForCausalLM.from_config``,
``trust_remote_code=True``) and transformers' ``LlamaForCausalLM`` is made with the same shapes
(the generated config mapped key by key). Both get the same weights (their logits are compared
first), dtype, batch of random tokens and AdamW.

Throughput: both models and every memory option (plain, gradient checkpointing, optimizer fused
into backward, both) train in one process, one step at a time, in a rotating order, so a noisy
machine slows every case alike. A speed ratio is the median over rounds of the paired ratio within
a round (generated over transformers' tokens/s, same option). On the CPU with one thread (the
default) it is taken from the timing thread's CPU time, which every op runs on, so time spent
descheduled on a shared machine does not count; the wall-time ratio is reported beside it. The
tokens/s columns are wall time, median step.

Peak memory, CPU: after the timing, each case trains two more steps with a fresh optimizer while a
dispatch mode counts the bytes of live tensor storages (weights, gradients, optimizer state,
activations): the exact peak, the analogue of ``torch.cuda.max_memory_allocated``; the memory
ratios use it. ``--rss`` adds each case's peak resident set size, in a fresh subprocess (VmHWM,
reset once torch, transformers and both model classes are imported, minus the resident size then):
the same plus the allocator's slack, as the operating system sees it. CUDA: each case in a fresh
subprocess, ``torch.cuda.max_memory_allocated``.

    PYTHONPATH=$PWD python bench/train_step.py                   # 4m and 117m, fp32, CPU (~4 min)
    PYTHONPATH=$PWD python bench/train_step.py --rss             # and peak RSS per case (+2 min)
    PYTHONPATH=$PWD python bench/train_step.py --presets 4m --rounds 20
    PYTHONPATH=$PWD python bench/train_step.py --device cuda --dtype bfloat16 --batch 8 --seq 1024

Writes ``train_step_<device>.json`` and ``train_step_<device>.md`` under $RESULTS_DIR
(default bench/results).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common as C  # noqa: E402

# memory options: name -> (gradient checkpointing, optimizer fused into backward)
OPTIONS = {
    "plain": (False, False),
    "grad-ckpt": (True, False),
    "optim-in-bwd": (False, True),
    "ckpt+optim-in-bwd": (True, True),
}
IMPLS = ("generated", "transformers")
# default (batch, sequence length) per preset on the CPU: small enough for a 2-core machine
CPU_SHAPES = {"4m": (4, 256), "117m": (2, 128)}
DEFAULT_ROUNDS = {"4m": (2, 10), "117m": (1, 6)}  # (warm-up rounds, timed rounds)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="4m,117m", help="llama presets, comma-separated (default 4m,117m)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--attn", default="sdpa", help="attention implementation (default sdpa)")
    ap.add_argument("--batch", type=int, help="sequences per step (default per preset)")
    ap.add_argument("--seq", type=int, help="tokens per sequence (default per preset)")
    ap.add_argument("--warmup", type=int, help="untimed rounds first (default per preset)")
    ap.add_argument(
        "--rounds", type=int, help="timed rounds; one step of every case each (default per preset)"
    )
    ap.add_argument(
        "--options", default=",".join(OPTIONS), help=f"memory options (default {','.join(OPTIONS)})"
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile both models (plain option only, no memory figures)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        help="torch threads (default 1 on the CPU: on a shared machine one thread per process keeps the "
        "timings steady; OpenMP threads that wait for a descheduled sibling make them jump)",
    )
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    ap.add_argument(
        "--rss",
        action="store_true",
        help="CPU: also measure each case's peak RSS in a fresh subprocess (slower)",
    )
    ap.add_argument("--mem-jobs", type=int, default=2, help="RSS subprocesses at once on the CPU (default 2)")
    ap.add_argument(
        "--work-dir", type=Path, help="where projects and model dirs are built (default: a temp dir)"
    )
    ap.add_argument("--results-dir", type=Path, default=Path(os.environ.get("RESULTS_DIR", HERE / "results")))
    ap.add_argument("--memory-case", help=argparse.SUPPRESS)  # internal: one memory case, JSON spec
    args = ap.parse_args(argv)
    unknown = set(args.options.split(",")) - set(OPTIONS)
    if unknown:
        ap.error(f"unknown options {sorted(unknown)}; choose from {list(OPTIONS)}")
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    if args.compile:
        args.options = "plain"  # a compiled graph is specialised on the checkpointing flags
        args.no_memory = True  # the memory measurements run eager; they would not describe this run
    return args


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(model_dir: Path, args: argparse.Namespace, batch: int, seq: int, warmup: int, rounds: int):
    """Interleaved steps of every (impl, option) case; returns per-case step times and parity."""
    import torch

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    gen = C.load_generated(model_dir, dtype, device, args.attn)
    hf = C.load_hf(gen.config, dtype, device, args.attn)
    atol = 1e-5 if dtype == torch.float32 else 5e-2
    diff = C.check_same_logits(gen, hf, gen.config.vocab_size, device, atol)
    n_params = sum(p.numel() for p in gen.parameters())
    trainers = {
        "generated": C.Trainer(gen, batch=batch, seq=seq, compile_model=args.compile),
        "transformers": C.Trainer(hf, batch=batch, seq=seq, compile_model=args.compile),
    }
    options = args.options.split(",")
    cases = [(impl, opt) for opt in options for impl in IMPLS]
    times: dict[tuple[str, str], list[float]] = {c: [] for c in cases}
    cpu_times: dict[tuple[str, str], list[float]] = {c: [] for c in cases}
    losses: dict[tuple[str, str], float] = {}
    for r in range(warmup + rounds):
        k = r % len(cases)
        order = cases[k:] + cases[:k]
        if r % 2:
            order.reverse()
        for impl, opt in order:
            ckpt, fused = OPTIONS[opt]
            sync(device)
            t0, c0 = time.perf_counter(), time.thread_time()
            loss = trainers[impl].step(ckpt=ckpt, fused=fused)
            sync(device)
            if r >= warmup:
                times[(impl, opt)].append(time.perf_counter() - t0)
                cpu_times[(impl, opt)].append(time.thread_time() - c0)
            losses[(impl, opt)] = float(loss)
        print(f"  round {r + 1}/{warmup + rounds}{' (warm-up)' if r < warmup else ''}", flush=True)
    for t in trainers.values():
        t.close()
    tensor_peaks = {}
    if device.type == "cpu" and not args.no_memory:
        models = {"generated": gen, "transformers": hf}
        for impl, opt in cases:
            tensor_peaks[(impl, opt)] = tensor_peak(models[impl], batch, seq, *OPTIONS[opt])
    del trainers, gen, hf
    gc.collect()
    return times, cpu_times, losses, diff, n_params, tensor_peaks


def tensor_peak(model, batch: int, seq: int, ckpt: bool, fused: bool) -> int:
    """Exact peak bytes of live tensors over two steps with a fresh optimizer (CPU)."""
    trainer = C.Trainer(model, batch=batch, seq=seq)
    tracker = C.LiveTensorBytes()
    for t in [*model.parameters(), *model.buffers(), trainer.ids]:
        tracker.track(t)
    with tracker:
        for _ in range(2):
            trainer.step(ckpt=ckpt, fused=fused)
    trainer.close()
    return tracker.peak


def memory_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one case in this (fresh) process and measure its peak memory."""
    import torch
    from transformers.dynamic_module_utils import get_class_from_dynamic_module
    from transformers.models.llama import modeling_llama  # noqa: F401  (imported before the baseline)

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    gen_config = C.generated_config(spec["model_dir"])
    get_class_from_dynamic_module(gen_config.auto_map["AutoModelForCausalLM"], spec["model_dir"])
    gc.collect()
    reset = C.reset_peak_rss()
    base, base_peak = C.current_rss(), C.peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    if spec["impl"] == "generated":
        model = C.load_generated(spec["model_dir"], dtype, device, spec["attn"])
    else:
        model = C.load_hf(gen_config, dtype, device, spec["attn"])
    after_model = C.current_rss()
    trainer = C.Trainer(model, batch=spec["batch"], seq=spec["seq"])
    ckpt, fused = OPTIONS[spec["option"]]
    for _ in range(2):
        trainer.step(ckpt=ckpt, fused=fused)
    sync(device)
    if device.type == "cuda":
        return {"peak_bytes": torch.cuda.max_memory_allocated(device)}
    peak = C.peak_rss()
    return {
        "rss_peak_bytes": peak - base,
        "rss_model_bytes": after_model - base,
        # without the reset, an import-time peak above the training peak would hide it
        "rss_reliable": reset or peak > base_peak,
    }


def run_memory_case(spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--memory-case", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


def memory(model_dir: Path, args: argparse.Namespace, batch: int, seq: int) -> dict[tuple[str, str], dict]:
    specs = {
        (impl, opt): dict(
            model_dir=str(model_dir),
            impl=impl,
            option=opt,
            batch=batch,
            seq=seq,
            device=args.device,
            dtype=args.dtype,
            attn=args.attn,
            threads=args.threads,
        )
        for opt in args.options.split(",")
        for impl in IMPLS
    }
    jobs = args.mem_jobs if args.device == "cpu" else 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {case: pool.submit(run_memory_case, spec) for case, spec in specs.items()}
        return {case: f.result() for case, f in futures.items()}


def summarise(preset, batch, seq, times, cpu_times, losses, mem, n_params) -> list[dict[str, Any]]:
    """One row per option. With one CPU thread every op runs on the timing thread, so its CPU time
    (``time.thread_time``) is the step's work without the time spent descheduled on a busy machine:
    the ratios use it then, and wall time otherwise."""
    tokens = batch * seq
    rows = []
    options = list(dict.fromkeys(opt for _, opt in times))
    basis = cpu_times if cpu_times else times
    for opt in options:
        g, h = times[("generated", opt)], times[("transformers", opt)]
        bg, bh = basis[("generated", opt)], basis[("transformers", opt)]
        paired = [b / a for a, b in zip(bg, bh)]  # hf step time / generated step time = throughput ratio
        row: dict[str, Any] = {
            "preset": preset,
            "params": n_params,
            "shape": f"{batch}x{seq}",
            "option": opt,
            "gen_tok_s": tokens / C.median(g),
            "hf_tok_s": tokens / C.median(h),
            "ratio": C.median(paired),
            "ratio_basis": "thread CPU time" if cpu_times else "wall time",
            "ratio_wall": C.median([b / a for a, b in zip(g, h)]),
            "gen_loss": losses.get(("generated", opt)),
            "hf_loss": losses.get(("transformers", opt)),
            "gen_times_s": [round(x, 4) for x in g],
            "hf_times_s": [round(x, 4) for x in h],
            "gen_cpu_times_s": [round(x, 4) for x in bg] if cpu_times else None,
            "hf_cpu_times_s": [round(x, 4) for x in bh] if cpu_times else None,
        }
        if opt != "plain" and ("generated", "plain") in times:
            for impl, key in (("generated", "gen"), ("transformers", "hf")):
                base = basis[(impl, "plain")]
                row[f"{key}_speed_vs_plain"] = C.median([b / a for a, b in zip(basis[(impl, opt)], base)])
        mg, mh = mem.get(("generated", opt), {}), mem.get(("transformers", opt), {})
        if "peak_bytes" in mg and "peak_bytes" in mh:
            row["gen_peak_mib"] = mg["peak_bytes"] / 2**20
            row["hf_peak_mib"] = mh["peak_bytes"] / 2**20
            row["mem_ratio"] = mg["peak_bytes"] / mh["peak_bytes"]
            base = mem.get(("generated", "plain"), {}).get("peak_bytes")
            if opt != "plain" and base:
                row["gen_mem_vs_plain"] = mg["peak_bytes"] / base
        if "rss_peak_bytes" in mg and "rss_peak_bytes" in mh:
            row["gen_rss_mib"] = mg["rss_peak_bytes"] / 2**20
            row["hf_rss_mib"] = mh["rss_peak_bytes"] / 2**20
            row["rss_reliable"] = bool(mg["rss_reliable"] and mh["rss_reliable"])
        if mg.get("error") or mh.get("error"):
            row["mem_error"] = mg.get("error") or mh.get("error")
        rows.append(row)
    return rows


COLUMNS = [
    ("preset", "preset"),
    ("shape", "batch x seq"),
    ("option", "option"),
    ("gen_tok_s", "generated tok/s"),
    ("hf_tok_s", "transformers tok/s"),
    ("ratio", "speed ratio"),
    ("ratio_wall", "speed ratio (wall)"),
    ("gen_speed_vs_plain", "gen speed vs plain"),
    ("gen_peak_mib", "generated peak MiB"),
    ("hf_peak_mib", "transformers peak MiB"),
    ("mem_ratio", "memory ratio"),
    ("gen_mem_vs_plain", "gen memory vs plain"),
    ("gen_rss_mib", "generated peak RSS MiB"),
    ("hf_rss_mib", "transformers peak RSS MiB"),
]


def machine() -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        info["cpu"] = next(
            ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")
        )
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_case:
        print(json.dumps(memory_case(json.loads(args.memory_case))))
        return 0
    import torch
    from _build import build_model_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    info = machine()
    print(json.dumps(info), flush=True)
    tmp = None
    if args.work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="scaffold-bench-")
        args.work_dir = Path(tmp.name)
    rows: list[dict[str, Any]] = []
    try:
        for preset in args.presets.split(","):
            batch, seq = CPU_SHAPES.get(preset, (2, 128))
            batch, seq = args.batch or batch, args.seq or seq
            warmup, rounds = DEFAULT_ROUNDS.get(preset, (1, 5))
            warmup = args.warmup if args.warmup is not None else warmup + (2 if args.compile else 0)
            rounds = args.rounds or rounds
            model_dir = build_model_dir(args.work_dir, f"bench_{preset}", preset)
            print(f"{preset}: {batch}x{seq} {args.dtype} on {args.device}, {rounds} rounds", flush=True)
            times, cpu_times, losses, diff, n_params, tensor_peaks = throughput(
                model_dir, args, batch, seq, warmup, rounds
            )
            print(f"  same weights, same logits: max |diff| = {diff:.2g}", flush=True)
            mem: dict[tuple[str, str], dict[str, Any]] = {case: {} for case in times}
            for case, peak in tensor_peaks.items():
                mem[case]["peak_bytes"] = peak
            if not args.no_memory and (args.rss or args.device != "cpu"):
                for case, found in memory(model_dir, args, batch, seq).items():
                    mem[case].update(found)
            one_thread = args.device == "cpu" and torch.get_num_threads() == 1
            new = summarise(preset, batch, seq, times, cpu_times if one_thread else {}, losses, mem, n_params)
            for r in new:
                r["logits_max_diff"] = diff
            rows += new
    finally:
        if tmp is not None:
            tmp.cleanup()
    result = {
        "machine": info,
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("memory_case", "work_dir", "results_dir")
        },
        "seconds": round(time.perf_counter() - t_start, 1),
        "rows": rows,
    }
    table = C.markdown_table(rows, COLUMNS)
    stem = f"train_step_{torch.device(args.device).type}"
    C.write_json(args.results_dir / f"{stem}.json", result)
    (args.results_dir / f"{stem}.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    basis = rows[0]["ratio_basis"] if rows else "wall time"
    print(
        f"speed ratio = generated / transformers tokens/s, median of paired rounds, by {basis}; "
        "memory ratio = generated / transformers peak"
    )
    print(f"wrote {args.results_dir / stem}.json and .md in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
