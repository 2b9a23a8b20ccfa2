"""The model-parts collection: ordinary, unit-tested modules that blueprints compose.

Each part is a top-level class or function in one of the modules here. A blueprint's modeling
template pastes the *source* of the parts it uses (``{{ parts.RMSNorm }}``), so a generated model
directory never imports scaffold. Parts therefore use only ``math``, ``torch``, ``torch.nn as nn``
and ``torch.nn.functional as F`` (plus ``transformers.initialization as init`` where they
initialise), names that every generated modeling file imports at its top, and the few transformers
names a part imports itself (``ALL_ATTENTION_FUNCTIONS``, ``compile_friendly_flex_attention``),
which the modeling templates using that part import too.

The decoder layer, attention and MLP classes are not parts: the shared templates write them, because
their attribute names are each family's parameter names (docs/architecture.md, section 4).

:func:`part_sources` reads the sources without importing torch, so rendering stays fast.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PART_MODULES = (
    "norms",
    "embedding",
    "rotary",
    "sinusoidal",
    "attention",
    "softcap",
    "alibi",
    "activations",
    "deepnet",
    "init",
    "moe",
    "loss",
)


@cache
def part_sources() -> dict[str, str]:
    """Map each part's name to its source text, read from this package's files."""
    here = Path(__file__).parent
    out: dict[str, str] = {}
    for mod in PART_MODULES:
        text = (here / f"{mod}.py").read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.parse(text).body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and not node.name.startswith("_"):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                out[node.name] = "\n".join(lines[start - 1 : node.end_lineno])
    return out
