"""Small argument parsers shared by the commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import typer

from dmpose.train.runtime import check_device

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


def parse_device(text: str | None, option: str = "--device") -> str | None:
    """Check a torch device string ('cpu', 'cuda', 'cuda:1', 'mps', ...) against this machine
    (`dmpose.train.runtime.check_device`); None passes. A BadParameter names the option."""
    if text is None:
        return None
    try:
        check_device(text, option)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    return text
