"""Datasets (COCO, MPII, synthetic COCO-format), keypoint sets and the top-down transform.

Coordinates everywhere: pixel centres at integer coordinates, pixel (i, j) covers
[j-0.5, j+0.5) x [i-0.5, i+0.5), x right, y down, (x, y) in the last axis.
"""

from dmpose.data.coco import CocoKeypoints, coco_paths
from dmpose.data.keypoints import KeypointSet, load_keypoint_set
from dmpose.data.mpii import MpiiKeypoints, load_mpii_gt
from dmpose.data.synthetic import ensure_synthetic, generate_synthetic_coco
from dmpose.data.transforms import AugmentConfig, TopDownTransform

__all__ = [
    "AugmentConfig",
    "CocoKeypoints",
    "KeypointSet",
    "MpiiKeypoints",
    "TopDownTransform",
    "coco_paths",
    "ensure_synthetic",
    "generate_synthetic_coco",
    "load_keypoint_set",
    "load_mpii_gt",
]
