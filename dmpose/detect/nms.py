"""Non-maximum suppression in plain torch, and the score / NMS / count selection of person boxes.

`nms` is the one NMS of dmpose: the FCOS detector's per-class suppression (`batched_nms`) and the selection of
person boxes (`select_boxes`: boxes from the detector or given with `dmpose predict --boxes`) both run it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["BoxSelection", "batched_nms", "box_iou", "nms", "select_boxes", "xywh_to_xyxy"]


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """(N, M) intersection over union of boxes a (N, 4) and b (M, 4), both [x1, y1, x2, y2] (area = (x2-x1)(y2-y1),
    torchvision's rule). Two empty boxes have IoU 0."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(inter))


def nms(boxes_xyxy: Tensor, scores: Tensor, iou_thr: float) -> Tensor:
    """Greedy NMS: the indices (int64) of the boxes kept, highest score first. A box is dropped when its IoU with a
    kept box of higher score is > iou_thr (torchvision's rule). Equal scores keep the lower index first (a stable
    sort), so the result does not depend on the sort's whims. Empty input -> an empty index tensor.

    The IoU matrix is computed once (N x N); the greedy pass is a loop over numpy rows, which is fast for the
    hundreds of candidates a detector leaves after its score threshold."""
    if boxes_xyxy.ndim != 2 or boxes_xyxy.shape[-1] != 4 or scores.shape != boxes_xyxy.shape[:1]:
        raise ValueError(f"nms: boxes must be (N, 4) and scores (N,), got {tuple(boxes_xyxy.shape)} and "
                         f"{tuple(scores.shape)}")
    n = len(boxes_xyxy)
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes_xyxy.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = box_iou(boxes_xyxy[order], boxes_xyxy[order]).cpu().numpy() > iou_thr
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i]
    return order[torch.as_tensor(keep, dtype=torch.int64, device=order.device)]


def batched_nms(boxes_xyxy: Tensor, scores: Tensor, labels: Tensor, iou_thr: float) -> Tensor:
    """NMS within each label separately (boxes of different labels never suppress each other); the kept indices,
    highest score first, as torchvision's `batched_nms`."""
    if len(boxes_xyxy) == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes_xyxy.device)
    keep = torch.cat([idx[nms(boxes_xyxy[idx], scores[idx], iou_thr)]
                      for idx in (torch.nonzero(labels == c).flatten() for c in torch.unique(labels))])
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """[x, y, w, h] -> [x1, y1, x2, y2] = [x, y, x + w, y + h] (the box's edges, in any one convention)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1)


@dataclass
class BoxSelection:
    """What `select_boxes` kept (indices into its input, highest score first) and how many each rule dropped."""

    keep: np.ndarray
    below_thr: int = 0
    by_nms: int = 0
    over_max: int = 0

    @property
    def dropped(self) -> int:
        return self.below_thr + self.by_nms + self.over_max


def select_boxes(boxes_xywh: np.ndarray, scores: np.ndarray, score_thr: float = 0.0, nms_thr: float | None = None,
                 max_boxes: int | None = None) -> BoxSelection:
    """Person boxes to keep, in three steps: score >= score_thr, then NMS at IoU nms_thr (None: none), then the
    max_boxes highest scores (None: all). Boxes (N, 4) [x, y, w, h], scores (N,)."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    boxes = xywh_to_xyxy(boxes_xywh)
    if len(boxes) != len(scores):
        raise ValueError(f"select_boxes: {len(boxes)} boxes but {len(scores)} scores")
    if max_boxes is not None and max_boxes < 1:
        raise ValueError(f"max_boxes must be >= 1 (or None: no limit), got {max_boxes}")
    passed = np.flatnonzero(scores >= score_thr)
    if nms_thr is None:
        kept = passed[np.argsort(-scores[passed], kind="stable")]
    else:
        kept = passed[nms(torch.from_numpy(boxes[passed]), torch.from_numpy(scores[passed]), nms_thr).numpy()]
    limited = kept if max_boxes is None else kept[:max_boxes]
    return BoxSelection(limited, len(scores) - len(passed), len(passed) - len(kept), len(kept) - len(limited))
