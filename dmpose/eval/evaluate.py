"""Model-driven evaluation, end to end: a checkpoint and a dataset in, the paper's metrics out.

COCO (`evaluate_coco_predictions`, `evaluate_checkpoint(dataset="coco")`):
    top-down inference over every person box (`dmpose.eval.topdown.predict_dataset`) -> person instances
    (box score = the detector's, or 1.0 for ground-truth boxes; area = the padded, aspect-fixed crop box,
    as the official HRNet code passes to OKS-NMS) -> `rescore` (box score x mean confidence of the joints
    above the joint threshold) -> `oks_nms` per image -> COCO results -> `evaluate_coco` (pycocotools).
MPII (`evaluate_mpii_predictions`, `evaluate_checkpoint(dataset="mpii")`):
    the same inference over MpiiKeypoints -> PCKh@0.5 and @0.1 (`evaluate_mpii`) with the head boxes and
    missing-joint flags of a gt_valid.mat-style file (`load_mpii_gt`).

Joint threshold. The official 0.2 (`DEFAULT_JOINT_THRESHOLD`) was calibrated on the peak values of MSE
heatmaps (a confident joint peaks near 1.0); it is the default for the argmax decode. The 2x2 decode's
confidence is another quantity, the share of the heatmap's positive mass inside the decoded 2x2 window
(scale-invariant; 1.0 for a perfect dot); its default is `DEFAULT_JOINT_THRESHOLDS["2x2"]`, chosen as
docs/eval.md ("The joint threshold") explains.

Coordinates: pixel centres at integer coordinates in every space (pixel (i, j) covers
[j-0.5, j+0.5) x [i-0.5, i+0.5)); COCO keypoints are written unchanged (see dmpose.eval.coco).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dmpose.atomic import check_not_input
from dmpose.eval.coco import (
    DEFAULT_JOINT_THRESHOLD,
    DEFAULT_OKS_THRESHOLD,
    evaluate_coco,
    oks_nms,
    rescore,
    to_coco_results,
    write_json,
    write_results_json,
)
from dmpose.eval.mpii import PCKhResult, evaluate_mpii
from dmpose.eval.topdown import ProgressCallback, TopDownPredictions, predict_dataset

__all__ = [
    "DEFAULT_JOINT_THRESHOLDS",
    "EvalReport",
    "coco_instances",
    "evaluate_checkpoint",
    "evaluate_coco_predictions",
    "evaluate_mpii_predictions",
    "resolve_decode",
]

logger = logging.getLogger(__name__)

# Joint threshold of the rescoring, per decode rule (see the module docstring and docs/eval.md).
DEFAULT_JOINT_THRESHOLDS = {"argmax": DEFAULT_JOINT_THRESHOLD, "2x2": 0.05}
GT_BOXES_LABEL = "GT boxes"
# MPII layout as the official HRNet code: ROOT/annot/{split}.json, ROOT/annot/gt_{split}.mat, ROOT/images/
MPII_DEFAULT_SPLIT = "valid"
COCO_DEFAULT_SPLIT = "val2017"
# input size (width, height) used when a checkpoint does not record one
DEFAULT_INPUT_SIZE = {"coco": (192, 256), "mpii": (256, 256)}


@dataclass
class EvalReport:
    """What an evaluation produced.

    dataset: "coco" or "mpii"; split; boxes: "GT boxes" or "detections (FILE)" (MPII: the annotated
    person boxes); metrics: COCO {AP, AP50, ...} as fractions (empty for test-dev) or MPII
    {"PCKh@0.5": {...}, ...}; pckh: the MPII PCKhResult objects; files: what was written;
    settings: decode, flip, thresholds, counts, images per second.
    """

    dataset: str
    split: str
    boxes: str
    metrics: dict[str, Any]
    settings: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)
    pckh: list[PCKhResult] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "split": self.split, "boxes": self.boxes, **self.settings,
                "metrics": self.metrics}


def resolve_decode(meta: dict[str, Any], override: str | None = None) -> str:
    """The decode rule: `override` if given, else the checkpoint's `decode` field, else inferred from its
    `loss` ("dm" -> 2x2, "mse" -> argmax), else argmax (foreign weights are MSE-trained) with a warning."""
    if override is not None:
        if override not in DEFAULT_JOINT_THRESHOLDS:
            raise ValueError(f"unknown decode rule {override!r}; expected one of {sorted(DEFAULT_JOINT_THRESHOLDS)}")
        return override
    if meta.get("decode") in DEFAULT_JOINT_THRESHOLDS:
        return meta["decode"]
    loss = meta.get("loss")
    name = str(loss.get("name", "") if isinstance(loss, dict) else (loss or "")).lower()
    if name.startswith("dm"):
        return "2x2"
    if name.startswith("mse"):
        return "argmax"
    logger.warning("checkpoint metadata has no decode rule or loss; using the argmax decode (pass decode= to choose)")
    return "argmax"


def coco_instances(preds: TopDownPredictions) -> list[dict[str, Any]]:
    """Person instances (dmpose.eval.coco's format) from top-down predictions: image keypoints with the
    decoder's confidence, box_score = the sample's score, area = w x h of the padded crop box."""
    for key in ("image_id", "score", "size"):
        if key not in preds.meta:
            raise ValueError(f"coco_instances: the predictions' meta lacks '{key}' (not a COCO dataset?)")
    kp = np.concatenate([preds.keypoints, preds.confidence[..., None].astype(np.float64)], axis=-1)
    size = np.asarray(preds.meta["size"], dtype=np.float64)
    return [
        {"image_id": int(preds.meta["image_id"][n]), "keypoints": kp[n], "box_score": float(preds.meta["score"][n]),
         "area": float(size[n, 0] * size[n, 1]), "center": np.asarray(preds.meta["center"][n]), "size": size[n]}
        for n in range(len(preds))
    ]


def evaluate_coco_predictions(
    preds: TopDownPredictions,
    gt: Any | None,
    sigmas: Any,
    joint_threshold: float | None = None,
    oks_threshold: float = DEFAULT_OKS_THRESHOLD,
) -> tuple[list[dict[str, Any]], dict[str, float], dict[str, Any]]:
    """Rescore, OKS-NMS and (when `gt`, a json path or pycocotools COCO, is given) COCOeval.

    joint_threshold None -> `DEFAULT_JOINT_THRESHOLDS[preds.decode]`. Returns (COCO results, metrics or {},
    counts and thresholds used).
    """
    thr = DEFAULT_JOINT_THRESHOLDS[preds.decode] if joint_threshold is None else float(joint_threshold)
    instances = coco_instances(preds)
    kept = oks_nms(rescore(instances, thr), sigmas, oks_threshold)
    results = to_coco_results(kept)
    metrics = evaluate_coco(results, gt, sigmas=sigmas) if gt is not None else {}
    info = {"joint_threshold": thr, "oks_threshold": float(oks_threshold), "instances": len(instances),
            "instances_after_nms": len(kept)}
    return results, metrics, info


def evaluate_mpii_predictions(
    preds: TopDownPredictions, gt: dict[str, np.ndarray], thresholds=(0.5, 0.1)
) -> list[PCKhResult]:
    """PCKh of MPII predictions against a `load_mpii_gt`-style dict (headboxes (N, 2, 2), jnt_missing
    (N, 16), optional joints (N, 16, 2), all 0-based image px). The ground-truth joints are the file's
    when it has them, else the dataset's annotations; visible = not jnt_missing (the official rule)."""
    n = len(preds)
    head, missing = np.asarray(gt["headboxes"]), np.asarray(gt["jnt_missing"], dtype=bool)
    if head.shape[0] != n or missing.shape[0] != n:
        raise ValueError(f"MPII ground truth holds {head.shape[0]} head boxes / {missing.shape[0]} jnt_missing rows "
                         f"but the dataset has {n} persons; they must correspond one to one, in order")
    joints = gt.get("joints")
    if joints is None:
        if "keypoints" not in preds.meta:
            raise ValueError("MPII ground truth has no joints and the predictions carry no annotated keypoints")
        joints = np.asarray(preds.meta["keypoints"], dtype=np.float64)[..., :2]
    return evaluate_mpii(preds.keypoints, joints, head, ~missing, thresholds=thresholds)


def _checkpoint_setup(ckpt: Path, dataset: str, device: str | None):
    import torch

    from dmpose.data.keypoints import load_keypoint_set
    from dmpose.models import load_model

    if not Path(ckpt).is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(ckpt, map_location=device)
    meta = model.checkpoint_meta
    keypoint_set = load_keypoint_set("coco17" if dataset == "coco" else "mpii16")
    if meta["num_joints"] != keypoint_set.num_keypoints:
        raise ValueError(f"{ckpt}: num_joints={meta['num_joints']} but the {dataset} keypoint set "
                         f"'{keypoint_set.name}' has {keypoint_set.num_keypoints} joints")
    if meta.get("input_size"):
        h, w = meta["input_size"]
        input_size = (int(w), int(h))
    else:
        input_size = DEFAULT_INPUT_SIZE[dataset]
        logger.warning("%s: metadata has no input_size; using %dx%d (height x width)",
                       ckpt, input_size[1], input_size[0])
    if meta.get("heatmap_size"):
        hh, hw = meta["heatmap_size"]
        heatmap_size = (int(hw), int(hh))
    else:
        heatmap_size = (input_size[0] // 4, input_size[1] // 4)
    flip_pairs = meta.get("flip_pairs") or keypoint_set.flip_pairs
    return model, meta, keypoint_set, input_size, heatmap_size, [tuple(p) for p in flip_pairs]


def evaluate_checkpoint(
    ckpt: str | Path,
    data: str | Path | None = None,
    dataset: str = "coco",
    split: str | None = None,
    dets: str | Path | None = None,
    gt_boxes: bool = False,
    flip: bool = True,
    decode: str | None = None,
    batch_size: int = 32,
    out: str | Path | None = None,
    device: str | None = None,
    num_workers: int = 0,
    amp: bool = True,
    joint_threshold: float | None = None,
    oks_threshold: float = DEFAULT_OKS_THRESHOLD,
    det_score_threshold: float = 0.0,
    mpii_gt: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> EvalReport:
    """Evaluate a dmpose checkpoint on COCO (OKS AP) or MPII (PCKh) and write the results.

    data: the dataset root (COCO layout, see dmpose.data.coco; MPII: annot/{split}.json, images/,
        annot/gt_{split}.mat); None -> the default synthetic dataset (COCO only), generated on first use.
    split: COCO val2017 (default) or test-dev2017 (detections needed; no metrics); MPII valid (default).
    dets: a COCO-results json of person boxes; default ROOT/person_detection_results/... (the AP-56
        detector's file name); gt_boxes=True uses the annotated boxes instead (reported as "GT boxes").
    decode: override the checkpoint's decode rule ("2x2" or "argmax").
    out: folder for the results json (COCO results format; MPII: predictions) and the metrics json.
    mpii_gt: the gt_valid.mat-style file; default ROOT/annot/gt_{split}.mat.
    """
    from dmpose.codec import DMCodec
    from dmpose.data.coco import DEFAULT_DETECTION_FILE, CocoKeypoints, coco_paths
    from dmpose.data.mpii import MpiiKeypoints, load_mpii_gt
    from dmpose.data.synthetic import ensure_synthetic
    from dmpose.data.transforms import TopDownTransform

    if dataset not in ("coco", "mpii"):
        raise ValueError(f"unknown dataset {dataset!r}; expected 'coco' or 'mpii'")
    if dets is not None and gt_boxes:
        raise ValueError("give either detections (dets) or gt_boxes, not both")
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}")
    if data is None:
        if dataset != "coco":
            raise ValueError("MPII evaluation needs a data root (no default MPII dataset)")
        data = ensure_synthetic()
        logger.info("no data root given: using the synthetic dataset at %s", data)
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"data root not found: {root}")
    model, meta, keypoint_set, input_size, heatmap_size, flip_pairs = _checkpoint_setup(ckpt, dataset, device)
    rule = resolve_decode(meta, decode)
    transform = TopDownTransform(input_size, heatmap_size, DMCodec(heatmap_size), keypoint_set, augment=None)
    settings: dict[str, Any] = {"checkpoint": str(ckpt), "arch": meta["arch"], "decode": rule, "flip": flip,
                                "input_size": [input_size[1], input_size[0]]}
    out_dir = Path(out) if out is not None else None

    if dataset == "mpii":
        split = split or MPII_DEFAULT_SPLIT
        ann_file, image_dir = root / "annot" / f"{split}.json", root / "images"
        gt_file = Path(mpii_gt or root / "annot" / f"gt_{split}.mat")
        if out_dir is not None:
            for name in (f"mpii_{split}_predictions.json", f"mpii_{split}_metrics.json"):
                check_not_input(out_dir / name, [ckpt, ann_file, gt_file])
        gt = load_mpii_gt(gt_file)
        ds = MpiiKeypoints(ann_file, image_dir, transform)
        preds = predict_dataset(model, ds, rule, flip_pairs if flip else None, batch_size, num_workers, amp, progress)
        pckh = evaluate_mpii_predictions(preds, gt)
        settings.update(persons=len(preds), images_per_second=preds.images_per_second)
        metrics = {f"PCKh@{r.threshold:g}": r.to_dict() for r in pckh}
        report = EvalReport("mpii", split, "annotated person boxes", metrics, settings, pckh=pckh)
        if out_dir is not None:
            rows = [{"image": preds.meta["image"][n], "index": int(preds.meta["index"][n]),
                     "keypoints": np.concatenate([preds.keypoints[n], preds.confidence[n][:, None]], -1).tolist()}
                    for n in range(len(preds))]
            report.files["results"] = write_json(rows, out_dir / f"mpii_{split}_predictions.json")
            report.files["metrics"] = write_json(report.to_dict(), out_dir / f"mpii_{split}_metrics.json")
        return report

    split = split or COCO_DEFAULT_SPLIT
    test_split = split.startswith("test")
    ann_file, image_dir = coco_paths(root, split)
    if gt_boxes:
        if test_split:
            raise ValueError(f"{split} has no ground-truth boxes; evaluate it with detections")
        det_file, boxes = None, GT_BOXES_LABEL
    else:
        det_file = Path(dets) if dets is not None else root / DEFAULT_DETECTION_FILE
        if not det_file.is_file():
            hint = "" if dets is not None else " (pass --dets FILE, or --gt-boxes to use the annotated boxes)"
            raise FileNotFoundError(f"detection file not found: {det_file}{hint}")
        boxes = f"detections ({det_file.name})"
    if out_dir is not None:
        for name in (f"person_keypoints_{split}_dmpose_results.json", f"metrics_{split}.json"):
            check_not_input(out_dir / name, [ckpt, ann_file, det_file])
    ds = CocoKeypoints(ann_file, image_dir, transform, detections=det_file, det_score_threshold=det_score_threshold)
    preds = predict_dataset(model, ds, rule, flip_pairs if flip else None, batch_size, num_workers, amp, progress)
    results, metrics, info = evaluate_coco_predictions(
        preds, None if test_split else ann_file, keypoint_set.sigmas, joint_threshold, oks_threshold)
    settings.update(info, images_per_second=preds.images_per_second)
    if det_file is not None:
        settings["det_score_threshold"] = det_score_threshold
    report = EvalReport("coco", split, boxes, metrics, settings, results=results)
    if out_dir is not None:
        report.files["results"] = write_results_json(results, out_dir / f"person_keypoints_{split}_dmpose_results.json")
        if not test_split:
            report.files["metrics"] = write_json(report.to_dict(), out_dir / f"metrics_{split}.json")
    return report
