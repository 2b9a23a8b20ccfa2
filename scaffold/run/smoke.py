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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# device and dtype questions are answered by devices.py; the names stay importable from here
from scaffold.devices import (
    available_memory,
    element_bytes,
    peak_memory,
    reset_peak_memory,
    resolve_device,
    resolve_dtype,
    training_dtype_name,
)
from scaffold.devices import peak_rss as _peak_rss  # noqa: F401
from scaffold.errors import DeviceError, ProjectError, TestFailure

OnStep = Callable[[int, float, int, float, float], None]  # (step, loss, tokens, lr, seconds so far)


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
    from scaffold.data import open_batches

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
        from scaffold.build.checkpoint import load_checkpoint
        from scaffold.build.construct import construct

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


def mixed_precision(opts: TestOptions) -> bool:
    """float16 training is mixed precision: float32 master weights, float16 autocast, a GradScaler.

    Pure float16 weights lose AdamW's small updates and overflow within a few steps; bfloat16 has
    float32's range and trains as it is.
    """
    return training_dtype_name(opts.dtype) == "float16"


def precision(opts: TestOptions) -> str:
    """How ``scaffold test`` trains in ``opts.dtype``, in words for its output line."""
    if mixed_precision(opts):
        return "float16 mixed precision (float32 master weights, float16 autocast, torch.amp.GradScaler)"
    return training_dtype_name(opts.dtype) or opts.dtype


# Activations kept for backward, in elements per token and layer: about 16 x hidden_size (norm
# inputs, q/k/v, attention output, residuals, projections) plus 3 x intermediate_size (gate, up and
# their product); eager attention adds heads x sequence_length probabilities. The logits and the
# loss's float32 softmax add 4 x vocab_size per token. With gradient checkpointing one hidden state
# per layer is kept, plus one layer's worth recomputed. A rough upper estimate, documented in
# docs/errors.md; it exists to refuse sizes that cannot fit, not to predict peak memory.
ACTIVATION_PER_HIDDEN, ACTIVATION_PER_FFN, LOGIT_COPIES = 16, 3, 4
# a mixture of experts keeps, per (token, expert) pair, its gathered input, its output and the weighted output
MOE_COPIES_PER_PAIR = 3


@dataclass
class MemoryEstimate:
    parameters: int  # bytes of each kind
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        return (
            f"about {_gib(self.total)} (parameters {_gib(self.parameters)}, gradients {_gib(self.gradients)}, "
            f"AdamW state {_gib(self.optimizer)}, activations {_gib(self.activations)})"
        )


def _gib(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB" if n < 2**50 else f"{n / 2**40:,.0f} TiB"


def estimate_memory(config: Any, n_params: int, opts: TestOptions) -> MemoryEstimate:
    """Bytes ``scaffold test`` needs on its device: parameters, gradients, AdamW's two moments and
    the activations of one batch (see ``ACTIVATION_PER_HIDDEN``)."""
    act_width = element_bytes(opts.dtype)  # float16: the activations under autocast
    # float16 trains float32 master weights
    width = element_bytes("float32") if mixed_precision(opts) else act_width
    params = n_params * (width + (act_width if mixed_precision(opts) else 0))  # + the float16 autocast copies
    grads = 0 if opts.fuse_optim_with_backward else n_params * width
    optimizer = 2 * n_params * width
    tokens = opts.batch_size * opts.sequence_length
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    ffn = int(getattr(config, "intermediate_size", 0) or 0)
    layers = int(getattr(config, "num_hidden_layers", 1) or 1)
    heads = int(getattr(config, "num_attention_heads", 1) or 1)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    top_k = int(getattr(config, "num_experts_per_tok", 0) or 0)
    if top_k:  # a mixture of experts: each token's top-k experts and the shared expert are its feed-forward
        width = int(getattr(config, "moe_intermediate_size", 0) or ffn)
        shared = int(getattr(config, "shared_expert_intermediate_size", 0) or 0)
        # and each (token, expert) pair's copy of its input and output, sorted by expert
        ffn = max(ffn, top_k * width + shared) + MOE_COPIES_PER_PAIR * top_k * hidden // ACTIVATION_PER_FFN
    per_layer = ACTIVATION_PER_HIDDEN * hidden + ACTIVATION_PER_FFN * ffn
    if opts.attn_implementation == "eager":
        per_layer += heads * opts.sequence_length
    kept = layers * hidden + per_layer if opts.gradient_checkpointing else layers * per_layer
    activations = tokens * (kept * act_width + LOGIT_COPIES * vocab * 4)
    return MemoryEstimate(params, grads, optimizer, activations)


def check_memory(config: Any, opts: TestOptions, device) -> MemoryEstimate:
    """Refuse (DeviceError, exit 2) a test whose estimate exceeds the device's free memory, before
    anything is allocated; the parameters are counted on the meta device."""
    from scaffold.build.construct import construct

    meta = construct(config, device="meta", init_weights=False)
    n_params = sum(p.numel() for p in meta.parameters())
    del meta
    estimate = estimate_memory(config, n_params, opts)
    free = available_memory(device)
    if free is not None and estimate.total > free:
        raise DeviceError(
            f"{n_params:,} parameters with batch {opts.batch_size} x {opts.sequence_length} need "
            f"{estimate.describe()}, but {device} has {_gib(free)} available; use smaller sizes, batch or "
            "sequence, gradient checkpointing, or another device",
            key="test.device",
        )
    return estimate


def _check_lr(lr: float, dtype) -> None:
    """AdamW's first step is lr / (1 - beta1) = 10 x lr, computed in the parameters' dtype: a rate
    whose step does not fit that dtype is refused (torch would stop with an overflow error)."""
    import torch

    limit = torch.finfo(dtype).max / 10
    if not math.isfinite(lr) or lr > limit:
        raise DeviceError(f"{lr:g} is too large for AdamW in {dtype} (at most {limit:.3g})", key="test.lr")


def run(
    model_dir: str | Path,
    opts: TestOptions,
    *,
    data: Iterator[Any] | None = None,
    log: Callable[[str], None] = print,
    checkpoint: str | Path | None = None,
    no_init: bool = False,
    on_step: OnStep | None = None,
) -> TestReport:
    """Load the model in ``model_dir`` and train it for ``opts.steps`` steps; raises TestFailure.

    ``checkpoint`` / ``no_init``: where the weights come from, as in :func:`load_model`; ``on_step``
    as in :func:`train`.
    """
    from transformers import AutoConfig

    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype)
    if mixed_precision(opts):
        import torch

        dtype = torch.float32  # the master weights; the forward runs in float16 under autocast
        if opts.fuse_optim_with_backward:
            raise DeviceError(
                "float16 mixed precision steps after the gradient scaler has checked every gradient, so it "
                "cannot step each parameter during backward; use --dtype bfloat16 or drop "
                "--fuse-optim-with-backward",
                key="test.dtype",
            )
    _check_lr(opts.lr, dtype)
    check_json_files(Path(model_dir))
    check_memory(AutoConfig.from_pretrained(model_dir, trust_remote_code=True), opts, device)
    check_backend_trains(opts.attn_implementation, device)
    tokenizer = load_tokenizer(model_dir)
    if data is None and opts.dataset:
        data = dataset_batches(tokenizer, opts)  # bad data fails here, before the model is loaded
    model = load_model(model_dir, opts, device, dtype, checkpoint=checkpoint, no_init=no_init)
    data = data if data is not None else batches(len(tokenizer), opts, device)
    return train(model, opts, data, device=device, log=log, on_step=on_step)


def check_json_files(model_dir: Path) -> None:
    """The model directory's JSON files that transformers parses (config, tokenizer and generation
    settings) are JSON that a parser can read: damaged (not UTF-8, not JSON, nested too deeply for
    Python's parser, a FIFO) is an IntegrityError naming the file, before transformers recurses."""
    from scaffold import atomic

    for name in ("config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json"):
        text = atomic.read_text_inside(model_dir / name, model_dir, missing_ok=True)
        if text is not None:
            atomic.loads_json(text, model_dir / name)


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


def enable_checkpointing(model: Any) -> None:
    """Recompute activations in backward: transformers 5.24's ``activation_checkpointing_enable``,
    ``gradient_checkpointing_enable`` before it."""
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()


def train(
    model,
    opts: TestOptions,
    data: Iterator[Any],
    *,
    device=None,
    log: Callable[[str], None] = print,
    loss_value: Callable[[Any], float] | None = None,
    on_step: OnStep | None = None,
) -> TestReport:
    """Run ``opts.steps`` steps of forward, backward and AdamW on ``model`` with batches from ``data``.

    ``loss_value`` turns the step's loss tensor into the number reported (default ``loss.item()``;
    several processes report the loss of the whole batch: :mod:`scaffold.run.distributed`).
    ``on_step(step, loss, tokens, lr, seconds)`` is called after each step (the run record's hook).
    A progress bar shows on stderr when it is a terminal (:mod:`scaffold.progress`).
    """
    import torch

    from scaffold.progress import Bar

    device = device if device is not None else next(model.parameters()).device
    model.train()
    if opts.gradient_checkpointing:
        enable_checkpointing(model)
    report = TestReport(parameters=sum(p.numel() for p in model.parameters()), device=str(device))
    bad: list[str] = []
    if opts.fuse_optim_with_backward:
        _, hooks = fused_optimizers(model, opts.lr, bad)
        optimizer = None
    else:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=opts.lr)
        hooks = []
    # float16 with float32 master weights (as run() loads them): autocast and a GradScaler; a model
    # already in float16 (scaffold.run.distributed's) trains as it is
    amp = mixed_precision(opts) and next(model.parameters()).dtype == torch.float32
    autocast = (lambda: torch.autocast(device.type, dtype=torch.float16)) if amp else contextlib.nullcontext
    scaler = torch.amp.GradScaler(device.type) if amp else None
    reset_peak_memory(device)
    tokens, start = 0, time.perf_counter()
    every, since, since_tokens, since_time = log_interval(opts.steps), [], 0, start
    bar = Bar(total=opts.steps, desc="train", unit="step")
    log = bar.around(log)
    try:
        for step in range(1, opts.steps + 1):
            batch = next(data)
            inputs = dict(batch) if isinstance(batch, dict) else {"input_ids": batch}
            inputs = {k: v.to(device) for k, v in inputs.items()}
            labels = inputs.pop("labels", inputs["input_ids"])
            with autocast():
                loss = model(**inputs, labels=labels, use_cache=False).loss
            value = loss.item() if loss_value is None else loss_value(loss)
            if not math.isfinite(value):
                raise TestFailure(f"step {step}: loss is {value}; first bad parameter: {_first_bad(model)}")
            if scaler is not None:  # float16: the scaler skips a step whose scaled gradients overflowed
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                found = first_bad_parameter(model)
                if found:
                    raise TestFailure(f"step {step}: non-finite {found[1]} in parameter {found[0]}")
            else:
                loss.backward()
            if bad:
                raise TestFailure(f"step {step}: non-finite gradient; first bad parameter: {bad[0]}")
            if optimizer is not None and scaler is None:
                found = first_bad_parameter(model)
                if found:
                    raise TestFailure(f"step {step}: non-finite {found[1]} in parameter {found[0]}")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            mask = inputs.get("attention_mask")
            counted = int(mask.sum()) if mask is not None else labels.numel()
            tokens += counted
            report.losses.append(value)
            bar.update(loss=f"{value:.4f}")
            if on_step is not None:
                lr = optimizer.param_groups[0]["lr"] if optimizer is not None else opts.lr
                on_step(step, value, counted, lr, time.perf_counter() - start)
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
        bar.close()
        for h in hooks:
            h.remove()
    report.peak_memory_bytes = peak_memory(device, synchronize=True)
    report.seconds = time.perf_counter() - start
    report.tokens = tokens
    report.tokens_per_second = tokens / report.seconds if report.seconds > 0 else 0.0
    describe = getattr(data, "describe", None)
    report.data = describe() if callable(describe) else ""
    return report


def _first_bad(model) -> str:
    found = first_bad_parameter(model)
    return found[0] if found else "none (the parameters are finite; the input or the computation overflowed)"
