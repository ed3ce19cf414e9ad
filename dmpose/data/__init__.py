"""Datasets (COCO, MPII, synthetic COCO-format) and the top-down transform (keypoint sets: `dmpose.keypoints`).

Coordinates everywhere: pixel centres at integer coordinates, pixel (i, j) covers
[j-0.5, j+0.5) x [i-0.5, i+0.5), x right, y down, (x, y) in the last axis.
"""

from dmpose.data.coco import CocoKeypoints
from dmpose.data.layouts import DEFAULT_DETECTION_FILE, coco_paths, mpii_paths
from dmpose.data.mpii import MpiiKeypoints, load_mpii_gt
from dmpose.data.synthetic import ensure_synthetic, generate_synthetic_coco
from dmpose.data.transforms import AugmentConfig, TopDownTransform

__all__ = [
    "AugmentConfig",
    "CocoKeypoints",
    "DEFAULT_DETECTION_FILE",
    "MpiiKeypoints",
    "TopDownTransform",
    "coco_paths",
    "ensure_synthetic",
    "generate_synthetic_coco",
    "load_mpii_gt",
    "mpii_paths",
]
