"""The data of a run: the augmented training set, the validation data, and each epoch's loader.

Folder layouts (where a split's annotations, images and detections live) are `dmpose.data.layouts`'s, shared
with `dmpose eval`. Each epoch's order is the DistributedSampler's (train.seed + epoch), its augmentation a
function of (train.seed, epoch, sample index) (`TopDownTransform.augment_seed`), so the number of data-loader
workers never changes a run, and a mid-epoch resume skips the samples already used (`SkipSampler`).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import torch
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from dmpose.data.coco import CocoKeypoints
from dmpose.data.layouts import DEFAULT_DETECTION_FILE, coco_paths, mpii_paths
from dmpose.data.mpii import MpiiKeypoints, load_mpii_gt
from dmpose.data.synthetic import ensure_synthetic
from dmpose.data.transforms import TopDownTransform
from dmpose.eval.evaluate import GT_BOXES_LABEL
from dmpose.spec import PoseSpec
from dmpose.train.config import TrainConfig
from dmpose.train.validate import ValData

__all__ = ["build_datasets", "coco_gt_subset", "SkipSampler", "epoch_loader"]


def build_datasets(cfg: TrainConfig, spec: PoseSpec) -> tuple[Dataset, ValData]:
    """The training dataset (augmented) and the validation data (boxes, GT, evaluator inputs)."""
    d = cfg.data
    t_train = TopDownTransform.from_spec(spec, encode_targets=True, augment=d.augment, padding=d.padding)
    t_val = TopDownTransform.from_spec(spec, padding=d.padding)
    root = d.root
    if d.dataset == "synthetic":
        root = ensure_synthetic(root, d.synthetic.n_train, d.synthetic.n_val, d.synthetic.seed)
    if d.dataset == "mpii":
        root = Path(root) if root is not None else None
        ann, images, _ = mpii_paths(root, d.train_split) if root is not None else (None, None, None)
        train_ds = MpiiKeypoints(d.train_ann or ann, d.train_images or images, t_train, subset=d.subset,
                                 cache_images=d.cache_images)
        vann, vimages, vgt = mpii_paths(root, d.val_split) if root is not None else (None, None, None)
        val_ds = MpiiKeypoints(d.val_ann or vann, d.val_images or vimages, t_val, cache_images=d.cache_images)
        gt = load_mpii_gt(d.mpii_gt or vgt)
        if d.val_subset is not None:  # the first N persons: the evaluator's ground-truth rows are 0..N-1
            val_ds.records = val_ds.records[: d.val_subset]
            gt = {k: v[: d.val_subset] for k, v in gt.items()}
        return train_ds, ValData(val_ds, val_ds, "mpii", "annotated person boxes", gt)
    ann, images = coco_paths(root, d.train_split) if root is not None else (None, None)
    train_ds = CocoKeypoints(d.train_ann or ann, d.train_images or images, t_train, subset=d.subset,
                             cache_images=d.cache_images)
    vann, vimages = coco_paths(root, d.val_split) if root is not None else (None, None)
    vann, vimages = d.val_ann or vann, d.val_images or vimages
    gt_ds = CocoKeypoints(vann, vimages, t_val, subset=d.val_subset, cache_images=d.cache_images)
    if cfg.val.boxes == "gt":
        val_ds, label = gt_ds, GT_BOXES_LABEL
    else:
        det = d.detections or (Path(root) / DEFAULT_DETECTION_FILE if root is not None else None)
        if det is None or not Path(det).is_file():
            raise FileNotFoundError(f"data.detections: detection file not found: {det} (set data.detections, "
                                    "or val.boxes=gt to validate on the annotated boxes)")
        val_ds = CocoKeypoints(vann, vimages, t_val, detections=det, subset=d.val_subset,
                               cache_images=d.cache_images)
        label = f"detections ({Path(det).name})"
    return train_ds, ValData(val_ds, gt_ds, "coco", label, coco_gt_subset(vann, set(gt_ds.images)))


def coco_gt_subset(ann_file: Path, image_ids: set[int]) -> COCO:
    """pycocotools COCO of the validated images only (a subset must not count the others as missed)."""
    data = json.loads(Path(ann_file).read_text())
    data["images"] = [im for im in data["images"] if int(im["id"]) in image_ids]
    data["annotations"] = [a for a in data.get("annotations", []) if int(a["image_id"]) in image_ids]
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class SkipSampler(Sampler):
    """The first `skip` indices of `base` left out (mid-epoch resume)."""

    def __init__(self, base: Sampler, skip: int):
        self.base, self.skip = base, skip

    def __iter__(self):
        it = iter(self.base)
        for _ in range(self.skip):
            next(it, None)
        return it

    def __len__(self) -> int:
        return max(len(self.base) - self.skip, 0)


def epoch_loader(train_ds: Any, sampler: DistributedSampler, cfg: TrainConfig, epoch: int, skip: int, workers: int,
                 device: torch.device, generator: torch.Generator) -> DataLoader:
    """The loader of `epoch` (0-based), the first `skip` samples of this rank's order left out: the sampler's
    order and the augmentation seeded by (train.seed, epoch), the loader's generator by train.seed and epoch."""
    sampler.set_epoch(epoch)
    train_ds.transform.augment_seed = (cfg.train.seed, epoch)  # the same crops with any workers
    generator.manual_seed(cfg.train.seed * 1_000_003 + epoch)
    return DataLoader(train_ds, batch_size=cfg.train.batch_size,
                      sampler=SkipSampler(sampler, skip) if skip else sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=True, generator=generator, persistent_workers=False)
