"""The command line's one error path.

Exit codes: 0 success; 1 the command could not do its work because of its inputs, outputs or environment
(a bad or missing file, an unwritable output, an output that would replace an input, a missing extra) --
reported as one line "error: <message naming the file/entry/field>", never a traceback; 2 a malformed
option value or command line (Typer's own convention, via `typer.BadParameter`).

Commands run their library call inside `with reported(console):`, or call `fail(err, console)` directly;
a command that goes on after a failed input (predict) prints it with `report(err, console)`. Every
message is escaped for rich: a file named `x[/b].jpg` prints as it is named.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "REPORTED_ERRORS", "describe", "fail", "report", "reported"]

EXIT_FAILED = 1
EXIT_USAGE = 2
#: What a command reports as "error: ..." (exit 1). Anything else is a bug and keeps its traceback.
REPORTED_ERRORS = (ValueError, OSError, ImportError)


def describe(err: BaseException) -> str:
    """One line for `err`; an OSError with only errno/strerror/filename becomes "strerror: filename"."""
    if isinstance(err, OSError) and err.strerror and not err.args[2:]:
        name = err.filename
        text = err.strerror
        return text if name is None or str(name) in text else f"{text}: {name}"
    text = str(err)
    return text if text else type(err).__name__


def report(err: BaseException | str, console: Console | None = None) -> None:
    """Print "error: ..." for `err` (an exception, or a message) and go on."""
    text = err if isinstance(err, str) else describe(err)
    (console or Console()).print(f"[red]error:[/red] {escape(text)}", highlight=False, soft_wrap=True)


def fail(err: BaseException | str, console: Console | None = None) -> NoReturn:
    """Print "error: ..." for `err` (an exception, or a message) and exit with EXIT_FAILED."""
    report(err, console)
    raise typer.Exit(EXIT_FAILED)


@contextmanager
def reported(console: Console | None = None) -> Iterator[None]:
    """Report REPORTED_ERRORS raised inside the block through `fail`."""
    try:
        yield
    except REPORTED_ERRORS as err:
        fail(err, console)
