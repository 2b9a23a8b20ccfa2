"""The one Jinja environment scaffold renders with outside Copier.

Copier renders ``scaffold new`` in its own sandbox. Everything else scaffold renders from a blueprint
(the model card that ``build``, ``show`` and ``test`` re-render for a variant) goes through
:func:`environment`: jinja2's ``SandboxedEnvironment``, so a template cannot reach Python internals
(``cycler.__init__.__globals__``, ``''.__class__.__mro__``) or call unsafe methods, and
``StrictUndefined``, so a misspelt variable is an error instead of an empty string.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def environment():
    """A sandboxed, strict Jinja environment (no autoescape: scaffold renders code and Markdown)."""
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
    )


def render_file(template: Path, data: Mapping[str, Any]) -> str:
    """Render the template file ``template`` with ``data`` in the sandbox.

    A template that reaches outside the sandbox, names an undefined variable or does not parse is a
    :class:`~scaffold.errors.BlueprintError` naming the file (and line, where Jinja knows it).
    """
    import jinja2
    from jinja2.sandbox import SecurityError

    from .errors import BlueprintError

    try:
        text = template.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BlueprintError(f"cannot read the template: {err}", path=template) from None
    try:
        return environment().from_string(text).render(**data)
    except SecurityError as err:
        raise BlueprintError(
            f"the template reaches outside the sandbox ({_one_line(err)}); scaffold never runs template code",
            path=f"{template}{_line(err, text)}",
        ) from None
    except jinja2.TemplateSyntaxError as err:
        raise BlueprintError(
            f"template syntax error: {err.message}", path=f"{template}:{err.lineno}"
        ) from None
    except jinja2.TemplateError as err:
        raise BlueprintError(
            f"cannot render the template: {_one_line(err)}", path=f"{template}{_line(err, text)}"
        ) from None


def _line(err: BaseException, text: str) -> str:
    """``:N``, the template line where rendering failed, from the traceback Jinja rewrites."""
    tb, line = err.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return f":{line}" if line else ""


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]
