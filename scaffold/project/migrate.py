"""Manifest migrations: a blueprint's ``[[migrations]]`` table (data, never code) applied to a
project's manifest, editing the TOML text in place so that the user's comments and layout are kept."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scaffold.errors import BlueprintError, ProjectError
from scaffold.spec import manifest
from scaffold.spec.blueprints import Blueprint

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def parse_version(text: str, *, where: str | Path, key: str):
    from packaging.version import InvalidVersion, Version

    try:
        return Version(str(text))
    except InvalidVersion:
        raise ProjectError(f"not a version: {text!r}", path=where, key=key) from None


def get_dotted(data: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    section, _, key = dotted.partition(".")
    values = data.get(section)
    if isinstance(values, Mapping) and key in values:
        return True, values[key]
    return False, None


def migrate(
    data: Mapping[str, Any], bp: Blueprint, old_version: str
) -> tuple[manifest.Manifest, list[str], dict[str, str]]:
    """The manifest ``data`` moved from blueprint version ``old_version`` to ``bp.version`` by the
    blueprint's migration table, one line per key it changed, and the keys it renamed (old -> new)."""
    import copy

    where = bp.path / "blueprint.toml"
    old = parse_version(old_version, where=where, key="project.blueprint_version")
    new = parse_version(bp.version, where=where, key="blueprint.version")
    out: manifest.Manifest = copy.deepcopy(dict(data))
    notes: list[str] = []
    renamed: dict[str, str] = {}
    steps = []
    for i, step in enumerate(bp.migrations):
        if not isinstance(step, Mapping) or "version" not in step:
            raise BlueprintError(
                "each [[migrations]] entry needs a version", path=where, key=f"migrations[{i}]"
            )
        v = parse_version(step["version"], where=where, key=f"migrations[{i}].version")
        if old < v <= new:
            steps.append((v, i, step))
    for v, i, step in sorted(steps, key=lambda s: (s[0], s[1])):
        for old_key, new_key in (step.get("rename") or {}).items():
            present, value = get_dotted(out, old_key)
            if not present:
                continue
            section, _, key = old_key.partition(".")
            del out[section][key]
            if get_dotted(out, new_key)[0]:
                notes.append(f"{old_key}: removed, {new_key} is already set (blueprint {v})")
                continue
            new_section, _, new_name = new_key.partition(".")
            out.setdefault(new_section, {})[new_name] = value
            notes.append(f"{old_key} renamed to {new_key} (blueprint {v})")
            renamed[next((k for k, n in renamed.items() if n == old_key), old_key)] = new_key
        for dotted, value in (step.get("add") or {}).items():
            if not get_dotted(out, dotted)[0]:
                section, _, key = dotted.partition(".")
                out.setdefault(section, {})[key] = value
                notes.append(f"{dotted} = {toml_value(value)} added (blueprint {v})")
        for dotted in step.get("remove") or []:
            if get_dotted(out, dotted)[0]:
                section, _, key = dotted.partition(".")
                del out[section][key]
                notes.append(f"{dotted} removed (blueprint {v})")
        unknown = set(step) - {"version", "rename", "add", "remove", "note"}
        if unknown:
            raise BlueprintError(
                f"unknown migration field(s) {', '.join(sorted(unknown))}; expected rename, add, remove, note",
                path=where,
                key=f"migrations[{i}]",
            )
    out.setdefault("project", {})["blueprint_version"] = bp.version
    return out, notes, renamed


def toml_value(value: Any) -> str:
    import tomli_w

    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def edit_manifest_text(
    text: str,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    renames: Mapping[str, str] | None = None,
    *,
    path: str | Path | None = None,
) -> str:
    """``text`` (a manifest file) changed from ``old`` to ``new`` line by line, keeping its comments and
    layout (a key renamed within its section, ``renames``, stays on its line; a quoted key is a key).
    Never rewritten whole: where a line edit cannot express the change (a section written as an inline
    table, a dotted key), a :class:`ProjectError` names the key at ``path`` and nothing is written."""

    lines = text.splitlines(keepends=True)
    header_re = re.compile(
        r"""^\s*\[\s*(?:"([A-Za-z0-9_-]+)"|'([A-Za-z0-9_-]+)'|([A-Za-z0-9_.-]+))\s*\]\s*(#.*)?$"""
    )

    def section_span(name: str) -> tuple[int, int] | None:
        start = None
        for i, line in enumerate(lines):
            m = header_re.match(line)
            if m and start is not None:
                return start, i
            if m and next(g for g in m.groups()[:3] if g is not None) == name:
                start = i + 1
        return (start, len(lines)) if start is not None else None

    def key_re(key: str) -> str:  # bare, "quoted" or 'literal'
        k = re.escape(key)
        return rf"""(?:{k}|"{k}"|'{k}')"""

    def key_line(section: str, key: str) -> int | None:
        span = section_span(section)
        if span is None:
            return None
        pattern = re.compile(rf"^\s*{key_re(key)}\s*=")
        return next((i for i in range(*span) if pattern.match(lines[i])), None)

    old = {s: dict(v) if isinstance(v, Mapping) else v for s, v in old.items()}
    for old_key, new_key in (renames or {}).items():
        (section, key), (new_section, new_name) = old_key.split(".", 1), new_key.split(".", 1)
        i = key_line(section, key) if section == new_section else None
        if i is not None and key in old.get(section, {}) and new_name not in old[section]:
            lines[i] = re.sub(rf"^(\s*){key_re(key)}(\s*=)", rf"\g<1>{new_name}\g<2>", lines[i])
            old[section][new_name] = old[section].pop(key)
    old_keys = {(s, k) for s, vals in old.items() if isinstance(vals, Mapping) for k in vals}
    new_keys = {(s, k) for s, vals in new.items() if isinstance(vals, Mapping) for k in vals}
    for section, key in sorted(old_keys - new_keys):
        i = key_line(section, key)
        if i is not None:
            del lines[i]
    for section, key in sorted(new_keys):
        value = new[section][key]
        if (section, key) in old_keys and old[section][key] == value:
            continue
        entry = f"{key} = {toml_value(value)}\n"
        i = key_line(section, key)
        if i is not None:
            lines[i] = entry.rstrip("\n") + trailing_comment(lines[i]) + "\n"
            continue
        span = section_span(section)
        if span is None:
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            lines += ["\n", f"[{section}]\n", entry]
            continue
        end = span[1]
        while end > span[0] and not lines[end - 1].strip():
            end -= 1
        lines.insert(end, entry)
    result = "".join(lines)
    try:
        edited = tomllib.loads(result)
    except tomllib.TOMLDecodeError:
        edited = old  # nothing of the change is there
    if edited == dict(new):
        return result

    def value(data: Mapping[str, Any], section: str, key: str) -> Any:
        values = data.get(section)
        return values.get(key, ABSENT) if isinstance(values, Mapping) else ABSENT

    keys = sorted({(s, k) for d in (old, new) for s, v in d.items() if isinstance(v, Mapping) for k in v})
    missed = [f"{s}.{k}" for s, k in keys if value(new, s, k) != value(edited, s, k)]
    wanted = [
        f"{key} = {toml_value(new[key.split('.')[0]][key.split('.', 1)[1]])}"
        if key.split(".", 1)[1] in (new.get(key.split(".")[0]) or {})
        else f"{key} removed"
        for key in missed
    ]
    raise ProjectError(
        "cannot be changed in place, keeping your comments (its section is written as an inline table or "
        f"its key dotted); make the change by hand ({'; '.join(wanted) or 'see `scaffold update --dry-run`'}), "
        "or write the section as [section] with one `key = value` line each, and run again; nothing was written",
        path=path,
        key=", ".join(missed) or None,
    )


ABSENT = object()


def trailing_comment(line: str) -> str:
    """The comment after the value of ``key = value  # comment`` (with the spaces before it), or ''."""
    value = line.rstrip("\r\n").split("=", 1)[1] if "=" in line else ""
    for i, ch in enumerate(value):
        if ch == "#":
            try:
                tomllib.loads(f"v = {value[:i]}")
            except tomllib.TOMLDecodeError:
                continue  # a '#' inside the value
            start = len(value[:i].rstrip())
            return value[start:]
    return ""
