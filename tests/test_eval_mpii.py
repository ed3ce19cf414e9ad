"""dmpose.eval.mpii: PCKh as the official MPII evaluation, on a hand-made case and against a plain loop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dmpose.cli.tables import pckh_table
from dmpose.eval.mpii import MPII_JOINT_NAMES, PCKH_COLUMNS, evaluate_mpii, pckh

# Two people. Person 0: head box (0, 0)-(30, 40), diagonal 50, head size 0.6 * 50 = 30 px, so @0.5 a joint
# is correct within 15 px. Person 1: head box (10, 10)-(70, 90), diagonal 100, head size 60, radius 30 px.
HEADBOXES = np.array([[[0.0, 0.0], [30.0, 40.0]], [[10.0, 10.0], [70.0, 90.0]]])
RADIUS = (15.0, 30.0)
INVISIBLE = ({0}, {6, 9})  # person 0 misses r_ankle; person 1 misses pelvis and head_top
MISSES = ({1, 10, 6, 9}, {0, 10, 15, 7})  # visible joints placed just outside the radius
EDGE = (0, 8)  # person 0's upper_neck sits at exactly 15 px (9, 12): correct, the bound is inclusive

# By hand, @0.5 (correct / visible per joint):
#   j0 0/1, j1 1/2, j2..j5 2/2, j6 0/1, j7 1/2, j8 2/2, j9 0/1, j10 0/2, j11..j14 2/2, j15 1/2
# Head = (j8 100 + j9 0) / 2 = 50; Shoulder (j12, j13) 100; Elbow (j11, j14) 100; Wrist (j10 0, j15 50) 25;
# Hip 100; Knee (j1 50, j4 100) 75; Ankle (j0 0, j5 100) 50;
# Mean over the 14 joints other than pelvis/thorax: 20 correct of 26 visible.
EXPECTED = {"Head": 50.0, "Shoulder": 100.0, "Elbow": 100.0, "Wrist": 25.0, "Hip": 100.0, "Knee": 75.0,
            "Ankle": 50.0, "Mean": 100.0 * 20 / 26}


def _hand_case():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 300, (2, 16, 2))
    pred = gt.copy()
    visible = np.ones((2, 16), dtype=bool)
    for n in range(2):
        for j in range(16):
            angle = rng.uniform(0, 2 * np.pi)
            direction = np.array([np.cos(angle), np.sin(angle)])
            if j in INVISIBLE[n]:
                visible[n, j] = False
                gt[n, j] = pred[n, j] = -1.0  # MPII's placeholder; must be ignored
            elif j in MISSES[n]:
                pred[n, j] += 1.01 * RADIUS[n] * direction
            else:
                pred[n, j] += 0.99 * RADIUS[n] * direction
    pred[EDGE] = gt[EDGE] + [9.0, 12.0]
    return pred, gt, visible


def test_pckh_hand_made_case():
    pred, gt, visible = _hand_case()
    result = pckh(pred, gt, HEADBOXES, visible, threshold=0.5)
    assert tuple(result.columns) == PCKH_COLUMNS == ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean")
    for name, value in EXPECTED.items():
        assert result.columns[name] == pytest.approx(value, abs=1e-12), name
    assert result.visible_counts.tolist() == [1, 2, 2, 2, 2, 2, 1, 2, 2, 1, 2, 2, 2, 2, 2, 2]
    assert result.per_joint[6] == 0.0 and result.per_joint[7] == 50.0


def test_mean_is_visible_weighted_and_excludes_pelvis_thorax():
    pred, gt, visible = _hand_case()
    result = pckh(pred, gt, HEADBOXES, visible)
    others = [j for j in range(16) if j not in (6, 7)]
    unweighted = float(np.mean(result.per_joint[others]))
    assert unweighted == pytest.approx(1000 / 14)
    assert result.columns["Mean"] != pytest.approx(unweighted)
    # Pelvis and thorax do not move the Mean: make them all correct.
    fixed = pred.copy()
    fixed[:, 6:8] = gt[:, 6:8]
    again = pckh(fixed, gt, HEADBOXES, visible)
    assert again.per_joint[6] == again.per_joint[7] == 100.0
    assert again.columns["Mean"] == result.columns["Mean"]


def reference_pckh(pred, gt, headboxes, visible, threshold):
    """Plain loops, python floats: per-joint PCKh and the official Mean."""
    hits, counts = [0] * 16, [0] * 16
    for n in range(len(pred)):
        (x1, y1), (x2, y2) = headboxes[n]
        head = 0.6 * math.hypot(x2 - x1, y2 - y1)
        for j in range(16):
            if visible[n][j]:
                counts[j] += 1
                d = math.hypot(pred[n][j][0] - gt[n][j][0], pred[n][j][1] - gt[n][j][1])
                hits[j] += d / head <= threshold
    per_joint = [100.0 * h / c if c else float("nan") for h, c in zip(hits, counts)]
    keep = [j for j in range(16) if j not in (6, 7)]
    mean = 100.0 * sum(hits[j] for j in keep) / sum(counts[j] for j in keep)
    return per_joint, mean


def test_pckh_at_05_and_01_match_plain_loop():
    rng = np.random.default_rng(1)
    n = 40
    gt = rng.uniform(0, 500, (n, 16, 2))
    corner = rng.uniform(0, 400, (n, 1, 2))
    headboxes = np.concatenate([corner, corner + rng.uniform(10, 60, (n, 1, 2))], axis=1)
    head = 0.6 * np.linalg.norm(headboxes[:, 1] - headboxes[:, 0], axis=-1)
    pred = gt + rng.normal(0, 1, (n, 16, 2)) * head[:, None, None] * rng.uniform(0.02, 0.6, (n, 16, 1))
    visible = rng.uniform(size=(n, 16)) > 0.15
    results = evaluate_mpii(pred, gt, headboxes, visible)
    assert [r.threshold for r in results] == [0.5, 0.1]
    for r in results:
        per_joint, mean = reference_pckh(pred, gt, headboxes, visible, r.threshold)
        np.testing.assert_allclose(r.per_joint, per_joint, rtol=0, atol=1e-12)
        assert r.columns["Mean"] == pytest.approx(mean, abs=1e-12)
        assert r.columns["Wrist"] == pytest.approx(0.5 * (per_joint[10] + per_joint[15]))
        assert r.columns["Head"] == pytest.approx(0.5 * (per_joint[8] + per_joint[9]))
    assert 0 < results[1].columns["Mean"] < results[0].columns["Mean"] < 100


def test_table_and_json_layout():
    pred, gt, visible = _hand_case()
    results = evaluate_mpii(pred, gt, HEADBOXES, visible)
    table = pckh_table(results, title="MPII val")
    assert [c.header for c in table.columns] == ["Metric", *PCKH_COLUMNS]
    assert list(table.columns[0].cells) == ["PCKh@0.5", "PCKh@0.1"]
    assert list(table.columns[-1].cells)[0] == f"{100 * 20 / 26:.1f}"
    d = results[0].to_dict()
    assert list(d["per_joint"]) == list(MPII_JOINT_NAMES)
    json.dumps(d, allow_nan=False)


def test_never_visible_joint_is_nan_not_zero():
    pred, gt, visible = _hand_case()
    visible[:, 0] = False
    result = pckh(pred, gt, HEADBOXES, visible)
    assert math.isnan(result.per_joint[0]) and math.isnan(result.columns["Ankle"])
    assert not math.isnan(result.columns["Mean"])
    assert result.to_dict()["columns"]["Ankle"] is None
    assert list(pckh_table([result]).columns[7].cells) == ["-"]


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda p, g, h, v: (p[:, :15], g, h, v), "pred"),
        (lambda p, g, h, v: (p, g[:1], h, v), "gt"),
        (lambda p, g, h, v: (p, g, h[:, 0], v), "headboxes"),
        (lambda p, g, h, v: (p, g, h, v[:, :8]), "visible"),
        (lambda p, g, h, v: (p, g, np.zeros_like(h), v), "head boxes"),
        (lambda p, g, h, v: (np.where(v[..., None], np.nan, p), g, h, v), "non-finite"),
        (lambda p, g, h, v: (p, g, h, np.zeros_like(v)), "no visible"),
    ],
)
def test_bad_input_is_named(change, match):
    pred, gt, visible = _hand_case()
    with pytest.raises(ValueError, match=match):
        pckh(*change(pred, gt, HEADBOXES, visible))
