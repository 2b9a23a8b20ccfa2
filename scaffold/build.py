"""``scaffold build``: turn a project into a Hugging Face model directory.

The directory holds ``config.json`` (with ``auto_map`` for AutoConfig, AutoModel and
AutoModelForCausalLM), the project's configuration and modeling files, the tokenizer files, the
generation config, the chat template, the model card, and optionally initialised weights. It loads
with ``trust_remote_code=True`` and nothing of scaffold installed.

A build is written into a staging folder beside the target and swapped in only when complete. It
records what went into it (``scaffold-build.json``): an up-to-date build is kept, a stale one is
replaced only with ``force``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, manifest
from .blueprints import Blueprint
from .blueprints import load as load_blueprint
from .errors import ProjectError
from .render import TOKENIZER_FILE, swap_in

STAMP_FILE = "scaffold-build.json"
DEFAULT_OUTPUT = "model"  # inside the project folder


@dataclass
class Project:
    """A project folder, its blueprint and its manifest resolved against the blueprint's defaults."""

    path: Path
    blueprint: Blueprint
    manifest: manifest.Manifest  # resolved: defaults < file < overrides
    overrides: manifest.Manifest = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.manifest["project"]["name"]

    def file(self, key: str) -> Path:
        return self.path / self.blueprint.meta[key]


def load_project(path: str | Path, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Project:
    """Read and validate a project; ``overrides`` (from the command line) win over the manifest."""
    path = Path(path)
    if not path.is_dir():
        raise ProjectError("no such project folder", path=path)
    mpath = path / manifest.MANIFEST_NAME
    data = manifest.load(mpath)
    spec = data.get("project", {}).get("blueprint")
    if not isinstance(spec, str):
        raise ProjectError("missing; which blueprint made this project?", path=mpath, key="project.blueprint")
    bp = load_blueprint(spec if (Path(spec).is_absolute() or "/" not in spec) else path / spec)
    resolved = manifest.merge(*bp.base_layers(), data, overrides)
    manifest.validate(resolved, model_keys=bp.model_keys, path=mpath)
    project = Project(path=path, blueprint=bp, manifest=resolved, overrides=dict(overrides or {}))
    for key in ("modeling_file", "configuration_file"):
        if not project.file(key).is_file():
            raise ProjectError("missing; re-create the project with `scaffold new --force`", path=project.file(key))
    return project


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def inputs_record(project: Project, save_weights: bool) -> dict[str, Any]:
    """What a build depends on; a build whose record differs is stale."""
    from .tokenizer import project_sources

    sources = [project.file("modeling_file"), project.file("configuration_file"), project.path / TOKENIZER_FILE]
    sources += [p for p in (project.path / "README.md",) if p.is_file()]
    sources += project_sources(project.path, project.manifest.get("tokenizer", {}))
    return {
        "scaffold_version": __version__,
        "blueprint": project.blueprint.name,
        "blueprint_version": project.blueprint.version,
        # [test] only steers `scaffold test`; it does not change what is built
        "manifest": manifest.fingerprint({k: v for k, v in project.manifest.items() if k != "test"}),
        "sources": {p.name: sha256_file(p) for p in sources if p.is_file()},
        "weights": save_weights,
    }


def read_stamp(output_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((output_dir / STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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
) -> BuildResult:
    """Write the model directory of ``project``; see the module docstring for the rules."""
    from .tokenizer import ensure_project_tokenizer

    out = Path(output_dir) if output_dir is not None else default_output_dir(project)
    # the project's tokenizer is remade first if its inputs changed (an unchanged one is never retrained)
    note = ensure_project_tokenizer(project.path, project.manifest)
    noted = f"{note}\n" if note else ""
    record = inputs_record(project, save_weights)
    if out.exists():
        stamp = read_stamp(out)
        if stamp is None:
            if any(out.iterdir()) and not force:
                raise ProjectError(
                    f"exists and was not written by scaffold build ({STAMP_FILE} missing); "
                    "pass --force to replace it",
                    path=out,
                )
        elif stamp.get("inputs") == record:
            return BuildResult(out, False, f"{noted}up to date, kept: {out}")
        elif not force:
            raise ProjectError(
                f"stale build ({describe_changes(stamp.get('inputs', {}), record)}); "
                "pass --force to rebuild, or delete the folder",
                path=out,
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    try:
        write_model_dir(project, staging, save_weights=save_weights)
        files = {
            p.relative_to(staging).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(staging.rglob("*"))
            if p.is_file()
        }
        stamp = {"inputs": record, "files": files}
        (staging / STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
        _apply_umask(staging)
        swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BuildResult(out, True, f"{noted}built {out}")


def _apply_umask(folder: Path) -> None:
    """Make every file readable as the user's umask says (some writers create files 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for p in folder.rglob("*"):
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def import_config_class(project: Project):
    """The project's configuration class, imported from its file (it imports only transformers)."""
    path = project.file("configuration_file")
    name = f"_scaffold_config_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return getattr(module, project.blueprint.meta["config_class"])


def make_config(project: Project, tokenizer) -> Any:
    """The model configuration: the manifest's [model] table plus the tokenizer's special ids."""
    meta = project.blueprint.meta
    config_cls = import_config_class(project)
    model = dict(project.manifest["model"])
    if "rope_theta" in model:  # transformers 5.x keeps RoPE settings in one rope_parameters table
        scaling = dict(model.pop("rope_scaling", None) or {})
        kind = scaling.pop("rope_type", scaling.pop("type", "default"))
        model["rope_parameters"] = {"rope_type": kind, "rope_theta": float(model.pop("rope_theta")), **scaling}
    config = config_cls(
        **model,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    mod = Path(meta["modeling_file"]).stem
    cfg_mod = Path(meta["configuration_file"]).stem
    config.auto_map = {
        "AutoConfig": f"{cfg_mod}.{meta['config_class']}",
        "AutoModel": f"{mod}.{meta.get('base_model_class', meta['causal_lm_class'])}",
        "AutoModelForCausalLM": f"{mod}.{meta['causal_lm_class']}",
    }
    config.architectures = [meta["causal_lm_class"]]
    return config


def write_model_dir(project: Project, out: Path, *, save_weights: bool = False) -> None:
    """Write every file of the model directory into ``out`` (an empty folder)."""
    from transformers import GenerationConfig

    from .tokenizer import to_hf

    tok_spec = project.manifest.get("tokenizer", {})
    tokenizer = to_hf(project.path / TOKENIZER_FILE, tok_spec, project.path)
    check_vocab(project, tokenizer)
    config = make_config(project, tokenizer)
    config.save_pretrained(out)
    for key in ("configuration_file", "modeling_file"):
        shutil.copy2(project.file(key), out / project.file(key).name)
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
    if readme.is_file():
        shutil.copy2(readme, out / "README.md")
    if save_weights:
        save_initial_weights(out, project)


def check_vocab(project: Project, tokenizer) -> None:
    """A tokenizer whose ids do not fit the model's embedding is caught here, not on the device."""
    from .tokenizer import check_fits

    check_fits(tokenizer, project.manifest["model"]["vocab_size"], path=project.path / manifest.MANIFEST_NAME)


def save_initial_weights(out: Path, project: Project) -> None:
    """Initialise the model from the directory just written and save its weights as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM

    seed = project.manifest.get("test", {}).get("seed", 0)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_load_config(out), trust_remote_code=True)
    model.save_pretrained(out)


def _load_config(out: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(out, trust_remote_code=True)
