"""Construction and checkpoint timings of scaffold's llama presets, beside transformers' own paths.

    PYTHONPATH=. python bench/construct_bench.py [--repeat 3] [--skip-7b] [--work-dir DIR]

Measures (median of --repeat runs, after one warm-up that pays the imports):

1. constructing llama2_7b and llama3.2_1b: scaffold's generated model on the meta device and under
   ``scaffold.no_init_weights`` (float32 and bfloat16), beside transformers' ``LlamaForCausalLM`` of
   the same shapes via ``from_config`` on the meta device and under transformers' own no-init;
2. constructing the 4m and 117m presets with init: ``AutoModelForCausalLM.from_config`` of the
   generated model, beside transformers' ``LlamaForCausalLM`` of the same shapes;
3. saving and loading the 117m preset's weights: ``save_checkpoint`` / ``load_checkpoint`` (into a
   meta model and into a no-init model) beside ``save_pretrained`` / ``from_pretrained``, one file
   and sharded.

Under no-init the 7B model is allocated but never written (``torch.empty``), so it needs address
space, not memory. Nothing here is asserted; it prints a table.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmark this checkout's scaffold
    sys.path.insert(0, str(ROOT))


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` calls of ``fn`` after one warm-up call."""
    import gc

    fn()
    gc.collect()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
        del out
        gc.collect()
    return statistics.median(times)


def model_dir(work: Path, preset: str) -> Path:
    from scaffold.build import build
    from scaffold.project import load_project
    from scaffold.project.new import create_project

    name = preset.replace(".", "_")
    project = create_project(name, "llama", projects_dir=work / "projects", preset=preset, force=True)
    return build(load_project(project), work / "models" / name, force=True).output_dir


def hf_config(path: Path):
    """transformers' own LlamaConfig with the shapes of a generated model directory."""
    import json

    from transformers import LlamaConfig

    c = json.loads((path / "config.json").read_text())
    keys = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
        "rms_norm_eps",
        "tie_word_embeddings",
        "rope_parameters",
    )
    return LlamaConfig(**{k: c[k] for k in keys})


def construction(work: Path, repeat: int, skip_7b: bool) -> list[tuple[str, str, float]]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights as hf_no_init

    from scaffold.build.construct import construct

    rows = []
    presets = ["llama3.2_1b"] if skip_7b else ["llama2_7b", "llama3.2_1b"]
    for preset in presets:
        path = model_dir(work, preset)
        ours = AutoConfig.from_pretrained(path, trust_remote_code=True)
        theirs = hf_config(path)

        def hf_meta(cfg=theirs):
            with torch.device("meta"):
                return AutoModelForCausalLM.from_config(cfg)

        def hf_noinit(cfg=theirs, dtype=None):
            with hf_no_init():
                return AutoModelForCausalLM.from_config(cfg, dtype=dtype)

        cases = [
            ("scaffold, meta device", lambda cfg=ours: construct(cfg, device="meta")),
            ("scaffold, no_init_weights, float32", lambda cfg=ours: construct(cfg, init_weights=False)),
            (
                "scaffold, no_init_weights, bfloat16",
                lambda cfg=ours: construct(cfg, init_weights=False, dtype=torch.bfloat16),
            ),
            ("transformers LlamaForCausalLM, meta device", hf_meta),
            ("transformers LlamaForCausalLM, its no_init_weights, float32", hf_noinit),
            (
                "transformers LlamaForCausalLM, its no_init_weights, bfloat16",
                lambda: hf_noinit(dtype=torch.bfloat16),
            ),
        ]
        for label, fn in cases:
            seconds = timed(fn, repeat)
            rows.append((preset, label, seconds))
            print(f"{preset:<12} {label:<62} {seconds * 1000:9.1f} ms", flush=True)
    for preset in ("4m", "117m"):
        path = model_dir(work, preset)
        ours = AutoConfig.from_pretrained(path, trust_remote_code=True)
        theirs = hf_config(path)
        for label, fn in [
            (
                "scaffold, from_config with init",
                lambda cfg=ours: AutoModelForCausalLM.from_config(cfg, trust_remote_code=True),
            ),
            (
                "transformers LlamaForCausalLM, from_config with init",
                lambda cfg=theirs: AutoModelForCausalLM.from_config(cfg),
            ),
        ]:
            seconds = timed(fn, repeat)
            rows.append((preset, label, seconds))
            print(f"{preset:<12} {label:<62} {seconds * 1000:9.1f} ms", flush=True)
    return rows


def checkpoints(work: Path, repeat: int) -> list[tuple[str, str, float]]:
    import torch
    from transformers import AutoModelForCausalLM

    from scaffold.build.checkpoint import load_checkpoint, save_checkpoint
    from scaffold.build.construct import construct

    path = model_dir(work, "117m")
    torch.manual_seed(0)
    model = construct(path)
    rows = []
    for shard, tag in (("50GB", "one file"), ("100MB", "sharded 100MB")):
        ours_dir, hf_dir = work / f"ours-{tag[:3]}", work / f"hf-{tag[:3]}"
        for d in (ours_dir, hf_dir):
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(path, d)
        cases = [
            (
                f"save_checkpoint ({tag})",
                lambda d=ours_dir, s=shard: save_checkpoint(d, model, max_shard_size=s),
            ),
            (
                f"save_pretrained ({tag})",
                lambda d=hf_dir, s=shard: model.save_pretrained(d, max_shard_size=s),
            ),
            (
                f"load_checkpoint into a meta model ({tag})",
                lambda d=ours_dir: load_checkpoint(d, construct(path, device="meta")),
            ),
            (
                f"load_checkpoint into a no-init model ({tag})",
                lambda d=ours_dir: load_checkpoint(d, construct(path, init_weights=False)),
            ),
            (
                f"from_pretrained ({tag})",
                lambda d=hf_dir: AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True),
            ),
        ]
        for label, fn in cases:
            seconds = timed(fn, repeat)
            rows.append(("117m", label, seconds))
            print(f"{'117m':<12} {label:<62} {seconds * 1000:9.1f} ms", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case (median reported)")
    parser.add_argument("--skip-7b", action="store_true", help="leave out llama2_7b")
    parser.add_argument(
        "--work-dir", type=Path, help="where projects and checkpoints go (default: a temp dir)"
    )
    parser.add_argument("--only", choices=["construct", "checkpoint"], help="run one part")
    args = parser.parse_args(argv)
    import torch
    import transformers
    from transformers.utils import logging

    logging.disable_progress_bar()
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads"
    )
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="construct-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.only in (None, "construct"):
            construction(work, args.repeat, args.skip_7b)
        if args.only in (None, "checkpoint"):
            checkpoints(work, args.repeat)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
