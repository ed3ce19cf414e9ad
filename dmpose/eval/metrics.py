"""Evaluators: fed batch by batch with `update(...)`, read once with `compute() -> dict[str, float]`.

`CocoEvaluator` (OKS AP): person instances (image id, crop box, box score, image-pixel keypoints and their
confidences) -> `rescore` (box score x mean confidence of the joints above the joint threshold) ->
`oks_nms` per image -> COCO results -> pycocotools COCOeval (`dmpose.eval.coco`). The box is the padded,
aspect-fixed crop box (x, y, w, h); its area w x h is what the official HRNet code passes to OKS-NMS.

`MpiiEvaluator` (PCKh@0.5 and @0.1 by default): predictions per person index against head boxes and
missing-joint flags (a gt_valid.mat-style dict, `dmpose.data.mpii.load_mpii_gt`).

Distributed evaluation: `update` is idempotent per instance (COCO: per (image_id, box, box score); MPII: per person
index): an instance seen twice (a DistributedSampler pads ranks with repeats) is kept once, the last
update winning. `state()` returns a picklable snapshot and `merge(states)` folds other ranks' snapshots in,
so a trainer gathers `state()` from every rank (torch.distributed.all_gather_object) and merges them.

Joint threshold. The official 0.2 was calibrated on the peak values of MSE heatmaps; it is the default
for the argmax decode. The 2x2 decode's confidence is the share of the positive mass inside the decoded
2x2 window; its default is 0.05 (docs/eval.md, "The joint threshold").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dmpose.eval.coco import (
    DEFAULT_OKS_THRESHOLD,
    evaluate_coco,
    oks_nms,
    rescore,
    to_coco_results,
)
from dmpose.eval.mpii import PCKhResult, evaluate_mpii
from dmpose.spec import JOINT_THRESHOLDS, KeypointSpec, PoseSpec

__all__ = ["CocoEvaluator", "MpiiEvaluator"]


def _np(x: Any, dtype=np.float64) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


class CocoEvaluator:
    """COCO keypoint AP with rescoring and OKS-NMS (module docstring).

    gt: a COCO keypoints json path or a loaded pycocotools COCO; None -> no metrics (test-dev: results
    only). keypoints: the KeypointSpec (its OKS sigmas). joint_threshold None -> the default of `decode`
    (`dmpose.spec.JOINT_THRESHOLDS`). oks_threshold: OKS-NMS suppression threshold.
    """

    def __init__(self, gt: Any, keypoints: KeypointSpec, joint_threshold: float | None = None,
                 oks_threshold: float = DEFAULT_OKS_THRESHOLD, *, decode: str = "2x2") -> None:
        if not isinstance(keypoints, KeypointSpec):
            raise TypeError(f"keypoints must be a KeypointSpec, got {type(keypoints).__name__}")
        if keypoints.sigmas is None:
            raise ValueError(f"keypoint set '{keypoints.name}' has no OKS sigmas: COCO AP needs them")
        if decode not in JOINT_THRESHOLDS:
            raise ValueError(f"unknown decode rule {decode!r}; expected one of {sorted(JOINT_THRESHOLDS)}")
        self.gt, self.keypoints = gt, keypoints
        self.joint_threshold = JOINT_THRESHOLDS[decode] if joint_threshold is None else float(joint_threshold)
        if not 0.0 <= self.joint_threshold <= 1.0:
            raise ValueError(f"joint_threshold must lie in [0, 1], got {self.joint_threshold}")
        self.oks_threshold = float(oks_threshold)
        if not 0.0 <= self.oks_threshold <= 1.0:
            raise ValueError(f"oks_threshold must lie in [0, 1], got {self.oks_threshold}")
        self._instances: dict[tuple, dict[str, Any]] = {}
        self.info: dict[str, Any] = {}
        self._results: list[dict[str, Any]] | None = None

    @classmethod
    def for_spec(cls, gt: Any, spec: PoseSpec, joint_threshold: float | None = None,
                 oks_threshold: float = DEFAULT_OKS_THRESHOLD) -> CocoEvaluator:
        """An evaluator for a model's spec: its keypoint set, and its joint threshold unless given."""
        thr = spec.codec.rescore_threshold if joint_threshold is None else joint_threshold
        return cls(gt, spec.keypoints, thr, oks_threshold, decode=spec.decode)

    def __len__(self) -> int:
        return len(self._instances)

    def update(self, image_ids: Any, boxes_xywh: Any, box_scores: Any, keypoints: Any, scores: Any) -> None:
        """Add a batch of B person instances: image ids (B,), crop boxes (B, 4) x, y, w, h in image pixels,
        box scores (B,), keypoints (B, K, 2) image pixels and their confidences (B, K)."""
        ids = _np(image_ids, np.int64).reshape(-1)
        boxes, bs = _np(boxes_xywh).reshape(-1, 4), _np(box_scores).reshape(-1)
        kp, conf = _np(keypoints), _np(scores)
        b, k = len(ids), self.keypoints.num_keypoints
        if boxes.shape[0] != b or bs.shape[0] != b or kp.shape != (b, k, 2) or conf.shape != (b, k):
            raise ValueError(f"CocoEvaluator.update: expected image_ids ({b},), boxes ({b}, 4), box_scores ({b},), "
                             f"keypoints ({b}, {k}, 2), scores ({b}, {k}); got {boxes.shape}, {bs.shape}, "
                             f"{kp.shape}, {conf.shape}")
        for n in range(b):
            x, y, w, h = (float(v) for v in boxes[n])
            key = (int(ids[n]), round(x, 3), round(y, 3), round(w, 3), round(h, 3), round(float(bs[n]), 6))
            self._instances[key] = {
                "image_id": int(ids[n]), "keypoints": np.concatenate([kp[n], conf[n][:, None]], -1),
                "box_score": float(bs[n]), "area": w * h, "center": np.array([x + w / 2, y + h / 2]),
                "size": np.array([w, h])}
        self._results = None

    def state(self) -> dict[tuple, dict[str, Any]]:
        """A picklable snapshot of what was added (for gathering across ranks)."""
        return dict(self._instances)

    def merge(self, states: Sequence[dict[tuple, dict[str, Any]]]) -> None:
        """Fold other evaluators' `state()`s in; the same instance is kept once."""
        for st in states:
            self._instances.update(st)
        self._results = None

    def results(self) -> list[dict[str, Any]]:
        """The COCO results list (after rescoring and OKS-NMS)."""
        if self._results is None:
            instances = list(self._instances.values())
            kept = oks_nms(rescore(instances, self.joint_threshold), self.keypoints.sigmas, self.oks_threshold)
            self._results = to_coco_results(kept)
            self.info = {"joint_threshold": self.joint_threshold, "oks_threshold": self.oks_threshold,
                         "instances": len(instances), "instances_after_nms": len(kept)}
        return self._results

    def compute(self) -> dict[str, float]:
        """{AP, AP50, AP75, APM, APL, AR, ...} as fractions; {} without ground truth."""
        if not self._instances:
            raise ValueError("CocoEvaluator.compute: no predictions were added")
        results = self.results()
        return evaluate_coco(results, self.gt, sigmas=self.keypoints.sigmas) if self.gt is not None else {}


class MpiiEvaluator:
    """PCKh against MPII head boxes (module docstring).

    gt: a `load_mpii_gt`-style dict: headboxes (N, 2, 2), jnt_missing (N, K), optionally joints (N, K, 2),
    all 0-based image pixels, one row per person in dataset order. Without gt joints, `update` must be
    given them. thresholds: the PCKh thresholds (fractions of the head size).
    """

    def __init__(self, gt: dict[str, Any], keypoints: KeypointSpec | None = None,
                 thresholds: Sequence[float] = (0.5, 0.1)) -> None:
        self.headboxes = np.asarray(gt["headboxes"], dtype=np.float64)
        self.missing = np.asarray(gt["jnt_missing"], dtype=bool)
        self.gt_joints = None if gt.get("joints") is None else np.asarray(gt["joints"], dtype=np.float64)
        n = self.headboxes.shape[0]
        if self.missing.shape[0] != n:
            raise ValueError(f"MPII ground truth holds {n} head boxes but {self.missing.shape[0]} jnt_missing rows")
        if keypoints is not None and self.missing.shape[1] != keypoints.num_keypoints:
            raise ValueError(f"MPII ground truth has {self.missing.shape[1]} joints but the keypoint set "
                             f"'{keypoints.name}' has {keypoints.num_keypoints}")
        self.keypoints, self.thresholds = keypoints, tuple(float(t) for t in thresholds)
        self._pred: dict[int, np.ndarray] = {}
        self._joints: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._pred)

    def update(self, indices: Any, keypoints: Any, gt_joints: Any | None = None) -> None:
        """Predictions (B, K, 2) image pixels for the persons `indices` (B,) (rows of the ground truth);
        gt_joints (B, K, 2) are used where the ground-truth file has none."""
        idx = _np(indices, np.int64).reshape(-1)
        kp = _np(keypoints)
        n = self.headboxes.shape[0]
        if kp.shape != (len(idx), self.missing.shape[1], 2):
            raise ValueError(f"MpiiEvaluator.update: keypoints must be ({len(idx)}, {self.missing.shape[1]}, 2), "
                             f"got {kp.shape}")
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"MpiiEvaluator.update: person index out of range [0, {n})")
        gj = None if gt_joints is None else _np(gt_joints)[..., :2]
        for j, i in enumerate(idx):
            self._pred[int(i)] = kp[j]
            if gj is not None:
                self._joints[int(i)] = gj[j]

    def state(self) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
        return dict(self._pred), dict(self._joints)

    def merge(self, states: Sequence[tuple[dict[int, np.ndarray], dict[int, np.ndarray]]]) -> None:
        for pred, joints in states:
            self._pred.update(pred)
            self._joints.update(joints)

    def pckh_results(self) -> list[PCKhResult]:
        """One PCKhResult per threshold (per joint and per part); every person must have been predicted."""
        n = self.headboxes.shape[0]
        if len(self._pred) != n:
            raise ValueError(f"MPII ground truth holds {n} head boxes / jnt_missing rows but {len(self._pred)} "
                             "persons were predicted; they must correspond one to one, in order")
        pred = np.stack([self._pred[i] for i in range(n)])
        if self.gt_joints is not None:
            joints = self.gt_joints
        elif len(self._joints) == n:
            joints = np.stack([self._joints[i] for i in range(n)])
        else:
            raise ValueError("MPII ground truth has no joints and the predictions carry no annotated keypoints")
        return evaluate_mpii(pred, joints, self.headboxes, ~self.missing, thresholds=self.thresholds)

    def compute(self) -> dict[str, float]:
        """{"PCKh@0.5": mean, "PCKh@0.5/Head": ..., ...} in percent, per threshold."""
        out: dict[str, float] = {}
        for r in self.pckh_results():
            name = f"PCKh@{r.threshold:g}"
            out[name] = float(r.columns["Mean"])
            out.update({f"{name}/{col}": float(v) for col, v in r.columns.items() if col != "Mean"})
        return out
