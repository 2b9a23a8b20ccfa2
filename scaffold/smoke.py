"""``scaffold test``: load a built model directory as a user would and train it for a few steps.

Each step is forward, backward and an AdamW step on a batch of token ids drawn from the tokenizer's
real vocabulary, or on a dataset (``opts.dataset``, read by :mod:`scaffold.data` and tokenized with
the model directory's own tokenizer, one document per row or packed). ``fuse_optim_with_backward``
gives every parameter its own optimizer, stepped from the parameter's post-accumulate-grad hook, so
each gradient is freed as soon as it is used. A non-finite loss or gradient stops the run with the
step, the value and the first bad parameter.
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DeviceError, ProjectError, TestFailure

DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def available_devices() -> list[str]:
    import torch

    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(name: str | None, *, allow_meta: bool = False):
    """A torch.device for ``name`` ('auto' = CUDA when available, else CPU), or a DeviceError.

    Any spelling torch accepts works (``cuda``, ``cuda:1``, ``cpu``); ``meta`` (construction without
    memory) only where the command merely constructs, as ``scaffold show`` does.
    """
    import torch

    name = (name or "auto").strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = available_devices() + (["meta"] if allow_meta else [])
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(
            f"no such device {name!r}; available: {', '.join(available)}", key="test.device"
        ) from None
    if device.type == "meta":
        if allow_meta:
            return device
        raise DeviceError(
            f"device {name!r} holds no data, so nothing can be trained there; use one of {', '.join(available)} "
            "(`scaffold show --device meta` constructs without memory)",
            key="test.device",
        )
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r}: CUDA is not available here; available: {', '.join(available)}",
                key="test.device",
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name!r} does not exist; available: {', '.join(available)}", key="test.device"
            )
        return device
    if str(device) not in available and device.type not in available:
        raise DeviceError(
            f"device {name!r} is not available here; available: {', '.join(available)}", key="test.device"
        )
    return device


def resolve_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise DeviceError(f"unknown dtype {name!r}; use one of float32, bfloat16, float16")
    return getattr(torch, DTYPES[name])


@dataclass
class TestOptions:
    __test__ = False  # not a pytest test class

    device: str = "auto"
    dtype: str = "float32"
    steps: int = 3
    batch_size: int = 2
    sequence_length: int = 128
    lr: float = 1e-3
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = False
    fuse_optim_with_backward: bool = False
    seed: int = 0
    dataset: str = ""  # '' = random tokens; else a path for scaffold.data
    dataset_config: str = ""
    packed: bool = False


@dataclass
class TestReport:
    __test__ = False

    losses: list[float] = field(default_factory=list)
    parameters: int = 0
    tokens_per_second: float = 0.0
    peak_memory_bytes: int = 0
    device: str = ""
    seconds: float = 0.0
    tokens: int = 0  # tokens trained on (padding not counted)
    data: str = ""  # what the batches were made from

    def summary(self) -> str:
        mib = self.peak_memory_bytes / 2**20
        n = len(self.losses)
        loss = f"loss {self.losses[0]:.4f} -> {self.losses[-1]:.4f}"
        if n >= 20:  # single steps are noisy: also compare the means of the first and last tenth
            k = n // 10
            first, last = sum(self.losses[:k]) / k, sum(self.losses[-k:]) / k
            loss += f" (mean of first {k} {first:.4f}, last {k} {last:.4f})"
        lines = [
            f"parameters {self.parameters:,} | {n} steps in {self.seconds:.1f} s | {loss} | "
            f"{self.tokens_per_second:,.0f} tokens/s | peak memory {mib:,.1f} MiB ({self.device})"
        ]
        if self.data:
            lines.insert(0, f"data: {self.data}")
        return "\n".join(lines)


def log_interval(steps: int) -> int:
    """Log every step of a short run; ten to twenty lines (every 1, 2 or 5 x 10^k steps) of a long one."""
    if steps <= 20:
        return 1
    target = steps / 20
    scale = 10 ** math.floor(math.log10(target))
    return int(next(m * scale for m in (1, 2, 5, 10) if m * scale >= target))


def load_tokenizer(model_dir: str | Path):
    """The model directory's tokenizer; trust_remote_code because the directory has custom code, and
    without it transformers may stop at an interactive prompt."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)


def dataset_batches(tokenizer, opts: TestOptions):
    """The batches of ``opts.dataset``, tokenized with the model directory's own tokenizer.

    The first batch is read here, so bad data fails before the model is loaded.
    """
    from .data import open_batches

    return open_batches(
        opts.dataset,
        tokenizer,
        config=opts.dataset_config or None,
        batch_size=opts.batch_size,
        sequence_length=opts.sequence_length,
        packed=opts.packed,
        # flash attention finds packed documents only in one flattened row
        flatten=opts.attn_implementation.startswith("flash"),
    )


@contextlib.contextmanager
def attention_backend_errors(attn: str) -> Iterator[None]:
    """transformers refuses an attention backend the model or machine lacks (flash-attn not installed,
    a family that does not offer it) with a ValueError or ImportError deep in construction: say so as a
    usage error naming the option."""
    try:
        yield
    except (ValueError, ImportError) as err:
        text = " ".join(str(err).split())
        if attn not in ("eager", "sdpa") and ("attention" in text.lower() or "flash" in text.lower()):
            first = text.split(". ")[0].rstrip(".")
            raise DeviceError(
                f"attention backend {attn!r} cannot run here: {first}", key="test.attn_implementation"
            ) from None
        raise


def check_backend_trains(attn: str, device) -> None:
    """Refuse up front an attention backend that cannot run a backward pass on ``device``.

    torch's flex_attention has no backward on CPU in current releases; asking torch itself (a
    two-token call that fails before any work) keeps this right when a release adds one.
    """
    if attn != "flex_attention":
        return
    import torch

    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError:
        raise DeviceError(
            f"attention backend 'flex_attention' needs torch >= 2.5 (this is {torch.__version__})",
            key="test.attn_implementation",
        ) from None
    q = torch.zeros(1, 1, 2, 8, device=device, requires_grad=True)
    try:
        flex_attention(q, q, q).sum().backward()
    except NotImplementedError as err:
        reason = " ".join(str(err).split()).split(". ")[0].rstrip(".")
        raise DeviceError(
            f"attention backend 'flex_attention' cannot train on {device.type}: {reason} (torch {torch.__version__}); "
            "use --attn-implementation sdpa or eager here, or a CUDA device",
            key="test.attn_implementation",
        ) from None
    except Exception:  # a compile problem or the like: leave it to the real run to report
        return


def load_model(
    model_dir: str | Path,
    opts: TestOptions,
    device,
    dtype,
    *,
    checkpoint: str | Path | None = None,
    no_init: bool = False,
):
    """Config and model through the Auto classes, as a user of the directory would.

    With ``checkpoint`` or ``no_init`` the model is constructed with ``from_config`` (under
    ``no_init_weights`` if asked) and its weights loaded with ``load_checkpoint`` from
    ``checkpoint``, or from the model directory's own weights.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = Path(model_dir)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    torch.manual_seed(opts.seed)
    has_weights = any(model_dir.glob("*.safetensors"))
    if checkpoint is not None or no_init:
        from .checkpoint import load_checkpoint
        from .construct import construct

        source = checkpoint if checkpoint is not None else model_dir
        if not has_weights and checkpoint is None:
            raise ProjectError(
                f"--no-init-weights leaves the weights uninitialised and {model_dir} holds none; "
                "pass --load-from-checkpoint or build with --save-weights"
            )
        with attention_backend_errors(opts.attn_implementation):
            model = construct(
                config,
                device=device,
                dtype=dtype,
                init_weights=not no_init,
                attn_implementation=opts.attn_implementation,
            )
        load_checkpoint(source, model, device=device, dtype=dtype)
        return model
    with attention_backend_errors(opts.attn_implementation):
        if has_weights:
            model = AutoModelForCausalLM.from_pretrained(
                model_dir,
                config=config,
                trust_remote_code=True,
                dtype=dtype,
                attn_implementation=opts.attn_implementation,
            )
        else:
            model = AutoModelForCausalLM.from_config(
                config, trust_remote_code=True, dtype=dtype, attn_implementation=opts.attn_implementation
            )
    return model.to(device)


def batches(vocab: int, opts: TestOptions, device) -> Iterator[Any]:
    """Random token ids from the real vocabulary, forever."""
    import torch

    g = torch.Generator().manual_seed(opts.seed)
    while True:
        yield torch.randint(0, vocab, (opts.batch_size, opts.sequence_length), generator=g).to(device)


def first_bad_parameter(model) -> tuple[str, str] | None:
    import torch

    for name, p in model.named_parameters():
        if p.grad is not None and not torch.isfinite(p.grad).all():
            return name, "gradient"
        if not torch.isfinite(p).all():
            return name, "value"
    return None


def run(
    model_dir: str | Path,
    opts: TestOptions,
    *,
    data: Iterator[Any] | None = None,
    log: Callable[[str], None] = print,
    checkpoint: str | Path | None = None,
    no_init: bool = False,
) -> TestReport:
    """Load the model in ``model_dir`` and train it for ``opts.steps`` steps; raises TestFailure.

    ``checkpoint`` / ``no_init``: where the weights come from, as in :func:`load_model`.
    """
    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype)
    check_backend_trains(opts.attn_implementation, device)
    tokenizer = load_tokenizer(model_dir)
    if data is None and opts.dataset:
        data = dataset_batches(tokenizer, opts)  # bad data fails here, before the model is loaded
    model = load_model(model_dir, opts, device, dtype, checkpoint=checkpoint, no_init=no_init)
    data = data if data is not None else batches(len(tokenizer), opts, device)
    return train(model, opts, data, device=device, log=log)


def fused_optimizers(model, lr: float, bad: list[str]) -> tuple[dict, list]:
    """One AdamW per parameter, stepped from the parameter's post-accumulate-grad hook.

    Each gradient is used and freed as soon as backward has produced it, so the full set of gradients
    never exists at once. Non-finite gradients are recorded in ``bad`` (first one wins).
    """
    import torch

    names = {p: n for n, p in model.named_parameters()}
    optimizers = {p: torch.optim.AdamW([p], lr=lr, foreach=False) for p in names if p.requires_grad}

    def step_param(p: torch.Tensor) -> None:
        if not bad and not torch.isfinite(p.grad).all():
            bad.append(names[p])
        optimizers[p].step()
        optimizers[p].zero_grad(set_to_none=True)

    hooks = [p.register_post_accumulate_grad_hook(step_param) for p in optimizers]
    return optimizers, hooks


def train(
    model,
    opts: TestOptions,
    data: Iterator[Any],
    *,
    device=None,
    log: Callable[[str], None] = print,
    loss_value: Callable[[Any], float] | None = None,
) -> TestReport:
    """Run ``opts.steps`` steps of forward, backward and AdamW on ``model`` with batches from ``data``.

    ``loss_value`` turns the step's loss tensor into the number reported (default ``loss.item()``;
    several processes report the loss of the whole batch: :mod:`scaffold.distributed`).
    """
    import torch

    device = device if device is not None else next(model.parameters()).device
    model.train()
    if opts.gradient_checkpointing:
        enable = (
            getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        )
        enable()
    report = TestReport(parameters=sum(p.numel() for p in model.parameters()), device=str(device))
    bad: list[str] = []
    if opts.fuse_optim_with_backward:
        _, hooks = fused_optimizers(model, opts.lr, bad)
        optimizer = None
    else:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=opts.lr)
        hooks = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    tokens, start = 0, time.perf_counter()
    every, since, since_tokens, since_time = log_interval(opts.steps), [], 0, start
    try:
        for step in range(1, opts.steps + 1):
            batch = next(data)
            inputs = dict(batch) if isinstance(batch, dict) else {"input_ids": batch}
            inputs = {k: v.to(device) for k, v in inputs.items()}
            labels = inputs.pop("labels", inputs["input_ids"])
            loss = model(**inputs, labels=labels, use_cache=False).loss
            value = loss.item() if loss_value is None else loss_value(loss)
            if not math.isfinite(value):
                raise TestFailure(f"step {step}: loss is {value}; first bad parameter: {_first_bad(model)}")
            loss.backward()
            if bad:
                raise TestFailure(f"step {step}: non-finite gradient; first bad parameter: {bad[0]}")
            if optimizer is not None:
                found = first_bad_parameter(model)
                if found:
                    raise TestFailure(f"step {step}: non-finite {found[1]} in parameter {found[0]}")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            mask = inputs.get("attention_mask")
            counted = int(mask.sum()) if mask is not None else labels.numel()
            tokens += counted
            report.losses.append(value)
            if every == 1:
                log(f"step {step}/{opts.steps}  loss {value:.4f}")
                continue
            since.append(value)
            since_tokens += counted
            if step % every == 0 or step in (1, opts.steps):
                now = time.perf_counter()
                rate = since_tokens / (now - since_time) if now > since_time else 0.0
                mean = (
                    f"  mean {sum(since) / len(since):.4f} over {len(since)} steps" if len(since) > 1 else ""
                )
                log(
                    f"step {step}/{opts.steps}  loss {value:.4f}{mean}  {rate:,.0f} tokens/s  {now - start:.0f} s"
                )
                since, since_tokens, since_time = [], 0, now
    finally:
        for h in hooks:
            h.remove()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        report.peak_memory_bytes = torch.cuda.max_memory_allocated(device)
    else:
        report.peak_memory_bytes = _peak_rss()
    report.seconds = time.perf_counter() - start
    report.tokens = tokens
    report.tokens_per_second = tokens / report.seconds if report.seconds > 0 else 0.0
    describe = getattr(data, "describe", None)
    report.data = describe() if callable(describe) else ""
    return report


def _first_bad(model) -> str:
    found = first_bad_parameter(model)
    return found[0] if found else "none (the parameters are finite; the input or the computation overflowed)"


def _peak_rss() -> int:
    """Peak resident memory of this process, in bytes: Linux's VmHWM, which (unlike ru_maxrss) does not
    carry over the peak of a parent process; ru_maxrss elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
