"""dmpose.eval.coco: OKS, rescoring, OKS-NMS and COCOeval wiring.

References here are independent: OKS by hand (python floats, COCO's formula), pycocotools' own
COCOeval.computeOks, and a small re-statement of COCO's 101-point interpolated AP for the perturbed case.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
from conftest import SHARED_DATA
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from dmpose.cli.tables import coco_metrics_table
from dmpose.eval.coco import (
    METRIC_NAMES,
    PAPER_COLUMNS,
    evaluate_coco,
    oks,
    oks_nms,
    rescore,
    to_coco_results,
    write_json,
    write_results_json,
)

SIGMAS = Params(iouType="keypoints").kpt_oks_sigmas  # pycocotools' COCO sigmas, not ours


GT_JSON = SHARED_DATA / "coco_sample" / "test_coco.json"
needs_sample = pytest.mark.skipif(not GT_JSON.is_file(), reason=f"COCO sample not found at {GT_JSON}")


def _quiet(fn, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def _gt_dataset() -> dict:
    return json.loads(GT_JSON.read_text())


def _coco_from(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    _quiet(coco.createIndex)
    return coco


def _kp(ann: dict) -> np.ndarray:
    return np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)


def hand_oks(pred_xy, gt_kp, area) -> float:
    """COCO's OKS, written out: mean over labelled joints of exp(-d^2 / (2 s^2 k^2)), s^2 = area, k = 2 sigma."""
    terms = []
    for j in range(len(SIGMAS)):
        if gt_kp[j][2] <= 0:
            continue
        d2 = (float(pred_xy[j][0]) - gt_kp[j][0]) ** 2 + (float(pred_xy[j][1]) - gt_kp[j][1]) ** 2
        kappa = 2.0 * float(SIGMAS[j])
        terms.append(math.exp(-d2 / (2.0 * area * kappa**2)))
    return sum(terms) / len(terms)


def _pycocotools_oks(dataset: dict, ann_id: int, pred_kp: np.ndarray) -> float:
    """OKS of one prediction against annotation `ann_id`, as COCOeval.computeOks reports it."""
    coco_gt = _coco_from(dataset)
    ann = coco_gt.anns[ann_id]
    res = [{"image_id": ann["image_id"], "category_id": 1, "keypoints": pred_kp.reshape(-1).tolist(), "score": 1.0}]
    coco_dt = _quiet(coco_gt.loadRes, res)
    ev = COCOeval(coco_gt, coco_dt, "keypoints")
    ev.params.imgIds = [ann["image_id"]]
    _quiet(ev.evaluate)
    col = [g["id"] for g in ev._gts[ann["image_id"], 1]].index(ann_id)
    return float(ev.ious[ann["image_id"], 1][0, col])


# ---------------------------------------------------------------------------------------------- OKS


@needs_sample
def test_oks_uniform_shift_matches_hand_and_pycocotools():
    dataset = _gt_dataset()
    ann = next(a for a in dataset["annotations"] if a["id"] == 442619)  # image 785, 17 labelled joints
    gt = _kp(ann)
    pred = gt.copy()
    pred[:, :2] += [3.0, -4.0]  # |d| = 5 px on every joint
    expected = hand_oks(pred, gt, ann["area"])
    assert 0.05 < expected < 0.99  # the shift is informative, not saturated
    ours = oks(pred, gt, ann["area"], SIGMAS, labelled=gt[:, 2] > 0)
    assert ours == pytest.approx(expected, rel=1e-12)
    assert _pycocotools_oks(dataset, ann["id"], pred) == pytest.approx(expected, rel=1e-12)


@needs_sample
def test_oks_per_joint_offsets_with_unlabelled_joints():
    dataset = _gt_dataset()
    ann = next(a for a in dataset["annotations"] if a["num_keypoints"] == 14)  # 3 unlabelled joints
    gt = _kp(ann)
    assert (gt[:, 2] == 0).sum() == 3
    rng = np.random.default_rng(0)
    pred = gt.copy()
    pred[:, :2] += rng.normal(0.0, 6.0, size=(17, 2))
    pred[gt[:, 2] == 0, :2] = [1000.0, -1000.0]  # unlabelled joints must not count
    expected = hand_oks(pred, gt, ann["area"])
    ours = oks(pred, gt, ann["area"], SIGMAS, labelled=gt[:, 2] > 0)
    assert ours == pytest.approx(expected, rel=1e-12)
    assert _pycocotools_oks(dataset, ann["id"], pred) == pytest.approx(expected, rel=1e-12)
    # Counting every joint (the NMS form) sees the far-away unlabelled ones.
    assert oks(pred, gt, ann["area"], SIGMAS) < ours


def test_oks_batched_and_area_broadcast():
    rng = np.random.default_rng(1)
    gt = np.concatenate([rng.uniform(0, 200, (17, 2)), np.full((17, 1), 2.0)], axis=1)
    preds = gt[None, :, :2] + rng.normal(0, 4, (5, 17, 2))
    areas = rng.uniform(1e3, 2e4, 5)
    got = oks(preds, gt, areas, SIGMAS)
    assert got.shape == (5,)
    for n in range(5):
        assert got[n] == pytest.approx(hand_oks(preds[n], gt, areas[n]), rel=1e-12)
    assert oks(gt, gt, 100.0, SIGMAS) == 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"area": 0.0}, "area"),
        ({"labelled": np.zeros(17, bool)}, "labelled"),
        ({"sigmas": SIGMAS[:5]}, "sigmas"),
        ({"gt": np.zeros((16, 3))}, "gt"),
    ],
)
def test_oks_rejects_bad_input(kwargs, match):
    args = {"pred": np.zeros((17, 3)), "gt": np.zeros((17, 3)), "area": 10.0, "sigmas": SIGMAS, **kwargs}
    with pytest.raises(ValueError, match=match):
        oks(**args)


# ------------------------------------------------------------------------------ COCOeval end to end


def _gt_instances(dataset: dict) -> list[dict]:
    """Every labelled person of the ground truth as a prediction (confidence 1, box score 1)."""
    out = []
    for a in dataset["annotations"]:
        if a["num_keypoints"] == 0:
            continue
        kp = _kp(a)
        kp[:, 2] = 1.0
        out.append({"image_id": a["image_id"], "keypoints": kp, "box_score": 1.0, "area": a["bbox"][2] * a["bbox"][3],
                    "ann": a})
    return out


@needs_sample
def test_ground_truth_as_predictions_scores_one():
    dataset = _gt_dataset()
    instances = _gt_instances(dataset)
    assert len(instances) == 12
    metrics = evaluate_coco(to_coco_results(instances), GT_JSON)
    assert tuple(metrics) == METRIC_NAMES
    for name in ("AP", "AP50", "AP75", "AR", "AR50", "AR75"):
        assert metrics[name] == 1.0, name
    # Area ranges: 1.0 where the sample has people of that size, pycocotools' -1 where it has none.
    areas = [a["area"] for a in dataset["annotations"] if a["num_keypoints"] > 0]
    has_medium = any(32**2 <= s < 96**2 for s in areas)
    has_large = any(s >= 96**2 for s in areas)
    assert metrics["APM"] == metrics["ARM"] == (1.0 if has_medium else -1.0)
    assert metrics["APL"] == metrics["ARL"] == (1.0 if has_large else -1.0)


def reference_ap_ar(oks_values: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """COCO's AP/AR when detection i can only match ground truth i: 101-point interpolated precision,
    averaged over OKS thresholds 0.50:0.05:0.95 (a match needs OKS >= threshold)."""
    order = np.argsort(-scores, kind="mergesort")
    o = oks_values[order]
    n = len(o)
    aps, ars = [], []
    for t in np.linspace(0.5, 0.95, 10):
        tp = np.cumsum(o >= t)
        fp = np.cumsum(o < t)
        recall = tp / n
        precision = tp / (tp + fp)
        for i in range(n - 2, -1, -1):  # precision envelope
            precision[i] = max(precision[i], precision[i + 1])
        sampled = []
        for r in np.linspace(0.0, 1.0, 101):
            hit = np.nonzero(recall >= r)[0]
            sampled.append(precision[hit[0]] if hit.size else 0.0)
        aps.append(np.mean(sampled))
        ars.append(tp[-1] / n)
    return float(np.mean(aps)), float(np.mean(ars))


@needs_sample
def test_perturbed_predictions_match_reference_ap():
    dataset = _gt_dataset()
    # People without keypoints are 'ignore' regions in COCOeval (a miss near one is forgiven); drop them so
    # that the reference above is exact.
    dataset["annotations"] = [a for a in dataset["annotations"] if a["num_keypoints"] > 0]
    instances = _gt_instances(dataset)
    shifts = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0]
    rng = np.random.default_rng(2)
    scores = rng.permutation(len(instances)) / len(instances) + 0.05
    expected_oks = []
    for inst, shift, score in zip(instances, shifts, scores):
        inst["keypoints"] = inst["keypoints"].copy()
        inst["keypoints"][:, 0] += shift
        inst["box_score"] = float(score)
        a = inst["ann"]
        expected_oks.append(hand_oks(inst["keypoints"], _kp(a), a["area"]))
        # Precondition of the reference: no prediction reaches OKS 0.5 with another person.
        for other in dataset["annotations"]:
            if other["image_id"] == a["image_id"] and other["id"] != a["id"]:
                assert hand_oks(inst["keypoints"], _kp(other), other["area"]) < 0.5
    expected_oks = np.asarray(expected_oks)
    assert expected_oks.min() < 0.5 and (expected_oks > 0.95).sum() >= 2  # a spread across thresholds

    ap, ar = reference_ap_ar(expected_oks, scores)
    metrics = evaluate_coco(to_coco_results(instances), _coco_from(dataset))
    assert metrics["AP"] < 1.0 and metrics["AR"] < 1.0
    assert metrics["AP"] == pytest.approx(ap, abs=1e-12)
    assert metrics["AR"] == pytest.approx(ar, abs=1e-12)


@needs_sample
def test_evaluate_coco_rejects_unknown_images_and_wrong_k():
    res = [{"image_id": 123, "category_id": 1, "keypoints": [0.0] * 51, "score": 1.0}]
    with pytest.raises(ValueError, match="image ids"):
        evaluate_coco(res, GT_JSON)
    res = [{"image_id": 785, "category_id": 1, "keypoints": [0.0] * 48, "score": 1.0}]
    with pytest.raises(ValueError, match="keypoint values"):
        evaluate_coco(res, GT_JSON)
    with pytest.raises(ValueError, match="no results"):
        evaluate_coco([], GT_JSON)
    with pytest.raises(FileNotFoundError):
        evaluate_coco(res, GT_JSON.with_name("missing.json"))


@needs_sample
def test_results_json_round_trip(tmp_path):
    dataset = _gt_dataset()
    instances = [{k: v for k, v in i.items() if k != "ann"} for i in _gt_instances(dataset)]
    results = to_coco_results(instances)
    snapshot = copy.deepcopy(results)
    path = write_results_json(results, tmp_path / "out" / "results.json")
    loaded = json.loads(path.read_text())
    assert loaded == snapshot
    assert evaluate_coco(loaded, GT_JSON)["AP"] == 1.0
    assert results == snapshot  # evaluate_coco left its input alone
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]  # no temporary left behind


def test_write_json_refuses_nan_and_keeps_old_file(tmp_path):
    path = write_json({"AP": 0.5}, tmp_path / "metrics.json")
    with pytest.raises(ValueError):
        write_json({"AP": float("nan")}, path)
    assert json.loads(path.read_text()) == {"AP": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_metrics_table_has_the_paper_columns():
    metrics = dict.fromkeys(METRIC_NAMES, 0.5)
    metrics["APM"] = -1.0
    table = coco_metrics_table(metrics)
    assert tuple(c.header for c in table.columns) == PAPER_COLUMNS == ("AP", "AP50", "AP75", "APM", "APL", "AR")
    cells = [next(iter(c.cells)) for c in table.columns]
    assert cells == ["0.500", "0.500", "0.500", "-", "0.500", "0.500"]  # COCO's 0-1 scale, as training reports it


# ---------------------------------------------------------------------------- rescoring and OKS-NMS


def _person(image_id, xy, box_score, area=10_000.0, conf=1.0):
    xy = np.asarray(xy, dtype=np.float64)
    kp = np.concatenate([xy, np.full((len(xy), 1), conf)], axis=1)
    return {"image_id": image_id, "keypoints": kp, "box_score": box_score, "area": area}


def test_rescore_box_score_times_mean_confident_joints():
    kp = np.zeros((4, 3))
    kp[:, 2] = [0.9, 0.1, 0.5, 0.2]  # 0.2 equals the threshold: excluded (strictly greater, as HRNet)
    inst = {"image_id": 1, "keypoints": kp, "box_score": 0.8, "area": 1.0}
    (out,) = rescore([inst], joint_threshold=0.2)
    assert out["score"] == pytest.approx(0.8 * (0.9 + 0.5) / 2)
    assert "score" not in inst  # input untouched
    (low,) = rescore([{**inst, "keypoints": kp * [1, 1, 0.5]}], joint_threshold=0.45)
    assert low["score"] == 0.0  # no joint above the threshold
    (all_in,) = rescore([inst], joint_threshold=0.0)
    assert all_in["score"] == pytest.approx(0.8 * np.mean([0.9, 0.1, 0.5, 0.2]))


def test_rescore_rejects_bad_keypoints():
    with pytest.raises(ValueError, match="keypoints"):
        rescore([{"image_id": 1, "keypoints": np.zeros((17, 2)), "box_score": 1.0, "area": 1.0}])


def _pose(offset=(0.0, 0.0)):
    rng = np.random.default_rng(3)
    return rng.uniform(0, 100, (17, 2)) + np.asarray(offset)


def test_oks_nms_suppresses_duplicates_and_keeps_distinct_people():
    a = _person(1, _pose(), 0.9)
    dup = _person(1, _pose((1.0, 1.0)), 0.7)  # the same person, one pixel off: OKS ~ 0.99
    far = _person(1, _pose((300.0, 0.0)), 0.5)  # someone else
    other_image = _person(2, _pose((1.0, 1.0)), 0.6)  # same pose, other image: never compared
    kept = oks_nms([dup, a, far, other_image], SIGMAS, oks_threshold=0.9)
    assert len(kept) == 3 and all(k is x for k, x in zip(kept, [a, far, other_image]))
    # The higher score wins, whichever comes first.
    dup_high = {**dup, "box_score": 0.95}
    kept = oks_nms([a, dup_high, far], SIGMAS)
    assert kept[0] is dup_high and kept[1] is far and len(kept) == 2
    # A rescored instance is ranked by its `score`, not its box score.
    kept = oks_nms([{**a, "score": 0.1}, {**dup, "score": 0.2}], SIGMAS)
    assert len(kept) == 1 and kept[0]["score"] == 0.2


def test_oks_nms_threshold_edge_and_greedy_chain():
    a = _person(1, _pose(), 0.9, area=8_000.0)
    b = _person(1, _pose((4.0, 0.0)), 0.8, area=12_000.0)
    v = oks(b["keypoints"], a["keypoints"], (8_000.0 + 12_000.0) / 2, SIGMAS)
    assert 0.3 < v < 0.99
    assert len(oks_nms([a, b], SIGMAS, oks_threshold=v)) == 2  # OKS equal to the threshold is kept
    assert len(oks_nms([a, b], SIGMAS, oks_threshold=float(np.nextafter(v, 0.0)))) == 1

    # Greedy: c overlaps b but not a; b is suppressed by a, so it cannot suppress c.
    c = _person(1, _pose((8.0, 0.0)), 0.7, area=12_000.0)
    thr = 0.5 * (oks(c["keypoints"], a["keypoints"], 10_000.0, SIGMAS)
                 + oks(c["keypoints"], b["keypoints"], 12_000.0, SIGMAS))
    assert oks(b["keypoints"], a["keypoints"], 10_000.0, SIGMAS) > thr
    assert (
        oks(c["keypoints"], a["keypoints"], 10_000.0, SIGMAS)
        <= thr
        < oks(c["keypoints"], b["keypoints"], 12_000.0, SIGMAS)
    )
    kept = oks_nms([a, b, c], SIGMAS, oks_threshold=thr)
    assert len(kept) == 2 and kept[0] is a and kept[1] is c


def test_oks_nms_rejects_bad_input():
    a = _person(1, _pose(), 0.9)
    with pytest.raises(ValueError, match="area"):
        oks_nms([{**a, "area": 0.0}], SIGMAS)
    with pytest.raises(ValueError, match="sigmas"):
        oks_nms([a], SIGMAS[:16])
    with pytest.raises(ValueError, match="image_id"):
        oks_nms([{k: v for k, v in a.items() if k != "image_id"}], SIGMAS)


@needs_sample
def test_coco_keypoints_are_integer_pixel_indices():
    """The evidence for passing keypoints to/from COCO unshifted: labelled keypoints are integer pixel
    indices inside [0, W-1] x [0, H-1], i.e. pixel centres in dmpose's integer-centre convention."""
    dataset = _gt_dataset()
    size = {im["id"]: (im["width"], im["height"]) for im in dataset["images"]}
    n = 0
    for a in dataset["annotations"]:
        kp = _kp(a)
        kp = kp[kp[:, 2] > 0]
        w, h = size[a["image_id"]]
        assert np.array_equal(kp[:, :2], np.round(kp[:, :2]))
        assert (
            (kp[:, 0] >= 0).all() and (kp[:, 0] <= w - 1).all() and (kp[:, 1] >= 0).all() and (kp[:, 1] <= h - 1).all()
        )
        n += len(kp)
    assert n == 181
