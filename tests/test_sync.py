"""The shipped projects are exactly what their blueprints render today: no drift, no hand edits."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest

from scaffold.project.new import rerender
from scaffold.run.runs import PROJECT_OUTPUTS
from tests.conftest import ROOT

SHIPPED = sorted(p.parent for p in (ROOT / "projects").glob("*/scaffold.toml"))


def tree(folder: Path) -> set[str]:
    """The project's own files: not the outputs commands write into it (model/, runs/)."""
    return {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder).parts[0] not in PROJECT_OUTPUTS
    }


def test_projects_are_shipped():
    assert {p.name for p in SHIPPED} >= {"llama_4m"}


@pytest.mark.parametrize("project", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_project_matches_its_blueprint(project, tmp_path):
    fresh = rerender(project, tmp_path / project.name)
    assert tree(fresh) == tree(project)
    differing = [f for f in sorted(tree(project)) if not filecmp.cmp(project / f, fresh / f, shallow=False)]
    assert not differing, (
        f"re-render {project.name} with `scaffold new {project.name} --from ... --force`: {differing}"
    )


def test_a_hand_edit_is_caught(tmp_path):
    import shutil

    project = tmp_path / "llama_4m"
    shutil.copytree(ROOT / "projects" / "llama_4m", project, ignore=shutil.ignore_patterns("model"))
    modeling = project / "modeling_llama.py"
    modeling.write_text(modeling.read_text().replace("x = x + self.mlp", "x = x - self.mlp"))
    fresh = rerender(project, tmp_path / "fresh")
    assert not filecmp.cmp(modeling, fresh / "modeling_llama.py", shallow=False)
