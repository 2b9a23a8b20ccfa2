"""Progress on long work: a tqdm bar when stderr is a terminal, nothing at all otherwise.

Attached to a terminal, long work (``scaffold test`` steps, BPE training, checkpoint shards) shows a
bar on stderr. In CI, in a pipe or under a log collector, stderr is not a terminal and the bar is
never drawn: what remains is the commands' own line-oriented output, one line per event, which
reads well in a log. ``SCAFFOLD_PROGRESS=0`` turns the bars off on a terminal too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
PROGRESS_ENV = "SCAFFOLD_PROGRESS"


def enabled() -> bool:
    """Whether bars are drawn: stderr is a terminal and SCAFFOLD_PROGRESS is not 0."""
    if os.environ.get(PROGRESS_ENV, "") == "0":
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class Bar:
    """A tqdm bar on stderr when :func:`enabled`, otherwise an object whose methods do nothing.

    ``around(log)`` wraps a line logger so that its lines print above the bar.
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", leave: bool = False):
        self._bar = None
        if enabled():
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr, dynamic_ncols=True
            )

    def update(self, n: int = 1, **postfix: Any) -> None:
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(n)

    def around(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """``log``, clearing the bar while it prints so that lines and bar do not tear each other."""
        if self._bar is None:
            return log

        def write(line: str) -> None:
            from tqdm import tqdm

            with tqdm.external_write_mode(file=sys.stderr):
                log(line)

        return write

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """``items``, with a bar while they are consumed (when :func:`enabled`)."""
    if not enabled():
        yield from items
        return
    with Bar(total=total, desc=desc, unit=unit) as bar:
        for item in items:
            yield item
            bar.update()
