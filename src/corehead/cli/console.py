"""Where the command line writes: tables and JSON on stdout, logs and progress bars on stderr.

`--quiet` is a context variable set for the length of one command (and for the workers of a multi-process
run), not a module global that a command changes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

PIPE_WIDTH = 10_000  # columns of stdout when it is not a terminal: a table row never wraps in a pipe or a log

_QUIET: ContextVar[bool] = ContextVar("corehead_quiet", default=False)


class Stdout(Console):
    """stdout: as wide as the terminal, or, when it is a pipe or a file, wide enough that rows stay whole."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self.is_terminal or self._width is not None:  # a terminal, or COLUMNS set by the user
            return size
        return ConsoleDimensions(PIPE_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


# no emoji codes: names such as causal:zero:logprob are printed as they are
err = Console(stderr=True, emoji=False)
out = Stdout(emoji=False)


@contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """No logs and no progress bars inside the block (when `on`)."""
    token = _QUIET.set(on or _QUIET.get())
    try:
        yield
    finally:
        _QUIET.reset(token)


def is_quiet() -> bool:
    return _QUIET.get()


def emit_json(obj: Any) -> None:
    """One JSON object on one line of stdout, for scripts."""
    sys.stdout.write(json.dumps(obj) + "\n")


def log(message: str) -> None:
    """A status line on stderr (rich markup allowed), silent under --quiet."""
    if not is_quiet():
        err.print(message, soft_wrap=True, highlight=False)


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """A progress bar on stderr with counts and ETA; `advance(n=1)` moves it. Silent under --quiet."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
        disable=is_quiet(),
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
