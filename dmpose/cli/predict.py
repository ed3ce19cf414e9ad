"""`dmpose predict`: people's keypoints in images, folders, globs and videos, with overlays and JSON."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from dmpose.cli.errors import EXIT_FAILED, REPORTED_ERRORS, describe, fail, report, reported
from dmpose.cli.weights import resolve_ckpt_option
from dmpose.data.image import read_photo
from dmpose.detect import DEFAULT_DET_THR, DEFAULT_NMS_THR, load_person_detector
from dmpose.predict.boxes import DEFAULT_BBOX_THR, boxes_for_input, load_boxes_file, select_given_boxes
from dmpose.predict.media import collect_inputs, is_video, video_info
from dmpose.predict.outputs import (
    BOXES_FROM_FILE,
    COCO_RESULTS_NAME,
    DETECTED,
    FULL_FRAME,
    ImageIds,
    PredictionOutputs,
)
from dmpose.predict.predictor import Predictor
from dmpose.weights import registry

NO_DETECTOR_HINT = "or pass --boxes FILE, or --no-detector (each image one person)"


def _first(names: list[str], n: int = 3) -> str:
    """The first `n` names, comma-separated, with ", ..." when there are more."""
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def predict_command(
    inputs: list[str] = typer.Argument(..., metavar="INPUT...", help="Image files, folders, globs, video files and "
                                "camera indices (0: the first camera)."),
    ckpt: str | None = typer.Option(None, "--ckpt", help="A dmpose checkpoint (.safetensors) or ONNX file, a "
                                    "published model's name (`dmpose weights list`) or an http(s) URL; default: "
                                    f"the published {registry.DEFAULT_POSE_MODEL}, fetched once into the cache."),
    boxes: Path | None = typer.Option(None, "--boxes", help="Person boxes: COCO detection results (image_id or "
                                      "file_name) or a {\"file\": [[x, y, w, h, score], ...]} map. Default: the "
                                      "--detector's boxes."),
    detector: str | None = typer.Option(None, "--detector", help="Person detector: a published name (default "
                                        f"{registry.DEFAULT_DETECTOR}, fetched once), an http(s) URL or a file of "
                                        "torchvision's fcos_resnet50_fpn COCO state dict (.pth or .safetensors)."),
    no_detector: bool = typer.Option(False, "--no-detector", help="No detector: one person filling each image (or "
                                     "video frame)."),
    det_thr: float = typer.Option(DEFAULT_DET_THR, "--det-thr", min=0.0, max=1.0, help="Detected person boxes "
                                  "below this score are dropped."),
    bbox_thr: float = typer.Option(DEFAULT_BBOX_THR, "--bbox-thr", min=0.0, max=1.0, help="--boxes below this "
                                   "score are dropped."),
    nms_thr: float = typer.Option(DEFAULT_NMS_THR, "--nms-thr", min=0.0, max=1.0, help="Of two person boxes (detected "
                                  "or given) overlapping by IoU above this, the lower-scored is dropped."),
    max_people: int | None = typer.Option(None, "--max-people", min=1, help="At most this many people per image, the "
                                          "highest box scores (default: no limit)."),
    out: Path = typer.Option(Path("predictions"), "--out", help="Output folder."),
    kpt_thr: float = typer.Option(0.3, "--kpt-thr", min=0.0, max=1.0, help="Joints below this are not drawn."),
    heatmaps: bool = typer.Option(False, "--heatmaps", help="Also write a heatmap panel per person."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Flip test."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ...; default: cuda when available."),
    batch: int = typer.Option(32, "--batch", min=1, help="Crops per forward pass."),
    stride: int = typer.Option(1, "--stride", min=1, help="Videos: every K-th frame."),
    max_frames: int | None = typer.Option(None, "--max-frames", min=1, help="Videos and cameras: stop after this "
                                          "many frames (a camera runs until it stops, or Ctrl-C, without it)."),
) -> None:
    """Top-down keypoints for every person box: one JSON and one overlay per image, a COCO results json for
    the call, per video a JSON with a record per frame and an annotated mp4."""
    console = Console()
    if ckpt is None:
        ckpt = registry.DEFAULT_POSE_MODEL
        console.print(f"no --ckpt: the published {ckpt} ({registry.REGISTRY[ckpt].published})", highlight=False)
    if boxes is not None and (detector is not None or no_detector):
        fail("--boxes gives the person boxes: pass it without --detector / --no-detector", console)
    with reported(console):
        ckpt_path = resolve_ckpt_option(ckpt, console)
    detector_path = None
    if boxes is None and not no_detector:
        if detector is None:
            detector = registry.DEFAULT_DETECTOR
            console.print(f"person detector: the published {detector} ({registry.REGISTRY[detector].published})",
                          highlight=False)
        try:
            detector_path = resolve_ckpt_option(detector, console, what="--detector", kind="detector")
        except REPORTED_ERRORS as err:  # never a silent fallback: the way out is named
            fail(f"{describe(err)}; {NO_DETECTOR_HINT}", console)
    files, problems = collect_inputs(inputs)
    failures = len(problems)
    for _, message in problems:
        report(message, console)
    with reported(console):
        box_map = None if boxes is None else load_boxes_file(boxes, files)
        person_detector = None if detector_path is None else load_person_detector(
            detector_path, device=device, det_thr=det_thr, nms_thr=nms_thr, max_people=max_people)
        predictor = Predictor(ckpt_path, device=device, flip=flip, batch_size=batch, detector=person_detector)
    if person_detector is not None:
        console.print(escape(f"person detector: FCOS ResNet-50-FPN, {detector_path} (--det-thr {det_thr:g}, "
                             f"--nms-thr {nms_thr:g}, --max-people {max_people or 'no limit'})"), highlight=False)
    elif box_map is None:
        console.print("--no-detector: each image (or video frame) is one person filling the frame", highlight=False)
    outputs = PredictionOutputs(out, files, predictor.spec, kpt_thr=kpt_thr, heatmaps=heatmaps,
                                boxes=BOXES_FROM_FILE if box_map is not None else
                                DETECTED if person_detector is not None else FULL_FRAME)
    dropped = {"given": 0, "bbox_thr": 0, "nms": 0, "max_people": 0}
    image_ids = ImageIds(files)
    n_images = n_frames = n_people = 0
    columns = (TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn())
    start = time.perf_counter()
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("predict", total=len(files), rate="")

        def show_rate(advance: int = 0) -> None:
            elapsed = max(time.perf_counter() - start, 1e-9)
            progress.update(task, advance=advance, rate=f"{(n_images + n_frames) / elapsed:.1f} img/s")

        for path in files:
            the_boxes = boxes_for_input(box_map, path)
            if the_boxes is not None:
                dropped["given"] += len(the_boxes)
                the_boxes, chosen = select_given_boxes(the_boxes, bbox_thr, nms_thr, max_people)
                for key, n in (("bbox_thr", chosen.below_thr), ("nms", chosen.by_nms), ("max_people", chosen.over_max)):
                    dropped[key] += n
            try:
                if is_video(path):
                    fps, size = video_info(path)
                    with outputs.video_result(path, fps, size, stride) as video:
                        for frame in predictor.predict_video(path, stride, the_boxes, heatmaps=heatmaps,
                                                             lost=video.lost, max_frames=max_frames):
                            video.add(frame)
                            n_frames += 1
                            n_people += len(frame.people)
                            show_rate()
                    if video.lost:  # the readable frames are written; the loss is reported and fails the call
                        raise ValueError(f"{path}: {len(video.lost)} video frame(s) could not be decoded (frames "
                                         f"{_first([str(i) for i in video.lost])}); the others were predicted")
                else:
                    rgb, orientation = read_photo(path)  # as displayed (EXIF applied); errors name the file
                    image = rgb[:, :, ::-1]  # BGR
                    people = predictor.predict(image, the_boxes, heatmaps=heatmaps)
                    entry = None if box_map is None else box_map.get(path)
                    outputs.image_result(path, image, people, image_ids(path, entry), orientation)
                    n_images += 1
                    n_people += len(people)
            except REPORTED_ERRORS as err:
                failures += 1
                text = describe(err)
                report(text if str(path) in text else f"{path}: {text}", progress.console)
            show_rate(advance=1)
    if n_images:
        outputs.coco_results()
    unboxed = [] if box_map is None else [f.name for f in files if f not in box_map]
    if unboxed:
        console.print(escape(f"{len(unboxed)} input(s) have no boxes in {boxes} and so no people: {_first(unboxed)}"),
                      highlight=False)
    if box_map is not None:
        console.print(escape(f"boxes from {boxes}: {dropped['given']} given, {dropped['bbox_thr']} dropped below "
                             f"--bbox-thr {bbox_thr:g}, {dropped['nms']} by NMS (--nms-thr {nms_thr:g}), "
                             f"{dropped['max_people']} over --max-people {max_people or '(no limit)'}"),
                      highlight=False)
    if image_ids.assigned:
        assigned = image_ids.assigned
        console.print(escape(f"image ids: {len(assigned)} file name(s) are not COCO ids ({_first(assigned)}); their "
                             f"ids in {COCO_RESULTS_NAME} were assigned in input order and are recorded in each "
                             "image's JSON (image_id)"), highlight=False)
    elapsed = max(time.perf_counter() - start, 1e-9)
    console.print(escape(f"{n_images} images, {n_frames} video frames, {n_people} people, {len(outputs.written)} "
                         f"files written to {out} ({(n_images + n_frames) / elapsed:.1f} images/s)"
                         + (f"; {failures} failed" if failures else "")), highlight=False)
    if failures:
        console.print(f"[red]{failures} input(s) failed[/red]", highlight=False)
        raise typer.Exit(EXIT_FAILED)


__all__ = ["predict_command"]
