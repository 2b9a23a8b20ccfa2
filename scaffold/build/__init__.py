"""``scaffold build``: turn a project into a Hugging Face model directory.

The directory holds ``config.json`` (with ``auto_map`` for AutoConfig, AutoModel and
AutoModelForCausalLM), the project's configuration and modeling files, the tokenizer files, the
generation config, the chat template, the model card, and optionally initialised weights. It loads
with ``trust_remote_code=True`` and nothing of scaffold installed.

A build is written into a staging folder beside the target and swapped in only when complete, under
a lock that makes a second build of the same folder wait (see :mod:`scaffold.atomic`). It records what
went into it and what it wrote (``scaffold-build.json``): an up-to-date build is kept (unless its
files were damaged since), a stale one is replaced only with ``force``. ``scaffold verify`` checks a
directory against that record.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaffold import __version__, atomic
from scaffold.arch.hf_config import to_hf
from scaffold.atomic import sha256_file
from scaffold.errors import IntegrityError, ProjectError, UsageError, one_line, writing
from scaffold.files import BUILD_RECORD, DEFAULT_OUTPUT
from scaffold.project import Project
from scaffold.project.tokenizer import TOKENIZER_FILE
from scaffold.spec import manifest


def inputs_record(
    project: Project, save_weights: bool, weights: WeightOptions | None = None
) -> dict[str, Any]:
    """What a build depends on; a build whose record differs is stale."""
    from scaffold.project.new import edited_files
    from scaffold.project.store import read_rendering
    from scaffold.project.tokenizer import project_sources

    sources = [
        project.file("modeling_file"),
        project.file("configuration_file"),
        project.path / TOKENIZER_FILE,
    ]
    sources += [p for p in (project.path / "README.md",) if p.is_file()]
    sources += project_sources(project.path, project.manifest.get("tokenizer", {}))
    return {
        "scaffold_version": __version__,
        "blueprint": project.blueprint.name,
        "blueprint_version": project.blueprint.version,
        # [test] only steers `scaffold test`; it does not change what is built
        "manifest": manifest.fingerprint({k: v for k, v in project.manifest.items() if k != "test"}),
        "sources": {p.name: sha256_file(p) for p in sources if p.is_file()},
        "weights": weights.record() if weights is not None else save_weights,
        # generated files the user edited (their code is what is built), against the last rendering
        "edited": [n for n in edited_files(project.path) if n != manifest.MANIFEST_NAME]
        if read_rendering(project.path) is not None
        else None,
    }


def read_stamp(output_dir: Path) -> dict[str, Any] | None:
    """The build record of ``output_dir``, or None when it is missing or not a record."""
    try:
        stamp = json.loads((output_dir / BUILD_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested too deeply
        return None
    if not isinstance(stamp, dict) or not isinstance(stamp.get("inputs"), dict):
        return None
    return stamp


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """What differs between two input records, in words."""
    changes = []
    for key in ("scaffold_version", "blueprint_version", "manifest", "weights"):
        if old.get(key) != new.get(key):
            changes.append(f"{key.replace('_', ' ')} {old.get(key)!s} -> {new.get(key)!s}")
    old_src, new_src = old.get("sources", {}), new.get("sources", {})
    changed = sorted(k for k in set(old_src) | set(new_src) if old_src.get(k) != new_src.get(k))
    if changed:
        changes.append("changed sources: " + ", ".join(changed))
    return "; ".join(changes) or "unknown changes"


@dataclass
class WeightOptions:
    """How ``build`` makes the weights it saves: loaded from a checkpoint and/or constructed on a
    device, in a dtype, without init (the command line's --load-from-checkpoint, --device, --dtype,
    --no-init-weights)."""

    checkpoint: Path | None = None
    device: str | None = None
    dtype: str | None = None
    no_init: bool = False

    def record(self) -> dict[str, Any]:
        """What the saved weights depend on (the checkpoint by file sizes and times, not contents)."""
        out: dict[str, Any] = {"dtype": self.dtype}
        if self.checkpoint is not None:
            from scaffold.build.checkpoint import find_checkpoint

            files = find_checkpoint(self.checkpoint)
            paths = [files.index, *files.shards] if files.index else files.shards
            stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
            out["checkpoint"] = str(Path(self.checkpoint).resolve())
            out["checkpoint_files"] = hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]
        return out


@dataclass
class BuildResult:
    output_dir: Path
    built: bool  # False when an up-to-date build was kept
    message: str


def default_output_dir(project: Project) -> Path:
    return project.path / DEFAULT_OUTPUT


def build(
    project: Project,
    output_dir: str | Path | None = None,
    *,
    force: bool = False,
    save_weights: bool = False,
    weights: WeightOptions | None = None,
) -> BuildResult:
    """Write the model directory of ``project``; see the module docstring for the rules.

    ``weights`` (implies saving weights) says how they are made: see :class:`WeightOptions`. A
    manifest changed since the project's code was last rendered re-renders it first, merged with the
    user's edits (:func:`scaffold.project.update.rerender_if_changed`); conflict markers left in the code stop
    the build (exit 2) naming file and line.
    """
    out = Path(output_dir) if output_dir is not None else default_output_dir(project)
    option = "--output-dir" if output_dir is not None else ""
    atomic.check_replaceable(out, protect=(project.path,), option=option, contents=False)
    note = prepare(project)
    return _build_prepared(
        project, out, note, force=force, save_weights=save_weights, weights=weights, option=option
    )


def _build_prepared(
    project: Project,
    out: Path,
    note: str | None,
    *,
    force: bool,
    save_weights: bool = False,
    weights: WeightOptions | None = None,
    option: str = "",
) -> BuildResult:
    """:func:`build` once the target is known to be replaceable and the project is prepared."""
    record = inputs_record(project, save_weights, weights)
    with atomic.locked(out):  # a second build of the same folder waits here
        atomic.sweep(out)  # what an interrupted build left beside the folder
        result = _build_locked(
            project, out, record, force=force, save_weights=save_weights, weights=weights, option=option
        )
    if note:
        result.message = f"{note}\n{result.message}"
    return result


def _build_locked(
    project: Project,
    out: Path,
    record: dict[str, Any],
    *,
    force: bool,
    save_weights: bool,
    weights: WeightOptions | None,
    option: str = "",
) -> BuildResult:
    keep, changed = None, []
    if out.exists():
        stamp = read_stamp(out)
        if stamp is not None and stamp.get("inputs") == record:
            damage = _damage(out, stamp)
            if damage is None:
                return BuildResult(out, False, f"up to date, kept: {out}")
            if not force:
                raise damage
        # only a folder scaffold wrote (or an empty one) is ever replaced, with or without --force
        atomic.check_replaceable(out, protect=(project.path,), option=option)
        if stamp is None and any(out.iterdir()) and not force:
            raise ProjectError(f"its {BUILD_RECORD} has no inputs record; pass --force to rebuild", path=out)
        if stamp is not None and stamp.get("inputs") != record and not force:
            raise ProjectError(
                f"stale build ({describe_changes(stamp.get('inputs', {}), record)}); "
                "pass --force to rebuild, or delete the folder",
                path=out,
            )
        changed = changed_since_built(out)
        if changed:  # trained weights saved into the build (or any file changed): never replaced, kept aside
            from scaffold.project.living import backup_path

            keep = backup_path(out)
    staging = atomic.make_staging(out, "build")
    try:
        with writing(staging):
            write_model_dir(project, staging, save_weights=save_weights, weights=weights)
            atomic.fault_point("build-written")
            stamp = {"inputs": record, "files": record_files(staging)}
            (staging / BUILD_RECORD).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
            atomic.apply_umask(staging)
            atomic.fsync_tree(staging)
        atomic.fault_point("build-staged")
        atomic.swap_in(staging, out, keep_old=keep)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    message = f"built {out}"
    if keep is not None:
        listed = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        message = (
            f"kept the previous build as {keep}: {listed} changed since scaffold wrote "
            f"{'them' if len(changed) > 1 else 'it'} (trained weights?)\n{message}"
        )
    return BuildResult(out, True, message)


def changed_since_built(out: Path) -> list[str]:
    """The files of the model directory ``out`` that its build record lists and that hold something else
    now (weights saved by training with ``save_pretrained``, a config edited by hand): what a rebuild
    must not replace without keeping them. Files the record does not list are refused before this
    (:func:`scaffold.atomic.check_replaceable`)."""
    try:
        files = json.loads((out / BUILD_RECORD).read_text(encoding="utf-8")).get("files")
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(files, dict):
        return []
    changed = []
    for name, entry in sorted(files.items()):
        path = out / name
        if not isinstance(entry, dict) or ".." in Path(name).parts or Path(name).is_absolute():
            continue  # verify names such entries; nothing outside the folder is read
        if path.is_symlink() or not path.is_file():
            continue
        if path.stat().st_size != entry.get("size") or sha256_file(path) != entry.get("sha256"):
            changed.append(name)
    return changed


def prepare(project: Project) -> str | None:
    """Bring the project itself up to date before anything is built from it (the first step of every
    build): its code (:func:`prepare_code`), then its tokenizer, remade only if its inputs changed since
    it was made (an unchanged one is never retrained). Returns a line saying what was remade, or None."""
    from scaffold.project.tokenizer import ensure_project_tokenizer

    prepare_code(project)
    return ensure_project_tokenizer(project.path, project.manifest)


def prepare_code(project: Project) -> None:
    """The project's code as the build uses it: re-rendered and merged if the manifest changed since
    its last rendering, and free of conflict markers (else a usage error naming file and line)."""
    from scaffold.project.living import rerender_if_changed
    from scaffold.project.merge import check_no_conflicts
    from scaffold.project.store import code_files

    if rerender_if_changed(project):
        project.__dict__.pop("code", None)  # read again: the files changed
    check_no_conflicts(code_files(project.path))
    check_code(project)


def check_code(project: Project) -> None:
    """The project's code files parse, and import at their top level only modules that are installed
    (as transformers requires of remote code): else a usage error naming the file and line, before
    anything is built from them. Nothing is executed here."""
    import ast
    import importlib.util

    for name, text in project.code.items():
        path = project.path / name
        try:
            tree = ast.parse(text, filename=str(path))
        except (SyntaxError, ValueError) as err:  # ValueError: NUL bytes, on older Pythons
            line = getattr(err, "lineno", None) or text.count("\n", 0, max(text.find("\0"), 0)) + 1
            msg = err.msg if isinstance(err, SyntaxError) else one_line(err)
            raise UsageError(
                f"{msg} (a Python syntax error in the project's code: fix the file)", path=f"{path}:{line}"
            ) from None
        for node in tree.body:
            modules = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                modules = [node.module]
            for module in modules:
                top = module.split(".")[0]
                try:
                    found = importlib.util.find_spec(top) is not None
                except (ImportError, ValueError):
                    found = False
                if not found:
                    raise UsageError(
                        f"imports {module}, which is not installed here (install it, or remove the import)",
                        path=f"{path}:{node.lineno}",
                    )


def stale_inputs(project: Project, stamp: Mapping[str, Any]) -> tuple[dict, dict] | None:
    """The inputs a build was made from and the project's now, when they differ (a stale build), else
    None. Whether weights were saved is the build's choice, not the project's, so it is not compared."""
    old = dict(stamp.get("inputs") or {})
    new = inputs_record(project, bool(old.get("weights")))
    old.pop("weights", None)
    new.pop("weights", None)
    return None if old == new else (old, new)


def build_for_test(
    project: Project, output_dir: str | Path | None = None, *, force: bool = False
) -> BuildResult:
    """The build ``scaffold test`` runs on: an existing build that differs only in how its weights were
    made is kept as it is (its weights are what gets tested); anything else builds as usual (``force``:
    a stale or damaged build is rebuilt, as ``scaffold build --force`` does)."""
    out = Path(output_dir) if output_dir is not None else default_output_dir(project)
    option = "--output-dir" if output_dir is not None else ""
    atomic.check_replaceable(out, protect=(project.path,), option=option, contents=False)
    note = prepare(project)  # first: a tokenizer remade here makes the build below stale, as it should
    stamp = read_stamp(out) if out.is_dir() else None
    if stamp is not None:
        if stale_inputs(project, stamp) is None:
            with atomic.locked(out):
                damage = _damage(out, stamp)
            if damage is None:
                return BuildResult(out, False, f"up to date, kept: {out}")
            if not force:
                raise damage
    return _build_prepared(project, out, note, force=force, option=option)


def _damage(out: Path, stamp: Mapping[str, Any]) -> IntegrityError | None:
    """The quick integrity check of an up-to-date build (checksums of small files only): its first problem, as an error."""
    from scaffold.build.verify import check_model_dir

    damage = check_model_dir(out, stamp, deep=False)
    if not damage:
        return None
    file, problem = damage[0]
    more = f" (and {len(damage) - 1} more problems)" if len(damage) > 1 else ""
    return IntegrityError(
        f"{problem}{more}; the build was damaged after it was written: pass --force to rebuild, "
        f"`scaffold verify {out}` lists every problem",
        path=file,
    )


def record_files(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file under ``folder``, by relative path: what a build wrote."""
    return {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != BUILD_RECORD
    }


def import_config_class(project: Project):
    """The project's configuration class, imported from its text (it imports only transformers)."""
    import types

    path = project.file("configuration_file")
    text = project.code[path.name]
    name = f"_scaffold_config_{hashlib.sha256((str(path.resolve()) + text).encode()).hexdigest()[:12]}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    try:
        exec(compile(text, str(path), "exec"), module.__dict__)
    except Exception as err:  # the user's own code raised at import: name the file and line
        raise code_error(err, path) from None
    finally:
        sys.modules.pop(name, None)
    cls = getattr(module, project.blueprint.meta["config_class"], None)
    if cls is None:
        raise UsageError(
            f"defines no class {project.blueprint.meta['config_class']} (the blueprint's config_class)",
            path=path,
        )
    return cls


def code_error(err: BaseException, path: str | Path) -> UsageError:
    """An exception raised by the project's code file ``path`` as a usage error naming the file and the
    line of that file it was raised from (the deepest such frame)."""
    line = getattr(err, "lineno", None) if isinstance(err, SyntaxError) else None
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == str(path):
            line = tb.tb_lineno
        tb = tb.tb_next
    where = f"{path}:{line}" if line else str(path)
    return UsageError(f"the project's code raised {type(err).__name__}: {one_line(err)}", path=where)


def make_config(project: Project, tokenizer) -> Any:
    """The model configuration: the manifest's [model] table plus the tokenizer's special ids."""
    meta = project.blueprint.meta
    config_cls = import_config_class(project)
    model = to_hf(project.architecture, project.manifest["model"])
    original = (model.get("rope_parameters") or {}).get("original_max_position_embeddings")
    if original is not None and hasattr(config_cls, "original_max_position_embeddings"):
        # Phi-3's config keeps it at the top level too, and transformers copies that one into the table
        model["original_max_position_embeddings"] = original
    if model.get("sliding_window") is not None and hasattr(config_cls, "use_sliding_window"):
        # Qwen's switches: the manifest's window is on, and without layer_types every layer slides
        model["use_sliding_window"] = True
        model.setdefault("max_window_layers", 0)
    config = config_cls(
        **model,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    mod = Path(meta["modeling_file"]).stem
    cfg_mod = Path(meta["configuration_file"]).stem
    base, causal_lm = meta.get("base_model_class", meta["causal_lm_class"]), meta["causal_lm_class"]
    a = project.architecture
    prefix = meta.get("class_prefix")
    code = project.code.get(meta["modeling_file"], "")
    if prefix and f"class {a.causal_lm_class}(" in code:
        # the shared template: the classes are named by the architecture
        base, causal_lm, prefix = a.model_class, a.causal_lm_class, a.class_prefix
    elif prefix and a.class_prefix != prefix:
        print(
            f"warning: {meta['modeling_file']} names its classes {prefix}*, as transformers' {a.differs_from} "
            f"is named, but this structure differs from it ({', '.join(a.differences)}): scaffold now names "
            f"them {a.class_prefix}*, so that no tool builds transformers' class in their place; rename them, "
            "or make the project again with `scaffold new NAME --force --backup`",
            file=sys.stderr,
        )
    config.auto_map = {
        "AutoConfig": f"{cfg_mod}.{meta['config_class']}",
        "AutoModel": f"{mod}.{base}",
        "AutoModelForCausalLM": f"{mod}.{causal_lm}",
    }
    if prefix:  # the shared template renders these heads for every family
        for head in ("SequenceClassification", "TokenClassification"):
            config.auto_map[f"AutoModelFor{head}"] = f"{mod}.{prefix}For{head}"
    # transformers' own class name only when this is its network (a different structure has names
    # no library owns, so no tool builds transformers' class from this directory)
    config.architectures = [causal_lm]
    return config


def stamped_code(code: Mapping[str, str], configuration_file: str) -> dict[str, str]:
    """The code files as a build writes them: the configuration file ends with the sha256 of each other
    code file beside it.

    In a running Python process, transformers reuses a configuration class while its file's bytes (and
    the folder's name) are unchanged, and keeps the model class it first loaded registered for that
    class, taking it for local code: a model directory rebuilt with a changed modeling file would load
    the old model class again. With the line, changed code is a changed configuration module, so the
    next ``from_pretrained`` imports the new code (a notebook, the Python API, ``CliRunner`` tests).
    """
    lines = [
        f"# built with {name} sha256 {hashlib.sha256(text.encode('utf-8')).hexdigest()}"
        for name, text in sorted(code.items())
        if name != configuration_file
    ]
    note = "# (a new model file makes a new configuration class: a running Python process loads the new code)"
    out = dict(code)
    out[configuration_file] = (
        code[configuration_file].rstrip("\n") + "\n\n" + "\n".join([*lines, note]) + "\n"
    )
    return out


def write_model_dir(
    project: Project, out: Path, *, save_weights: bool = False, weights: WeightOptions | None = None
) -> None:
    """Write every file of the model directory into ``out`` (an empty folder)."""
    from transformers import GenerationConfig

    from scaffold.project.tokenizer import to_hf

    tok_spec = project.manifest.get("tokenizer", {})
    tokenizer = to_hf(project.path / TOKENIZER_FILE, tok_spec, project.path)
    check_vocab(project, tokenizer)
    config = make_config(project, tokenizer)
    config.save_pretrained(out)
    for name, text in stamped_code(project.code, project.blueprint.meta["configuration_file"]).items():
        (out / name).write_text(text, encoding="utf-8")
    tokenizer.save_pretrained(out)
    special = {k: v for k, v in tokenizer.special_tokens_map.items()}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    gen = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **project.manifest.get("generation", {}),
    )
    gen.save_pretrained(out)
    readme = project.path / "README.md"
    card = model_card(project)
    if card is not None:
        (out / "README.md").write_text(card, encoding="utf-8")
    else:  # the project's card, never through a link out of the project, never a FIFO
        text = atomic.read_bytes_inside(readme, project.path, missing_ok=True)
        if text is not None:
            (out / "README.md").write_bytes(text)
    if weights is not None:
        save_weights_with(out, project, weights)
    elif save_weights:
        save_initial_weights(out, project)


def check_vocab(project: Project, tokenizer) -> None:
    """A tokenizer whose ids do not fit the model's embedding is caught here, not on the device."""
    from scaffold.project.tokenizer import check_fits

    check_fits(tokenizer, project.manifest["model"]["vocab_size"], path=project.path / manifest.MANIFEST_NAME)


def save_initial_weights(out: Path, project: Project) -> None:
    """Initialise the model from the directory just written and save its weights as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM

    seed = project.manifest.get("test", {}).get("seed", 0)
    torch.manual_seed(seed)
    config = _load_config(out)
    check_weights_memory(config, torch.device("cpu"), getattr(config, "dtype", None) or torch.float32)
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=True)
    model.save_pretrained(out)


def check_weights_memory(config: Any, device: Any, dtype: Any) -> None:
    """Refuse (DeviceError, exit 2) weights that cannot fit before any is allocated: the parameters,
    counted on the meta device, in ``dtype``, twice (the model, and the bytes safetensors serializes),
    against the memory ``device`` has available."""
    import torch

    from scaffold.build.construct import construct
    from scaffold.devices import available_memory
    from scaffold.errors import DeviceError

    meta = construct(config, device="meta", init_weights=False)
    n_params = sum(p.numel() for p in meta.parameters())
    del meta
    width = torch.empty((), dtype=dtype if isinstance(dtype, torch.dtype) else torch.float32).element_size()
    need = 2 * n_params * width
    free = available_memory(torch.device(device))
    if free is not None and need > free:
        raise DeviceError(
            f"{n_params:,} parameters need about {need / 2**30:,.2f} GiB to initialise and save in {dtype}, but "
            f"{device} has {free / 2**30:,.2f} GiB available; use smaller sizes, or build without --save-weights"
        )


def _load_config(out: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(out, trust_remote_code=True)


def save_weights_with(out: Path, project: Project, opts: WeightOptions) -> None:
    """Construct the model of the directory just written as ``opts`` says, load the checkpoint
    into it (strictly) if one is given, and save its weights there; config.json records the dtype."""
    import torch

    from scaffold.build.checkpoint import load_checkpoint, save_checkpoint
    from scaffold.build.construct import construct
    from scaffold.devices import resolve_device, resolve_dtype

    device = resolve_device(opts.device or "cpu")
    dtype = resolve_dtype(opts.dtype) if opts.dtype else None
    torch.manual_seed(project.manifest.get("test", {}).get("seed", 0))
    check_weights_memory(_load_config(out), device, dtype or torch.float32)
    model = construct(out, device=device, dtype=dtype, init_weights=not opts.no_init)
    if opts.checkpoint is not None:
        load_checkpoint(opts.checkpoint, model, device=device, dtype=dtype)
    save_checkpoint(out, model)
    if dtype is not None:
        path = out / "config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        config["dtype"] = str(dtype).removeprefix("torch.")
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def model_card(project: Project) -> str | None:
    """The model card re-rendered from the blueprint's README template when the build has
    overrides (so that it describes what was built, under --model-name's name); None otherwise."""
    if not any(section != "test" and values for section, values in (project.overrides or {}).items()):
        return None
    return project.rendering.get("README.md")
