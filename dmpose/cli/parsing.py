"""Small argument parsers shared by the commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import typer

T = TypeVar("T")


def parse_pair(text: str, sep: str, option: str, kind: Callable[[str], T]) -> tuple[T, T]:
    """Parse 'AsepB' (e.g. '64x48' or '20.3,11.7') into two values, or raise a BadParameter naming the option."""
    parts = text.lower().split(sep)
    try:
        if len(parts) != 2:
            raise ValueError
        return kind(parts[0].strip()), kind(parts[1].strip())
    except ValueError:
        raise typer.BadParameter(
            f"{option} must look like 'A{sep}B' with {kind.__name__} values, got {text!r}") from None
