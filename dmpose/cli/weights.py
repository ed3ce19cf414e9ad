"""`dmpose weights list | fetch | import`: the published weights dmpose knows by name, and the cache they are
fetched into; `download_progress` and `resolve_ckpt_option` serve every command that takes --ckpt."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from dmpose.cli.errors import reported
from dmpose.weights import REGISTRY, cached_file, fetch, get_entry, import_file, is_published, resolve_checkpoint

__all__ = ["download_progress", "resolve_ckpt_option", "weights_app"]

console = Console()


@contextmanager
def download_progress(label: str, out: Console | None = None) -> Iterator:
    """A rich byte-progress bar as a `dmpose.weights` progress callback."""
    columns = (TextColumn(escape(label)), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=out or console, transient=False) as progress:
        task = progress.add_task("download", total=None)

        def update(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def resolve_ckpt_option(text: str, out: Console | None = None, what: str = "--ckpt", kind: str = "pose") -> Path:
    """--ckpt (or --detector, kind detector): a path, a published name (`dmpose weights list`) or an http(s)
    URL, fetched with a progress bar on first use (and said so)."""
    if not is_published(text):
        return resolve_checkpoint(text, what=what, kind=kind)
    entry = REGISTRY.get(text)
    if entry is not None and cached_file(entry).is_file():
        path = resolve_checkpoint(text, what=what, kind=kind)
    else:
        with download_progress(f"fetching {text}", out) as update:
            path = resolve_checkpoint(text, update, what=what, kind=kind)
    (out or console).print(f"{what} {escape(text)}: {escape(str(path))}", highlight=False)
    return path


def weights_list_command(
    kind: str | None = typer.Option(None, "--kind", help="Only pose, backbone or detector entries."),
) -> None:
    """The published weights dmpose fetches by name: architecture, input, published metric, cached or not."""
    table = Table(title="published weights (dmpose weights fetch NAME; --ckpt NAME)")
    for col in ("name", "kind", "arch", "input", "published", "cached"):
        table.add_column(col)
    for e in REGISTRY.values():
        if kind is not None and e.kind != kind:
            continue
        size = f"{e.input_wh[1]}x{e.input_wh[0]}" if e.input_wh else ""
        table.add_row(e.name, e.kind, e.arch, size, e.metric_text, "yes" if cached_file(e).is_file() else "")
    console.print(table)
    console.print("Pose metrics: COCO val2017 AP with the AP-56.4 person detections, MPII val PCKh@0.5 "
                  "(MMPose's model zoo); the detector's: COCO val2017 box AP (torchvision). Input is HxW.",
                  highlight=False)


def weights_fetch_command(
    names: list[str] = typer.Argument(..., help="Registry names (`dmpose weights list`)."),
    force: bool = typer.Option(False, "--force", help="Download and convert again even when cached."),
) -> None:
    """Download, verify (the sha256 prefix in the published file name) and convert published weights into
    the cache, once; prints each cached file."""
    with reported(console):
        for name in names:
            entry = get_entry(name)
            if cached_file(entry).is_file() and not force:
                path = cached_file(entry)
            else:
                with download_progress(f"{name}", console) as update:
                    path = fetch(entry, update, force=force)
            console.print(f"{escape(name)}: {escape(str(path))}", highlight=False)


def weights_import_command(
    file: Path = typer.Argument(..., help="A published file downloaded by hand (its published name)."),
    name: str | None = typer.Option(None, "--name", help="The registry name, when the file was renamed."),
) -> None:
    """Install a published file downloaded by hand (machines without internet): verified and converted into
    the cache exactly like a download; the file itself is left as it is."""
    with reported(console):
        entry, path = import_file(file, name)
    console.print(f"{escape(entry.name)}: {escape(str(path))}", highlight=False)


weights_app = typer.Typer(help="Published weights: list, fetch, import.", no_args_is_help=True)
weights_app.command("list")(weights_list_command)
weights_app.command("fetch")(weights_fetch_command)
weights_app.command("import")(weights_import_command)
