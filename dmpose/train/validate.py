"""Training-time validation: the same inference, rescoring, OKS-NMS and COCOeval/PCKh as `dmpose eval`.

`predict` is the one place that runs top-down inference (today `dmpose.eval.topdown.predict_dataset`;
the spec work's `TopDownPredictor` plugs in here). Under DDP every rank predicts its shard (the
DistributedSampler rule: pad by repeating the first samples, then rank::world), the shards are gathered
and de-duplicated by dataset index, and the metrics are computed once, on the full, ordered set.

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

from dmpose.eval.evaluate import evaluate_coco_predictions, evaluate_mpii_predictions
from dmpose.eval.topdown import TopDownPredictions, predict_dataset
from dmpose.eval.inference import DECODERS, normalise_heatmaps

__all__ = ["ValData", "predict", "validate", "heatmap_pass", "shard_indices", "gather_predictions"]


@dataclass
class ValData:
    dataset: Dataset  # the boxes validated (detections or GT), no augmentation
    gt_dataset: Dataset  # GT boxes, for heatmap_pass and the crops figure
    kind: str  # "coco" or "mpii"
    boxes: str  # label: "detections (FILE)" / "GT boxes" / "annotated person boxes"
    gt: Any = None  # COCO: pycocotools COCO (filtered to the validated images); MPII: load_mpii_gt dict
    sigmas: Any = None
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


def predict(model, dataset: Dataset, decode: str, flip_pairs, batch_size: int) -> TopDownPredictions:
    """Top-down predictions for every sample (the one inference entry point of the trainer)."""
    return predict_dataset(model, dataset, decode, flip_pairs, batch_size=batch_size, num_workers=0, amp=True)


def gather_predictions(local: TopDownPredictions, indices: list[int], n: int, world: int) -> TopDownPredictions:
    """All ranks' shards -> one TopDownPredictions in dataset order, padded repeats dropped."""
    import torch.distributed as dist

    parts = [None] * world
    dist.all_gather_object(parts, (indices, local))
    seen: dict[int, tuple[TopDownPredictions, int]] = {}
    for idx, preds in parts:
        for j, i in enumerate(idx):
            seen.setdefault(i, (preds, j))
    if sorted(seen) != list(range(n)):
        raise RuntimeError("gathered validation predictions do not cover the dataset")
    order = [seen[i] for i in range(n)]
    kp = np.stack([p.keypoints[j] for p, j in order])
    conf = np.stack([p.confidence[j] for p, j in order])
    meta = {}
    for key, v in local.meta.items():
        vals = [p.meta[key][j] for p, j in order]
        meta[key] = np.stack(vals) if isinstance(v, np.ndarray) else vals
    return TopDownPredictions(kp, conf, meta, local.decode, local.flip, local.images_per_second)


def validate(model, val: ValData, decode: str, flip_pairs, batch_size: int, joint_threshold=None,
             oks_threshold: float = 0.9, rank: int = 0, world: int = 1) -> tuple[dict[str, float], TopDownPredictions | None]:
    """Metrics of `model` on the validation boxes ({} on ranks > 0 under DDP) and the predictions."""
    n = len(val.dataset)
    if world > 1:
        idx = shard_indices(n, rank, world)
        local = predict(model, _Shard(val.dataset, idx), decode, flip_pairs, batch_size)
        preds = gather_predictions(local, idx, n, world)
        if rank != 0:
            return {}, preds
    else:
        preds = predict(model, val.dataset, decode, flip_pairs, batch_size)
    if val.kind == "mpii":
        pckh = evaluate_mpii_predictions(preds, val.gt)
        metrics = {}
        for r in pckh:
            metrics.update({f"PCKh@{r.threshold:g}" + ("" if col == "Mean" else f"_{col}"): v
                            for col, v in r.columns.items()})
        return metrics, preds
    _, metrics, info = evaluate_coco_predictions(preds, val.gt, val.sigmas, joint_threshold, oks_threshold)
    return dict(metrics), preds


@torch.no_grad()
def heatmap_pass(model, dataset: Dataset, decode: str, dm_kwargs: dict, batch_size: int, crops: int = 0,
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
        losses += float(dm_loss(hm, kp, w, **{**dm_kwargs, "reduction": "sum"}))
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
