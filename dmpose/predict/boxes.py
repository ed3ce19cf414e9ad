"""Person boxes: the arrays `Predictor` takes and the box files `dmpose predict --boxes` reads.

Boxes are [x, y, w, h] in image pixels (COCO's convention) with pixel centres at integer coordinates
(pixel (i, j) covers [j-0.5, j+0.5) x [i-0.5, i+0.5)), so the whole image is [-0.5, -0.5, W, H].
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dmpose.data.coco import clip_gt_box
from dmpose.detect.nms import BoxSelection, select_boxes

#: A box larger than this many times the image's larger side is refused (a unit mistake, not a person).
MAX_BOX_SCALE = 10

#: Given boxes below this score are dropped (dmpose predict --bbox-thr; MMPose's top-down demo default).
DEFAULT_BBOX_THR = 0.3

__all__ = ["BoxEntry", "DEFAULT_BBOX_THR", "MAX_BOX_SCALE", "as_box_array", "boxes_for_input", "coco_id_from_name",
           "full_frame_box", "load_boxes_file", "select_given_boxes"]


def full_frame_box(width: int, height: int) -> np.ndarray:
    """The box of a whole image, [-0.5, -0.5, W, H]: its edges are the image's outer pixel edges."""
    return np.array([-0.5, -0.5, float(width), float(height)])


def as_box_array(boxes: Any, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """`Predictor`'s boxes argument for a W x H image -> (boxes (N, 4) [x, y, w, h], scores (N,)).

    None -> the full frame; else (N, 4) [x, y, w, h] or (N, 5) with a score (default 1.0); a box that is
    not finite or has w, h <= 0 -> ValueError naming it."""
    if boxes is None:
        return full_frame_box(width, height)[None], np.ones(1)
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4)), np.zeros(0)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] not in (4, 5):
        raise ValueError(f"boxes must be (N, 4) [x, y, w, h] or (N, 5) with a score, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr[:, 2:4] <= 0):
        bad = int(np.flatnonzero(~np.isfinite(arr).all(1) | (arr[:, 2:4] <= 0).any(1))[0])
        raise ValueError(f"box {bad} {arr[bad].tolist()} must be finite with w, h > 0")
    scores = arr[:, 4] if arr.shape[1] == 5 else np.ones(len(arr))
    for i, (x, y, w, h) in enumerate(arr[:, :4]):
        if x + w <= -0.5 or y + h <= -0.5 or x >= width - 0.5 or y >= height - 0.5:
            raise ValueError(f"box {i} {arr[i].tolist()} lies wholly outside the {width}x{height} image")
        if max(w, h) > MAX_BOX_SCALE * max(width, height):
            raise ValueError(f"box {i} {arr[i].tolist()} is over {MAX_BOX_SCALE}x the {width}x{height} image's size")
        if not 0.0 <= scores[i] <= 1.0:
            raise ValueError(f"box {i} {arr[i].tolist()}: its score must lie in [0, 1], got {scores[i]:g}")
    return arr[:, :4].copy(), scores.copy()


@dataclass
class BoxEntry:
    """Boxes for one input: (N, 4) [x, y, w, h], (N,) scores, and the COCO image id when the file gave one."""

    boxes: np.ndarray
    scores: np.ndarray
    image_id: int | None = None


def coco_id_from_name(path: str | os.PathLike) -> int | None:
    """The COCO image id of a file named by COCO's convention (digits only, e.g. 000000000785.jpg)."""
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else None


def _check_box(values: Any, where: str, with_score: bool) -> tuple[list[float], float]:
    try:
        v = [float(x) for x in values]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: a box must be numbers [x, y, w, h{', score' if with_score else ''}], "
                         f"got {values!r}") from None
    if len(v) not in ((4, 5) if with_score else (4,)):
        raise ValueError(f"{where}: a box must be [x, y, w, h{', score' if with_score else ''}], got {values!r}")
    if not all(np.isfinite(v)) or v[2] <= 0 or v[3] <= 0:
        raise ValueError(f"{where}: box {values!r} must be finite with w, h > 0")
    if len(v) == 5 and not 0.0 <= v[4] <= 1.0:
        raise ValueError(f"{where}: box {values!r}: its score must lie in [0, 1]")
    return v[:4], (v[4] if len(v) == 5 else 1.0)


def _gt_boxes_as_results(data: dict, path: Path) -> list[dict]:
    """A COCO annotation file's person boxes as results rows ({image_id, file_name, bbox, score 1}), each box read
    as `dmpose eval --gt-boxes` reads it (`dmpose.data.coco.clip_gt_box`); crowd and non-person annotations left
    out."""
    images = {im.get("id"): im for im in data.get("images", []) if isinstance(im, dict)}
    cats = [c for c in data.get("categories", []) if isinstance(c, dict)]
    persons = {c.get("id") for c in cats if c.get("keypoints") is not None or c.get("name") == "person"} or {1}
    rows = []
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or ann.get("iscrowd", 0) or ann.get("category_id", 1) not in persons:
            continue
        image = images.get(ann.get("image_id"))
        if image is None or "bbox" not in ann:
            raise ValueError(f"boxes file {path}: annotation {i} has no bbox or an unknown image_id")
        _check_box(ann["bbox"], f"boxes file {path}: annotation {i}", with_score=False)
        box = clip_gt_box(ann["bbox"], int(image["width"]), int(image["height"]))
        if box is not None:
            rows.append({"image_id": image["id"], "file_name": image["file_name"], "bbox": box.tolist(), "score": 1.0,
                         "ground_truth": True})
    return rows


def load_boxes_file(path: str | os.PathLike, inputs: Sequence[Path]) -> dict[Path, BoxEntry]:
    """Person boxes for `inputs` from a json file, in either format:

    - COCO detection results: a list of {image_id, bbox [x, y, w, h], score, category_id (1 = person;
      others are skipped)}; `image_id` matches an input named by COCO's id convention
      (000000000785.jpg is id 785); an entry may instead give `file_name`.
    - a map {"file name or path": [[x, y, w, h, score], ...]} (score optional); a key matches an input
      by its path (as given or resolved) or by its file name.
    - a COCO annotation file (images + annotations): the ground-truth person boxes, read as `dmpose eval
      --gt-boxes` reads them (HRNet's rule: x2 = x1 + w - 1, clipped to the image; `clip_gt_box`), score 1.

    Scores must lie in [0, 1].

    Every entry must match exactly one input (else ValueError naming the entry). Inputs the file does not
    mention get no entry (no people)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"boxes file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"boxes file {path} is not valid JSON: {e}") from None
    by_name: dict[str, list[Path]] = {}
    by_path: dict[str, Path] = {}
    by_id: dict[int, list[Path]] = {}
    for p in inputs:
        by_name.setdefault(p.name, []).append(p)
        by_path[str(p)] = p
        by_path[str(p.resolve())] = p
        cid = coco_id_from_name(p)
        if cid is not None:
            by_id.setdefault(cid, []).append(p)

    def match_key(key: str, where: str) -> Path:
        if key in by_path:
            return by_path[key]
        resolved = str(Path(key).resolve())
        if resolved in by_path:
            return by_path[resolved]
        hits = by_name.get(Path(key).name, []) if Path(key).name == key else []
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ValueError(f"{where}: {key!r} matches {len(hits)} inputs ({', '.join(map(str, hits))}); "
                             "give the path instead")
        raise ValueError(f"{where}: {key!r} names no input among the {len(inputs)} given")

    out: dict[Path, BoxEntry] = {}
    lists: dict[Path, tuple[list, list, int | None]] = {}
    if isinstance(data, dict) and "annotations" in data and "images" in data:
        data = _gt_boxes_as_results(data, path)
    if isinstance(data, list):
        for i, det in enumerate(data):
            where = f"boxes file {path}: entry {i}"
            if not isinstance(det, dict) or "bbox" not in det or not ("image_id" in det or "file_name" in det):
                raise ValueError(f"{where}: a COCO detection needs bbox and image_id (or file_name), got {det!r:.120}")
            if det.get("category_id", 1) != 1:
                continue
            box, _ = _check_box(det["bbox"], where, with_score=False)
            try:
                score = float(det.get("score", 1.0))
            except (TypeError, ValueError):
                raise ValueError(f"{where}: score must be a number, got {det.get('score')!r}") from None
            if not 0.0 <= score <= 1.0:
                raise ValueError(f"{where}: score must lie in [0, 1], got {score:g}")
            image_id = None
            if det.get("ground_truth") and Path(str(det["file_name"])).name not in by_name:
                continue  # an annotation file covers other images too
            if "file_name" in det:
                target = match_key(str(det["file_name"]), where)
                image_id = int(det["image_id"]) if "image_id" in det else None
            else:
                try:
                    image_id = int(det["image_id"])
                except (TypeError, ValueError):
                    raise ValueError(f"{where}: image_id must be an integer, got {det['image_id']!r}") from None
                hits = by_id.get(image_id, [])
                if len(hits) != 1:
                    raise ValueError(f"{where}: image_id {image_id} matches "
                                     f"{'no input' if not hits else f'{len(hits)} inputs'} (COCO id convention: "
                                     f"{image_id:012d}.jpg)")
                target = hits[0]
            b, s, _ = lists.setdefault(target, ([], [], image_id))
            b.append(box)
            s.append(score)
    elif isinstance(data, dict):
        for key, boxes in data.items():
            where = f"boxes file {path}: entry {key!r}"
            target = match_key(str(key), where)
            if not isinstance(boxes, list):
                raise ValueError(f"{where}: must be a list of [x, y, w, h, score] boxes, got {boxes!r:.80}")
            b, s, _ = lists.setdefault(target, ([], [], None))
            for n, values in enumerate(boxes):
                box, score = _check_box(values, f"{where} box {n}", with_score=True)
                b.append(box)
                s.append(score)
    else:
        raise ValueError(f"boxes file {path}: expected a list of COCO detections or a {{file: boxes}} map, "
                         f"got {type(data).__name__}")
    for target, (b, s, image_id) in lists.items():
        out[target] = BoxEntry(np.asarray(b, np.float64).reshape(-1, 4), np.asarray(s, np.float64), image_id)
    return out


def boxes_for_input(box_map: dict[Path, BoxEntry] | None, path: Path) -> np.ndarray | None:
    """The boxes argument of `Predictor` for the input `path`: None without a box file (one person filling
    the frame), else (N, 5) [x, y, w, h, score] from `box_map`, (0, 5) for an input it does not mention."""
    if box_map is None:
        return None
    entry = box_map.get(path)
    if entry is None:
        return np.zeros((0, 5))
    return np.concatenate([entry.boxes, entry.scores[:, None]], 1)


def select_given_boxes(boxes: np.ndarray, bbox_thr: float = DEFAULT_BBOX_THR, nms_thr: float | None = None,
                       max_people: int | None = None) -> tuple[np.ndarray, BoxSelection]:
    """Given (N, 5) [x, y, w, h, score] boxes (`boxes_for_input`) -> the kept ones, highest score first, and what
    each rule dropped: score >= bbox_thr, NMS at IoU nms_thr (None: none), at most max_people (None: all). The
    selection is the detector's (`dmpose.detect.select_boxes`), so given and detected boxes are treated alike."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 5)
    chosen = select_boxes(boxes[:, :4], boxes[:, 4], bbox_thr, nms_thr, max_people)
    return boxes[chosen.keep], chosen
