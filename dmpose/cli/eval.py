"""`dmpose eval`: evaluate a checkpoint on COCO (OKS AP) or MPII (PCKh) and print the paper's table."""

from __future__ import annotations

from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dmpose.cli.errors import reported
from dmpose.cli.parsing import parse_device
from dmpose.cli.tables import coco_metrics_table, pckh_table
from dmpose.cli.weights import resolve_ckpt_option
from dmpose.data.synthetic import default_synthetic_root
from dmpose.eval.evaluate import DetectionsNotFoundError, evaluate_checkpoint


def eval_command(
    ckpt: str = typer.Option(..., "--ckpt", help="A dmpose checkpoint (.safetensors) or ONNX file, a published "
                             "model's name (`dmpose weights list`) or an http(s) URL."),
    data: Path | None = typer.Option(None, "--data", help="Dataset root; default: the synthetic dataset cache "
                                     "(generated on first use)."),
    dataset: str = typer.Option("coco", "--dataset", help="coco (OKS AP) or mpii (PCKh)."),
    split: str | None = typer.Option(None, "--split", help="COCO: val2017 (default) or test-dev2017; MPII: valid."),
    dets: Path | None = typer.Option(None, "--dets", help="Person detections (COCO results json); default: "
                                     "ROOT/person_detection_results/COCO_val2017_detections_AP_H_56_person.json."),
    gt_boxes: bool = typer.Option(False, "--gt-boxes", help="Use the annotated person boxes instead of detections."),
    detector: str | None = typer.Option(None, "--detector", help="Detect the people with this person detector "
                                        "instead of reading --dets: a published name (`dmpose weights list --kind "
                                        "detector`), an http(s) URL or a file of torchvision's fcos_resnet50_fpn COCO "
                                        "weights (.pth or .safetensors)."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Flip test."),
    batch: int = typer.Option(32, "--batch", min=1, help="Crops per batch."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the results and metrics json files."),
    decode: str | None = typer.Option(None, "--decode", help="2x2 or argmax; default: the checkpoint's rule."),
    joint_thr: float | None = typer.Option(None, "--joint-thr", help="Rescoring joint threshold; default per "
                                           "decode rule (argmax 0.2, 2x2 0.05)."),
    oks_thr: float = typer.Option(0.9, "--oks-thr", help="OKS-NMS threshold."),
    det_thr: float = typer.Option(0.0, "--det-thr", help="Keep detections with score >= this."),
    mpii_gt: Path | None = typer.Option(None, "--mpii-gt", help="MPII gt_valid.mat-style file; default "
                                        "ROOT/annot/gt_{split}.mat."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ...; default: cuda when available."),
    workers: int = typer.Option(2, "--workers", min=0, help="Data loading processes."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch CPU threads; default: torch's "
                                       "(on a loaded machine 1 can be much faster, benchmarks/RESULTS.md)."),
) -> None:
    """Top-down evaluation: crops -> model (+ flip test) -> decode -> image pixels -> rescoring + OKS-NMS
    -> COCOeval (or PCKh for MPII). Prints AP, AP50, AP75, APM, APL, AR and writes the json files."""
    device = parse_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    console = Console()
    if data is None and dataset == "coco":
        console.print(escape(f"no --data: the synthetic dataset cached under {default_synthetic_root()} (generated "
                             "on first use)"), highlight=False)
    if detector is not None:
        console.print(escape(f"--detector: detecting the people in every image first ({detector})"), highlight=False)
    columns = (TextColumn("evaluating"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn())
    with reported(console):  # OSError: missing or unreadable files (images, json, checkpoint)
        ckpt_path = resolve_ckpt_option(ckpt, console)
        detector_path = None if detector is None else resolve_ckpt_option(detector, console, "--detector", "detector")
        with Progress(*columns, console=console, transient=False) as progress:
            task = None  # the bar appears with the first batch: input errors are reported without an empty bar

            def on_batch(done: int, total: int, rate: float) -> None:
                nonlocal task
                if task is None:
                    task = progress.add_task("eval", total=total, rate="")
                progress.update(task, completed=done, total=total, rate=f"{rate:.1f} img/s")

            try:
                report = evaluate_checkpoint(
                    ckpt_path, data, dataset=dataset, split=split, dets=dets, gt_boxes=gt_boxes, flip=flip,
                    decode=decode, batch_size=batch, out=out, device=device, num_workers=workers,
                    joint_threshold=joint_thr, oks_threshold=oks_thr, det_score_threshold=det_thr, mpii_gt=mpii_gt,
                    progress=on_batch, detector=detector_path,
                )
            except DetectionsNotFoundError as err:  # the library's message, the CLI's hint
                if not err.default:
                    raise
                raise FileNotFoundError(f"{err} (pass --dets FILE, or --gt-boxes to use the annotated boxes)") from None
    s = report.settings
    title = f"{report.dataset.upper()} {report.split} | {report.boxes.split(' (')[0]}"
    console.print(escape(f"{Path(s['checkpoint']).name}: {s['arch']}, decode {s['decode']}, "
                         f"flip {'on' if s['flip'] else 'off'}, {s['images_per_second']:.1f} images/s"),
                  highlight=False)
    if report.dataset == "mpii":
        console.print(pckh_table(report.pckh, title=title))
    elif report.metrics:
        console.print(coco_metrics_table(report.metrics, title=title))
    else:
        console.print(escape(f"{title}: no ground truth for {report.split}; results written for the evaluation "
                             "server"))
    for what, path in report.files.items():
        console.print(escape(f"wrote {what}: {path}"), highlight=False)
    if out is None:
        console.print("(no --out given: nothing written)")
    if report.boxes == "GT boxes":
        console.print("[yellow]GT boxes[/yellow]: ground-truth person boxes read higher than detections; "
                      "the paper's numbers use detections.")


__all__ = ["eval_command"]
