"""The override flags of ``build``, ``test`` and ``show``, defined once.

Every model flag is a manifest key (``--hidden-size`` is ``model.hidden_size``); the seed's
spellings are accepted beside transformers' names (``--num-kv-heads`` / ``--num-key-value-heads``,
``--d-head`` / ``--head-dim``, ``--dim-feedforward`` / ``--intermediate-size``). A flag's value
is read like the manifest's (TOML; ``--rope-scaling`` also takes JSON; ``null`` removes a nullable
key) and checked by the schema, and the resolved manifest is validated as a whole, so a flag
obeys exactly the rules a manifest does. Help text is the schema's doc line.

A flag never does nothing silently: a model key the project's blueprint does not have is an
error, and so is an option that has no effect for the command it is given to (each command says
which in its help).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from scaffold.devices import TEST_DTYPE_NAMES
from scaffold.errors import ManifestError, UsageError
from scaffold.spec import manifest, schema

# The seed's model flags, as manifest [model] keys, in the seed's order.
MODEL_KEYS = (
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "num_hidden_layers",
    "intermediate_size",
    "rope_theta",
    "rms_norm_eps",
    "rope_scaling",
    "sliding_window",
    "tie_word_embeddings",
    "attention_dropout",
)


@dataclass(frozen=True)
class Flag:
    """One override flag: its click names, its parameter name and the manifest key it sets."""

    dest: str
    names: tuple[str, ...]
    path: str | None  # manifest key (section.key); None for options that are not manifest keys
    doc: str
    metavar: str | None = None
    is_flag: bool = False
    path_type: bool = False

    @property
    def name(self) -> str:
        return self.names[0]


def _model_flag(key: str) -> Flag:
    f = schema.BY_PATH[f"model.{key}"]
    primary = "--" + key.replace("_", "-")
    names = tuple(dict.fromkeys((*f.flags, primary)))  # the seed's spelling first
    doc = f.doc
    if dict in f.types:
        doc += " On the command line: JSON (or a TOML inline table)."
    return Flag(f"model_{key}", names, f.path, doc, metavar=key.upper())


FLAGS: tuple[Flag, ...] = (
    *(_model_flag(k) for k in MODEL_KEYS if k != "tie_word_embeddings"),
    Flag("model_name", ("--model-name",), "project.name", schema.BY_PATH["project.name"].doc, metavar="NAME"),
    Flag("output_dir", ("--output-dir",), None, schema.OPTIONS["output_dir"], metavar="DIR", path_type=True),
    Flag(
        "attn_implementation",
        ("--attn-implementation",),
        "test.attn_implementation",
        schema.BY_PATH["test.attn_implementation"].doc + " One of " + ", ".join(schema.ATTN) + ".",
        metavar="NAME",
    ),
    Flag("device", ("--device",), "test.device", schema.BY_PATH["test.device"].doc, metavar="DEVICE"),
    Flag(
        "dtype",
        ("--dtype",),
        "test.dtype",
        schema.BY_PATH["test.dtype"].doc
        + f" One of {', '.join(schema.DTYPES)} (also {', '.join(sorted(set(TEST_DTYPE_NAMES) - set(schema.DTYPES)))}).",
        metavar="DTYPE",
    ),
    Flag("no_init_weights", ("--no-init-weights",), None, schema.OPTIONS["no_init_weights"], is_flag=True),
    Flag(
        "load_from_checkpoint",
        ("--load-from-checkpoint",),
        None,
        schema.OPTIONS["load_from_checkpoint"],
        metavar="PATH",
        path_type=True,
    ),
)
TIE = Flag(
    "model_tie_word_embeddings",
    ("--tie-word-embeddings/--no-tie-word-embeddings",),
    "model.tie_word_embeddings",
    schema.BY_PATH["model.tie_word_embeddings"].doc + " Absent: the manifest decides.",
)
BY_DEST = {f.dest: f for f in (*FLAGS, TIE)}


def parse_flag_value(f: schema.Field, raw: str) -> Any:
    """A flag's text as the value the manifest would hold."""
    text = raw.strip()
    if text.lower() in ("null", "none"):
        return None
    if f.types == schema.STR:
        return raw
    if dict in f.types and text.startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            pass  # maybe a TOML inline table
    return manifest.parse_value(raw)


@dataclass
class Overrides:
    """What the override flags of one command line ask for."""

    layer: manifest.Manifest = field(default_factory=dict)  # manifest layer: --set, then the flags
    given: dict[str, str] = field(default_factory=dict)  # manifest key -> the flag that set it
    output_dir: Path | None = None
    device: str | None = None
    dtype: str | None = None
    attn_implementation: str | None = None
    no_init_weights: bool = False
    checkpoint: Path | None = None

    @property
    def changes_build(self) -> bool:
        """Whether the overrides change what a build writes (anything outside [test])."""
        return any(section != "test" and values for section, values in self.layer.items())

    def build_flags(self) -> list[str]:
        """The flags (and --set) that change what a build writes."""
        names = [flag for path, flag in self.given.items() if not path.startswith("test.")]
        given_paths = set(self.given)
        if any(
            f"{s}.{k}" not in given_paths for s, values in self.layer.items() if s != "test" for k in values
        ):
            names.append("--set")
        return names

    def flags_given(self) -> list[str]:
        names = list(self.given.values())
        names += [
            f"--{d.replace('_', '-')}" for d in ("device", "dtype", "attn_implementation") if getattr(self, d)
        ]
        if self.no_init_weights:
            names.append("--no-init-weights")
        if self.checkpoint is not None:
            names.append("--load-from-checkpoint")
        if self.output_dir is not None:
            names.append("--output-dir")
        return list(dict.fromkeys(names))

    def refuse(self, command: str, dests: Iterable[str], why: str) -> None:
        """Raise a UsageError if any of the options ``dests`` was given: they change nothing here."""
        for dest in dests:
            value = getattr(self, dest if dest != "load_from_checkpoint" else "checkpoint")
            if value:
                raise UsageError(f"{BY_DEST[dest].name} does nothing for `scaffold {command}` {why}")

    def load_project(self, path: str | Path, extra: manifest.Manifest | None = None):
        """The project with these overrides applied (and ``extra`` after them), validated; problems
        that come from a flag name the flag."""
        from scaffold.project import load_project

        # not manifest.merge: a None here must reach load_project, where it removes the key
        layer = {section: dict(values) for section, values in self.layer.items()}
        for section, values in (extra or {}).items():
            layer.setdefault(section, {}).update(values)
        try:
            return load_project(path, layer)
        except ManifestError as err:
            problems = []
            for key, msg in err.problems:
                flag = next(
                    (f for path, f in self.given.items() if key == path or key.startswith(path + ".")), None
                )
                if flag is None:
                    problems.append((key, msg))
                elif msg.startswith("unknown key for this blueprint"):
                    problems.append(
                        (
                            key,
                            f"given by {flag}, but this project's blueprint has no such key: the flag would change nothing",
                        )
                    )
                else:
                    problems.append((key, f"{msg} (from {flag})"))
            raise ManifestError(problems, path=err.path) from None


def collect(params: dict[str, Any], sets: tuple[str, ...]) -> Overrides:
    """Turn the parsed flag values of a command into :class:`Overrides`; bad values are errors
    naming the flag and its manifest key."""
    ov = Overrides()
    layer = manifest.parse_sets(sets) if sets else {}
    from_sets = {f"{s}.{k}": v for s, values in layer.items() for k, v in values.items()}
    for dest, value in params.items():
        flag = BY_DEST[dest]
        if value is None or (flag.is_flag and not value):
            continue
        if flag.path is None:
            if dest == "output_dir":
                if Path(value) == Path(".") or Path(value).name == ".." or "\0" in str(value):
                    raise UsageError(
                        f"--output-dir must name the model folder to write (not '', '.' or '..'), got {str(value)!r}"
                    )
                ov.output_dir = Path(value)
            elif dest == "no_init_weights":
                ov.no_init_weights = True
            elif dest == "load_from_checkpoint":
                ov.checkpoint = Path(value)
            continue
        f = schema.BY_PATH[flag.path]
        parsed = value if isinstance(value, bool) else parse_flag_value(f, value)
        problem = f.problem(parsed)
        if problem:
            raise UsageError(f"{flag.name} {value}: {f.path} {problem}")
        if f.path in from_sets and from_sets[f.path] != parsed:
            raise UsageError(f"{flag.name} and --set {f.path} disagree ({parsed!r} vs {from_sets[f.path]!r})")
        layer.setdefault(f.section, {})[f.key] = parsed
        ov.given[f.path] = flag.name
        if f.section == "test":
            setattr(ov, dest, parsed)
    ov.layer = layer
    return ov


def _click_option(flag: Flag) -> Callable:
    if flag is TIE:
        return click.option(flag.names[0], flag.dest, default=None, help=flag.doc)
    if flag.is_flag:
        return click.option(*flag.names, flag.dest, is_flag=True, default=False, help=flag.doc)
    kind = click.Path(path_type=str) if flag.path_type else click.STRING
    return click.option(*flag.names, flag.dest, type=kind, default=None, metavar=flag.metavar, help=flag.doc)


SET_OPTION = click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set any manifest key (section.key or a unique bare key); the value is read as TOML. Repeatable.",
)


def override_options(command: Callable) -> Callable:
    """Add every override flag and ``--set`` to a click command; it receives ``overrides``."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        params = {dest: kwargs.pop(dest) for dest in BY_DEST}
        kwargs["overrides"] = collect(params, kwargs.pop("sets"))
        return command(*args, **kwargs)

    options = [_click_option(f) for f in FLAGS[: len(MODEL_KEYS) - 1]]
    options.append(_click_option(TIE))
    options += [_click_option(f) for f in FLAGS[len(MODEL_KEYS) - 1 :]]
    options.append(SET_OPTION)
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper
