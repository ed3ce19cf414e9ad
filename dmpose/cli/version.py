"""`dmpose version`: the versions of dmpose, torch and triton."""

from __future__ import annotations

import torch
import typer

import dmpose

__all__ = ["version_command"]


def version_command() -> None:
    """Print the dmpose, torch and triton versions."""
    try:
        import triton  # optional: Linux-only

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    typer.echo(f"dmpose {dmpose.__version__} (torch {torch.__version__}, triton {triton_version})")
