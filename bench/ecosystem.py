"""lm-eval's ``HFLM`` on built model directories: its log-likelihoods against the model's own logits.

lm-eval is in scaffold's ``dev`` extra; tests/test_ecosystem.py runs :func:`check` per family, and this
script prints the numbers::

    PYTHONPATH=$PWD python bench/ecosystem.py            # llama causal_lm deepone single_head qwen3 gpt_neox
    PYTHONPATH=$PWD python bench/ecosystem.py --families llama qwen3

Each family is made and built at tiny size with scaffold's API, given seeded weights with
``save_pretrained``, and loaded by ``HFLM(pretrained=DIR, trust_remote_code=True, device="cpu",
batch_size=2)``. Hand-made ``loglikelihood`` requests (no tasks, nothing downloaded) are compared with
the sum of ``log_softmax`` of the model's logits over the continuation, computed directly on the same
tokens (lm-eval's tokenizer call adds the BOS token, as ours does). Prints one line per family and
exits 1 if any differs by more than ``--atol``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch
from _build import build_model_dir

FAMILIES = ["llama", "causal_lm", "deepone", "single_head", "qwen3", "gpt_neox"]
REQUESTS = [("The quick brown", " fox"), ("Hello", " world and more"), ("a", "b"), ("", "x")]
TINY = {"num_hidden_layers": 2, "intermediate_size": 96, "vocab_size": 300}


def weighted_model_dir(work: Path, family: str) -> Path:
    """The family's tiny model directory with seeded weights, saved as a trained model would be."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from scaffold.spec.blueprints import load as load_blueprint

    blueprint = load_blueprint(family)
    heads = blueprint.preset(blueprint.default_preset)["model"].get("num_attention_heads", 2)
    built = build_model_dir(
        work, family, blueprint.default_preset, {**TINY, "hidden_size": 16 * heads}, blueprint=family
    )
    config = AutoConfig.from_pretrained(built, trust_remote_code=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=True)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    out = work / f"{family}-weighted"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(built, trust_remote_code=True).save_pretrained(out)
    return out


def direct(model, tokenizer, context: str, continuation: str) -> float:
    """Sum of log-softmax over the continuation's tokens, from one forward over context + continuation."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ctx = bos + tokenizer(context, add_special_tokens=False).input_ids
    whole = bos + tokenizer(context + continuation, add_special_tokens=False).input_ids
    ids = torch.tensor([whole])
    with torch.no_grad():
        logprobs = model(ids).logits.float().log_softmax(-1)[0]
    return sum(logprobs[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))


def check(path: Path) -> tuple[str, list[float], list[float]]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = HFLM(pretrained=str(path), trust_remote_code=True, device="cpu", batch_size=2)
    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(REQUESTS)
    ]
    theirs = [ll for ll, _greedy in lm.loglikelihood(requests, disable_tqdm=True)]
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    ours = [direct(model, tokenizer, c, x) for c, x in REQUESTS]
    return type(lm.model).__module__, theirs, ours


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=FAMILIES)
    parser.add_argument("--atol", type=float, default=1e-4)
    args = parser.parse_args()
    import lm_eval

    print(f"lm-eval {lm_eval.__version__}, torch {torch.__version__}")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            module, theirs, ours = check(weighted_model_dir(Path(tmp), family))
            diff = max(abs(a - b) for a, b in zip(theirs, ours, strict=True))
            worst = max(worst, diff)
            ours_code = module.startswith("transformers_modules")
            print(
                f"{family:12s} {'generated code' if ours_code else module:15s} "
                f"HFLM {', '.join(f'{x:.4f}' for x in theirs)}  max |diff| {diff:.2e}"
            )
            if not ours_code:
                worst = float("inf")
    print("OK" if worst <= args.atol else f"FAILED: max |diff| {worst:.2e} > {args.atol}")
    return 0 if worst <= args.atol else 1


if __name__ == "__main__":
    sys.exit(main())
