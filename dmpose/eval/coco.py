"""COCO keypoint evaluation: rescoring, OKS-NMS and the official metrics (pycocotools, never re-implemented).

A *person instance* is a dict with
    image_id   int, the COCO image id;
    keypoints  (K, 3) array-like, image pixels (x, y, confidence);
    box_score  float, the person box's score (detector score, or 1.0 for ground-truth boxes);
    area       float > 0, the person box's area in image pixels (used by OKS-NMS only);
    score      float, optional: the final score, set by `rescore` (otherwise `box_score` is used);
    centre, size: optional, carried along untouched.

Coordinates. dmpose puts pixel centres at integer coordinates in every image space (pixel (i, j) covers
[j-0.5, j+0.5) x [i-0.5, i+0.5), x right, y down). COCO's *keypoint* annotations are integer pixel
indices: x is the column of the pixel whose centre is the keypoint, in [0, W-1] (every labelled keypoint of
`test_coco.json` is an integer in range; detectron2 documents the same, "keypoint coordinates are integers
in [0, H-1 or W-1]", and adds 0.5 on loading only because its own convention puts centres at +0.5, then
subtracts it again when writing results). That is exactly dmpose's convention, so keypoints go to and from
COCO **unchanged, with no 0.5 shift** (as HRNet and MMPose do). COCO's *boxes and segmentations* are
continuous coordinates with the image's outer corner at (0, 0): in dmpose coordinates a bbox
[x, y, w, h] spans [x-0.5, x+w-0.5] x [y-0.5, y+h-0.5]. That matters for the box -> crop geometry, not
here (OKS only uses areas, which a shift does not change).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from dmpose.atomic import atomic_output
from dmpose.spec import JOINT_THRESHOLDS

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_JOINT_THRESHOLD",
    "DEFAULT_OKS_THRESHOLD",
    "METRIC_NAMES",
    "PAPER_COLUMNS",
    "evaluate_coco",
    "instance_score",
    "oks",
    "oks_nms",
    "rescore",
    "to_coco_results",
    "write_json",
    "write_results_json",
]

# The official HRNet test defaults (TEST.IN_VIS_THRE, TEST.OKS_THRE). The joint threshold was calibrated on
# the peak values of MSE heatmaps; the 2x2 decode's confidence is a different quantity (a mass share).
DEFAULT_JOINT_THRESHOLD = JOINT_THRESHOLDS["argmax"]  # HRNet's in_vis_thre
DEFAULT_OKS_THRESHOLD = 0.9

# COCOeval('keypoints').stats, in order.
METRIC_NAMES = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")
# The columns of the paper's COCO tables.
PAPER_COLUMNS = ("AP", "AP50", "AP75", "APM", "APL", "AR")


def oks(
    pred: Any,
    gt: Any,
    area: Any,
    sigmas: Any,
    labelled: Any = None,
) -> np.ndarray | float:
    """Object keypoint similarity, COCO's formula (as in COCOeval.computeOks).

    OKS = mean over the labelled joints k of exp(-d_k^2 / (2 s^2 kappa_k^2)), with d_k the distance between
    predicted and reference joint, s^2 = `area` and kappa_k = 2 sigma_k (like pycocotools, `area` gets
    np.spacing(1) added).

    Args:
        pred: (..., K, C>=2) predicted poses; only (x, y) = [..., :2] is used.
        gt: (K, C>=2) the reference pose; only (x, y) is used.
        area: s^2, a positive scalar or an array broadcastable to pred.shape[:-2]. COCOeval uses the ground
            truth's segment area; OKS-NMS uses the mean of the two instances' box areas.
        sigmas: (K,) per-joint OKS sigmas (COCO: 0.026 ... 0.107).
        labelled: optional (K,) bool, the joints to average over (COCO: visibility v > 0); default all.

    Returns:
        OKS with shape pred.shape[:-2] (a float for a single pose).
    """
    p = np.asarray(pred, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    s = np.asarray(sigmas, dtype=np.float64)
    if p.ndim < 2 or p.shape[-1] < 2:
        raise ValueError(f"oks: pred must be (..., K, 2+), got shape {p.shape}")
    k = p.shape[-2]
    if g.shape[0] != k or g.ndim != 2 or g.shape[-1] < 2:
        raise ValueError(f"oks: gt must be (K={k}, 2+), got shape {g.shape}")
    if s.shape != (k,):
        raise ValueError(f"oks: sigmas must have shape ({k},), got {s.shape}")
    a = np.asarray(area, dtype=np.float64)
    if np.any(~np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"oks: area must be finite and > 0, got {area}")
    mask = np.ones(k, dtype=bool) if labelled is None else np.asarray(labelled, dtype=bool)
    if mask.shape != (k,):
        raise ValueError(f"oks: labelled must have shape ({k},), got {mask.shape}")
    if not mask.any():
        raise ValueError("oks: no labelled joint to compare")
    d2 = ((p[..., :2] - g[:, :2]) ** 2).sum(-1)  # (..., K)
    e = d2 / (2.0 * (2.0 * s) ** 2 * (a[..., None] + np.spacing(1)))
    out = np.exp(-e)[..., mask].mean(-1)
    return float(out) if out.ndim == 0 else out


def _checked_keypoints(inst: Mapping[str, Any], where: str) -> np.ndarray:
    if "keypoints" not in inst:
        raise ValueError(f"{where}: missing field 'keypoints'")
    kp = np.asarray(inst["keypoints"], dtype=np.float64)
    if kp.ndim != 2 or kp.shape[1] != 3:
        raise ValueError(f"{where}: keypoints must be (K, 3) (x, y, confidence), got shape {kp.shape}")
    if not np.isfinite(kp).all():
        raise ValueError(f"{where}: keypoints contain non-finite values")
    return kp


def _checked_number(inst: Mapping[str, Any], field: str, where: str, positive: bool = False) -> float:
    if field not in inst:
        raise ValueError(f"{where}: missing field '{field}'")
    value = float(inst[field])
    if not np.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{where}: {field} must be finite{' and > 0' if positive else ''}, got {inst[field]!r}")
    return value


def instance_score(inst: Mapping[str, Any]) -> float:
    """The instance's final score: `score` once rescored, else `box_score`."""
    return float(inst["score"]) if "score" in inst else float(inst["box_score"])


def rescore(
    instances: Sequence[Mapping[str, Any]], joint_threshold: float = DEFAULT_JOINT_THRESHOLD
) -> list[dict[str, Any]]:
    """Score = box_score x mean confidence of the joints whose confidence is > `joint_threshold`.

    As the official HRNet code: strictly greater; an instance with no joint above the threshold scores 0.
    Returns new dicts (inputs untouched) with `score` set.
    """
    out = []
    for n, inst in enumerate(instances):
        where = f"instance {n}"
        conf = _checked_keypoints(inst, where)[:, 2]
        box_score = _checked_number(inst, "box_score", where)
        above = conf > joint_threshold
        joint_score = float(conf[above].mean()) if above.any() else 0.0
        out.append({**inst, "score": box_score * joint_score})
    return out


def oks_nms(
    instances: Sequence[Mapping[str, Any]],
    sigmas: Any,
    oks_threshold: float = DEFAULT_OKS_THRESHOLD,
) -> list[Mapping[str, Any]]:
    """Greedy OKS non-maximum suppression within each image (as the official HRNet code).

    Instances are visited by decreasing `instance_score` (ties: input order); each kept instance suppresses
    the later ones whose OKS with it is > `oks_threshold` (equal is kept). OKS here uses all K joints and
    s^2 = the mean of the two `area`s. (HRNet passes the area of its enlarged crop box, w x h after the
    aspect fix and 1.25 padding; pass that area to reproduce it.)

    Returns the kept instances, in input order. Counts are logged.
    """
    sig = np.asarray(sigmas, dtype=np.float64)
    by_image: dict[int, list[int]] = {}
    poses, areas, scores = [], [], []
    for n, inst in enumerate(instances):
        where = f"instance {n}"
        kp = _checked_keypoints(inst, where)
        if kp.shape[0] != sig.shape[0]:
            raise ValueError(f"{where}: {kp.shape[0]} keypoints but {sig.shape[0]} OKS sigmas")
        if "image_id" not in inst:
            raise ValueError(f"{where}: missing field 'image_id'")
        _checked_number(inst, "box_score", where)
        areas.append(_checked_number(inst, "area", where, positive=True))
        poses.append(kp[:, :2])
        scores.append(instance_score(inst))
        by_image.setdefault(int(inst["image_id"]), []).append(n)

    keep_mask = np.zeros(len(instances), dtype=bool)
    for idx in by_image.values():
        idx_arr = np.asarray(idx)
        order = idx_arr[np.argsort(-np.asarray([scores[i] for i in idx]), kind="stable")]
        while order.size:
            top, rest = order[0], order[1:]
            keep_mask[top] = True
            if rest.size == 0:
                break
            pair_area = (areas[top] + np.asarray([areas[i] for i in rest])) / 2.0
            sim = oks(np.stack([poses[i] for i in rest]), poses[top], pair_area, sig)
            order = rest[sim <= oks_threshold]
    kept = [inst for inst, k in zip(instances, keep_mask) if k]
    logger.info(
        "OKS-NMS (OKS > %.3g suppressed): kept %d of %d instances in %d images (%d suppressed)",
        oks_threshold, len(kept), len(instances), len(by_image), len(instances) - len(kept),
    )
    return kept


def to_coco_results(instances: Sequence[Mapping[str, Any]], category_id: int = 1) -> list[dict[str, Any]]:
    """Person instances -> COCO results format: {image_id, category_id, keypoints: [x, y, c] * K, score}.

    Keypoints are written unchanged (COCO keypoints use dmpose's integer-centre convention, see the
    module docstring); score is `instance_score`.
    """
    results = []
    for n, inst in enumerate(instances):
        where = f"instance {n}"
        kp = _checked_keypoints(inst, where)
        if "image_id" not in inst:
            raise ValueError(f"{where}: missing field 'image_id'")
        if "score" not in inst:
            _checked_number(inst, "box_score", where)
        results.append(
            {
                "image_id": int(inst["image_id"]),
                "category_id": int(category_id),
                "keypoints": [float(v) for v in kp.reshape(-1)],
                "score": instance_score(inst),
            }
        )
    return results


def _load_coco(gt: Any) -> Any:

    if isinstance(gt, COCO):
        return gt
    path = Path(gt)
    if not path.is_file():
        raise FileNotFoundError(f"COCO ground-truth file not found: {path}")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco = COCO(str(path))
    logger.debug("pycocotools: %s", buf.getvalue().strip())
    return coco


def evaluate_coco(
    results: Sequence[Mapping[str, Any]],
    gt: Any,
    sigmas: Any = None,
) -> dict[str, float]:
    """COCOeval('keypoints') of COCO-format `results` against `gt` (a json path or a pycocotools COCO).

    Every ground-truth image is evaluated (an image without results counts its people as missed).
    `sigmas` overrides pycocotools' COCO OKS sigmas (for other keypoint sets). pycocotools' prints are
    captured and logged at DEBUG.

    Returns {AP, AP50, AP75, APM, APL, AR, AR50, AR75, ARM, ARL} as fractions in [0, 1]; like pycocotools,
    -1.0 where no ground truth falls in that area range.
    """

    coco_gt = _load_coco(gt)
    if len(results) == 0:
        raise ValueError("evaluate_coco: no results to evaluate")
    gt_ids = set(coco_gt.getImgIds())
    unknown = sorted({int(r["image_id"]) for r in results} - gt_ids)
    if unknown:
        raise ValueError(f"evaluate_coco: {len(unknown)} result image ids not in the ground truth, e.g. {unknown[:5]}")
    k = len(sigmas) if sigmas is not None else len(Params(iouType="keypoints").kpt_oks_sigmas)
    for cat in coco_gt.loadCats(coco_gt.getCatIds()):
        if "keypoints" in cat and len(cat["keypoints"]) != k:
            raise ValueError(
                f"evaluate_coco: category {cat.get('name', cat['id'])!r} has {len(cat['keypoints'])} keypoints "
                f"but {k} OKS sigmas (pass sigmas for a non-COCO keypoint set)"
            )
    n_values = {len(r["keypoints"]) for r in results}
    if n_values != {3 * k}:
        raise ValueError(f"evaluate_coco: results must hold 3*{k} keypoint values, found lengths {sorted(n_values)}")

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        # loadRes adds area/bbox/id to the dicts it is given: hand it copies.
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        evaluator = COCOeval(coco_gt, coco_dt, "keypoints")
        if sigmas is not None:
            evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    logger.debug("pycocotools COCOeval('keypoints'):\n%s", buf.getvalue().rstrip())
    return {name: float(v) for name, v in zip(METRIC_NAMES, evaluator.stats)}


def write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write `obj` as JSON atomically (temporary file in the same folder, then rename). NaN is refused."""
    path = Path(path)
    text = json.dumps(obj, allow_nan=False)
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return path


def write_results_json(results: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write COCO-format results (as from `to_coco_results`) atomically; checks the fields first."""
    required = ("image_id", "category_id", "keypoints", "score")
    for n, r in enumerate(results):
        missing = [f for f in required if f not in r]
        if missing:
            raise ValueError(f"result {n}: missing fields {missing}")
    path = write_json(list(results), path)
    logger.info("wrote %d COCO results to %s", len(results), path)
    return path
