"""The GPU benchmark: checks and times everything that only a GPU shows, in one run.

Two steps, because the GPU machine has torch and transformers but nothing else of scaffold's:

    # 1. here, with scaffold: make and build the model directories (no weights; a few hundred KiB)
    PYTHONPATH=$PWD python bench/gpu.py --prepare bench/gpu_models
    # 2. on the GPU machine: torch + transformers only
    RESULTS_DIR=out BENCH_BUDGET_S=420 python bench/gpu.py --run bench/gpu_models

``--run`` first checks, on a tiny model, what the CPU cannot: the generated Llama against
transformers' LlamaForCausalLM (same weights) on CUDA in fp32 and bf16, eager/sdpa/flex_attention
agreeing, a compiled training step (and a fullgraph-compiled forward), greedy generation with the
cache, gradient checkpointing and the optimizer fused into backward giving the same numbers. Then it
times training steps (bf16 weights, fused AdamW, random tokens, warm-up steps excluded, CUDA
events) of both models at 160M- and 1B-class shapes, eager and ``torch.compile``d, sdpa and flex
attention, plain and with the memory options; peak memory is ``torch.cuda.max_memory_allocated``.
Last, every reproduced family (``bench/families.py``) at a 160M-class shape against transformers' own
class of its ``model_type`` (``family_<name>`` cases, sdpa, plain).
Cases run most important first, the two models of a case back to back (order alternating), and a
case is skipped when the time budget (``BENCH_BUDGET_S`` seconds, default 420) would be overrun, and
stopped if it runs 45 s past it: the whole run stays under budget + 45 s plus start-up.

Writes under ``RESULTS_DIR`` (default DIR/results): ``gpu.jsonl`` (one line per check and case, as
they finish), ``gpu.json`` (everything) and ``gpu.md`` (the tables). ``--run DIR --device cpu
--quick`` runs the whole script on tiny shapes on the CPU, to check the script itself.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common as C  # noqa: E402

T0 = time.time()

# Shapes: the anchors' (../shared/reference/performance-anchors.md), made from the llama blueprint.
SHAPES: dict[str, dict[str, Any]] = {
    # checks only: GQA, tied embeddings and llama3 RoPE scaling, all small
    "tiny": dict(
        preset="4m",
        model=dict(
            vocab_size=320,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=128,
            tie_word_embeddings=True,
            max_position_embeddings=256,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
        batch=2,
        seq=64,
    ),
    # llama-like ~160M: GPT-2-small width, 32k vocab
    "llama_160m": dict(
        preset="4m",
        model=dict(
            vocab_size=32000,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=12,
            head_dim=64,
            intermediate_size=2048,
            tie_word_embeddings=False,
            max_position_embeddings=2048,
            rope_theta=500000.0,
        ),
        batch=16,
        seq=2048,
    ),
    # Llama 3.2 1B: the blueprint's preset as it is
    "llama_1b": dict(preset="llama3.2_1b", model={}, batch=4, seq=2048),
}

# The shape every reproduced family is timed at against its transformers class (160M-class, GQA).
FAMILY_SHAPE: dict[str, Any] = dict(
    vocab_size=32000,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=4,
    intermediate_size=2048,
    max_position_embeddings=2048,
)

# (shape, attention, compiled, option), most important first; every family_<name> shape of the plan
# follows (sdpa, eager, plain)
CASES = [
    ("llama_160m", "sdpa", False, "plain"),
    ("llama_1b", "sdpa", False, "plain"),
    ("llama_1b", "sdpa", False, "grad-ckpt"),
    ("llama_1b", "sdpa", False, "optim-in-bwd"),
    ("llama_160m", "sdpa", True, "plain"),
    ("llama_160m", "flex_attention", False, "plain"),
    ("llama_1b", "sdpa", True, "plain"),
    ("llama_1b", "sdpa", False, "ckpt+optim-in-bwd"),
    ("llama_160m", "sdpa", False, "grad-ckpt"),
    ("llama_160m", "sdpa", False, "optim-in-bwd"),
    ("llama_160m", "flex_attention", True, "plain"),
]
OPTIONS = {
    "plain": (False, False),
    "grad-ckpt": (True, False),
    "optim-in-bwd": (False, True),
    "ckpt+optim-in-bwd": (True, True),
}
# rough seconds per case (both models), to decide whether a case still fits the budget
ESTIMATE_S = {
    ("llama_160m", False): 25,
    ("llama_1b", False): 35,
    ("llama_160m", True): 150,
    ("llama_1b", True): 200,
}
FLEX_EXTRA_S = 60
GRACE_S = 45  # a case running this long past the budget is stopped
CHECK_LIMIT_S = 150  # and a check running longer than this
# H200 figures of ../shared/reference/performance-anchors.md: (transformers tok/s, lean model tok/s)
ANCHORS = {
    ("llama_160m", "sdpa", False, "plain"): (278e3, 335e3),
    ("llama_160m", "flex_attention", False, "plain"): (266e3, None),
    ("llama_160m", "sdpa", True, "plain"): (391e3, 444e3),
    ("llama_1b", "sdpa", False, "plain"): (49.9e3, 53.8e3),
    ("llama_1b", "sdpa", False, "grad-ckpt"): (40.6e3, None),
    ("llama_1b", "sdpa", True, "plain"): (59.0e3, 63.9e3),
}
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # dense bf16 datasheet figures


# ---------------------------------------------------------------------------------------------
# --prepare (needs scaffold)
# ---------------------------------------------------------------------------------------------


def prepare(out_dir: Path) -> None:
    from _build import build_shapes

    plan = build_shapes(out_dir, SHAPES)
    # every reproduced family at the 160M-class shape, beside its transformers config (bench/families.py)
    import families
    from transformers import AutoConfig

    from scaffold.build import build
    from scaffold.project import load_project
    from scaffold.project.importer import import_project

    for family, model_type in families.reproduced_families().items():
        name = f"family_{family}"
        source = out_dir / ".work" / f"hf-{family}" / "config.json"
        source.parent.mkdir(parents=True, exist_ok=True)
        AutoConfig.for_model(model_type, **FAMILY_SHAPE).to_json_file(source)
        project = import_project(source, name=family, projects_dir=out_dir / ".work" / "projects", force=True)
        target = out_dir / name
        if target.exists():
            shutil.rmtree(target)
        build(load_project(project), target)
        (target / "transformers").mkdir()
        shutil.copy2(source, target / "transformers" / "config.json")
        plan["shapes"][name] = {"dir": name, "batch": 16, "seq": 2048, "family": family}
        print(f"built {target}")
    shutil.rmtree(out_dir / ".work", ignore_errors=True)
    C.write_json(out_dir / "plan.json", plan)
    print(f"wrote {out_dir / 'plan.json'}; on the GPU machine: python bench/gpu.py --run {out_dir}")


# ---------------------------------------------------------------------------------------------
# --run (torch + transformers only)
# ---------------------------------------------------------------------------------------------


class Run:
    def __init__(self, plan_dir: Path, results: Path, device: str, quick: bool, budget: float):
        import torch

        self.plan_dir, self.results, self.quick, self.budget = plan_dir, results, quick, budget
        self.device = torch.device(device)
        self.plan = json.loads((plan_dir / "plan.json").read_text())
        self.records: list[dict[str, Any]] = []
        results.mkdir(parents=True, exist_ok=True)
        (results / "gpu.jsonl").write_text("")

    def model_dir(self, shape: str) -> Path:
        if self.quick and not shape.startswith("family_"):
            shape = "tiny"  # --quick checks the script: every case on the tiny model
        return self.plan_dir / self.plan["shapes"][shape]["dir"]

    def shape(self, shape: str) -> tuple[int, int]:
        if self.quick:
            return 2, 64
        s = self.plan["shapes"][shape]
        return s["batch"], s["seq"]

    def record(self, rec: dict[str, Any]) -> None:
        rec["t_s"] = round(time.time() - T0, 1)
        self.records.append(rec)
        with open(self.results / "gpu.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)

    def elapsed(self) -> float:
        return time.time() - T0

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def free(self) -> None:
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)


def environment(device) -> dict[str, Any]:
    import importlib.util

    import torch
    import transformers

    env: dict[str, Any] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "flash_attn_installed": importlib.util.find_spec("flash_attn") is not None,
    }
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

        env["flex_attention"] = True
    except ImportError:
        env["flex_attention"] = False
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
        env["memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return env


# ---- checks (tiny model) ----


def _pair(run: Run, dtype, attn: str = "sdpa"):
    import torch

    torch.manual_seed(0)
    gen = C.load_generated(run.model_dir("tiny"), dtype, run.device, attn)
    hf = C.load_hf(gen.config, dtype, run.device, attn)
    C.copy_weights(gen, hf)
    return gen, hf


def _batch(run: Run, vocab: int, padded: bool = False):
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (2, 48), generator=g).to(run.device)
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :10] = 0  # left padding in the first row
    return ids, mask


def _logits(model, ids, mask):
    import torch

    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    return out.masked_fill(mask[..., None] == 0, 0.0)  # padded positions (maybe NaN) are not compared


def check_parity(run: Run, dtype_name: str, atol: float) -> dict[str, Any]:
    import torch

    gen, hf = _pair(run, getattr(torch, dtype_name))
    worst = 0.0
    for padded in (False, True):
        ids, mask = _batch(run, gen.config.vocab_size, padded)
        worst = max(worst, (_logits(gen, ids, mask) - _logits(hf, ids, mask)).abs().max().item())
    return {"ok": worst <= atol, "max_abs_diff": worst, "atol": atol}


def check_backends(run: Run) -> dict[str, Any]:
    import torch

    ids, mask = _batch(run, C.generated_config(run.model_dir("tiny")).vocab_size, padded=True)
    outs, errors = {}, {}
    for attn in ("eager", "sdpa", "flex_attention"):
        try:
            torch.manual_seed(0)
            model = C.load_generated(run.model_dir("tiny"), torch.float32, run.device, attn)
            outs[attn] = _logits(model, ids, mask)
        except Exception as e:  # a backend that cannot run here is reported, not fatal
            errors[attn] = f"{type(e).__name__}: {str(e)[:200]}"
    diffs = {
        a: (o - outs["eager"]).abs().max().item() for a, o in outs.items() if a != "eager" and "eager" in outs
    }
    return {
        "ok": not errors and all(d <= 1e-4 for d in diffs.values()),
        "max_abs_diff_vs_eager": diffs,
        "errors": errors,
    }


def check_train_bf16(run: Run) -> dict[str, Any]:
    import torch

    gen, hf = _pair(run, torch.bfloat16)
    losses = {}
    for name, model in (("generated", gen), ("transformers", hf)):
        t = C.Trainer(model, batch=2, seq=64)
        losses[name] = [float(t.step()) for _ in range(3)]
    finite = all(math.isfinite(x) for v in losses.values() for x in v)
    first = abs(losses["generated"][0] - losses["transformers"][0])
    return {"ok": finite and first <= 2e-2, "losses": losses, "first_loss_diff": first}


def check_compile(run: Run) -> dict[str, Any]:
    import torch

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = C.load_generated(run.model_dir("tiny"), torch.float32, run.device, "sdpa")
    ids, mask = _batch(run, model.config.vocab_size)
    eager = _logits(model, ids, mask)
    full = torch.compile(model, fullgraph=True)  # the model claims _can_compile_fullgraph
    with torch.no_grad():
        compiled = full(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    fwd_diff = (compiled - eager).abs().max().item()
    t_eager = C.Trainer(model, batch=2, seq=64)
    loss_eager = float(t_eager.step())
    torch.manual_seed(0)
    model2 = C.load_generated(run.model_dir("tiny"), torch.float32, run.device, "sdpa")
    t_comp = C.Trainer(model2, batch=2, seq=64, compile_model=True)
    loss_comp = float(t_comp.step())
    torch._dynamo.reset()
    return {
        "ok": fwd_diff <= 1e-4 and abs(loss_eager - loss_comp) <= 1e-4,
        "fullgraph_forward_max_abs_diff": fwd_diff,
        "train_loss_eager": loss_eager,
        "train_loss_compiled": loss_comp,
    }


def check_generate(run: Run) -> dict[str, Any]:
    import torch

    gen, hf = _pair(run, torch.float32)
    ids, _ = _batch(run, gen.config.vocab_size)
    kw = dict(max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=gen.config.pad_token_id)
    with torch.no_grad():
        a = gen.eval().generate(ids, **kw)
        b = hf.eval().generate(ids, **kw)
        no_cache = gen.generate(ids, **{**kw, "use_cache": False})
    return {
        "ok": bool(torch.equal(a, b) and torch.equal(a, no_cache)),
        "new_tokens": a.shape[1] - ids.shape[1],
    }


def check_memory_options(run: Run) -> dict[str, Any]:
    """Checkpointing gives the same gradients; the optimizer in backward the same update as AdamW."""
    import torch

    def trained(ckpt: bool, fused: bool):
        torch.manual_seed(0)
        model = C.load_generated(run.model_dir("tiny"), torch.float32, run.device, "sdpa")
        t = C.Trainer(model, batch=2, seq=64, lr=1e-2)
        t.step(ckpt=ckpt, fused=fused)
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    base = trained(False, False)
    out: dict[str, Any] = {}
    for name, (ckpt, fused) in (("grad-ckpt", (True, False)), ("optim-in-bwd", (False, True))):
        other = trained(ckpt, fused)
        out[name] = max((base[n] - other[n]).abs().max().item() for n in base)
    return {"ok": all(v <= 1e-5 for v in out.values()), "max_abs_param_diff_after_one_step": out}


CHECKS = [
    ("parity_fp32", lambda run: check_parity(run, "float32", 1e-4)),
    ("parity_bf16", lambda run: check_parity(run, "bfloat16", 5e-2)),
    ("attention_backends", check_backends),
    ("train_bf16", check_train_bf16),
    ("memory_options", check_memory_options),
    ("generate", check_generate),
    ("compile", check_compile),
]


# ---- timed cases ----


def flops_per_token(model, seq: int) -> float:
    """6N + 12·L·(heads·head_dim)·T, N without the input embedding unless it is the tied head."""
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    if not cfg.tie_word_embeddings:
        n -= cfg.vocab_size * cfg.hidden_size
    return 6 * n + 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * seq


def time_case(run: Run, shape: str, impl: str, attn: str, compiled: bool, option: str) -> dict[str, Any]:
    import torch

    batch, seq = run.shape(shape)
    steps, warmup = (2, 1) if run.quick else (10, 3)
    dtype = torch.bfloat16 if run.device.type == "cuda" else torch.float32
    run.free()
    torch.manual_seed(0)
    if impl == "generated":
        model = C.load_generated(run.model_dir(shape), dtype, run.device, attn)
    elif shape.startswith("family_"):  # transformers' own class of that family, from its saved config
        from transformers import AutoConfig, AutoModelForCausalLM

        hf_config = AutoConfig.from_pretrained(run.model_dir(shape) / "transformers")
        model = AutoModelForCausalLM.from_config(hf_config, attn_implementation=attn, dtype=dtype).to(
            run.device
        )
    else:
        model = C.load_hf(C.generated_config(run.model_dir(shape)), dtype, run.device, attn)
    ckpt, fused = OPTIONS[option]
    trainer = C.Trainer(model, batch=batch, seq=seq, compile_model=compiled)
    t = time.time()
    for _ in range(warmup):
        loss = trainer.step(ckpt=ckpt, fused=fused)
    run.sync()
    warm_s = time.time() - t
    times = []
    if run.device.type == "cuda":
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)
        ]
        for start, end in events:
            start.record()
            loss = trainer.step(ckpt=ckpt, fused=fused)
            end.record()
        run.sync()
        times = [start.elapsed_time(end) / 1e3 for start, end in events]
    else:
        for _ in range(steps):
            t = time.perf_counter()
            loss = trainer.step(ckpt=ckpt, fused=fused)
            times.append(time.perf_counter() - t)
    step_s = C.median(times)
    tokens = batch * seq
    rec: dict[str, Any] = {
        "kind": "case",
        "shape": f"tiny (for {shape})" if run.quick and not shape.startswith("family_") else shape,
        "impl": impl,
        "attn": attn,
        "compiled": compiled,
        "option": option,
        "batch": batch,
        "seq": seq,
        "dtype": str(dtype).removeprefix("torch."),
        "params": sum(p.numel() for p in model.parameters()),
        "tok_s": round(tokens / step_s),
        "step_ms": round(step_s * 1e3, 2),
        "warmup_s": round(warm_s, 1),
        "loss": round(float(loss), 3),
    }
    if run.device.type == "cuda":
        rec["peak_gib"] = round(torch.cuda.max_memory_allocated(run.device) / 2**30, 2)
        name = torch.cuda.get_device_name(run.device)
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
        tflops = flops_per_token(model, seq) * tokens / step_s / 1e12
        rec["tflops"] = round(tflops, 1)
        if peak:
            rec["mfu"] = round(tflops / peak, 3)
    trainer.close()
    del trainer, model
    if compiled:
        torch._dynamo.reset()
    run.free()
    return rec


class BudgetExceeded(Exception):
    pass


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise BudgetExceeded in this (main) thread once ``seconds`` have passed (Unix; else no limit)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):
        raise BudgetExceeded(f"ran past the time budget (BENCH_BUDGET_S + {GRACE_S} s)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(max(1, math.ceil(seconds)))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_all(run: Run) -> dict[str, Any]:
    import torch

    env = environment(run.device)
    env["budget_s"] = run.budget
    run.record({"kind": "environment", **env})
    if run.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 checks compare like with like
    checks = {}
    for name, fn in CHECKS:
        t = time.time()
        try:
            with deadline(min(CHECK_LIMIT_S, run.budget + GRACE_S - run.elapsed())):
                res = fn(run)
        except Exception as e:
            res = {
                "ok": False,
                "error": f"{type(e).__name__}: {str(e)[:300]}",
                "trace": traceback.format_exc()[-800:],
            }
        res["seconds"] = round(time.time() - t, 1)
        checks[name] = res
        run.record({"kind": "check", "name": name, **res})
        run.free()
    cases: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    family_cases = [
        (name, "sdpa", False, "plain") for name in run.plan["shapes"] if name.startswith("family_")
    ]
    for i, (shape, attn, compiled, option) in enumerate(CASES + family_cases):
        est = ESTIMATE_S.get((shape, compiled), 25) + (FLEX_EXTRA_S if attn != "sdpa" else 0)
        if run.quick:
            est = 0 if not compiled else 60
        if run.elapsed() + est > run.budget:
            skipped.append(
                {
                    "kind": "skipped",
                    "shape": shape,
                    "attn": attn,
                    "compiled": compiled,
                    "option": option,
                    "reason": f"budget: {run.elapsed():.0f} s spent + ~{est} s > {run.budget:.0f} s",
                }
            )
            run.record(skipped[-1])
            continue
        pair = {}
        order = ("generated", "transformers") if i % 2 == 0 else ("transformers", "generated")
        for impl in order:
            try:
                with deadline(run.budget + GRACE_S - run.elapsed()):
                    rec = time_case(run, shape, impl, attn, compiled, option)
            except Exception as e:  # one failing case (OOM, a backend missing) must not lose the rest
                rec = {
                    "kind": "case",
                    "shape": f"tiny (for {shape})" if run.quick else shape,
                    "impl": impl,
                    "attn": attn,
                    "compiled": compiled,
                    "option": option,
                    "error": f"{type(e).__name__}: {str(e)[:300]}",
                }
            if compiled:
                torch._dynamo.reset()
            run.free()  # outside the except block: the traceback no longer holds the model
            pair[impl] = rec
            run.record(rec)
        g, h = pair.get("generated", {}), pair.get("transformers", {})
        if "tok_s" in g and "tok_s" in h:
            g["speed_ratio"] = round(g["tok_s"] / h["tok_s"], 3)
            if "peak_gib" in g and h.get("peak_gib"):
                g["memory_ratio"] = round(g["peak_gib"] / h["peak_gib"], 3)
        anchor = ANCHORS.get((shape, attn, compiled, option))
        if anchor and not run.quick:
            if "tok_s" in g and anchor[1]:
                g["vs_lean_anchor"] = round(g["tok_s"] / anchor[1], 3)
            if "tok_s" in h:
                h["vs_hf_anchor"] = round(h["tok_s"] / anchor[0], 3)
        cases += [pair[k] for k in order]
    return {"environment": env, "checks": checks, "cases": cases, "skipped": skipped}


def _detail(v: Any) -> Any:
    """Check details for the table: floats to 3 significant digits, nested dicts inline."""
    if isinstance(v, float):
        return float(f"{v:.3g}")
    if isinstance(v, dict):
        return {k: _detail(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_detail(x) for x in v]
    return v


def tables(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        f"GPU run: {env.get('gpu', env['device'])}, torch {env['torch']}, transformers {env['transformers']}",
        "",
    ]
    lines.append(
        C.markdown_table(
            [
                {
                    "check": k,
                    "ok": v.get("ok"),
                    "seconds": v.get("seconds"),
                    "detail": v.get("error")
                    or json.dumps(
                        _detail({kk: vv for kk, vv in v.items() if kk not in ("ok", "seconds", "trace")})
                    ),
                }
                for k, v in result["checks"].items()
            ],
            [("check", "check"), ("ok", "ok"), ("seconds", "s"), ("detail", "detail")],
        )
    )
    lines.append("")
    lines.append(
        C.markdown_table(
            result["cases"],
            [
                ("shape", "shapes"),
                ("impl", "impl"),
                ("attn", "attention"),
                ("compiled", "compiled"),
                ("option", "option"),
                ("tok_s", "tokens/s"),
                ("mfu", "MFU"),
                ("peak_gib", "peak GiB"),
                ("speed_ratio", "speed vs transformers"),
                ("memory_ratio", "memory vs transformers"),
                ("vs_lean_anchor", "vs lean anchor"),
                ("vs_hf_anchor", "vs hf anchor"),
                ("error", "error"),
            ],
        )
    )
    for skip in result.get("skipped", []):
        lines.append(
            f"- skipped {skip['shape']} {skip['attn']} compiled={skip['compiled']} {skip['option']}: {skip['reason']}"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--prepare", type=Path, metavar="DIR", help="build the model directories into DIR (needs scaffold)"
    )
    mode.add_argument(
        "--run", type=Path, metavar="DIR", help="check and time the models in DIR (torch + transformers)"
    )
    ap.add_argument("--device", default="cuda", help="device for --run (default cuda)")
    ap.add_argument(
        "--quick", action="store_true", help="tiny shapes and steps: check the script, not the GPU"
    )
    args = ap.parse_args(argv)
    if args.prepare:
        prepare(args.prepare)
        return 0
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "error: CUDA is not available here (use --device cpu --quick to check the script)",
            file=sys.stderr,
        )
        return 2
    results = Path(os.environ.get("RESULTS_DIR") or args.run / "results")
    budget = float(os.environ.get("BENCH_BUDGET_S", "420"))
    run = Run(args.run, results, args.device, args.quick, budget)
    result = run_all(run)
    result["seconds"] = round(run.elapsed(), 1)
    C.write_json(results / "gpu.json", result)
    text = tables(result)
    (results / "gpu.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {results}/gpu.json, gpu.jsonl and gpu.md in {result['seconds']} s")
    failed = [k for k, v in result["checks"].items() if not v.get("ok")]
    if failed:
        print("checks failed:", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
