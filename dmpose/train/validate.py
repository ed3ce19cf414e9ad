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
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dmpose.codec import HeatmapCodec
from dmpose.eval.metrics import CocoEvaluator, MpiiEvaluator
from dmpose.eval.predictor import TopDownPredictor
from dmpose.eval.runner import coco_update, mpii_update, predict_dataset
from dmpose.loss import dm_loss, mse_loss
from dmpose.spec import PoseSpec
from dmpose.train.config import TrainConfig
from dmpose.train.run_folder import RunFolder

__all__ = ["ValData", "validate", "heatmap_pass", "heatmap_metrics", "step_diagnostics", "shard_indices",
           "validate_epoch"]


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
        states = [None] * world
        dist.all_gather_object(states, evaluator.state())
        if rank != 0:
            return {}, evaluator
        evaluator.merge(states)
    return dict(evaluator.compute()), evaluator


def heatmap_metrics(hm: torch.Tensor, kp: torch.Tensor, w: torch.Tensor,
                    codec: HeatmapCodec) -> dict[str, torch.Tensor]:
    """Per labelled joint (w > 0), in the order of `hm[w > 0]`: the codec's decode's localisation error in heatmap
    px ("error"), the share of the normalised read map's mass within 2 px (distance <= 2, pixel centres at
    integers) of the decoded prediction ("compactness", the paper's Fig. 3) and of the dot ("mass_near_dot"), and
    whether the raw map has no positive value ("dead"); plus the decoded coordinates (B, K, 2) and the
    normalised maps (B, K, H, W) of every joint."""
    hm = hm.float()
    maps = codec.read(hm)
    q = codec.normalised(maps)
    coords, _ = codec.decode_maps(maps)
    lab = w > 0
    return {"error": torch.linalg.vector_norm(coords - kp, dim=-1)[lab],
            "compactness": _mass_within(q, coords, 2.0)[lab], "mass_near_dot": _mass_within(q, kp, 2.0)[lab],
            "dead": (hm.amax(dim=(-2, -1)) <= 0)[lab], "coords": coords, "normalised": q}


def _mass_within(q: torch.Tensor, centres: torch.Tensor, radius: float) -> torch.Tensor:
    """(B, K): the mass of maps q (B, K, H, W) on pixels within `radius` of centres (B, K, 2) (x, y)."""
    h, w = q.shape[-2:]
    ys = torch.arange(h, device=q.device, dtype=torch.float32).view(1, 1, h, 1)
    xs = torch.arange(w, device=q.device, dtype=torch.float32).view(1, 1, 1, w)
    near = ((xs - centres[..., 0, None, None]) ** 2 + (ys - centres[..., 1, None, None]) ** 2) <= radius ** 2
    return (q * near).sum(dim=(-2, -1))


@torch.no_grad()
def step_diagnostics(hm: torch.Tensor, batch: dict, codec: HeatmapCodec, grad_hm: torch.Tensor | None,
                     final: nn.Module | None) -> dict[str, float]:
    """A logged training step's diagnostics on its batch (`heatmap_metrics`): the share of labelled joints whose
    raw heatmap has no positive value (dead_share), the read map's mass within 2 px of the dot (mass_2px), the
    median localisation error (median_error_hm, heatmap px), the gradient norm reaching the heatmaps, the final
    layer's bias mean and gradient norm."""
    hm = hm.detach().float()
    out: dict[str, float] = {}
    w = batch["weights"].to(hm.device)
    if int((w > 0).sum()):
        m = heatmap_metrics(hm, batch["keypoints_hm"].to(hm.device), w, codec)
        out["dead_share"] = float(m["dead"].float().mean())
        out["mass_2px"] = float(m["mass_near_dot"].mean())
        out["median_error_hm"] = float(m["error"].median())
    if grad_hm is not None:
        out["grad_norm_heatmaps"] = float(grad_hm.float().norm())
    if final is not None and final.bias is not None:
        out["final_bias_mean"] = float(final.bias.mean())
        if final.bias.grad is not None:
            out["grad_norm_final_bias"] = float(final.bias.grad.norm())
    return out


@torch.no_grad()
def heatmap_pass(model, dataset: Dataset, codec: HeatmapCodec, dm_options, batch_size: int, crops: int = 0,
                 device=None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Heatmap-level metrics on GT boxes (no flip), decoded as the spec's codec decodes (`codec`, from
    `dmpose.codec.build_codec(spec)`: decode rule, supplier map and beta; see `heatmap_metrics`):

      val_loc_error_hm / val_median_loc_error_hm  mean / median decode-vs-dot distance, heatmap px
      val_compactness_2px  mean share of the normalised decoded map's mass within 2 px of the prediction
      val_dead_share       share of labelled joints whose raw heatmap has no positive value
      val_dm_loss          the DM loss (`dm_options`) per image; for every model
      val_loss             the model's own training loss per image: the DM loss, or for a gaussian codec
                           the MSE against its Gaussian targets (sigma, flavour of the codec)

    and the first `crops` samples' images, heatmaps (normalised decoded maps), predictions and keypoints
    for the figure."""
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
            target = np.stack([codec.encode(a, b)["heatmaps"] for a, b in zip(kp.cpu().numpy(), w.cpu().numpy())])
            mse += float(mse_loss(hm, torch.from_numpy(target).to(device), w, reduction="sum"))
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


def validate_epoch(module: nn.Module, spec: PoseSpec, codec: HeatmapCodec, val: ValData, cfg: TrainConfig,
                   rank: int, world: int, folder: RunFolder | None, epoch: int) -> dict[str, Any]:
    """A training run's validation after `epoch`: the main metrics on the validation boxes (every rank; {} on ranks
    > 0) plus, on rank 0, the `heatmap_pass` metrics and the val_epochNNN.jpg crops. `module` (the raw or EMA
    network) is left in eval mode; the caller puts the trained network back in train mode."""
    module.eval()
    metrics, _ = validate(module, spec, val, cfg.val.flip, cfg.val.batch_size, cfg.val.oks_threshold, rank, world)
    if rank != 0:
        return metrics
    crops = cfg.val.crops if folder is not None else 0
    extra, fig = heatmap_pass(module, val.gt_dataset, codec, cfg.loss.dm, cfg.val.batch_size, crops)
    metrics.update(extra)
    if folder is not None and cfg.val.crops and len(fig.get("images", ())):
        n = spec.normalisation
        mean = np.asarray(n.mean, np.float32)[:, None, None]
        std = np.asarray(n.std, np.float32)[:, None, None]
        imgs = np.clip((fig["images"] * std + mean) * 255, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        s = spec.output_stride

        def to_input(p: np.ndarray) -> np.ndarray:  # heatmap px -> input px (pixel centres at integers)
            return (p + 0.5) * s - 0.5

        folder.write_val_crops(epoch, imgs, fig["heatmaps"], to_input(fig["pred"]), to_input(fig["gt"]),
                               fig["weights"], "GT boxes", spec.keypoints.skeleton)
    return metrics
