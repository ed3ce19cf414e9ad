"""`dmpose data ...`: dataset tools."""

from pathlib import Path

import typer

from dmpose.cli.errors import reported
from dmpose.data.synthetic import generate_synthetic_coco

__all__ = ["data_app"]

data_app = typer.Typer(help="Dataset tools.", no_args_is_help=True)


@data_app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="Output folder (created; must be absent or empty). Built in a hidden "
                             "sibling folder and renamed into place when complete."),
    train: int = typer.Option(1000, "--train", help="Number of training images."),
    val: int = typer.Option(100, "--val", help="Number of validation images."),
    seed: int = typer.Option(0, "--seed", help="Random seed (the dataset is a function of it)."),
) -> None:
    """Write a synthetic COCO-format person-keypoints dataset (train2017/, val2017/, annotations/,
    person_detection_results/) that every COCO code path, pycocotools included, reads unchanged."""
    with reported():
        stats = generate_synthetic_coco(out, train, val, seed)
    for split, s in stats.items():
        typer.echo(f"{split}: {s['images']} images, {s['persons']} persons"
                   + (f", {s['detections']} detections" if split == "val2017" else ""))
    typer.echo(f"written to {out}")
