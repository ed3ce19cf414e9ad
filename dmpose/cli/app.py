"""Root Typer app; each command group lives in its own module and registers itself here."""

import typer

import dmpose

app = typer.Typer(
    name="dmpose",
    help="2D human pose estimation with heatmap distribution matching.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


@app.command()
def version() -> None:
    """Print the dmpose, torch and triton versions."""
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:  # triton is Linux-only
        triton_version = "not installed"
    typer.echo(f"dmpose {dmpose.__version__} (torch {torch.__version__}, triton {triton_version})")



# Command modules register themselves on import (keep this list explicit).
from dmpose.cli import (
    data,  # noqa: E402,F401
    demo,  # noqa: E402,F401
    eval,  # noqa: E402,F401
    models,  # noqa: E402,F401
    predict,  # noqa: E402,F401
    train,  # noqa: E402,F401
)
