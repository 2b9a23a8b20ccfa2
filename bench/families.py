"""Training-step speed of every reproduced family against its transformers class, side by side.

A family is reproduced when its blueprint names a ``transformers_model_type``; every such built-in
family is run (or those given with ``--families``). For each: transformers' own causal-LM class of
that ``model_type`` is made with one small shape, saved, and turned into a scaffold project with
``scaffold import`` (the same mapping a user gets); the project is built and the generated model
loaded as a user would (``AutoModelForCausalLM.from_config``, ``trust_remote_code=True``). The
transformers weights are loaded into it with ``strict=True`` and the logits compared, then both
train (forward with labels, backward, AdamW) on the same batch, one step each per round in
alternating order, with the attention ``--attn`` names: sdpa by default, eager for a family whose
transformers class or generated class has no sdpa path (Gemma 2, whose soft-capped scores sdpa cannot
compute), as its output line and the table's attention column say. The ratio is the median over rounds of the paired ratio of transformers' step
time over the generated model's (above 1 = generated faster); on the CPU with one thread (the
default) it is taken from the timing thread's CPU time, so time spent descheduled on a shared
machine does not count; the wall-time ratio is reported beside it.

    PYTHONPATH=$PWD python bench/families.py                        # every family, CPU fp32 (~1 min each)
    PYTHONPATH=$PWD python bench/families.py --families llama --rounds 20
    PYTHONPATH=$PWD python bench/families.py --device cuda --dtype bfloat16 --batch 8 --seq 1024

Writes ``families_<device>.json`` and ``families_<device>.md`` under $RESULTS_DIR (default
bench/results).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _build  # noqa: E402, F401  (puts this checkout's scaffold first on sys.path)
import _common as C  # noqa: E402

# One shape for every family: the llama blueprint's 4m sizes, with grouped-query attention.
SHAPE: dict[str, Any] = {
    "vocab_size": 2000,
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 768,
    "max_position_embeddings": 2048,
}
# A ratio below this is a defect to find and fix (the generated code must be no slower).
THRESHOLD = 0.97


def reproduced_families() -> dict[str, str]:
    """Built-in family name -> the transformers model_type it reproduces."""
    from scaffold.spec.blueprints import builtin_names, load

    out = {}
    for name in builtin_names():
        model_type = load(name).meta.get("transformers_model_type")
        if model_type:
            out[name] = model_type
    return out


def choose_attention(requested: str, classes: dict[str, type]) -> tuple[str, str]:
    """The attention both sides run, and why when it is not ``requested``: sdpa falls back to eager when
    either class has no sdpa path (Gemma 2: sdpa cannot soft-cap scores, in transformers either)."""
    if requested != "sdpa":
        return requested, ""
    without = [
        f"{side} {cls.__name__}" for side, cls in classes.items() if not getattr(cls, "_supports_sdpa", False)
    ]
    if not without:
        return requested, ""
    return (
        "eager",
        f"eager attention: {' and '.join(without)} {'has' if len(without) == 1 else 'have'} no sdpa path",
    )


def make_pair(family: str, model_type: str, work: Path, dtype, device, attn: str, shape: dict[str, Any]):
    """transformers' model of ``model_type`` and the generated one imported from it, same weights, both
    on the attention ``choose_attention`` picks; returns them, the logits difference and that choice."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from scaffold.build import build
    from scaffold.project import load_project
    from scaffold.project.importer import import_project

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **shape)
    if getattr(config, "pad_token_id", None) is not None and config.pad_token_id >= shape["vocab_size"]:
        config.pad_token_id = None  # a default pad id (Phi-3's 32000) past the small vocabulary
    hf = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    source = work / f"hf-{family}"
    hf.save_pretrained(source)
    project = import_project(source, name=family, projects_dir=work / "projects", force=True)
    out = build(load_project(project), work / "models" / family, force=True).output_dir
    gen_config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    gen_class = get_class_from_dynamic_module(gen_config.auto_map["AutoModelForCausalLM"], out)
    attn, note = choose_attention(attn, {"transformers'": type(hf), "the generated": gen_class})
    hf.set_attn_implementation(attn)
    gen_config = AutoConfig.from_pretrained(out, trust_remote_code=True, attn_implementation=attn)
    gen = AutoModelForCausalLM.from_config(gen_config, trust_remote_code=True, dtype=torch.float32)
    # from the checkpoint transformers wrote: its names on disk can differ from those in memory (GPT-NeoX's
    # head is embed_out on disk, lm_head in transformers' module)
    from scaffold.build.checkpoint import load_checkpoint

    load_checkpoint(source, gen)
    gen, hf = gen.to(device=device, dtype=dtype), hf.to(device=device, dtype=dtype)
    ids = torch.randint(0, shape["vocab_size"], (2, 32), generator=torch.Generator().manual_seed(1)).to(
        device
    )
    with torch.no_grad():
        diff = (
            (gen(ids, use_cache=False).logits.float() - hf(ids, use_cache=False).logits.float()).abs().max()
        )
    atol = 1e-5 if dtype == torch.float32 else 5e-2
    if not diff <= atol:
        raise RuntimeError(f"{family}: generated and transformers' logits differ by {diff:.3g} (> {atol})")
    return gen, hf, float(diff), attn, note


def measure(
    family: str,
    model_type: str,
    work: Path,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    attn: str = "sdpa",
    batch: int = 4,
    seq: int = 256,
    warmup: int = 2,
    rounds: int = 10,
    shape: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One family: parity, then interleaved training steps; returns the row of the results table."""
    import torch

    dev, dt = torch.device(device), getattr(torch, dtype)
    gen, hf, diff, attn, note = make_pair(family, model_type, work, dt, dev, attn, shape or SHAPE)
    trainers = {
        "generated": C.Trainer(gen, batch=batch, seq=seq),
        "transformers": C.Trainer(hf, batch=batch, seq=seq),
    }
    wall: dict[str, list[float]] = {k: [] for k in trainers}
    cpu: dict[str, list[float]] = {k: [] for k in trainers}
    for r in range(warmup + rounds):
        for impl in list(trainers)[:: 1 if r % 2 else -1]:
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0, c0 = time.perf_counter(), time.thread_time()
            trainers[impl].step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if r >= warmup:
                wall[impl].append(time.perf_counter() - t0)
                cpu[impl].append(time.thread_time() - c0)
    for t in trainers.values():
        t.close()
    n_params = sum(p.numel() for p in gen.parameters())
    del trainers, gen, hf
    gc.collect()
    timing = cpu if dev.type == "cpu" else wall
    ratio = C.median([h / g for g, h in zip(timing["generated"], timing["transformers"])])
    return {
        "family": family,
        "transformers": model_type,
        "parameters": n_params,
        "batch x seq": f"{batch}x{seq}",
        "attention": attn,
        "attention note": note,
        "logits max diff": diff,
        "generated tok/s": batch * seq / C.median(wall["generated"]),
        "transformers tok/s": batch * seq / C.median(wall["transformers"]),
        "ratio": ratio,
        "ratio (wall)": C.median([h / g for g, h in zip(wall["generated"], wall["transformers"])]),
        "ok": ratio >= THRESHOLD,
        "wall": wall,
        "cpu": cpu,
    }


COLUMNS = [
    ("family", "family"),
    ("transformers", "transformers model_type"),
    ("parameters", "parameters"),
    ("batch x seq", "batch x seq"),
    ("attention", "attention"),
    ("logits max diff", "logits max diff"),
    ("generated tok/s", "generated tok/s"),
    ("transformers tok/s", "transformers tok/s"),
    ("ratio", "speed ratio (CPU time on CPU, else wall)"),
    ("ratio (wall)", "speed ratio (wall)"),
    ("ok", f">= {THRESHOLD}"),
]


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", help="comma-separated families (default: every reproduced family)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument(
        "--attn",
        default="sdpa",
        help="attention of both sides; sdpa falls back to eager where a side has none",
    )
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, help="torch threads (default 1 on the CPU, as train_step.py)")
    ap.add_argument("--work-dir", type=Path)
    ap.add_argument("--results-dir", type=Path, default=Path(os.environ.get("RESULTS_DIR", HERE / "results")))
    args = ap.parse_args(argv)
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 1)
    families = reproduced_families()
    if args.families:
        unknown = set(args.families.split(",")) - set(families)
        if unknown:
            ap.error(f"not reproduced families: {sorted(unknown)}; choose from {sorted(families)}")
        families = {f: families[f] for f in args.families.split(",")}
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="families-bench-"))
    rows = []
    for family, model_type in families.items():
        print(f"{family} ({model_type})", flush=True)
        row = measure(
            family,
            model_type,
            work,
            device=args.device,
            dtype=args.dtype,
            attn=args.attn,
            batch=args.batch,
            seq=args.seq,
            warmup=args.warmup,
            rounds=args.rounds,
        )
        note = f"; {row['attention note']}" if row["attention note"] else ""
        print(f"  ratio {row['ratio']:.3f} (wall {row['ratio (wall)']:.3f}){note}", flush=True)
        rows.append(row)
    tag = args.device.split(":")[0]
    C.write_json(
        args.results_dir / f"families_{tag}.json",
        {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
    )
    table = C.markdown_table(rows, COLUMNS)
    (args.results_dir / f"families_{tag}.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
