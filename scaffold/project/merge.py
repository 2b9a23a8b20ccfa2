"""Three-way merges of a user's edits with a new rendering, and the conflict markers they leave.

The merge itself is the ``merge3`` package (Breezy's three-way merge, the diff3 algorithm): base is
the code as last rendered, "yours" the project's file as the user left it, "new" the fresh
rendering. Where both changed the same lines, both versions are written between conflict markers,
as git does, and ``scaffold build``/``test`` refuse to run until the markers are gone.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

from scaffold.errors import ProjectError

START, MID, END = "<<<<<<<", "=======", ">>>>>>>"
MARKER_RE = re.compile(r"^(<<<<<<<|>>>>>>>)( |$)")


@dataclass
class Merged:
    """The outcome of one file's merge: its new text and how many conflicts it holds."""

    text: str
    conflicts: int


def merge_text(base: str, yours: str, new: str, *, new_label: str = "new rendering") -> Merged:
    """Merge ``yours`` and ``new``, two descendants of ``base``, line by line."""
    import merge3

    m = merge3.Merge3(_lines(base), _lines(yours), _lines(new))
    conflicts = sum(1 for group in m.merge_groups() if group[0] == "conflict")
    lines = m.merge_lines(
        name_a="yours", name_b=new_label, start_marker=START, mid_marker=MID, end_marker=END
    )
    text = "".join(_terminated(lines))
    return Merged(text=text, conflicts=conflicts)


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _terminated(lines) -> list[str]:
    """merge3 writes markers with the first line's ending; a last line without one gets one before a
    marker, so markers always start a line."""
    out: list[str] = []
    for line in lines:
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        out.append(line)
    return out


def conflict_lines(text: str) -> list[int]:
    """1-based line numbers where a conflict starts (a ``<<<<<<<`` marker; a stray ``>>>>>>>`` counts)."""
    found: list[int] = []
    inside = False
    for number, line in enumerate(text.splitlines(), start=1):
        m = MARKER_RE.match(line)
        if not m:
            continue
        if m.group(1) == START:
            found.append(number)
            inside = True
        elif not inside:
            found.append(number)
        else:
            inside = False
    return found


def check_no_conflicts(files: list[Path]) -> None:
    """Refuse (exit 2) while any of ``files`` holds conflict markers, naming each file and line."""
    where: list[str] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        where += [f"{path}:{n}" for n in conflict_lines(text)]
    if where:
        more = f" (and {len(where) - 1} more: {', '.join(where[1:4])}{', ...' if len(where) > 4 else ''})"
        raise ProjectError(
            "unresolved merge conflict (<<<<<<< yours ... ======= ... >>>>>>> new rendering): keep what you "
            f"want, delete the markers, and run again{more if len(where) > 1 else ''}",
            path=where[0],
        )


def unified_diff(old: str | None, new: str | None, name: str, *, old_label: str, new_label: str) -> str:
    """A unified diff of two versions of ``name`` (None: the file does not exist), '' when equal."""
    if old == new:
        return ""
    a = _lines(old or "")
    b = _lines(new or "")
    lines = difflib.unified_diff(
        a,
        b,
        fromfile=f"{name} ({old_label})" if old is not None else "/dev/null",
        tofile=f"{name} ({new_label})" if new is not None else "/dev/null",
    )
    return "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )
