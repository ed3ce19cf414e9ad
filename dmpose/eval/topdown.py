"""Batched top-down inference over a dataset: crops -> model -> flip test -> decode -> image pixels.

The dataset gives one sample per person box (dmpose.data: CocoKeypoints, MpiiKeypoints) built with a
TopDownTransform WITHOUT augmentation, so each crop is the box's plain affine warp. For each batch:

1. the model runs on the crops (float16 autocast on CUDA) and, with the flip test, on the mirrored
   crops; the mirrored heatmaps are flipped back with the left/right swap and averaged
   (`dmpose.eval.inference.predict_heatmaps`: normalised distributions for the 2x2 decode, raw heatmaps
   for argmax; no one-pixel shift);
2. the heatmaps are decoded with the rule given (`DECODERS`: "2x2" for DM-trained models, "argmax" for
   MSE-trained ones) into heatmap pixels plus a confidence;
3. the inverse of the sample's image -> heatmap affine (`meta["affine_heatmap"]`, built by
   dmpose.geometry) maps them to image pixels (`dmpose.codec.heatmap_to_image`).

Coordinates: pixel centres at integer coordinates in every space (pixel (i, j) covers
[j-0.5, j+0.5) x [i-0.5, i+0.5)), x right, y down; keypoints (x, y) in the last axis.

The model is called as `model(images)` with a (B, 3, H_in, W_in) tensor and returns (B, K, H, W)
heatmaps. A model that needs to know what it is looking at (a test oracle rendering the ground truth)
may define `observe_batch(batch)`: it is called with the collated batch (its `meta` included) before
the model runs on that batch's crops.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from dmpose.codec import heatmap_to_image
from dmpose.data.loading import DataLoader
from dmpose.eval.inference import DECODERS, predict_heatmaps

__all__ = ["TopDownPredictions", "ProgressCallback", "predict_dataset", "model_device"]

logger = logging.getLogger(__name__)

# progress(done_samples, total_samples, images_per_second)
ProgressCallback = Callable[[int, int, float], None]

# meta fields kept per sample when the dataset provides them
_KEPT_META = ("image_id", "annotation_id", "score", "center", "size", "index", "image", "keypoints")


@dataclass
class TopDownPredictions:
    """Predictions for every sample of a dataset, in dataset order.

    keypoints: (N, K, 2) float64 image pixels (x, y); confidence: (N, K) float32 (the decoder's);
    meta: the per-sample meta fields the dataset gave (image_id, score, center, size, ...), as arrays
    (strings as lists); images_per_second: crops per second of the whole loop (loading included).
    """

    keypoints: np.ndarray
    confidence: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    decode: str = "2x2"
    flip: bool = True
    images_per_second: float = 0.0

    def __len__(self) -> int:
        return len(self.keypoints)


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without any)."""
    if isinstance(model, nn.Module):
        for t in (*model.parameters(), *model.buffers()):
            return t.device
    return torch.device("cpu")


def _as_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return list(value) if isinstance(value, (list, tuple)) else value


@torch.no_grad()
def predict_dataset(
    model: Callable[[torch.Tensor], torch.Tensor],
    dataset: Dataset,
    decode: str,
    flip_pairs: Sequence[tuple[int, int]] | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    amp: bool = True,
    progress: ProgressCallback | None = None,
) -> TopDownPredictions:
    """Run top-down inference over every sample of `dataset` (see the module docstring).

    Args:
        model: the network (in eval mode; moved nowhere: crops go to its device) or any callable with
            the same contract; an optional `observe_batch(batch)` sees each collated batch first.
        dataset: samples from a TopDownTransform without augmentation (dmpose.data datasets).
        decode: "2x2" or "argmax".
        flip_pairs: (left, right) joint pairs; given -> the flip test, None -> no flip test.
        batch_size, num_workers: the DataLoader's.
        amp: float16 autocast when the model is on CUDA.
        progress: called after each batch with (done, total, images per second).
    """
    if decode not in DECODERS:
        raise ValueError(f"unknown decode rule {decode!r}; expected one of {sorted(DECODERS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    total = len(dataset)
    if total == 0:
        raise ValueError("predict_dataset: the dataset has no samples (no person boxes to evaluate)")
    transform = getattr(dataset, "transform", None)
    if transform is not None and getattr(transform, "augment", None) is not None:
        raise ValueError("predict_dataset: the dataset's transform augments; evaluation needs augment=None")
    if isinstance(model, nn.Module) and model.training:
        logger.warning("predict_dataset: the model is in training mode; switching it to eval mode")
        model.eval()
    device = model_device(model)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    decoder = DECODERS[decode]
    hm_size = getattr(transform, "heatmap_size", None)  # (W, H)
    expected_hw = None if hm_size is None else (int(hm_size[1]), int(hm_size[0]))
    observe = getattr(model, "observe_batch", None)
    coords_all, conf_all, meta_all = [], [], {}
    done, start = 0, time.perf_counter()
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        if observe is not None:
            observe(batch)
        heatmaps = predict_heatmaps(model, images, decode, flip_pairs=flip_pairs, amp=amp)
        if expected_hw is not None and tuple(heatmaps.shape[-2:]) != expected_hw:
            raise ValueError(f"the model's heatmaps are {tuple(heatmaps.shape[-2:])} (H, W) but the dataset's "
                             f"transform maps keypoints into {expected_hw}: the checkpoint's heatmap_size metadata "
                             "is wrong")
        coords_hm, conf = decoder(heatmaps)
        affine = batch["meta"]["affine_heatmap"].numpy()
        coords_all.append(heatmap_to_image(coords_hm, affine))
        conf_all.append(conf.float().cpu().numpy())
        for key in _KEPT_META:
            if key in batch["meta"]:
                meta_all.setdefault(key, []).append(_as_numpy(batch["meta"][key]))
        done += len(images)
        if progress is not None:
            progress(done, total, done / max(time.perf_counter() - start, 1e-9))
    elapsed = max(time.perf_counter() - start, 1e-9)
    meta = {k: (np.concatenate(v) if isinstance(v[0], np.ndarray) else [x for part in v for x in part])
            for k, v in meta_all.items()}
    logger.info("top-down inference: %d crops in %.1f s (%.1f images/s), decode %s, flip %s",
                done, elapsed, done / elapsed, decode, flip_pairs is not None)
    return TopDownPredictions(np.concatenate(coords_all), np.concatenate(conf_all), meta, decode,
                              flip_pairs is not None, done / elapsed)
