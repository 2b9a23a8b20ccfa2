"""Pieces the benchmarks share. Imports only torch and transformers (at call time), so that
``bench/gpu.py --run`` works on a machine that has nothing of scaffold's other dependencies.

- :func:`hf_llama_config`: transformers' own ``LlamaConfig`` for the shapes of a generated model.
- :func:`load_generated` / :func:`load_hf`: the two models, same dtype, device and attention backend.
- :class:`Trainer`: one training step (forward, loss, backward, AdamW) with the memory options:
  gradient checkpointing and the optimizer fused into backward.
- :func:`check_same_logits`: both models, same weights, same logits (proof that the race is fair).
"""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

# The keys of a generated Llama config that transformers' LlamaConfig spells the same way.
SHARED_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rope_parameters",
    "rms_norm_eps",
    "attention_dropout",
    "initializer_range",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


def generated_config(model_dir: str | Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir, trust_remote_code=True)


def hf_llama_config(gen_config: Any, attn_implementation: str = "sdpa"):
    """transformers' ``LlamaConfig`` with the shapes of ``gen_config`` (a generated Llama's config)."""
    from transformers import LlamaConfig

    if getattr(gen_config, "sliding_window", None):
        raise ValueError("transformers' Llama has no sliding window; benchmark a config without one")
    kwargs = {k: getattr(gen_config, k) for k in SHARED_KEYS}
    kwargs["rope_parameters"] = dict(kwargs["rope_parameters"])
    return LlamaConfig(
        **kwargs,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        use_cache=False,
        attn_implementation=attn_implementation,
    )


def load_generated(model_dir: str | Path, dtype, device, attn: str = "sdpa"):
    """The generated model, as a user loads it: AutoModelForCausalLM + trust_remote_code, no scaffold."""
    import torch
    from transformers import AutoModelForCausalLM

    config = generated_config(model_dir)
    config.use_cache = False
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            config, trust_remote_code=True, dtype=dtype, attn_implementation=attn
        )
    return model


def load_hf(gen_config: Any, dtype, device, attn: str = "sdpa"):
    """transformers' own ``LlamaForCausalLM`` with the same shapes."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(
            hf_llama_config(gen_config, attn), dtype=dtype, attn_implementation=attn
        )
    return model


def copy_weights(src, dst) -> None:
    """Load ``src``'s parameters into ``dst``; the names must match exactly (buffers aside)."""
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    missing = [k for k in missing if "rotary_emb" not in k]
    if missing or unexpected:
        raise RuntimeError(f"parameter names differ: missing {missing[:5]}, unexpected {unexpected[:5]}")


def check_same_logits(gen, hf, vocab: int, device, atol: float, seq: int = 32) -> float:
    """Load gen's weights into hf, compare logits on one batch; returns the max abs difference."""
    import torch

    copy_weights(gen, hf)
    ids = torch.randint(0, vocab, (2, seq), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        a = gen(input_ids=ids, use_cache=False).logits.float()
        b = hf(input_ids=ids, use_cache=False).logits.float()
    diff = (a - b).abs().max().item()
    if not diff <= atol:
        raise RuntimeError(f"generated and transformers' logits differ by {diff:.3g} (> {atol})")
    return diff


class Trainer:
    """Training steps on one fixed batch of random tokens: forward with labels, backward, AdamW.

    ``step(ckpt=..., fused=...)`` picks the memory options per step, so one process can interleave
    them on the same model and weights:

    - ``ckpt``: transformers' gradient checkpointing (each decoder layer recomputed in backward).
    - ``fused``: the optimizer fused into backward (scaffold test's ``--fuse-optim-with-backward``):
      each parameter has its own AdamW, stepped from its post-accumulate-grad hook, so a gradient
      is freed as soon as it is used and the whole set of gradients never exists at once.

    The plain AdamW and the per-parameter ones are created on first use; a Trainer used in one
    mode only holds one optimizer state. AdamW is ``fused=True`` on CUDA, the default elsewhere.
    """

    def __init__(
        self, model, *, batch: int, seq: int, lr: float = 1e-4, compile_model: bool = False, seed: int = 0
    ):
        import torch

        self.model = model.train()
        self.device = next(model.parameters()).device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.lr = lr
        self.adamw = None
        self.per_param: dict | None = None
        self._ckpt_ready = False
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=g).to(self.device)
        self.tokens = batch * seq
        self.forward = torch.compile(model) if compile_model else model

    def _set_ckpt(self, on: bool) -> None:
        if on and not self._ckpt_ready:
            set_checkpointing(self.model, True)  # once: installs the checkpoint function and input hook
            self._ckpt_ready = True
        elif self._ckpt_ready:
            # later switches only flip the flags that transformers' _set_gradient_checkpointing sets
            for m in self.model.modules():
                if hasattr(m, "gradient_checkpointing"):
                    m.gradient_checkpointing = on

    def step(self, *, ckpt: bool = False, fused: bool = False):
        import torch

        on_cuda = self.device.type == "cuda"
        self._set_ckpt(ckpt)
        hooks = []
        if fused:
            if self.per_param is None:
                self.per_param = {
                    p: torch.optim.AdamW([p], lr=self.lr, fused=on_cuda, foreach=False) for p in self.params
                }
            optims = self.per_param

            def step_param(p):
                optims[p].step()
                optims[p].zero_grad(set_to_none=True)

            hooks = [p.register_post_accumulate_grad_hook(step_param) for p in self.params]
        elif self.adamw is None:
            self.adamw = torch.optim.AdamW(self.params, lr=self.lr, fused=on_cuda or None)
        try:
            loss = self.forward(input_ids=self.ids, labels=self.ids, use_cache=False).loss
            loss.backward()
        finally:
            for h in hooks:
                h.remove()
        if not fused:
            self.adamw.step()
            self.adamw.zero_grad(set_to_none=True)
        return loss.detach()

    def close(self) -> None:
        self.adamw = self.per_param = None
        if self._ckpt_ready:
            set_checkpointing(self.model, False)


def set_checkpointing(model, on: bool) -> None:
    """Gradient checkpointing on or off (non-reentrant, transformers' default), under either name:
    transformers 5.24 calls it activation checkpointing, 5.17 gradient checkpointing."""
    if on:
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    else:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def current_rss() -> int:
    """Resident memory of this process now, in bytes (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Set this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident memory of this process's address space (VmHWM), in bytes.

    Not ``ru_maxrss``: Linux carries that over from the parent across fork and exec, so a child of
    a big process starts with its parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


class LiveTensorBytes:
    """Exact peak of the bytes held by live tensor storages on the CPU: the analogue of
    ``torch.cuda.max_memory_allocated``, without an allocator's slack.

    A dispatch mode sees every op's outputs (autograd's backward ops included) and counts each new
    storage once, until the storage is freed. Tensors made before the mode is entered count only if
    passed to :meth:`track` (the model's parameters and buffers).
    """

    def __init__(self) -> None:
        import weakref

        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        self.current = self.peak = 0
        self._keys: set = set()
        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    tracker.track(t)
                return out

        self._weakref = weakref
        self.mode = _Mode()

    def track(self, t) -> None:
        import torch

        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        st = t.untyped_storage()
        key = (st.device.type, st.data_ptr())
        n = st.nbytes()
        if n == 0 or key in self._keys:
            return
        self._keys.add(key)
        self.current += n
        self.peak = max(self.peak, self.current)
        self._weakref.finalize(st, self._free, key, n)

    def _free(self, key, n: int) -> None:
        self._keys.discard(key)
        self.current -= n

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def write_json(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of ``rows``; ``columns`` are (key, heading) pairs; missing cells are blank."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
