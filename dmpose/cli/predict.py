"""`dmpose predict`: people's keypoints in images, folders, globs and videos, with overlays and JSON."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from dmpose.atomic import atomic_output
from dmpose.data.image import read_image
from dmpose.eval.coco import rescore, to_coco_results, write_json
from dmpose.eval.metrics import joint_threshold_for
from dmpose.predict import (
    Predictor,
    coco_id_from_name,
    collect_inputs,
    is_video,
    load_boxes_file,
    open_video,
)
from dmpose.viz import draw_heatmaps, draw_pose

NO_CKPT_HELP = ("no --ckpt given and no runs/*/best.safetensors found: train a model with `dmpose train` "
                "(its run folder holds best.safetensors), or convert official HRNet/MMPose weights with "
                "`dmpose convert SRC.pth --arch ARCH -o MODEL.safetensors`, then pass --ckpt MODEL.safetensors")
COCO_RESULTS_NAME = "coco_results.json"


def latest_run_checkpoint(runs: Path = Path("runs")) -> Path | None:
    """The newest (by mtime) runs/*/best.safetensors, or None."""
    found = [p for p in runs.glob("*/best.safetensors") if p.is_file()] if runs.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


class _Outputs:
    """Output names under --out: unique per call, never an input's path."""

    def __init__(self, out: Path, inputs: list[Path]):
        self.out = out
        self.forbidden = {p.resolve() for p in inputs}
        self.taken: set[Path] = set()
        self.written: list[Path] = []

    def stem(self, source: Path) -> str:
        base, n = source.stem, 1
        name = base
        while any((self.out / f"{name}{suffix}").resolve() in self.taken | self.forbidden
                  for suffix in (".json", "_pose.jpg", "_pose.mp4")):
            n += 1
            name = f"{base}_{n}"
        for suffix in (".json", "_pose.jpg", "_pose.mp4"):
            self.taken.add((self.out / f"{name}{suffix}").resolve())
        return name

    def path(self, name: str) -> Path:
        p = self.out / name
        if p.resolve() in self.forbidden:
            raise ValueError(f"refusing to overwrite the input {p}")
        return p

    def json(self, obj: Any, name: str) -> Path:
        p = write_json(obj, self.path(name))
        self.written.append(p)
        return p

    def image(self, image, name: str) -> Path:
        p = self.path(name)
        ok, buf = cv2.imencode(p.suffix, image)
        if not ok:
            raise ValueError(f"cannot encode {p}")
        with atomic_output(p) as tmp:
            tmp.write_bytes(buf.tobytes())
        self.written.append(p)
        return p


def _people_json(people) -> list[dict]:
    return [p.to_dict() for p in people]


def _coco_rows(people, image_id: int, joint_threshold: float) -> list[dict]:
    """COCO results rows, scored as evaluation scores (box score x mean confidence above the threshold)."""
    inst = [{"image_id": image_id, "box_score": p.bbox_score,
             "keypoints": np.concatenate([p.keypoints, np.asarray(p.scores, np.float64)[:, None]], 1)} for p in people]
    return to_coco_results(rescore(inst, joint_threshold)) if inst else []


def predict_command(
    inputs: list[str] = typer.Argument(..., metavar="INPUT...", help="Image files, folders, globs and video files."),
    ckpt: Path | None = typer.Option(None, "--ckpt", help="A dmpose checkpoint (.safetensors); default: the newest "
                                     "runs/*/best.safetensors."),
    boxes: Path | None = typer.Option(None, "--boxes", help="Person boxes: COCO detection results (image_id or "
                                      "file_name) or a {\"file\": [[x, y, w, h, score], ...]} map. Default: one "
                                      "person filling each image."),
    out: Path = typer.Option(Path("predictions"), "--out", help="Output folder."),
    kpt_thr: float = typer.Option(0.3, "--kpt-thr", min=0.0, max=1.0, help="Joints below this are not drawn."),
    heatmaps: bool = typer.Option(False, "--heatmaps", help="Also write a heatmap panel per person."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Flip test."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ...; default: cuda when available."),
    batch: int = typer.Option(32, "--batch", min=1, help="Crops per forward pass."),
    stride: int = typer.Option(1, "--stride", min=1, help="Videos: every K-th frame."),
) -> None:
    """Top-down keypoints for every person box: one JSON and one overlay per image, a COCO results json for
    the call, per video a JSON with a record per frame and an annotated mp4."""
    console = Console()

    def fail(message: str) -> None:
        console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)

    if ckpt is None:
        ckpt = latest_run_checkpoint()
        if ckpt is None:
            fail(NO_CKPT_HELP)
        console.print(f"no --ckpt: using {ckpt} (the newest runs/*/best.safetensors)", highlight=False)
    files, problems = collect_inputs(inputs)
    failures: list[str] = [msg for _, msg in problems]
    for msg in failures:
        console.print(f"[red]error:[/red] {msg}", highlight=False, soft_wrap=True)
    box_map = None
    if boxes is not None:
        try:
            box_map = load_boxes_file(boxes, files)
        except (ValueError, OSError) as err:
            fail(str(err))
    try:
        predictor = Predictor(ckpt, device=device, flip=flip, batch_size=batch)
    except (ValueError, OSError) as err:
        fail(str(err))
    spec = predictor.spec
    names = list(spec.keypoints.names)
    joint_thr = joint_threshold_for(spec)
    if box_map is None:
        console.print("no --boxes: each image (or video frame) is one person filling the frame", highlight=False)
    outputs = _Outputs(out, files)
    coco_rows: list[dict] = []
    n_images = n_frames = n_people = 0
    ids_assigned: list[str] = []
    next_id = 1 + max([coco_id_from_name(f) or 0 for f in files] + [0])

    def image_id_for(path: Path, entry) -> int:
        nonlocal next_id
        if entry is not None and entry.image_id is not None:
            return entry.image_id
        cid = coco_id_from_name(path)
        if cid is not None:
            return cid
        ids_assigned.append(path.name)
        next_id += 1
        return next_id - 1

    def write_heatmaps(stem: str, people) -> None:
        for i, p in enumerate(people):
            panel = draw_heatmaps(p.crop[:, :, ::-1], p.heatmaps, names)
            outputs.image(panel, f"{stem}_heatmaps_{i}.jpg")

    columns = (TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn())
    start = time.perf_counter()
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("predict", total=len(files), rate="")
        for path in files:
            entry = None if box_map is None else box_map.get(path)
            the_boxes = None if box_map is None else (
                np.zeros((0, 5)) if entry is None else np.concatenate([entry.boxes, entry.scores[:, None]], 1))
            try:
                stem = outputs.stem(path)
                if is_video(path):
                    records, writer = [], None
                    cap, fps, size = open_video(path)
                    cap.release()
                    video_path = outputs.path(f"{stem}_pose.mp4")
                    with atomic_output(video_path) as tmp:
                        mp4 = tmp.with_suffix(".mp4")
                        try:
                            for fr in predictor.predict_video(path, stride, the_boxes, heatmaps=heatmaps):
                                overlay = draw_pose(fr.frame, fr.people, spec.keypoints, kpt_thr)
                                if writer is None:
                                    h, w = overlay.shape[:2]
                                    writer = cv2.VideoWriter(str(mp4), cv2.VideoWriter_fourcc(*"mp4v"),
                                                             fps / stride, (w, h))
                                writer.write(overlay)
                                records.append({"frame": fr.index, "time_s": fr.time_s,
                                                "people": _people_json(fr.people)})
                                if heatmaps:
                                    write_heatmaps(f"{stem}_frame{fr.index:06d}", fr.people)
                                n_frames += 1
                                n_people += len(fr.people)
                                elapsed = max(time.perf_counter() - start, 1e-9)
                                progress.update(task, rate=f"{(n_images + n_frames) / elapsed:.1f} img/s")
                            if writer is not None:
                                writer.release()
                                writer = None
                            mp4.replace(tmp)
                        finally:
                            if writer is not None:
                                writer.release()
                            mp4.unlink(missing_ok=True)
                    outputs.written.append(video_path)
                    outputs.json({"source": str(path), "keypoint_names": names, "fps": fps, "frame_size": list(size),
                                  "stride": stride, "boxes": "boxes file" if box_map is not None else "full frame",
                                  "frames": records}, f"{stem}.json")
                else:
                    image = read_image(path)[:, :, ::-1]  # BGR; errors name the file
                    people = predictor.predict(image, the_boxes, heatmaps=heatmaps)
                    image_id = image_id_for(path, entry)
                    outputs.json({"source": str(path), "image_id": image_id,
                                  "image_size": [image.shape[1], image.shape[0]],
                                  "keypoint_names": names,
                                  "boxes": "boxes file" if box_map is not None else "full frame",
                                  "people": _people_json(people)}, f"{stem}.json")
                    outputs.image(draw_pose(image, people, spec.keypoints, kpt_thr), f"{stem}_pose.jpg")
                    if heatmaps:
                        write_heatmaps(stem, people)
                    coco_rows += _coco_rows(people, image_id, joint_thr)
                    n_images += 1
                    n_people += len(people)
            except (ValueError, OSError) as err:
                failures.append(str(err))
                progress.console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
            elapsed = max(time.perf_counter() - start, 1e-9)
            progress.update(task, advance=1, rate=f"{(n_images + n_frames) / elapsed:.1f} img/s")
    if n_images:
        outputs.json(coco_rows, COCO_RESULTS_NAME)
    unboxed = [] if box_map is None else [f.name for f in files if f not in box_map]
    if unboxed:
        console.print(f"{len(unboxed)} input(s) have no boxes in {boxes} and so no people: "
                      f"{', '.join(unboxed[:3])}{', ...' if len(unboxed) > 3 else ''}", highlight=False)
    if ids_assigned:
        console.print(f"image ids: {len(ids_assigned)} file name(s) are not COCO ids ({', '.join(ids_assigned[:3])}"
                      f"{', ...' if len(ids_assigned) > 3 else ''}); their ids in {COCO_RESULTS_NAME} were assigned "
                      "in input order and are recorded in each image's JSON (image_id)", highlight=False)
    elapsed = max(time.perf_counter() - start, 1e-9)
    console.print(f"{n_images} images, {n_frames} video frames, {n_people} people, {len(outputs.written)} files "
                  f"written to {out} ({(n_images + n_frames) / elapsed:.1f} images/s)"
                  + (f"; {len(failures)} failed" if failures else ""), highlight=False)
    if failures:
        console.print(f"[red]{len(failures)} input(s) failed[/red]", highlight=False)
        raise typer.Exit(1)


__all__ = ["latest_run_checkpoint", "predict_command"]
