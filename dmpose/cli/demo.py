"""`dmpose demo`: fit a free heatmap to a dot with the DM loss and print the decoded point."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dmpose.cli.parsing import parse_pair
from dmpose.demo import fit_heatmap_to_dot

__all__ = ["demo_command"]


def demo_command(
    dot: str = typer.Option("20.3,11.7", help="Target dot 'x,y' in heatmap pixels (pixel centres at integers)."),
    size: str = typer.Option("64x48", help="Heatmap size 'HxW'."),
    steps: int = typer.Option(500, min=1, help="Adam steps."),
    eps: float = typer.Option(0.25, help="Entropic regularisation of the loss."),
    grad: str = typer.Option("exact", help="Gradient: exact | envelope."),
    seed: int = typer.Option(0, help="Seed of the random initial heatmap."),
) -> None:
    """Fit a free heatmap to a dot with the DM loss, then decode it with the 2x2 rule."""
    x, y = parse_pair(dot, ",", "--dot", float)
    h, w = parse_pair(size, "x", "--size", int)
    console = Console()
    with Progress(TextColumn("fitting"), BarColumn(), TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("fit", total=steps, loss=float("nan"))
        try:
            res = fit_heatmap_to_dot((x, y), (h, w), steps=steps, eps=eps, grad=grad, seed=seed,
                                     on_step=lambda s, l: progress.update(task, advance=1, loss=l))
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    table = Table(title=escape(f"DM loss demo: {h}x{w} heatmap, eps={eps}, grad={grad}, {steps} Adam steps"))
    for col in ("dot (x, y)", "decoded (x, y)", "error px", "confidence", "loss start", "loss end"):
        table.add_column(col, justify="right")
    table.add_row(f"({res.dot[0]:.3f}, {res.dot[1]:.3f})", f"({res.decoded[0]:.3f}, {res.decoded[1]:.3f})",
                  f"{res.error_px:.4f}", f"{res.confidence:.3f}", f"{res.loss_start:.4f}", f"{res.loss_end:.4f}")
    console.print(table)
