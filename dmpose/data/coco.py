"""COCO keypoints, top-down: one sample per person box.

Standard layout under a root folder (`coco_paths`):
    annotations/person_keypoints_{split}.json, {split}/*.jpg,
    person_detection_results/COCO_val2017_detections_AP_H_56_person.json (optional, for eval).

Training (mode="train") and evaluation with ground-truth boxes (mode="eval", no detections) keep every
person annotation that is not crowd, has at least one labelled keypoint (v > 0) and whose box, clipped
to the image as in the official HRNet loader, is not empty (size-0 boxes included); the rest is counted
and logged. Evaluation with a detection json keeps person detections with score >= det_score_threshold
(counted).

Structure is validated on load: a missing, null or mistyped field (image id/file_name/width/height,
annotation id/image_id/keypoints/bbox, detection image_id/bbox/score) and NaN/Inf in a box, a keypoint
or a score raise ValueError naming the file, the entry and the field; a detection box of size 0 too.

Coordinates: COCO keypoints and boxes are used as given, with pixel centres at integer coordinates
(pixel (i, j) covers [j-0.5, j+0.5) x [i-0.5, i+0.5)); a box [x, y, w, h] has centre (x + w/2, y + h/2).

A sample (dict) holds:
  image (3, H, W) float32, normalised with the ImageNet mean/std;
  keypoints_hm (K, 2) float32 heatmap px (0 where weight 0); weights (K,) float32;
  target: the codec's targets (DM: keypoints_hm + weights; Gaussian: heatmaps (K, Hh, Wh) + weights);
  meta: image_id, annotation_id (-1 for detections), score (1.0 for GT boxes), keypoints (K, 3) image px
    with COCO flags (zeros for detections), center, size (image px), rotation, flipped, half_body,
    affine_input / affine_heatmap (2x3 image -> input / heatmap).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from dmpose.data.image import ImageCache
from dmpose.data.layouts import DEFAULT_DETECTION_FILE, coco_paths
from dmpose.data.transforms import TopDownTransform
from dmpose.geometry import box_to_center_scale

__all__ = ["CocoKeypoints", "PersonRecord", "clip_gt_box"]

logger = logging.getLogger(__name__)


@dataclass
class PersonRecord:
    image_id: int
    file_name: str
    annotation_id: int
    box_xywh: np.ndarray  # (4,) image px
    score: float
    keypoints: np.ndarray  # (K, 3): x, y image px, COCO visibility flag


def _load_json(path: Path, what: str):
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} {path} is not valid JSON: {exc}") from exc


def _is_int(v) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _field(entry, key: str, ok, expected: str, path: Path, where: str):
    """entry[key] after checking it (`ok(value)`); ValueError naming the file, the entry and the field."""
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: {where} must be a JSON object, got {type(entry).__name__}: {str(entry)[:80]}")
    if key not in entry or entry[key] is None:
        raise ValueError(f"{path}: {where} has no '{key}' field" if key not in entry
                         else f"{path}: {where} field '{key}' is null, expected {expected}")
    value = entry[key]
    if not ok(value):
        raise ValueError(f"{path}: {where} field '{key}' must be {expected}, got {str(value)[:80]}")
    return value


def _numbers(n: int):
    return lambda v: isinstance(v, list) and len(v) == n and all(_is_number(x) for x in v)


def _box(entry, path: Path, where: str, positive: bool) -> list[float]:
    """A finite [x, y, w, h] with w, h >= 0 (> 0 when `positive`), else ValueError naming the field."""
    box = _field(entry, "bbox", _numbers(4), "a list of 4 finite numbers [x, y, w, h]", path, where)
    if positive and (box[2] <= 0 or box[3] <= 0):
        raise ValueError(f"{path}: {where} field 'bbox' has an empty box (need w, h > 0): {box!r}")
    if box[2] < 0 or box[3] < 0:
        raise ValueError(f"{path}: {where} has a negative box size: {box!r}")
    return [float(v) for v in box]


def clip_gt_box(box, width: int, height: int) -> np.ndarray | None:
    """How a COCO ground-truth box is read (the official HRNet loader's rule, kept so that published GT-box numbers
    compare): x2 = x1 + w - 1 clipped to [0, width-1], likewise y; None when nothing is left."""
    x, y, w, h = box
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
    y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
    if x2 < x1 or y2 < y1 or w * h <= 0:
        return None
    return np.array([x1, y1, x2 - x1, y2 - y1], dtype=np.float64)


class CocoKeypoints(Dataset):
    """COCO-format keypoint dataset (any keypoint set whose size matches the annotations).

    Args:
        ann_file: person_keypoints_*.json; image_dir: folder with the images.
        transform: TopDownTransform (input/heatmap size, codec, keypoint set, augmentation or None).
        detections: optional COCO-results json of person boxes (evaluation only).
        det_score_threshold: keep detections with score >= this.
        subset: keep only the persons (or detections) of the first `subset` images (in the file's image order).
        cache_images: keep each decoded image in memory after its first read (per process; a data-loader
            worker has its own cache). The synthetic default's 1000 images take about 200 MB.
    """

    def __init__(self, ann_file: str | Path, image_dir: str | Path, transform: TopDownTransform,
                 detections: str | Path | None = None, det_score_threshold: float = 0.0,
                 subset: int | None = None, cache_images: bool = False):
        self.ann_file, self.image_dir = Path(ann_file), Path(image_dir)
        self.transform = transform
        self.num_keypoints = transform.keypoints.num_keypoints
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_dir}")
        data = _load_json(self.ann_file, "annotation file")
        # an image-info file (test-dev) has no annotations: usable with detections only
        required = ("images", "annotations", "categories") if detections is None else ("images",)
        for key in required:
            if key not in data:
                raise ValueError(f"annotation file {self.ann_file} has no '{key}' field")
        if not isinstance(data, dict):
            raise ValueError(f"annotation file {self.ann_file} must hold a JSON object, got {type(data).__name__}")
        self.images = self._load_images(data["images"])
        self._check_categories(data.get("categories", []))
        self.person_categories = self._keypoint_categories(data.get("categories", []))
        self.gt_records = self._load_gt(data.get("annotations", []))
        self.detections = None if detections is None else Path(detections)
        self.records = (self.gt_records if detections is None
                        else self._load_detections(self.detections, det_score_threshold))
        if subset is not None:
            if subset < 1:
                raise ValueError(f"subset must be >= 1 images, got {subset}")
            keep = {int(im["id"]) for im in data["images"][:subset]}
            self.images = {k: v for k, v in self.images.items() if k in keep}
            self.gt_records = [r for r in self.gt_records if r.image_id in keep]
            self.records = [r for r in self.records if r.image_id in keep]
            logger.info("%s: subset of the first %d images: %d samples", self.ann_file, len(keep), len(self.records))
        self._images = ImageCache(self.image_dir, cache_images)
        self._sizes = {im["file_name"]: (int(im["width"]), int(im["height"])) for im in self.images.values()}
        self._check_files()

    def _check_files(self) -> None:
        """Every image a record uses exists, checked now rather than when its sample is first drawn."""
        names = sorted({r.file_name for r in self.records})
        missing = [n for n in names if not (self.image_dir / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.ann_file}: {len(missing)} of {len(names)} image files are missing from "
                                    f"{self.image_dir}, e.g. {missing[0]}")

    @classmethod
    def from_root(cls, root: str | Path, split: str, transform: TopDownTransform,
                  detections: bool | str | Path = False, det_score_threshold: float = 0.0,
                  subset: int | None = None, cache_images: bool = False) -> CocoKeypoints:
        """The standard layout under `root`; detections=True uses root/DEFAULT_DETECTION_FILE."""
        ann_file, image_dir = coco_paths(root, split)
        det = Path(root) / DEFAULT_DETECTION_FILE if detections is True else (detections or None)
        return cls(ann_file, image_dir, transform, det, det_score_threshold, subset, cache_images)

    def read_image(self, file_name: str) -> np.ndarray:
        """The decoded RGB image in its annotation's pixel frame (`dmpose.data.image.read_image`; from the cache
        when `cache_images`; callers must not modify it)."""
        return self._images.read(file_name, self._sizes.get(file_name))

    def warm_cache(self) -> int:
        """Decode every record's image into the cache now; returns how many are cached. Called before
        data-loader workers fork, so that they share one cache instead of each decoding its own every epoch
        (a no-op without `cache_images`)."""
        return self._images.warm((rec.file_name for rec in self.records), self._sizes)

    def _check_categories(self, categories) -> None:
        """A category that names its keypoints must name the keypoint set's, in its order: the same count
        with other names would silently train joint i on another joint's labels."""
        ks = self.transform.keypoints
        for c in categories if isinstance(categories, list) else []:
            names = c.get("keypoints") if isinstance(c, dict) else None
            if not isinstance(names, list) or list(names) == list(ks.names):
                continue
            if len(names) != len(ks.names):
                detail = f"{len(names)} keypoints, the keypoint set {len(ks.names)}"
            else:
                i = next(i for i, (a, b) in enumerate(zip(names, ks.names)) if a != b)
                detail = f"keypoint {i} is {names[i]!r} there and {ks.names[i]!r} in the keypoint set"
            raise ValueError(f"{self.ann_file}: category {c.get('name')!r} names other keypoints than keypoint set "
                             f"'{ks.name}' ({detail}); give the dataset's keypoints in a keypoint YAML "
                             "(model.keypoints: path/to/keypoints.yaml, docs/training.md)")

    @staticmethod
    def _keypoint_categories(categories) -> set[int] | None:
        """The ids of the categories annotated with keypoints (those that name keypoints, else 'person'); None
        when the file lists no categories (then every annotation counts)."""
        cats = [c for c in categories if isinstance(c, dict) and "id" in c] if isinstance(categories, list) else []
        if not cats:
            return None
        named = {int(c["id"]) for c in cats if c.get("keypoints") is not None}
        return named or {int(c["id"]) for c in cats if c.get("name") == "person"}

    def _load_images(self, images) -> dict[int, dict]:
        path = self.ann_file
        if not isinstance(images, list):
            raise ValueError(f"{path}: field 'images' must be a list, got {type(images).__name__}")
        out = {}
        for i, im in enumerate(images):
            where = f"images[{i}]"
            image_id = int(_field(im, "id", _is_int, "an integer", path, where))
            _field(im, "file_name", lambda v: isinstance(v, str) and v, "a file name", path, f"{where} (id {image_id})")
            for key in ("width", "height"):
                _field(im, key, lambda v: _is_int(v) and v > 0, "a positive integer", path, f"{where} (id {image_id})")
            out[image_id] = im
        return out

    def _load_gt(self, annotations) -> list[PersonRecord]:
        k = self.num_keypoints
        path = self.ann_file
        if not isinstance(annotations, list):
            raise ValueError(f"{path}: field 'annotations' must be a list, got {type(annotations).__name__}")
        records, crowd, unlabelled, empty, other = [], 0, 0, 0, 0
        for i, ann in enumerate(annotations):
            aid = _field(ann, "id", _is_int, "an integer", path, f"annotations[{i}]")
            where = f"annotations[{i}] (annotation id {aid})"
            if self.person_categories is not None and ann.get("category_id", 1) not in self.person_categories:
                other += 1  # another category's annotation (the detections loader drops them too)
                continue
            kps = ann.get("keypoints")
            if not isinstance(kps, list) or len(kps) != 3 * k:
                n = None if not isinstance(kps, list) else len(kps)
                raise ValueError(f"{path}: annotation id {aid} has {n} keypoint values, expected {3 * k} "
                                 f"({k} keypoints x 3) for keypoint set '{self.transform.keypoints.name}'")
            _field(ann, "keypoints", _numbers(3 * k), f"{3 * k} finite numbers", path, where)
            box = _box(ann, path, f"annotation id {aid}", positive=False)
            image_id = int(_field(ann, "image_id", _is_int, "an integer", path, where))
            image = self.images.get(image_id)
            if image is None:
                raise ValueError(f"{path}: annotation id {aid} refers to unknown image id {image_id}")
            kps = np.asarray(kps, dtype=np.float64).reshape(k, 3)
            if ann.get("iscrowd", 0):
                crowd += 1
                continue
            if not np.any(kps[:, 2] > 0):
                unlabelled += 1
                continue
            clipped = clip_gt_box(box, int(image["width"]), int(image["height"]))
            if clipped is None:  # size 0, or outside the image after clipping: filtered as the official loader
                empty += 1
                continue
            records.append(PersonRecord(image_id, image["file_name"], int(aid), clipped, 1.0, kps))
        logger.info("%s: %d person boxes kept; filtered %d crowd, %d without labelled keypoints, %d empty boxes, %d of "
                    "other categories", path, len(records), crowd, unlabelled, empty, other)
        return records

    def _load_detections(self, path: Path, threshold: float) -> list[PersonRecord]:
        dets = _load_json(path, "detection file")
        if not isinstance(dets, list):
            raise ValueError(f"detection file {path} must hold a list of results, got {type(dets).__name__}")
        zeros = np.zeros((self.num_keypoints, 3))
        records, other_class, low = [], 0, 0
        for i, det in enumerate(dets):
            where = f"entry {i}"
            image_id = int(_field(det, "image_id", _is_int, "an integer", path, where))
            score = float(_field(det, "score", _is_number, "a finite number", path, where))
            if det.get("category_id", 1) != 1:
                other_class += 1
                continue
            box = _box(det, path, where, positive=True)
            if image_id not in self.images:
                raise ValueError(f"detection file {path}: entry {i} refers to unknown image id {image_id}")
            if score < threshold:
                low += 1
                continue
            records.append(PersonRecord(image_id, self.images[image_id]["file_name"], -1,
                                        np.asarray(box, dtype=np.float64), score, zeros))
        logger.info("%s: %d detections kept; filtered %d below score %.3g, %d not person",
                    path, len(records), low, threshold, other_class)
        return records

    def __len__(self) -> int:
        return len(self.records)

    def center_size(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Centre and padded, aspect-fixed size (image px) of record `index`."""
        t = self.transform
        return box_to_center_scale(self.records[index].box_xywh, t.aspect_ratio, t.padding)

    def __getitem__(self, index: int) -> dict:
        rec = self.records[index]
        image = self.read_image(rec.file_name)
        center, size = self.center_size(index)
        rng = self.transform.rng_for(index)
        meta = {"image_id": rec.image_id, "annotation_id": rec.annotation_id, "score": rec.score,
                "keypoints": rec.keypoints.copy()}
        return self.transform(image, center, size, rec.keypoints[:, :2], rec.keypoints[:, 2], rng, meta)
