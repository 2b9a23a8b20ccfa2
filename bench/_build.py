"""Model directories for the benchmarks, made with scaffold's own API (new + build) as a user would."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmark this checkout's scaffold, not some installed copy
    sys.path.insert(0, str(ROOT))


def build_model_dir(
    work_dir: str | Path,
    name: str,
    preset: str,
    model: Mapping[str, Any] | None = None,
    blueprint: str = "llama",
) -> Path:
    """``scaffold new NAME --from BLUEPRINT --preset PRESET --set model.*`` then ``scaffold build``
    into ``work_dir/models/NAME`` (no weights); returns the model directory."""
    from scaffold.build import build
    from scaffold.project import load_project
    from scaffold.project.new import create_project

    work_dir = Path(work_dir)
    overrides = {"model": dict(model)} if model else None
    project = create_project(
        name, blueprint, projects_dir=work_dir / "projects", preset=preset, overrides=overrides, force=True
    )
    out = work_dir / "models" / name
    build(load_project(project), out, force=True)
    return out


def build_shapes(out_dir: Path, shapes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Build each of ``shapes`` (name -> preset, model, batch, seq) into ``out_dir/NAME`` (replacing an
    older one); returns the plan the GPU scripts run, ``{"shapes": {NAME: {dir, batch, seq}}}``."""
    import shutil

    plan: dict[str, Any] = {"shapes": {}}
    for name, shape in shapes.items():
        model_dir = build_model_dir(out_dir / ".work", name, shape["preset"], shape["model"])
        target = out_dir / name
        if target.exists():
            shutil.rmtree(target)
        model_dir.rename(target)
        plan["shapes"][name] = {"dir": name, "batch": shape["batch"], "seq": shape["seq"]}
        print(f"built {target}")
    return plan
