"""Evaluation end to end: the whole geometry chain with an oracle model, the CLI, MPII PCKh, bad input.

The oracle is a torch module that, told the batch (`observe_batch`, the hook `predict_dataset` offers),
renders for each crop the heatmaps a perfect model would output: the ground-truth keypoints mapped into
the heatmap with the sample's image -> heatmap affine (computed here with plain float64 matrix algebra),
drawn as the four bilinear masses of the dot (what the DM loss's sub-pixel demanders ask for) or as an
unbiased Gaussian. On the mirrored crop it renders the mirrored scene: x -> W-1-x with left and right
exchanged, independently of dmpose's flip_back. dmpose's own inference then has to flip back, average,
decode, and invert the affine; any half-pixel or flip error costs AP.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from dmpose.codec import DMCodec
from dmpose.data.coco import CocoKeypoints
from dmpose.data.keypoints import load_keypoint_set
from dmpose.data.mpii import MpiiKeypoints
from dmpose.data.transforms import TopDownTransform
from dmpose.eval.evaluate import evaluate_coco_predictions, evaluate_mpii_predictions
from dmpose.eval.topdown import predict_dataset

torch.set_num_threads(1)  # 2 shared cores: more threads are slower under load

INPUT_WH, HEATMAP_WH = (192, 256), (48, 64)
COCO = load_keypoint_set("coco17")
MPII = load_keypoint_set("mpii16")


def render(points: np.ndarray, labelled: np.ndarray, size_wh, kind: str, sigma: float = 2.0) -> np.ndarray:
    """(B, K, 2) heatmap-pixel points -> (B, K, H, W) float64 heatmaps; unlabelled joints stay zero.

    kind "dots": the four bilinear masses on the pixel centres around the point (integer-centre pixels;
    masses falling outside the heatmap are dropped); "gaussian": exp(-d^2 / 2 sigma^2) centred exactly
    on the point."""
    w, h = size_wh
    b, k, _ = points.shape
    out = np.zeros((b, k, h, w))
    xs, ys = np.arange(w), np.arange(h)
    for i in range(b):
        for j in range(k):
            if not labelled[i, j]:
                continue
            x, y = points[i, j]
            if kind == "gaussian":
                out[i, j] = np.exp(-((ys[:, None] - y) ** 2 + (xs[None, :] - x) ** 2) / (2 * sigma**2))
                continue
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            fx, fy = x - x0, y - y0
            for dx, dy, m in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
                if 0 <= x0 + dx < w and 0 <= y0 + dy < h:
                    out[i, j, y0 + dy, x0 + dx] += m
    return out


class Oracle(nn.Module):
    """A perfect top-down model: renders each crop's ground truth (see the module docstring)."""

    def __init__(self, flip_pairs, heatmap_wh=HEATMAP_WH, kind: str = "dots"):
        super().__init__()
        self.heatmap_wh, self.kind = heatmap_wh, kind
        k = 1 + max(max(p) for p in flip_pairs)
        self.partner = list(range(k))
        for a, b in flip_pairs:
            self.partner[a], self.partner[b] = b, a
        self.images = self.points = self.labelled = None
        self.calls = {"direct": 0, "mirrored": 0}

    def observe_batch(self, batch: dict) -> None:
        kp = batch["meta"]["keypoints"].numpy().astype(np.float64)  # (B, K, 3) image px + COCO flag
        aff = batch["meta"]["affine_heatmap"].numpy().astype(np.float64)  # (B, 2, 3) image -> heatmap
        self.images = batch["image"]
        self.points = np.einsum("bij,bkj->bki", aff[:, :, :2], kp[..., :2]) + aff[:, None, :, 2]
        self.labelled = kp[..., 2] > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        partner = self.partner + list(range(len(self.partner), self.points.shape[1]))
        if torch.equal(x, self.images):
            self.calls["direct"] += 1
            points, labelled = self.points, self.labelled
        else:
            assert torch.equal(x, self.images.flip(-1)), "the flip test must mirror the crop along its width"
            self.calls["mirrored"] += 1
            points, labelled = self.points[:, partner].copy(), self.labelled[:, partner]
            points[..., 0] = (self.heatmap_wh[0] - 1) - points[..., 0]
        return torch.from_numpy(render(points, labelled, self.heatmap_wh, self.kind)).float()


def coco_sample_dataset(root: Path, detections: bool = False) -> CocoKeypoints:
    transform = TopDownTransform(INPUT_WH, HEATMAP_WH, DMCodec(HEATMAP_WH), COCO, augment=None)
    det = root / "test_coco_det_AP_H_56.json" if detections else None
    return CocoKeypoints(root / "test_coco.json", root, transform, detections=det)


@pytest.mark.parametrize("flip", [False, True])
def test_oracle_dots_2x2_decode_gives_perfect_ap(coco_sample, flip):
    ds = coco_sample_dataset(coco_sample)
    oracle = Oracle(COCO.flip_pairs)
    preds = predict_dataset(oracle, ds, "2x2", COCO.flip_pairs if flip else None, batch_size=5)
    assert oracle.calls == {"direct": 3, "mirrored": 3 if flip else 0}
    assert len(preds) == 12  # 14 persons, 2 without labelled keypoints (test_coco.json)
    _, metrics, info = evaluate_coco_predictions(preds, coco_sample / "test_coco.json", COCO.sigmas)
    assert metrics["AP"] >= 0.99 and metrics["AR"] >= 0.99, metrics
    # and the decoded keypoints sit on the annotations (up to the crops' border)
    gt = preds.meta["keypoints"]
    labelled = gt[..., 2] > 0
    err = np.linalg.norm(preds.keypoints - gt[..., :2], axis=-1)[labelled]
    assert np.median(err) < 1e-3, np.percentile(err, [50, 90, 100])
