"""The files `dmpose predict` writes under its output folder, and what they hold.

Per image STEM.json (a record: source, image_id, image_size [W, H], keypoint_names, boxes, people) and
STEM_pose.jpg (the overlay); per video STEM.json (source, keypoint_names, fps, frame_size [W, H], stride,
boxes, frames: one record per predicted frame) and STEM_pose.mp4 (the annotated video); with heatmaps,
STEM_heatmaps_I.jpg per person (STEM_frameNNNNNN_heatmaps_I.jpg per video frame); per call
coco_results.json (COCO results rows, scored as evaluation scores them).

STEM is the input's file stem, made unique within the call (name_2, name_3, ...); no output is ever an
input's path, and no output replaces a file that dmpose predict did not write in this folder: the folder's
manifest (.dmpose-predict.json) lists what earlier calls wrote, and any other existing file's name is skipped
for the next free one (coco_results_2.json, ...). Every file is written atomically. Keypoints are image
pixels, pixel centres at integer coordinates, (x, y) last.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dmpose.atomic import atomic_output
from dmpose.eval.coco import rescore, to_coco_results, write_json
from dmpose.predict.boxes import BoxEntry, coco_id_from_name
from dmpose.predict.media import AnnotatedVideoWriter
from dmpose.predict.predictor import Person, VideoFrame
from dmpose.spec import PoseSpec
from dmpose.viz import draw_heatmaps, draw_pose

__all__ = [
    "BOXES_FROM_FILE",
    "DETECTED",
    "COCO_RESULTS_NAME",
    "FULL_FRAME",
    "ImageIds",
    "PredictionOutputs",
    "VideoOutput",
    "coco_rows",
]

COCO_RESULTS_NAME = "coco_results.json"
MANIFEST_NAME = ".dmpose-predict.json"  # the files dmpose predict wrote in this folder
#: A record's "boxes": where its person boxes came from.
BOXES_FROM_FILE, FULL_FRAME, DETECTED = "boxes file", "full frame", "person detector"
#: The files named after an input's stem (the heatmap panels add an index, so they cannot collide).
_STEM_SUFFIXES = (".json", "_pose.jpg", "_pose.mp4")


def people_json(people: Sequence[Person]) -> list[dict[str, Any]]:
    return [p.to_dict() for p in people]


def coco_rows(people: Sequence[Person], image_id: int, joint_threshold: float) -> list[dict[str, Any]]:
    """COCO results rows, scored as evaluation scores them (box score x mean confidence above the threshold)."""
    inst = [{"image_id": image_id, "box_score": p.bbox_score,
             "keypoints": np.concatenate([p.keypoints, np.asarray(p.scores, np.float64)[:, None]], 1)} for p in people]
    return to_coco_results(rescore(inst, joint_threshold)) if inst else []


class ImageIds:
    """COCO image ids for the results rows: the box file's id, else the file name's (000000000785.jpg is
    785), else one assigned in input order above the largest id among the inputs' names (`assigned`
    lists those files' names)."""

    def __init__(self, inputs: Sequence[Path]):
        self._next = 1 + max([coco_id_from_name(f) or 0 for f in inputs] + [0])
        self.assigned: list[str] = []
        self._used: dict[int, Path] = {}  # one id per input: a second file of the same name gets its own

    def __call__(self, path: Path, entry: BoxEntry | None = None) -> int:
        if entry is not None and entry.image_id is not None:
            return entry.image_id
        cid = coco_id_from_name(path)
        if cid is not None and self._used.get(cid, path) == path:
            self._used[cid] = path
            return cid
        self.assigned.append(str(path) if cid is not None else path.name)
        self._next += 1
        self._used[self._next - 1] = path
        return self._next - 1


class PredictionOutputs:
    """The outputs of one call under `out` (see the module docstring); `written` lists the files written.

    spec: the checkpoint's (keypoint names and skeleton, the rescoring threshold); kpt_thr: joints below
    it are not drawn; heatmaps: also write the heatmap panels; boxes: BOXES_FROM_FILE, DETECTED or FULL_FRAME."""

    def __init__(self, out: str | os.PathLike, inputs: Sequence[Path], spec: PoseSpec, kpt_thr: float = 0.3,
                 heatmaps: bool = False, boxes: str = FULL_FRAME):
        self.out = Path(out)
        self.spec, self.kpt_thr, self.heatmaps, self.boxes = spec, kpt_thr, heatmaps, boxes
        self.names = list(spec.keypoints.names)
        self.joint_threshold = spec.codec.rescore_threshold
        self.forbidden = {Path(p).resolve() for p in inputs}
        self.taken: set[Path] = set()
        self.written: list[Path] = []
        self.coco_rows: list[dict[str, Any]] = []
        self.manifest = self._read_manifest()
        # every input's stem, in input order, whether or not it is read successfully later
        self._stems = {Path(p): self._new_stem(Path(p)) for p in inputs}

    # ---- names
    def stem(self, source: Path) -> str:
        """The stem of `source`'s outputs: its file stem, or name_2, name_3 ... if taken or an input's."""
        if source not in self._stems:
            self._stems[source] = self._new_stem(source)
        return self._stems[source]

    def _read_manifest(self) -> set[str]:
        try:
            names = json.loads((self.out / MANIFEST_NAME).read_text())
        except (OSError, ValueError):
            return set()
        return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()

    def _foreign(self, p: Path) -> bool:
        """An existing file this command did not write here (never replaced)."""
        return p.exists() and p.name not in self.manifest

    def free_name(self, name: str) -> str:
        """`name`, or NAME_2.EXT, NAME_3.EXT ... when a file of that name exists that predict did not write."""
        stem, suffix = Path(name).stem, Path(name).suffix
        candidate, n = name, 1
        while self._foreign(self.out / candidate) or (self.out / candidate).resolve() in self.forbidden:
            n += 1
            candidate = f"{stem}_{n}{suffix}"
        return candidate

    def _new_stem(self, source: Path) -> str:
        base, n = source.stem, 1
        name = base
        while any((self.out / f"{name}{suffix}").resolve() in self.taken | self.forbidden
                  or self._foreign(self.out / f"{name}{suffix}") for suffix in _STEM_SUFFIXES):
            n += 1
            name = f"{base}_{n}"
        for suffix in _STEM_SUFFIXES:
            self.taken.add((self.out / f"{name}{suffix}").resolve())
        return name

    def path(self, name: str) -> Path:
        """out/name; ValueError if that is an input or a file this command did not write here."""
        p = self.out / name
        if p.resolve() in self.forbidden:
            raise ValueError(f"refusing to overwrite the input {p}")
        if self._foreign(p):
            raise ValueError(f"refusing to overwrite {p}: dmpose predict did not write it")
        return p

    def _wrote(self, p: Path) -> None:
        self.written.append(p)
        if p.name not in self.manifest:
            self.manifest.add(p.name)
            write_json(sorted(self.manifest), self.out / MANIFEST_NAME)

    # ---- files
    def json(self, obj: Any, name: str) -> Path:
        p = write_json(obj, self.path(name))
        self._wrote(p)
        return p

    def image(self, image: np.ndarray, name: str) -> Path:
        """Write a BGR image, encoded by the name's extension."""
        p = self.path(name)
        ok, buf = cv2.imencode(p.suffix, image)
        if not ok:
            raise ValueError(f"cannot encode {p}")
        with atomic_output(p) as tmp:
            tmp.write_bytes(buf.tobytes())
        self._wrote(p)
        return p

    def heatmap_panels(self, prefix: str, people: Sequence[Person]) -> None:
        """PREFIX_heatmaps_I.jpg per person, when heatmaps are on (the people then carry crop and heatmaps)."""
        if not self.heatmaps:
            return
        for i, p in enumerate(people):
            self.image(draw_heatmaps(p.crop[:, :, ::-1], p.heatmaps, self.names), f"{prefix}_heatmaps_{i}.jpg")

    def overlay(self, image: np.ndarray, people: Sequence[Person]) -> np.ndarray:
        """The BGR image with the people drawn."""
        return draw_pose(image, people, self.spec.keypoints, self.kpt_thr)

    # ---- one input
    def image_result(self, source: Path, image: np.ndarray, people: Sequence[Person], image_id: int,
                     exif_orientation: int = 1) -> None:
        """STEM.json, STEM_pose.jpg and the heatmap panels of a BGR image; its COCO rows kept for coco_results.
        `exif_orientation`: the EXIF orientation applied when the photo was read (1: none; keypoints are in the
        pixels as displayed)."""
        stem = self.stem(source)
        self.json({"source": str(source), "image_id": image_id, "image_size": [image.shape[1], image.shape[0]],
                   "exif_orientation": exif_orientation, "keypoint_names": self.names, "boxes": self.boxes,
                   "people": people_json(people)}, f"{stem}.json")
        self.image(self.overlay(image, people), f"{stem}_pose.jpg")
        self.heatmap_panels(stem, people)
        self.coco_rows += coco_rows(people, image_id, self.joint_threshold)

    @contextmanager
    def video_result(self, source: Path, fps: float, size: tuple[int, int], stride: int) -> Iterator[VideoOutput]:
        """Yield a `VideoOutput` to `add` the predicted frames to. STEM_pose.mp4 (at fps / stride) is
        renamed into place when the block ends without an error, then STEM.json is written."""
        stem = self.stem(source)
        path = self.path(f"{stem}_pose.mp4")
        with AnnotatedVideoWriter(path, fps / stride) as writer:
            video = VideoOutput(self, stem, writer)
            yield video
        self._wrote(path)
        self.json({"source": str(source), "keypoint_names": self.names, "fps": fps, "frame_size": list(size),
                   "stride": stride, "boxes": self.boxes, "lost_frames": video.lost, "frames": video.records},
                  f"{stem}.json")

    def coco_results(self) -> Path:
        """coco_results.json (or the next free name: `free_name`) with the rows of every image so far."""
        return self.json(self.coco_rows, self.free_name(COCO_RESULTS_NAME))


class VideoOutput:
    """A video's outputs while it is predicted: the annotated frames, the records, the heatmap panels."""

    def __init__(self, outputs: PredictionOutputs, stem: str, writer: AnnotatedVideoWriter):
        self.outputs, self.stem, self.writer = outputs, stem, writer
        self.records: list[dict[str, Any]] = []
        self.lost: list[int] = []  # frames that could not be decoded (`dmpose.predict.media.iter_video`)

    def add(self, frame: VideoFrame) -> None:
        self.writer.write(self.outputs.overlay(frame.frame, frame.people))
        self.records.append({"frame": frame.index, "time_s": frame.time_s, "people": people_json(frame.people)})
        self.outputs.heatmap_panels(f"{self.stem}_frame{frame.index:06d}", frame.people)
