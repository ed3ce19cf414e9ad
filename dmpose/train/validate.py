"""Training-time validation: the same predictor and evaluators as `dmpose eval`.

`TopDownPredictor` (model + PoseSpec: flip test, decode rule, image pixels) runs over the validation boxes
through `dmpose.eval.runner.predict_dataset`, feeding a `CocoEvaluator` (rescoring, OKS-NMS, COCOeval)
or an `MpiiEvaluator` (PCKh). Under DDP every rank predicts its shard (the DistributedSampler rule: pad by
repeating the first samples, then rank::world), the evaluators' `state()` are gathered to rank 0 and
merged (an instance seen twice is kept once), and the metrics are computed once, on the full set.

`heatmap_pass` measures the quantities of the paper's Section 4 on the ground-truth boxes of the
validation split: the mean localisation error in heatmap pixels (decode vs the dot) and the DM loss value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dmpose.eval.inference import DECODERS, normalise_heatmaps
from dmpose.eval.metrics import CocoEvaluator, MpiiEvaluator
from dmpose.eval.predictor import TopDownPredictor
from dmpose.eval.runner import coco_update, mpii_update, predict_dataset

__all__ = ["ValData", "validate", "heatmap_pass", "shard_indices"]


@dataclass
class ValData:
    dataset: Dataset  # the boxes validated (detections or GT), no augmentation
    gt_dataset: Dataset  # GT boxes, for heatmap_pass and the crops figure
    kind: str  # "coco" or "mpii"
    boxes: str  # label: "detections (FILE)" / "GT boxes" / "annotated person boxes"
    gt: Any = None  # COCO: pycocotools COCO (filtered to the validated images); MPII: load_mpii_gt dict
    extra: dict = field(default_factory=dict)


class _Shard(Dataset):
    def __init__(self, base: Dataset, indices: list[int]):
        self.base, self.indices = base, indices
        self.transform = getattr(base, "transform", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[self.indices[i]]


def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """DistributedSampler's split without shuffling: pad to a multiple of world by repeating, take rank::world."""
    total = math.ceil(n / world) * world
    idx = list(range(n)) + list(range(total - n))
    return idx[rank::world]


def validate(model, spec, val: ValData, flip: bool, batch_size: int, oks_threshold: float = 0.9,
             rank: int = 0, world: int = 1) -> tuple[dict[str, float], CocoEvaluator | MpiiEvaluator]:
    """Metrics of `model` on the validation boxes ({} on ranks > 0 under DDP) and the evaluator."""
    predictor = TopDownPredictor(model, spec, flip=flip)
    if val.kind == "mpii":
        evaluator = MpiiEvaluator(val.gt, spec.keypoints)
        on_batch = mpii_update(evaluator)
    else:
        evaluator = CocoEvaluator.for_spec(val.gt, spec, oks_threshold=oks_threshold)
        on_batch = coco_update(evaluator)
    ds = val.dataset if world == 1 else _Shard(val.dataset, shard_indices(len(val.dataset), rank, world))
    predict_dataset(predictor, ds, batch_size=batch_size, workers=0, on_batch=on_batch)
    if world > 1:
        import torch.distributed as dist

        states = [None] * world
        dist.all_gather_object(states, evaluator.state())
        if rank != 0:
            return {}, evaluator
        evaluator.merge(states)
    return dict(evaluator.compute()), evaluator


@torch.no_grad()
def heatmap_pass(model, dataset: Dataset, decode: str, dm_options, batch_size: int, crops: int = 0,
                 device=None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Mean localisation error (heatmap px) and the DM loss value on GT boxes (no flip); the first
    `crops` samples' images, heatmaps (normalised, as the decode reads them) and keypoints for the figure."""
    from dmpose.loss import dm_loss

    device = device or next(model.parameters()).device
    errs, losses, count = [], 0.0, 0
    fig: dict[str, list] = {"images": [], "heatmaps": [], "pred": [], "gt": [], "weights": []}
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
        x = batch["image"].to(device)
        hm = model(x).float()
        kp, w = batch["keypoints_hm"].to(device), batch["weights"].to(device)
        coords, _ = DECODERS[decode](hm)
        d = torch.linalg.vector_norm(coords - kp, dim=-1)
        errs.append(d[w > 0].cpu())
        losses += float(dm_loss(hm, kp, w, dm_options, reduction="sum"))
        count += len(x)
        if len(fig["images"]) < crops:
            take = crops - len(fig["images"])
            fig["images"] += list(batch["image"][:take].numpy())
            fig["heatmaps"] += list(normalise_heatmaps(hm[:take]).cpu().numpy())
            fig["pred"] += list(coords[:take].cpu().numpy())
            fig["gt"] += list(kp[:take].cpu().numpy())
            fig["weights"] += list(w[:take].cpu().numpy())
    e = torch.cat(errs) if errs else torch.zeros(0)
    metrics = {"val_loc_error_hm": float(e.mean()) if len(e) else float("nan"),
               "val_dm_loss": losses / max(count, 1)}
    return metrics, {k: np.stack(v) if v else np.zeros(0) for k, v in fig.items()}
