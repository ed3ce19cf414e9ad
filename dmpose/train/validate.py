"""Training-time validation: the same predictor and evaluators as `dmpose eval`.

`TopDownPredictor` (model + PoseSpec: flip test, decode rule, image pixels) runs over the validation boxes
through `dmpose.eval.runner.predict_dataset`, feeding a `CocoEvaluator` (rescoring, OKS-NMS, COCOeval)
or an `MpiiEvaluator` (PCKh). Under DDP every rank predicts its shard (the DistributedSampler rule: pad by
repeating the first samples, then rank::world), the evaluators' `state()` are gathered to rank 0 and
merged (an instance seen twice is kept once), and the metrics are computed once, on the full set.

`heatmap_pass` measures the quantities of the paper's Section 4 on the ground-truth boxes of the
validation split, decoding as the spec's codec does (its supplier map, then its decode rule): the mean and
median localisation error in heatmap pixels (decode vs the dot), the compactness of the decoded map (its
mass within 2 px of the prediction, Fig. 3), the share of dead maps, the DM loss and the model's own loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dmpose.eval.inference import DECODERS
from dmpose.eval.metrics import CocoEvaluator, MpiiEvaluator
from dmpose.eval.predictor import TopDownPredictor
from dmpose.eval.runner import coco_update, mpii_update, predict_dataset

__all__ = ["ValData", "validate", "heatmap_pass", "heatmap_metrics", "shard_indices"]


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


def decoded_and_normalised(hm: torch.Tensor, codec) -> tuple[torch.Tensor, torch.Tensor]:
    """The map the spec's decode reads (`TopDownPredictor` without the flip test: `decoded_map` of the
    codec's supplier map, the raw H for "raw") and that map normalised to sum 1 per (B, K) map (for
    "raw", relu(H) normalised, softmax(H) where no pixel is positive: the same rule as the training
    diagnostics' mass share)."""
    from dmpose.suppliers import decoded_map

    if codec.supplier_map == "raw":
        return hm, decoded_map(hm, "relu")
    p = decoded_map(hm, codec.supplier_map, codec.supplier_beta)
    return p, p


def heatmap_metrics(hm: torch.Tensor, kp: torch.Tensor, w: torch.Tensor, codec) -> dict[str, torch.Tensor]:
    """Per labelled joint (w > 0), in the order of `hm[w > 0]`: the decode's localisation error in heatmap
    px ("error"), the share of the normalised decoded map's mass within 2 px (distance <= 2, pixel centres
    at integers) of the decoded prediction ("compactness"), and whether the raw map has no positive value
    ("dead"); plus the decoded coordinates (B, K, 2) and the normalised maps (B, K, H, W) of every joint."""
    hm = hm.float()
    src, q = decoded_and_normalised(hm, codec)
    coords, _ = DECODERS[codec.decode](src)
    h, w_ = hm.shape[-2:]
    ys = torch.arange(h, device=hm.device, dtype=torch.float32).view(1, 1, h, 1)
    xs = torch.arange(w_, device=hm.device, dtype=torch.float32).view(1, 1, 1, w_)
    near = ((xs - coords[..., 0, None, None]) ** 2 + (ys - coords[..., 1, None, None]) ** 2) <= 4.0
    lab = w > 0
    return {"error": torch.linalg.vector_norm(coords - kp, dim=-1)[lab],
            "compactness": (q * near).sum(dim=(-2, -1))[lab],
            "dead": (hm.amax(dim=(-2, -1)) <= 0)[lab],
            "coords": coords, "normalised": q}


def _gaussian_targets(kp: torch.Tensor, w: torch.Tensor, codec, heatmap_wh) -> torch.Tensor:
    from dmpose.codec import GaussianCodec

    enc = GaussianCodec(heatmap_wh, sigma=codec.sigma, flavour=codec.flavour)
    kp_np, w_np = kp.cpu().numpy(), w.cpu().numpy()
    return torch.from_numpy(np.stack([enc.encode(a, b)["heatmaps"] for a, b in zip(kp_np, w_np)])).to(kp.device)


@torch.no_grad()
def heatmap_pass(model, dataset: Dataset, codec, dm_options, batch_size: int, crops: int = 0,
                 device=None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Heatmap-level metrics on GT boxes (no flip), decoded as the spec's codec decodes (`codec`: the
    PoseSpec's CodecSpec: decode rule, supplier map and beta; see `heatmap_metrics`):

      val_loc_error_hm / val_median_loc_error_hm  mean / median decode-vs-dot distance, heatmap px
      val_compactness_2px  mean share of the normalised decoded map's mass within 2 px of the prediction
      val_dead_share       share of labelled joints whose raw heatmap has no positive value
      val_dm_loss          the DM loss (`dm_options`) per image; for every model
      val_loss             the model's own training loss per image: the DM loss, or for a gaussian codec
                           the MSE against its Gaussian targets (sigma, flavour of the codec)

    and the first `crops` samples' images, heatmaps (normalised decoded maps), predictions and keypoints
    for the figure."""
    from dmpose.loss import dm_loss, mse_loss

    device = device or next(model.parameters()).device
    parts: dict[str, list] = {"error": [], "compactness": [], "dead": []}
    losses, mse, count = 0.0, 0.0, 0
    fig: dict[str, list] = {"images": [], "heatmaps": [], "pred": [], "gt": [], "weights": []}
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
        x = batch["image"].to(device)
        hm = model(x).float()
        kp, w = batch["keypoints_hm"].to(device), batch["weights"].to(device)
        m = heatmap_metrics(hm, kp, w, codec)
        for k in parts:
            parts[k].append(m[k].cpu())
        losses += float(dm_loss(hm, kp, w, dm_options, reduction="sum"))
        if codec.name == "gaussian":
            target = _gaussian_targets(kp, w, codec, (hm.shape[-1], hm.shape[-2]))
            mse += float(mse_loss(hm, target, w, reduction="sum"))
        count += len(x)
        if len(fig["images"]) < crops:
            take = crops - len(fig["images"])
            fig["images"] += list(batch["image"][:take].numpy())
            fig["heatmaps"] += list(m["normalised"][:take].cpu().numpy())
            fig["pred"] += list(m["coords"][:take].cpu().numpy())
            fig["gt"] += list(kp[:take].cpu().numpy())
            fig["weights"] += list(w[:take].cpu().numpy())
    e, c, d = (torch.cat(parts[k]) if parts[k] else torch.zeros(0) for k in ("error", "compactness", "dead"))
    nan = float("nan")
    metrics = {"val_loc_error_hm": float(e.mean()) if len(e) else nan,
               "val_median_loc_error_hm": float(np.median(e.numpy())) if len(e) else nan,
               "val_compactness_2px": float(c.mean()) if len(c) else nan,
               "val_dead_share": float(d.float().mean()) if len(d) else nan,
               "val_dm_loss": losses / max(count, 1)}
    metrics["val_loss"] = mse / max(count, 1) if codec.name == "gaussian" else metrics["val_dm_loss"]
    return metrics, {k: np.stack(v) if v else np.zeros(0) for k, v in fig.items()}
