"""``scaffold show``: what constructing a project gives, without building it or allocating memory.

The project (with any overrides) is written as a model directory into a temporary folder, without
weights, and constructed from there through ``AutoConfig`` and ``AutoModelForCausalLM.from_config``
with ``trust_remote_code=True``: exactly the path a user of the built directory takes, so what is
shown is what a build gives. Construction happens on the meta device unless a device is asked
for, so the 7B presets show in well under a second and no memory. A checkpoint is checked against
the model from its headers (strictly: names, shapes, dtypes), or loaded on a real device.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaffold.atomic import make_scratch
from scaffold.build import default_output_dir, read_stamp, stale_inputs, write_model_dir
from scaffold.codegen.diagram import breakdown_lines, parameter_breakdown, project_structure, text_diagram
from scaffold.errors import UsageError, writing
from scaffold.project import Project
from scaffold.spec import manifest


@dataclass
class ShowOptions:
    device: str | None = None  # None: the meta device
    dtype: str | None = None
    attn_implementation: str | None = None
    no_init: bool = False
    checkpoint: Path | None = None
    output_dir: Path | None = None
    flags: tuple[str, ...] = ()  # the override flags given, for the header


def build_status(project: Project, output_dir: Path | None) -> str:
    """Whether the model directory is built and up to date with the (overridden) project."""
    from scaffold.build import describe_changes

    out = output_dir or default_output_dir(project)
    if not out.exists():
        return f"{out}: not built"
    stamp = read_stamp(out)
    if stamp is None:
        return f"{out}: exists but was not written by scaffold build"
    stale = stale_inputs(project, stamp)
    if stale is None:
        return f"{out}: up to date"
    return f"{out}: stale ({describe_changes(*stale)})"


def _human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def describe(project: Project, opts: ShowOptions) -> str:
    """The text ``scaffold show`` prints. A manifest changed since the code was last rendered
    re-renders it first, as ``scaffold build`` does, so what is shown is what a build gives."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from scaffold.build import prepare_code
    from scaffold.build.construct import alias_groups, construct
    from scaffold.devices import resolve_device, resolve_dtype

    prepare_code(project)

    device = resolve_device(opts.device, allow_meta=True) if opts.device else torch.device("meta")
    if opts.no_init and device.type == "meta":
        raise UsageError(
            "--no-init-weights does nothing for `scaffold show` on the meta device (nothing is initialised "
            "there); add --device cpu to construct for real"
        )
    dtype = resolve_dtype(opts.dtype) if opts.dtype else None
    lines: list[str] = []
    m = project.manifest
    tmp = make_scratch("show")
    try:
        model_dir = tmp / "model"
        model_dir.mkdir()
        with writing(model_dir):
            write_model_dir(project, model_dir)
        config_text = (model_dir / "config.json").read_text(encoding="utf-8")
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
        model = construct(
            config,
            device=device,
            dtype=dtype,
            init_weights=not opts.no_init,
            attn_implementation=opts.attn_implementation,
        )
        checkpoint_lines = _checkpoint(model, opts, device, dtype) if opts.checkpoint else []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    p = m["project"]
    lines.append(
        f"project     {p['name']}: blueprint {project.blueprint.name} {project.blueprint.version}, "
        f"preset {p.get('preset', '-')} ({project.path})"
    )
    if opts.flags:
        lines.append(f"overrides   {' '.join(opts.flags)}")
    lines.append(f"model dir   {build_status(project, opts.output_dir)}")
    lines += ["", "== configuration (config.json) ==", config_text.rstrip()]
    lines += ["", "== manifest (resolved) ==", manifest.dumps(m).rstrip()]
    lines += ["", "== tokenizer ==", *_tokenizer_lines(tokenizer, m)]

    params = list(model.parameters())
    total = sum(t.numel() for t in params)
    embedding = model.get_input_embeddings().weight.numel()
    nbytes = sum(t.numel() * t.element_size() for t in params)
    first = params[0]
    init = (
        "none (meta device)"
        if device.type == "meta"
        else ("none (--no-init-weights)" if opts.no_init else "yes")
    )
    lines += [
        "",
        "== model ==",
        f"class       {type(model).__name__} on {first.device}, dtype {str(first.dtype).removeprefix('torch.')}, "
        f"attention {model.config._attn_implementation}, init {init}",
        f"parameters  {total:,} ({_human(total)}); embedding {embedding:,}, other {total - embedding:,}",
        f"weights     {_mib(nbytes)} at {str(first.dtype).removeprefix('torch.')}",
    ]
    tied = list(alias_groups(model))
    for names in tied:
        lines.append(f"tied        {' = '.join(names)}")
    lines += [
        "",
        "== parameters ==",
        *breakdown_lines(parameter_breakdown(list(model.named_parameters())), bool(tied)),
    ]
    lines += ["", "== structure ==", text_diagram(project_structure(m, project.blueprint.structure)).rstrip()]
    lines += ["", "== modules ==", repr(model)]
    if checkpoint_lines:
        lines += ["", "== checkpoint ==", *checkpoint_lines]
    return "\n".join(lines) + "\n"


def _tokenizer_lines(tokenizer: Any, m: manifest.Manifest) -> list[str]:
    tok = m.get("tokenizer", {})
    specials = ", ".join(f"{t}={tokenizer.convert_tokens_to_ids(t)}" for t in tokenizer.all_special_tokens)
    chat = tok.get("chat_template") or "none"
    return [
        f"kind        {tok.get('kind', 'byte')}",
        f"tokens      {len(tokenizer):,} (model vocab_size {m['model']['vocab_size']:,})",
        f"specials    {specials}",
        f"bos/eos/pad {tokenizer.bos_token_id}/{tokenizer.eos_token_id}/{tokenizer.pad_token_id}",
        f"chat        {chat}",
        f"max length  {tokenizer.model_max_length:,}",
    ]


def _checkpoint(model: Any, opts: ShowOptions, device: Any, dtype: Any) -> list[str]:
    from scaffold.build.checkpoint import check_fit, find_checkpoint, load_checkpoint, open_checkpoint

    assert opts.checkpoint is not None
    files = find_checkpoint(opts.checkpoint)
    with open_checkpoint(files) as (infos, _):
        check_fit(files, infos, model, strict=True, dtype=dtype)
        size = sum(p.stat().st_size for p in files.shards)
    action = "fits (checked from the file headers)"
    if device.type != "meta":
        report = load_checkpoint(opts.checkpoint, model, device=device, dtype=dtype)
        action = f"loaded ({_mib(report.bytes)})"
    layout = f"{len(files.shards)} shards + index" if files.index else files.shards[0].name
    return [f"{opts.checkpoint}: {action}: {len(infos)} tensors, {layout}, {_mib(size)} on disk"]
