"""Constructing models fast: no init, a default dtype, the meta device, and materialising later.

``no_init_weights()`` makes construction skip every weight init, so a model whose weights will come
from a checkpoint is built in a fraction of the time::

    with scaffold.no_init_weights(), scaffold.default_dtype(torch.bfloat16):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=True)
    load_checkpoint(model_dir, model, device="cuda:0")

"No init" means none at all, wherever the init function was bound:

- the functions of ``torch.nn.init`` and ``transformers.initialization`` become no-ops by swapping
  their code objects, so a module that did ``from torch.nn.init import normal_`` at import time
  (before the context was entered) calls the no-op too;
- ``reset_parameters`` / ``_reset_parameters`` of every ``nn.Module`` class, those defined while
  the context is open included, do nothing (they may init with tensor methods, e.g. ``.uniform_()``);
- transformers' ``PreTrainedModel.initialize_weights`` (what ``post_init`` runs) does nothing; weight
  tying still happens, so a tied model stays tied.

The weights then hold whatever memory ``torch.empty`` returned: load a checkpoint
(:func:`scaffold.build.checkpoint.load_checkpoint`) or call :func:`initialize_weights` before use.
The patches are process-wide while the context is open (as transformers' own ``no_init_weights``),
so do not construct models in other threads meanwhile that expect init.

The meta device constructs without memory at all: :func:`construct` with ``device="meta"``, then
:func:`materialize` allocates the tensors on a real device (``to_empty``), re-ties shared weights,
recomputes non-persistent buffers and runs the init.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scaffold.devices import to_dtype
from scaffold.errors import DeviceError

_lock = threading.RLock()
_depth = 0
_undo: list[tuple[Any, str, Any]] = []  # (object, attribute, original value) restored on the last exit


@contextmanager
def default_dtype(dtype: torch.dtype | str) -> Iterator[torch.dtype]:
    """Make ``dtype`` torch's default floating dtype inside the block (restored on exit)."""
    dtype = to_dtype(dtype)
    if not dtype.is_floating_point:
        raise DeviceError(f"default dtype must be a floating dtype, got {dtype}")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield dtype
    finally:
        torch.set_default_dtype(previous)


def _skip_init(tensor=None, *args, **kwargs):
    return tensor


def _skip_reset(self, *args, **kwargs):
    return None


def _init_functions() -> list[tuple[Any, str, Any]]:
    """(module, name, function) of every in-place init of torch.nn.init and transformers.initialization."""
    import torch.nn.init as torch_init

    modules: list[Any] = [torch_init]
    try:
        import transformers.initialization as hf_init

        modules.append(hf_init)
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    found = []
    for mod in modules:
        for name, fn in vars(mod).items():
            if (
                callable(fn)
                and hasattr(fn, "__code__")
                and getattr(fn, "__module__", None) == mod.__name__
                and ((name.endswith("_") and not name.startswith("__")) or name.startswith("_no_grad_"))
            ):
                found.append((mod, name, fn))
    return found


def _all_subclasses(cls: type) -> list[type]:
    out, stack, seen = [], [cls], {cls}
    while stack:
        for sub in type.__subclasses__(stack.pop()):
            if sub not in seen:
                seen.add(sub)
                out.append(sub)
                stack.append(sub)
    return out


def _patch(obj: Any, attr: str, value: Any) -> None:
    # a class attribute may be inherited (nothing of its own to restore); a function's are its own
    original = obj.__dict__.get(attr, _MISSING) if isinstance(obj, type) else getattr(obj, attr)
    _undo.append((obj, attr, original))
    setattr(obj, attr, value)


_MISSING = object()


def _patch_module(mod: Any, name: str, value: Any) -> None:
    _undo.append((mod, name, getattr(mod, name)))
    setattr(mod, name, value)


RESET_METHODS = ("reset_parameters", "_reset_parameters")


def _patch_reset(cls: type) -> None:
    for attr in RESET_METHODS:
        if attr in cls.__dict__ and cls.__dict__[attr] is not _skip_reset:
            _patch(cls, attr, _skip_reset)


def _on_new_module_class(cls, **kwargs) -> None:
    # nn.Module subclasses defined while the context is open (e.g. remote code imported by
    # from_config) get their reset methods switched off as well
    _patch_reset(cls)


def _enter_no_init() -> None:
    for mod, name, fn in _init_functions():
        if fn.__closure__ is None:
            # every reference to the function, wherever it was bound, now runs the no-op
            _patch(fn, "__code__", _skip_init.__code__)
            _patch(fn, "__defaults__", _skip_init.__defaults__)
            _patch(fn, "__kwdefaults__", None)
        else:  # a wrapped function's code cannot be swapped: replace the module's name at least
            _patch_module(mod, name, _skip_init)
    for cls in [nn.Module, *_all_subclasses(nn.Module)]:
        _patch_reset(cls)
    _patch(nn.Module, "__init_subclass__", classmethod(_on_new_module_class))
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover
        return
    _patch(PreTrainedModel, "initialize_weights", _skip_reset)


def _exit_no_init() -> None:
    while _undo:
        obj, attr, value = _undo.pop()
        if value is _MISSING:
            delattr(obj, attr)
        else:
            setattr(obj, attr, value)


@contextmanager
def no_init_weights() -> Iterator[None]:
    """Construct models inside this block without running any weight init (see the module docs)."""
    global _depth
    with _lock:
        if _depth == 0:
            try:
                _enter_no_init()
            except BaseException:
                _exit_no_init()
                raise
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _exit_no_init()


def init_is_disabled() -> bool:
    """True while a :func:`no_init_weights` block is open."""
    return _depth > 0


# ---------------------------------------------------------------------------------------------
# Shared weights, non-persistent buffers, materialising and explicit init
# ---------------------------------------------------------------------------------------------


def alias_groups(model: nn.Module) -> list[list[str]]:
    """Names (as in ``state_dict``) that refer to one tensor, e.g. a tied embedding and output head.

    Each group lists its names with the one a checkpoint stores first: for a transformers model
    the source of its tied-weights mapping (``model.embed_tokens.weight``), else the first name.
    Works on the meta device too (groups by tensor identity, then by storage).
    """
    by_key: dict[Any, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if t is None:
            continue
        key: Any = id(t)
        if not t.is_meta and t.numel() and t.untyped_storage().data_ptr():
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        by_key.setdefault(key, []).append(name)
    targets = set(getattr(model, "all_tied_weights_keys", None) or {})
    groups = []
    for names in by_key.values():
        if len(names) > 1:
            names.sort(key=lambda n: n in targets)  # stable: sources first
            groups.append(names)
    return groups


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    mod_name, _, attr = name.rpartition(".")
    return (model.get_submodule(mod_name) if mod_name else model), attr


def get_tensor(model: nn.Module, name: str) -> torch.Tensor:
    """The parameter or buffer called ``name`` (a state_dict key)."""
    module, attr = _owner(model, name)
    if attr in module._parameters:
        return module._parameters[attr]
    return module._buffers[attr]


def retie(model: nn.Module, groups: list[list[str]]) -> None:
    """Make every name of each group refer to the group's first tensor again."""
    for names in groups:
        first = get_tensor(model, names[0])
        for name in names[1:]:
            module, attr = _owner(model, name)
            slot = module._parameters if attr in module._parameters else module._buffers
            slot[attr] = first


def non_persistent_buffers(model: nn.Module) -> list[tuple[nn.Module, str]]:
    out = []
    for module in model.modules():
        for attr in getattr(module, "_non_persistent_buffers_set", ()):
            if module._buffers.get(attr) is not None:
                out.append((module, attr))
    return out


def to_empty(model: nn.Module, device: torch.device | str) -> nn.Module:
    """``model.to_empty(device)`` that keeps shared weights shared and non-persistent buffers right.

    Non-persistent buffers (RoPE tables and the like) are recomputed: real ones are carried over,
    and those on the meta device are rebuilt by the model's own init for their module
    (``_init_weights``, with that module's parameters marked as already initialised).
    """
    groups = alias_groups(model)
    kept = {
        (id(m), a): m._buffers[a].detach().to(device, copy=True)
        for m, a in non_persistent_buffers(model)
        if not m._buffers[a].is_meta
    }
    model.to_empty(device=device)
    retie(model, groups)
    rebuild = []
    for module, attr in non_persistent_buffers(model):
        saved = kept.get((id(module), attr))
        if saved is not None:
            with torch.no_grad():
                module._buffers[attr].copy_(saved.to(module._buffers[attr].dtype))
        else:
            rebuild.append(module)
    if rebuild and hasattr(model, "_init_weights"):
        for module in dict.fromkeys(rebuild):  # unique, in order
            _init_module_buffers(model, module)
    return model


def _init_module_buffers(model: nn.Module, module: nn.Module) -> None:
    """Run the model's ``_init_weights`` on ``module`` without touching its parameters."""
    params = list(module.parameters(recurse=False))
    for p in params:
        p._is_hf_initialized = True
    try:
        with torch.no_grad():
            model._init_weights(module)
    finally:
        for p in params:
            del p._is_hf_initialized


def _clear_init_flags(model: nn.Module) -> None:
    for module in model.modules():
        module.__dict__.pop("_is_hf_initialized", None)
    for t in list(model.parameters()) + list(model.buffers()):
        t.__dict__.pop("_is_hf_initialized", None)


def initialize_weights(model: nn.Module) -> nn.Module:
    """Initialise every weight of ``model``: first the torch modules' own ``reset_parameters``, then,
    for a transformers model, its ``_init_weights`` scheme on every module (children before parents,
    each sub-model with its own scheme). Use it after :func:`no_init_weights` or
    :func:`materialize` ``(init=False)``.

    Unlike transformers' ``init_weights``, this calls ``_init_weights`` on modules that hold no
    parameters of their own too (an attention block that initialises its projections, the causal-LM
    wrapper that initialises its head): transformers 5.x skips those for remote code.
    """
    if init_is_disabled():
        raise RuntimeError("initialize_weights() inside a no_init_weights() block would do nothing")
    if any(t.is_meta for t in model.parameters()):
        raise DeviceError("the model is on the meta device; use materialize(model, device) to allocate it")
    with torch.no_grad():
        for module in model.modules():
            for attr in RESET_METHODS:
                reset = getattr(module, attr, None)
                if callable(reset):
                    reset()
                    break
        if hasattr(model, "_init_weights"):
            _clear_init_flags(model)
            _apply_init(model, model)
            if hasattr(model, "tie_weights"):
                model.tie_weights()
    return model


def _apply_init(module: nn.Module, owner: nn.Module) -> None:
    """``owner._init_weights`` on ``module`` and its descendants, children first; a nested model
    with an init scheme of its own takes over for its part (as transformers' smart_apply)."""
    for child in module.children():
        _apply_init(child, child if hasattr(child, "_init_weights") and hasattr(child, "config") else owner)
    owner._init_weights(module)


def materialize(model: nn.Module, device: torch.device | str = "cpu", *, init: bool = True) -> nn.Module:
    """Allocate a model built on the meta device (or under no-init) on ``device``, and init it.

    With ``init=False`` the weights are left uninitialised (for a checkpoint load that follows);
    non-persistent buffers are always recomputed and shared weights stay shared.
    """
    to_empty(model, device)
    if init:
        initialize_weights(model)
    return model


def construct(
    config: Any,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    init_weights: bool = True,
    attn_implementation: str | None = None,
) -> nn.Module:
    """A causal LM from a config (or a model directory) through ``AutoModelForCausalLM.from_config``.

    ``device="meta"`` builds without memory (nothing is initialised; see :func:`materialize`);
    another device constructs there directly. ``init_weights=False`` constructs under
    :func:`no_init_weights`; ``dtype`` is the default dtype during construction.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if isinstance(config, (str, Path)):
        config = AutoConfig.from_pretrained(config, trust_remote_code=True)
    kwargs: dict[str, Any] = {"trust_remote_code": True}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    with ExitStack() as stack:
        if dtype is not None:
            stack.enter_context(default_dtype(dtype))
            kwargs["dtype"] = to_dtype(dtype)
        if device is not None:
            stack.enter_context(torch.device(device))
        if not init_weights:
            stack.enter_context(no_init_weights())
        return AutoModelForCausalLM.from_config(config, **kwargs)
