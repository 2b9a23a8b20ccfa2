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
    from scaffold.build import build, load_project
    from scaffold.render import create_project

    work_dir = Path(work_dir)
    overrides = {"model": dict(model)} if model else None
    project = create_project(
        name, blueprint, projects_dir=work_dir / "projects", preset=preset, overrides=overrides, force=True
    )
    out = work_dir / "models" / name
    build(load_project(project), out, force=True)
    return out
