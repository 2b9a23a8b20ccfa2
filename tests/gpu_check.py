"""Backend checks that need a GPU: flash_attention_2, flex_attention's backward, and bf16 kernels.

Run as a script on built model directories (``scaffold build`` output), in an environment with only
torch and transformers: ``python gpu_check.py MODEL_DIR [MODEL_DIR ...]``. scaffold is not imported.
For each directory and each backend the model's blueprint offers, it compares against eager on the
same device and dtype: logits on a left-padded batch, logits of packed documents, cached decoding
against recomputation, and (where the backend has a backward) the loss and every gradient. Prints
one JSON line per directory with the max abs differences; exits non-zero on the first failed check.
On a machine without CUDA it runs what the CPU can (no flash, no flex backward) and says so.
"""

import importlib.util
import json
import sys

sys.modules["scaffold"] = None  # the model directory must stand on torch and transformers alone

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache  # noqa: E402

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}  # relative to the largest logit


def backends(model_class) -> list[str]:
    out = ["sdpa"]
    if getattr(model_class, "_supports_flex_attn", False):
        out.append("flex_attention")
    if getattr(model_class, "_supports_flash_attn", False):
        out.append("flash_attention_2")
    return out


def runnable(backend: str, device: str, dtype) -> str | None:
    """Why ``backend`` cannot run here, or None."""
    if backend == "flash_attention_2":
        if device != "cuda":
            return "needs CUDA"
        if importlib.util.find_spec("flash_attn") is None:
            return "flash-attn is not installed"
        if dtype == torch.float32:
            return "runs in half precision only"
    return None


def load(model_dir, backend, device, dtype, state=None):
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=True, attn_implementation=backend)
    if state is not None:
        model.load_state_dict(state)
    return model.to(device=device, dtype=dtype).eval()


def max_diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


def check(name: str, got, expected, dtype, facts: dict) -> None:
    diff = max_diff(got, expected)
    facts[name] = diff
    bound = TOLERANCE[dtype] * max(1.0, expected.float().abs().max().item())
    assert diff <= bound, f"{name}: max abs difference {diff:.3g} > {bound:.3g}"


def forward_checks(ref, model, device, dtype, facts, prefix, with_grad: bool) -> None:
    vocab = ref.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(6, min(vocab, 300), (2, 24), generator=g).to(device)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    ids[1, :5] = 1
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    real = mask.bool()
    with torch.no_grad():
        expected = ref(ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
        got = model(ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
        check(f"{prefix}padded", got[real], expected[real], dtype, facts)
        packed_pos = torch.cat([torch.arange(10), torch.arange(14)])[None].to(device)
        packed = model(ids[:1], position_ids=packed_pos, use_cache=False).logits
        check(f"{prefix}packed", packed[:, 10:], model(ids[:1, 10:], use_cache=False).logits, dtype, facts)
        cache, steps = DynamicCache(config=model.config), []
        for start, end in [(0, 16), *((t, t + 1) for t in range(16, 24))]:
            out = model(
                ids[:, start:end],
                attention_mask=mask[:, :end],
                position_ids=pos[:, start:end],
                past_key_values=cache,
                use_cache=True,
            )
            steps.append(out.logits)
        check(f"{prefix}cache", torch.cat(steps, 1)[real], got[real], dtype, facts)
    if not with_grad:
        return
    labels = ids.masked_fill(mask == 0, -100)
    labels[1, 5] = -100  # predicted from a padding position
    grads = []
    for m in (ref, model):
        m.train()
        m.zero_grad(set_to_none=True)
        m(ids, attention_mask=mask, labels=labels, use_cache=False).loss.backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
        m.eval()
    worst = max((max_diff(grads[1][n], gr), n) for n, gr in grads[0].items())
    facts[f"{prefix}grad"] = worst[0]
    scale = max(gr.abs().max().item() for gr in grads[0].values())
    assert worst[0] <= 10 * TOLERANCE[dtype] * max(scale, 1e-3), (
        f"{prefix}grad: {worst[1]} differs by {worst[0]:.3g}"
    )


def main(model_dirs: list[str]) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for model_dir in model_dirs:
        facts = {"dir": model_dir, "device": device, "skipped": {}}
        for dtype in (torch.float32, torch.bfloat16):
            ref = load(model_dir, "eager", device, dtype)
            facts["class"] = type(ref).__name__
            for backend in backends(type(ref)):
                prefix = f"{backend}/{str(dtype).removeprefix('torch.')}/"
                reason = runnable(backend, device, dtype)
                if reason:
                    facts["skipped"][prefix] = reason
                    continue
                model = load(model_dir, backend, device, dtype, state=ref.state_dict())
                with_grad = not (backend == "flex_attention" and device == "cpu")
                if not with_grad:
                    facts["skipped"][f"{prefix}grad"] = "flex_attention has no backward on CPU"
                try:
                    forward_checks(ref, model, device, dtype, facts, prefix, with_grad)
                except Exception as err:  # torch's CPU inductor cannot always compile flex kernels
                    if device != "cpu" or "CppCompileError" not in f"{type(err).__name__}: {err}":
                        raise
                    facts["skipped"][prefix] = "torch's CPU inductor failed to compile the flex kernel"
        print(json.dumps(facts))


if __name__ == "__main__":
    main(sys.argv[1:])
