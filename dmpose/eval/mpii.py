"""MPII PCKh, as the official evaluation computes it, and the paper's Table-3 layout.

A joint is correct when ||pred - gt|| <= threshold x head size, head size = 0.6 x the diagonal of the
annotated head box (SC_BIAS 0.6 x norm(x2 - x1, y2 - y1)); distances <= the bound count (official `<=`).
Only visible (annotated) joints count. Per-joint PCKh = 100 x correct / visible.

Columns: Head = the mean of upper_neck (8) and head_top (9), as the official MATLAB table (genTablePCK);
the Python script of HRNet/SimpleBaseline reports head_top alone under "Head". Shoulder ... Ankle = the
mean of the left and right joint. Mean = all correct / all visible over the 14 joints other than pelvis (6)
and thorax (7), i.e. per-joint PCKh weighted by visible counts (official "Mean"/"Total").

PCKh@0.1 is computed at threshold 0.1. (The official Python script's "Mean@0.1" reads its threshold grid
at index 11, which is 0.11; numbers computed here at 0.1 are slightly lower than that.)

Coordinates: pred, gt and headboxes only enter through differences, so any shared pixel convention works;
dmpose's is integer pixel centres (MPII's own annotations are MATLAB 1-based, the loader shifts them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dmpose.keypoints import load_keypoint_set

__all__ = [
    "MPII_JOINT_NAMES",
    "PCKH_COLUMNS",
    "PCKhResult",
    "evaluate_mpii",
    "pckh",
]

SC_BIAS = 0.6
_MPII = load_keypoint_set("mpii16")  # the joints as the YAML file names them (the one definition)
MPII_JOINT_NAMES = _MPII.names
_K = _MPII.num_keypoints
_PART_JOINTS = {
    "Head": ("upper_neck", "head_top"),
    "Shoulder": ("right_shoulder", "left_shoulder"),
    "Elbow": ("right_elbow", "left_elbow"),
    "Wrist": ("right_wrist", "left_wrist"),
    "Hip": ("right_hip", "left_hip"),
    "Knee": ("right_knee", "left_knee"),
    "Ankle": ("right_ankle", "left_ankle"),
}
_PARTS = {part: tuple(MPII_JOINT_NAMES.index(n) for n in names) for part, names in _PART_JOINTS.items()}
_EXCLUDED_FROM_MEAN = tuple(MPII_JOINT_NAMES.index(n) for n in ("pelvis", "thorax"))
PCKH_COLUMNS = (*_PARTS, "Mean")


@dataclass(frozen=True)
class PCKhResult:
    """PCKh at one threshold, in percent.

    per_joint: (16,) PCKh per MPII joint (NaN for a joint never visible); visible_counts: (16,) ints;
    columns: {Head, Shoulder, Elbow, Wrist, Hip, Knee, Ankle, Mean} (a pair with a NaN side is NaN).
    """

    threshold: float
    per_joint: np.ndarray
    visible_counts: np.ndarray
    columns: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN -> None)."""

        def clean(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        return {
            "threshold": self.threshold,
            "columns": {k: clean(v) for k, v in self.columns.items()},
            "per_joint": {n: clean(v) for n, v in zip(MPII_JOINT_NAMES, self.per_joint)},
            "visible_counts": {n: int(c) for n, c in zip(MPII_JOINT_NAMES, self.visible_counts)},
        }


def _check(pred: Any, gt: Any, headboxes: Any, visible: Any) -> tuple[np.ndarray, ...]:
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    hb = np.asarray(headboxes, dtype=np.float64)
    vis = np.asarray(visible)
    if p.ndim != 3 or p.shape[1:] != (_K, 2):
        raise ValueError(f"pckh: pred must be (N, {_K}, 2), got shape {p.shape}")
    n = p.shape[0]
    if g.shape != (n, _K, 2):
        raise ValueError(f"pckh: gt must be ({n}, {_K}, 2) like pred, got shape {g.shape}")
    if hb.shape != (n, 2, 2):
        raise ValueError(f"pckh: headboxes must be ({n}, 2, 2) [[x1, y1], [x2, y2]], got shape {hb.shape}")
    if vis.shape != (n, _K):
        raise ValueError(f"pckh: visible must be ({n}, {_K}), got shape {vis.shape}")
    vis = vis.astype(bool)
    if not vis.any():
        raise ValueError("pckh: no visible joint to evaluate")
    bad = vis & ~(np.isfinite(p).all(-1) & np.isfinite(g).all(-1))
    if bad.any():
        person, joint = map(int, np.argwhere(bad)[0])
        raise ValueError(f"pckh: {int(bad.sum())} visible joints have non-finite pred/gt, e.g. person {person} "
                         f"joint {joint} ({MPII_JOINT_NAMES[joint]})")
    return p, g, hb, vis


def _head_sizes(hb: np.ndarray, vis: np.ndarray) -> np.ndarray:
    size = SC_BIAS * np.linalg.norm(hb[:, 1] - hb[:, 0], axis=-1)
    bad = vis.any(-1) & ~(np.isfinite(size) & (size > 0))
    if bad.any():
        raise ValueError(f"pckh: {int(bad.sum())} head boxes are empty or non-finite, "
                         f"e.g. person {int(np.argmax(bad))}")
    return size


def _result(threshold: float, scaled_err: np.ndarray, vis: np.ndarray) -> PCKhResult:
    correct = (scaled_err <= threshold) & vis
    counts = vis.sum(0)
    hits = correct.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_joint = np.where(counts > 0, 100.0 * hits / np.maximum(counts, 1), np.nan)
    columns = {name: float(0.5 * (per_joint[a] + per_joint[b])) for name, (a, b) in _PARTS.items()}
    used = np.ones(_K, dtype=bool)
    used[list(_EXCLUDED_FROM_MEAN)] = False
    total = counts[used].sum()
    columns["Mean"] = float(100.0 * hits[used].sum() / total) if total > 0 else math.nan
    return PCKhResult(float(threshold), per_joint, counts, columns)


def pckh(pred: Any, gt: Any, headboxes: Any, visible: Any, threshold: float = 0.5) -> PCKhResult:
    """PCKh at `threshold` (official MPII definition, see the module docstring).

    Args:
        pred, gt: (N, 16, 2) (x, y) in the MPII joint order, the same pixel convention for both.
        headboxes: (N, 2, 2) head box corners [[x1, y1], [x2, y2]].
        visible: (N, 16) bool, the joint is annotated (MPII's jnt_missing == 0); others are ignored.
    """
    return evaluate_mpii(pred, gt, headboxes, visible, thresholds=(threshold,))[0]


def evaluate_mpii(
    pred: Any, gt: Any, headboxes: Any, visible: Any, thresholds: Sequence[float] = (0.5, 0.1)
) -> list[PCKhResult]:
    """PCKh at each of `thresholds` (default @0.5 and @0.1); arguments as `pckh`."""
    p, g, hb, vis = _check(pred, gt, headboxes, visible)
    head = _head_sizes(hb, vis)
    with np.errstate(invalid="ignore"):  # invisible joints may hold NaN / -1 placeholders
        err = np.linalg.norm(np.where(vis[..., None], p - g, 0.0), axis=-1)
    scaled = np.divide(err, head[:, None], out=np.zeros_like(err), where=vis)
    return [_result(t, scaled, vis) for t in thresholds]
