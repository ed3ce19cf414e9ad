"""MPII Human Pose, top-down, from the json layout of the official HRNet code and MMPose.

Each record: {"image": name, "center": [x, y], "scale": s, "joints": 16 x [x, y], "joints_vis": 16 x 0/1}
with MATLAB 1-based pixel coordinates and scale = person height / 200 px.

Like the official HRNet loader, this loader
  - moves the centre down by 15 * scale px (c_y += 15 * s) and multiplies the scale by 1.25,
  - converts the centre and joints from 1-based to 0-based pixels (subtracts 1), so that they follow the
    dmpose convention (pixel centres at integer coordinates, pixel (i, j) covers [j-0.5, j+0.5) x
    [i-0.5, i+0.5));
  - the box is then a square of side 200 * scale * 1.25 px, grown to the input aspect ratio (no further
    padding).

`load_mpii_gt` reads a gt_valid.mat-style file (head boxes, missing joints, joint positions) with scipy
for PCKh.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.io import loadmat
from torch.utils.data import Dataset

from dmpose.data.image import ImageCache
from dmpose.data.transforms import TopDownTransform
from dmpose.geometry import fix_aspect_ratio
from dmpose.keypoints import load_keypoint_set

__all__ = ["MpiiKeypoints", "MpiiRecord", "load_mpii_gt"]

logger = logging.getLogger(__name__)
NUM_JOINTS = load_keypoint_set("mpii16").num_keypoints  # the annotations' joints: the YAML set's


@dataclass
class MpiiRecord:
    index: int
    image: str
    center: np.ndarray  # (2,) 0-based image px, shifted down by 15 * scale
    size: np.ndarray  # (2,) image px: 200 * scale * 1.25, square
    keypoints: np.ndarray  # (16, 3) 0-based x, y and visibility 0/1


def _load_records(ann_file: Path) -> list[MpiiRecord]:
    if not ann_file.is_file():
        raise FileNotFoundError(f"annotation file not found: {ann_file}")
    try:
        data = json.loads(ann_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"annotation file {ann_file} is not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise ValueError(f"annotation file {ann_file} must hold a list of records, got {type(data).__name__}")
    records = []
    for i, a in enumerate(data):
        try:
            name, center, scale = a["image"], np.asarray(a["center"], np.float64), float(a["scale"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{ann_file}: annotation {i} lacks image/center/scale: {exc}") from None
        if center.shape != (2,):
            raise ValueError(f"{ann_file}: annotation {i} ({name}) has a bad center {a['center']!r}")
        if not scale > 0:
            raise ValueError(f"{ann_file}: annotation {i} ({name}) has a non-positive scale {scale} (box size)")
        joints = np.asarray(a.get("joints", np.zeros((NUM_JOINTS, 2))), np.float64)
        vis = np.asarray(a.get("joints_vis", np.zeros(NUM_JOINTS)), np.float64).reshape(-1)
        if joints.shape != (NUM_JOINTS, 2) or vis.shape != (NUM_JOINTS,):
            raise ValueError(f"{ann_file}: annotation {i} ({name}) has joints {joints.shape} / joints_vis {vis.shape}, "
                             f"expected ({NUM_JOINTS}, 2) / ({NUM_JOINTS},)")
        if center[0] != -1:  # as the official loader: move the centre down, enlarge the box
            center[1] += 15 * scale
            scale *= 1.25
        center = center - 1.0
        kps = np.concatenate([joints - 1.0, (vis > 0)[:, None].astype(np.float64)], axis=1)
        kps[vis <= 0, :2] = 0.0
        size = np.array([200.0 * scale, 200.0 * scale])
        records.append(MpiiRecord(i, name, center, size, kps))
    return records


class MpiiKeypoints(Dataset):
    """MPII json dataset (16 joints, keypoint set "mpii16"). Samples are as in dmpose.data.coco, with
    meta image (file name), index (annotation position), keypoints (16, 3) 0-based image px."""

    def __init__(self, ann_file: str | Path, image_dir: str | Path, transform: TopDownTransform,
                 subset: int | None = None, cache_images: bool = False):
        self.ann_file, self.image_dir = Path(ann_file), Path(image_dir)
        if transform.keypoints.num_keypoints != NUM_JOINTS:
            raise ValueError(f"MPII has {NUM_JOINTS} joints; keypoint set '{transform.keypoints.name}' has "
                             f"{transform.keypoints.num_keypoints}")
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_dir}")
        self.transform = transform
        self.records = _load_records(self.ann_file)
        if subset is not None:  # the persons of the first N images, as CocoKeypoints' subset (for training)
            if subset < 1:
                raise ValueError(f"subset must be >= 1 images, got {subset}")
            keep = set(list(dict.fromkeys(r.image for r in self.records))[:subset])
            self.records = [r for r in self.records if r.image in keep]
        self._images = ImageCache(self.image_dir, cache_images)
        names = sorted({r.image for r in self.records})
        missing = [n for n in names if not (self.image_dir / n).is_file()]
        if missing:  # named now, not when the sample is first drawn
            raise FileNotFoundError(f"{self.ann_file}: {len(missing)} of {len(names)} image files are missing from "
                                    f"{self.image_dir}, e.g. {missing[0]}")
        logger.info("%s: %d persons", self.ann_file, len(self.records))

    def warm_cache(self) -> int:
        """Decode every record's image into the cache now (before data-loader workers fork; a no-op without
        `cache_images`); returns how many are cached."""
        return self._images.warm(rec.image for rec in self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        rec = self.records[index]
        image = self._images.read(rec.image)
        size = fix_aspect_ratio(rec.size, self.transform.aspect_ratio)
        rng = self.transform.rng_for(index)
        meta = {"image": rec.image, "index": rec.index, "keypoints": rec.keypoints.copy()}
        return self.transform(image, rec.center, size, rec.keypoints[:, :2], rec.keypoints[:, 2], rng, meta)


def load_mpii_gt(path: str | Path) -> dict[str, np.ndarray]:
    """Read a gt_valid.mat-style file (as shipped with the HRNet/MMPose MPII evaluation).

    Expects `headboxes_src` (2, 2, N), `jnt_missing` (16, N) and optionally `pos_gt_src` (16, 2, N).
    Returns 0-based image px: headboxes (N, 2, 2) [[x1, y1], [x2, y2]], jnt_missing (N, 16) bool,
    joints (N, 16, 2) when present.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MPII ground-truth file not found: {path}")
    try:
        mat = loadmat(str(path))
    except Exception as exc:  # scipy raises several types for a bad file
        raise ValueError(f"cannot read MPII ground-truth file {path}: {exc}") from exc
    for key in ("headboxes_src", "jnt_missing"):
        if key not in mat:
            raise ValueError(f"MPII ground-truth file {path} has no '{key}' array")
    head = np.asarray(mat["headboxes_src"], np.float64)
    missing = np.asarray(mat["jnt_missing"])
    if head.ndim != 3 or head.shape[:2] != (2, 2) or missing.shape != (NUM_JOINTS, head.shape[2]):
        raise ValueError(f"{path}: headboxes_src {head.shape} / jnt_missing {missing.shape}, expected (2, 2, N) / "
                         f"({NUM_JOINTS}, N)")
    out = {"headboxes": head.transpose(2, 0, 1) - 1.0, "jnt_missing": missing.T.astype(bool)}
    if "pos_gt_src" in mat:
        pos = np.asarray(mat["pos_gt_src"], np.float64)
        if pos.shape != (NUM_JOINTS, 2, head.shape[2]):
            raise ValueError(f"{path}: pos_gt_src {pos.shape}, expected ({NUM_JOINTS}, 2, {head.shape[2]})")
        out["joints"] = pos.transpose(2, 0, 1) - 1.0
    return out
