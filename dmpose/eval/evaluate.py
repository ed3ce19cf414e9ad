"""Model-driven evaluation, end to end: a checkpoint and a dataset in, the paper's metrics out.

`evaluate_checkpoint` is a composition: options checked (all of them, and the output folder's
writability, before any work) -> the checkpoint's model and PoseSpec (`load_model`, `model.spec`) ->
the dataset cropped as the spec says (`TopDownTransform.from_spec`, no target encoding) ->
`TopDownPredictor` (flip test, the spec's decode) -> `predict_dataset` feeding one evaluator
(`CocoEvaluator`: rescoring, OKS-NMS, pycocotools; `MpiiEvaluator`: PCKh) -> the result files, written
all or none.

COCO: person boxes are detections (default ROOT/person_detection_results/..., the AP-56 detector's) or
the annotated boxes; box score = the detector's (1.0 for ground-truth boxes). MPII: the annotated person
boxes, PCKh@0.5 and @0.1 with the head boxes and missing-joint flags of a gt_valid.mat-style file.
The keypoint set is the checkpoint's (its spec); it must be the dataset's.

Coordinates: pixel centres at integer coordinates in every space (pixel (i, j) covers
[j-0.5, j+0.5) x [i-0.5, i+0.5)); COCO keypoints are written unchanged (see dmpose.eval.coco).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmpose.atomic import atomic_output, check_not_input
from dmpose.data.coco import CocoKeypoints
from dmpose.data.image import read_image
from dmpose.data.layouts import DEFAULT_DETECTION_FILE, coco_paths, mpii_paths
from dmpose.data.mpii import MpiiKeypoints, load_mpii_gt
from dmpose.data.synthetic import ensure_synthetic
from dmpose.data.transforms import TopDownTransform
from dmpose.detect import load_person_detector
from dmpose.eval.coco import DEFAULT_OKS_THRESHOLD
from dmpose.eval.metrics import CocoEvaluator, MpiiEvaluator
from dmpose.eval.mpii import PCKhResult
from dmpose.eval.predictor import TopDownPredictor
from dmpose.eval.runner import ProgressCallback, TopDownPredictions, coco_update, crop_boxes, predict_dataset
from dmpose.models import load_pose_model
from dmpose.spec import DECODE_RULES, KeypointSpec

__all__ = [
    "DetectionsNotFoundError",
    "EvalReport",
    "check_output_dir",
    "evaluate_checkpoint",
    "evaluate_coco_predictions",
    "evaluate_mpii_predictions",
    "write_json_files",
]

logger = logging.getLogger(__name__)

GT_BOXES_LABEL = "GT boxes"


class DetectionsNotFoundError(FileNotFoundError):
    """The COCO detection file is missing; `default` says whether it was the default path."""

    def __init__(self, message: str, default: bool):
        super().__init__(message)
        self.default = default
MPII_DEFAULT_SPLIT = "valid"
COCO_DEFAULT_SPLIT = "val2017"
DATASETS = {"coco": "coco17", "mpii": "mpii16"}  # dataset -> the keypoint set its annotations use


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


def _sigma_keypoints(sigmas: Any) -> KeypointSpec:
    sig = tuple(float(s) for s in np.asarray(sigmas, dtype=np.float64).reshape(-1))
    return KeypointSpec(name="custom", names=tuple(f"joint{i}" for i in range(len(sig))), sigmas=sig)


def evaluate_coco_predictions(
    preds: TopDownPredictions,
    gt: Any | None,
    sigmas: Any,
    joint_threshold: float | None = None,
    oks_threshold: float = DEFAULT_OKS_THRESHOLD,
) -> tuple[list[dict[str, Any]], dict[str, float], dict[str, Any]]:
    """Collected predictions through a `CocoEvaluator`: (COCO results, metrics or {}, counts and thresholds).

    joint_threshold None -> `dmpose.spec.JOINT_THRESHOLDS[preds.decode]`."""
    for key in ("image_id", "score", "size", "center"):
        if key not in preds.meta:
            raise ValueError(f"COCO evaluation: the predictions' meta lacks '{key}' (not a COCO dataset?)")
    ev = CocoEvaluator(gt, _sigma_keypoints(sigmas), joint_threshold, oks_threshold, decode=preds.decode)
    ev.update(preds.meta["image_id"], crop_boxes(preds.meta), preds.meta["score"], preds.keypoints,
              preds.confidence)
    metrics = ev.compute()
    return ev.results(), metrics, dict(ev.info)


def evaluate_mpii_predictions(
    preds: TopDownPredictions, gt: dict[str, np.ndarray], thresholds=(0.5, 0.1)
) -> list[PCKhResult]:
    """PCKh of collected MPII predictions (dataset order) through an `MpiiEvaluator`; the ground-truth joints
    are the file's when it has them, else the dataset's annotations."""
    ev = MpiiEvaluator(gt, thresholds=thresholds)
    n = len(preds)
    if ev.headboxes.shape[0] != n or ev.missing.shape[0] != n:
        raise ValueError(f"MPII ground truth holds {ev.headboxes.shape[0]} head boxes / {ev.missing.shape[0]} "
                         f"jnt_missing rows but the dataset has {n} persons; they must correspond one to one, "
                         "in order")
    gt_joints = preds.meta.get("keypoints")
    ev.update(np.arange(n), preds.keypoints, None if gt_joints is None else np.asarray(gt_joints)[..., :2])
    return ev.pckh_results()


# ---- outputs: checked before the work, written all or none ---------------------------------------------
def check_output_dir(out: str | os.PathLike) -> Path:
    """The output folder, checked before any work: an existing folder we can write to, or a path whose
    nearest existing parent is one (nothing is created here)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output folder {out} exists and is not a folder")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {out} is not writable ({probe} does not accept new files)")
    return out


def write_json_files(files: dict[Path, Any]) -> list[Path]:
    """Write several JSON files all or none: every text is serialised first (NaN refused), each goes to a
    temporary file beside its target, and the renames happen only once every file was written."""
    texts = {Path(p): json.dumps(obj, allow_nan=False) for p, obj in files.items()}
    with contextlib.ExitStack() as stack:
        for path, text in texts.items():
            stack.enter_context(atomic_output(path)).write_text(text)
    return list(texts)


# ---- the composition -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Options:
    """evaluate_checkpoint's options, checked together before any work."""

    dataset: str
    split: str
    root: Path | None
    flip: bool
    decode: str | None
    batch_size: int
    num_workers: int
    joint_threshold: float | None
    oks_threshold: float
    out: Path | None

    @classmethod
    def check(cls, ckpt, data, dataset, split, dets, gt_boxes, flip, decode, batch_size, out, num_workers,
              joint_threshold, oks_threshold, det_score_threshold, detector=None) -> _Options:
        if dataset not in DATASETS:
            raise ValueError(f"unknown dataset {dataset!r}; expected 'coco' or 'mpii'")
        if sum((dets is not None, bool(gt_boxes), detector is not None)) > 1:
            raise ValueError("give one source of person boxes, not both: detections (dets), gt_boxes or a detector")
        if dataset == "mpii" and (dets is not None or gt_boxes or detector is not None):
            raise ValueError("MPII evaluation uses the annotated person boxes (no detections, gt_boxes or detector "
                             "option)")
        if decode is not None and decode not in DECODE_RULES:
            raise ValueError(f"unknown decode rule {decode!r}; expected one of {DECODE_RULES}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        for name, v in (("joint_threshold", joint_threshold), ("oks_threshold", oks_threshold),
                        ("det_score_threshold", det_score_threshold)):
            if v is not None and not (isinstance(v, (int, float)) and 0.0 <= float(v) <= 1.0):
                raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")
        split = split or (COCO_DEFAULT_SPLIT if dataset == "coco" else MPII_DEFAULT_SPLIT)
        if dataset == "coco" and gt_boxes and split.startswith("test"):
            raise ValueError(f"{split} has no ground-truth boxes; evaluate it with detections")
        if not Path(ckpt).is_file():
            raise FileNotFoundError(f"checkpoint not found: {ckpt}")
        if data is None and dataset != "coco":
            raise ValueError("MPII evaluation needs a data root (no default MPII dataset)")
        if data is not None and not Path(data).is_dir():
            raise FileNotFoundError(f"data root not found: {data}")
        out_dir = check_output_dir(out) if out is not None else None
        return cls(dataset, split, None if data is None else Path(data), bool(flip), decode, batch_size,
                   num_workers, joint_threshold, float(oks_threshold), out_dir)


def _load(ckpt: Path, dataset: str, device: str | None, decode: str | None):
    """The model and its spec (decode overridden when asked); the spec's keypoint set must be the dataset's."""
    model = load_pose_model(ckpt, map_location=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if model.spec is None:
        raise ValueError(f"{ckpt}: the checkpoint names no keypoint set ({model.num_joints} joints, no "
                         "keypoint_names); re-save it with a spec")
    spec = model.spec.with_decode(decode)
    expected = KeypointSpec.builtin(DATASETS[dataset])
    if spec.keypoints.names != expected.names:
        raise ValueError(f"{ckpt}: num_joints={spec.num_joints} ({spec.keypoints.name}) but the {dataset} "
                         f"keypoint set '{expected.name}' has {expected.num_keypoints} joints"
                         + (" in another order" if spec.num_joints == expected.num_keypoints else ""))
    return model, spec


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
    detector: Any = None,
) -> EvalReport:
    """Evaluate a dmpose checkpoint on COCO (OKS AP) or MPII (PCKh) and write the results (module docstring).

    data: the dataset root (COCO layout, see dmpose.data.coco; MPII: annot/{split}.json, images/,
        annot/gt_{split}.mat); None -> the default synthetic dataset (COCO only), generated on first use.
    split: COCO val2017 (default) or test-dev2017 (detections needed; no metrics); MPII valid (default).
    dets / gt_boxes: COCO person boxes (default: ROOT's AP-56 detections); decode: override the spec's rule;
    out: folder for the results and metrics json (written all or none); mpii_gt: default
    ROOT/annot/gt_{split}.mat.
    detector: COCO person boxes from a person detector instead (a `dmpose.detect.PersonDetector` or its weights
        file, `load_person_detector`): every image of the split is detected first; its person boxes (FCOS's own
        postprocess, no further threshold or NMS) are the detections, det_score_threshold applies, and with `out`
        they are written too (person_detections_{split}_dmpose.json, dmpose's box coordinates).
    """
    opts = _Options.check(ckpt, data, dataset, split, dets, gt_boxes, flip, decode, batch_size, out, num_workers,
                          joint_threshold, oks_threshold, det_score_threshold, detector)
    ckpt = Path(ckpt)
    source = _coco_source if dataset == "coco" else _mpii_source
    model, spec = _load(ckpt, dataset, device, decode)
    if detector is not None:
        detector = load_person_detector(detector, device=device, det_thr=0.0, nms_thr=None, max_people=None)
        dets = detector
    ds_factory, finish = source(opts, ckpt, dets, gt_boxes, det_score_threshold, mpii_gt)
    ds = ds_factory(TopDownTransform.from_spec(spec))
    predictor = TopDownPredictor(model, spec, flip=opts.flip, amp=amp)
    settings: dict[str, Any] = {"checkpoint": str(ckpt), "arch": spec.arch, "decode": spec.decode, "flip": opts.flip,
                                "input_wh": list(spec.input_wh)}
    report, files = finish(predictor, ds, spec, settings, progress)
    if opts.out is not None:
        paths = write_json_files({opts.out / name: obj for name, (_, obj) in files.items()})
        report.files.update({what: path for (what, _), path in zip(files.values(), paths)})
    return report


def _root(opts: _Options) -> Path:
    if opts.root is not None:
        return opts.root
    root = ensure_synthetic()
    logger.info("no data root given: using the synthetic dataset at %s", root)
    return root


def _coco_source(opts: _Options, ckpt: Path, dets, gt_boxes: bool, det_score_threshold: float, mpii_gt):
    root = _root(opts)
    test_split = opts.split.startswith("test")
    ann_file, image_dir = coco_paths(root, opts.split)
    detected = None
    if gt_boxes:
        det_file, boxes = None, GT_BOXES_LABEL
    elif hasattr(dets, "detect"):  # a person detector: its boxes for every image, as a detection file
        detected = detect_coco_images(dets, ann_file, image_dir)
        det_file, boxes = None, f"detections (person detector {Path(str(dets.source)).name})"
    else:
        det_file = Path(dets) if dets is not None else root / DEFAULT_DETECTION_FILE
        if not det_file.is_file():
            raise DetectionsNotFoundError(f"detection file not found: {det_file}", default=dets is None)
        boxes = f"detections ({det_file.name})"
    if opts.out is not None:
        for name in (f"person_keypoints_{opts.split}_dmpose_results.json", f"metrics_{opts.split}.json"):
            check_not_input(opts.out / name, [ckpt, ann_file, det_file])

    def dataset(transform):
        if detected is None:
            return CocoKeypoints(ann_file, image_dir, transform, detections=det_file,
                                 det_score_threshold=det_score_threshold)
        with tempfile.TemporaryDirectory() as tmp:  # the dataset reads its detections once, when built
            path = Path(tmp) / "detections.json"
            path.write_text(json.dumps(detected))
            return CocoKeypoints(ann_file, image_dir, transform, detections=path,
                                 det_score_threshold=det_score_threshold)

    def finish(predictor, ds, spec, settings, progress):
        thr = spec.codec.rescore_threshold if opts.joint_threshold is None else opts.joint_threshold
        ev = CocoEvaluator(None if test_split else ann_file, spec.keypoints, thr, opts.oks_threshold,
                           decode=spec.decode)
        preds = predict_dataset(predictor, ds, opts.batch_size, opts.num_workers, coco_update(ev), progress)
        metrics = ev.compute()
        settings.update(ev.info, images_per_second=preds.images_per_second)
        if det_file is not None or detected is not None:
            settings["det_score_threshold"] = det_score_threshold
        report = EvalReport("coco", opts.split, boxes, metrics, settings, results=ev.results())
        files = {f"person_keypoints_{opts.split}_dmpose_results.json": ("results", report.results)}
        if detected is not None:
            files[f"person_detections_{opts.split}_dmpose.json"] = ("detections", detected)
        if not test_split:
            files[f"metrics_{opts.split}.json"] = ("metrics", report.to_dict())
        return report, files

    return dataset, finish


def detect_coco_images(detector: Any, ann_file: Path, image_dir: Path) -> list[dict[str, Any]]:
    """A COCO detection results list (image_id, category_id 1, bbox [x, y, w, h] in dmpose's coordinates, score)
    of `detector.detect` on every image the annotation file lists."""
    data = json.loads(Path(ann_file).read_text())
    rows = []
    for image in data.get("images", []):
        size = (image["width"], image["height"]) if "width" in image and "height" in image else None
        found = detector.detect(read_image(Path(image_dir) / image["file_name"], size))
        rows += [{"image_id": image["id"], "category_id": 1, "bbox": [float(v) for v in box[:4]],
                  "score": float(box[4])} for box in found]
    logger.info("person detector: %d boxes in %d images", len(rows), len(data.get("images", [])))
    return rows


def _mpii_source(opts: _Options, ckpt: Path, dets, gt_boxes: bool, det_score_threshold: float, mpii_gt):
    root = _root(opts)
    ann_file, image_dir, default_gt = mpii_paths(root, opts.split)
    gt_file = Path(mpii_gt or default_gt)
    if opts.out is not None:
        for name in (f"mpii_{opts.split}_predictions.json", f"mpii_{opts.split}_metrics.json"):
            check_not_input(opts.out / name, [ckpt, ann_file, gt_file])
    gt = load_mpii_gt(gt_file)

    def dataset(transform):
        return MpiiKeypoints(ann_file, image_dir, transform)

    def finish(predictor, ds, spec, settings, progress):
        preds = predict_dataset(predictor, ds, opts.batch_size, opts.num_workers, None, progress)
        pckh = evaluate_mpii_predictions(preds, gt)
        settings.update(persons=len(preds), images_per_second=preds.images_per_second)
        metrics = {f"PCKh@{r.threshold:g}": r.to_dict() for r in pckh}
        report = EvalReport("mpii", opts.split, "annotated person boxes", metrics, settings, pckh=pckh)
        rows = [{"image": preds.meta["image"][n], "index": int(preds.meta["index"][n]),
                 "keypoints": np.concatenate([preds.keypoints[n], preds.confidence[n][:, None]], -1).tolist()}
                for n in range(len(preds))]
        files = {f"mpii_{opts.split}_predictions.json": ("results", rows),
                 f"mpii_{opts.split}_metrics.json": ("metrics", report.to_dict())}
        return report, files

    return dataset, finish
