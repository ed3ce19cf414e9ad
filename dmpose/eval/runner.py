"""Batched top-down inference over a dataset, and evaluators fed from it.

`predict_dataset(predictor, dataset, ...)` runs a `TopDownPredictor` over every sample of a dataset
built with a TopDownTransform WITHOUT augmentation (each crop is its box's plain affine warp, the sample's
``meta["affine_heatmap"]`` maps image to heatmap pixels) and returns every prediction in dataset order.
`on_batch(meta, output)` sees each collated batch's meta and its `TopDownOutput`, which is how an
evaluator is fed (`coco_update`, `mpii_update` below do it for the two metrics).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dmpose.eval.metrics import CocoEvaluator, MpiiEvaluator
from dmpose.eval.predictor import TopDownOutput, TopDownPredictor

__all__ = ["ProgressCallback", "TopDownPredictions", "predict_dataset", "coco_update", "mpii_update",
           "crop_boxes"]

logger = logging.getLogger(__name__)

# progress(done_samples, total_samples, images_per_second)
ProgressCallback = Callable[[int, int, float], None]
BatchCallback = Callable[[dict[str, Any], TopDownOutput], None]

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


def _as_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return list(value) if isinstance(value, (list, tuple)) else value


def crop_boxes(meta: dict[str, Any]) -> np.ndarray:
    """(B, 4) x, y, w, h crop boxes (the padded, aspect-fixed box) from a batch meta's center and size."""
    c, s = np.asarray(_as_numpy(meta["center"]), np.float64), np.asarray(_as_numpy(meta["size"]), np.float64)
    return np.concatenate([c - s / 2, s], axis=-1)


def coco_update(evaluator: CocoEvaluator) -> BatchCallback:
    """An `on_batch` that feeds a CocoEvaluator (box score = the sample's `score` meta)."""

    def update(meta: dict[str, Any], out: TopDownOutput) -> None:
        for key in ("image_id", "score", "center", "size"):
            if key not in meta:
                raise ValueError(f"COCO evaluation: the samples' meta lacks '{key}' (not a COCO dataset?)")
        evaluator.update(meta["image_id"], crop_boxes(meta), meta["score"], out.keypoints, out.scores)

    return update


def mpii_update(evaluator: MpiiEvaluator) -> BatchCallback:
    """An `on_batch` that feeds an MpiiEvaluator (person index = the sample's `index` meta)."""

    def update(meta: dict[str, Any], out: TopDownOutput) -> None:
        gt = meta.get("keypoints")
        evaluator.update(meta["index"], out.keypoints, None if gt is None else _as_numpy(gt)[..., :2])

    return update


def predict_dataset(
    predictor: TopDownPredictor,
    dataset: Dataset,
    batch_size: int = 32,
    workers: int = 0,
    on_batch: BatchCallback | None = None,
    progress: ProgressCallback | None = None,
) -> TopDownPredictions:
    """Run `predictor` over every sample of `dataset` (module docstring); `on_batch(meta, output)` after
    each batch, `progress(done, total, images per second)` too."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    total = len(dataset)
    if total == 0:
        raise ValueError("predict_dataset: the dataset has no samples (no person boxes to evaluate)")
    transform = getattr(dataset, "transform", None)
    if transform is not None and getattr(transform, "augment", None) is not None:
        raise ValueError("predict_dataset: the dataset's transform augments; evaluation needs augment=None")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=predictor.device.type == "cuda")
    coords_all, conf_all, meta_all = [], [], {}
    done, start = 0, time.perf_counter()
    for batch in loader:
        meta = batch["meta"]
        out = predictor.predict(batch["image"], meta["affine_heatmap"])
        if on_batch is not None:
            on_batch(meta, out)
        coords_all.append(out.keypoints.numpy())
        conf_all.append(out.scores.numpy())
        for key in _KEPT_META:
            if key in meta:
                meta_all.setdefault(key, []).append(_as_numpy(meta[key]))
        done += len(out)
        if progress is not None:
            progress(done, total, done / max(time.perf_counter() - start, 1e-9))
    elapsed = max(time.perf_counter() - start, 1e-9)
    kept = {k: (np.concatenate(v) if isinstance(v[0], np.ndarray) else [x for part in v for x in part])
            for k, v in meta_all.items()}
    logger.info("top-down inference: %d crops in %.1f s (%.1f images/s), decode %s, flip %s",
                done, elapsed, done / elapsed, predictor.spec.decode, predictor.flip)
    return TopDownPredictions(np.concatenate(coords_all), np.concatenate(conf_all), kept, predictor.spec.decode,
                              predictor.flip, done / elapsed)
