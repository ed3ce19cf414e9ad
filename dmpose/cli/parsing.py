"""Small argument parsers shared by the commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
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


def parse_device(text: str | None, option: str = "--device") -> str | None:
    """Check a torch device string ('cpu', 'cuda', 'cuda:1', 'mps', ...) against this machine; None passes.
    Raises a BadParameter naming the option: unknown device types, and CUDA/MPS devices that are not there."""
    if text is None:
        return None
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise typer.BadParameter(f"{option} {text!r} is not a device: expected cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise typer.BadParameter(f"{option} {text!r}: CUDA is not available on this machine "
                                     f"(torch {torch.__version__}, no usable GPU); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise typer.BadParameter(f"{option} {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise typer.BadParameter(f"{option} {text!r}: MPS is not available on this machine; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise typer.BadParameter(f"{option} {text!r}: dmpose runs on cpu, cuda or mps, not {dev.type}")
    return text
