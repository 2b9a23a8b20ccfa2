"""The package is laid out along the pipeline and imports only run one way:
cli -> run -> build -> project -> codegen -> arch -> spec -> the shared foundation modules."""

from __future__ import annotations

import ast
from pathlib import Path

import scaffold

PKG = Path(scaffold.__file__).resolve().parent
# lowest first; a module may import from its own layer and the layers below
LAYERS = ["foundation", "spec", "arch", "codegen", "project", "build", "run", "cli"]
FOUNDATION = {"errors", "files", "atomic", "devices", "data", "progress", "_blueprints", ""}


def layer_of(module: str) -> str:
    """The layer of ``scaffold.<first>...``."""
    first = module.split(".")[1] if module.count(".") else ""
    return "foundation" if first in FOUNDATION else first


def imports_of(path: Path) -> set[str]:
    """Every scaffold module ``path`` imports, at its top or inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "scaffold":
                out |= {f"scaffold.{a.name}" for a in node.names if a.name != "__version__"}
            elif node.module.startswith("scaffold."):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("scaffold.")}
    return out


def modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def test_every_module_sits_in_a_stage_package():
    top = {p.stem for p in PKG.glob("*.py")} - {"__init__", "__main__"}
    assert top <= FOUNDATION, f"modules outside the stage packages: {sorted(top - FOUNDATION)}"
    assert {p.name for p in PKG.iterdir() if p.is_dir() and not p.name.startswith("_")} >= set(LAYERS[1:])


def test_imports_only_run_downward():
    upward = []
    for name, path in modules().items():
        if name in ("scaffold", "scaffold.__main__"):  # the public API and the entry point reach any stage
            continue
        mine = LAYERS.index(layer_of(name))
        for target in imports_of(path):
            if LAYERS.index(layer_of(target)) > mine:
                upward.append(f"{name} imports {target}")
    assert upward == []


def test_no_import_cycles_between_modules():
    graph = {
        name: {t for t in imports_of(path) if t in modules() and t != name}
        for name, path in modules().items()
    }
    # a package's __init__ importing its own submodules is not a cycle of the layout
    seen, stack, cycles = set(), [], []

    def visit(node: str) -> None:
        if node in stack:
            cycles.append([*stack[stack.index(node) :], node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if not nxt.startswith(node + ".") and not node.startswith(nxt + "."):
                visit(nxt)
        stack.pop()

    for name in sorted(graph):
        visit(name)
    assert cycles == []
