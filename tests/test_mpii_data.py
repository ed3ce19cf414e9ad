"""MPII json pipeline on the real sample (shared/data/mpii_sample) and the gt_valid.mat-style reader."""

import json

import numpy as np
import pytest
import torch
from scipy.io import savemat

from dmpose.codec import DMCodec
from dmpose.data.mpii import MpiiKeypoints, load_mpii_gt
from dmpose.data.transforms import AugmentConfig, TopDownTransform
from dmpose.geometry import apply_affine
from dmpose.keypoints import load_keypoint_set

MPII16 = load_keypoint_set("mpii16")


def transform(augment=None):
    return TopDownTransform((256, 256), (64, 64), DMCodec((64, 64)), MPII16, augment)


def test_sample_conversion_matches_official_loader(mpii_sample):
    raw = json.loads((mpii_sample / "test_mpii.json").read_text())
    ds = MpiiKeypoints(mpii_sample / "test_mpii.json", mpii_sample, transform())
    assert len(ds) == 5 and sum(int(r.keypoints[:, 2].sum()) for r in ds.records) == 76
    for rec, a in zip(ds.records, raw):
        s = a["scale"]
        # hand-computed: centre y + 15 s, scale x 1.25, 1-based -> 0-based
        np.testing.assert_allclose(rec.center, [a["center"][0] - 1, a["center"][1] + 15 * s - 1])
        np.testing.assert_allclose(rec.size, [250 * s, 250 * s])
        vis = np.asarray(a["joints_vis"]) > 0
        np.testing.assert_allclose(rec.keypoints[vis, :2], np.asarray(a["joints"])[vis] - 1)
    assert ds.records[0].image == raw[0]["image"]


def test_samples_eval_and_augmented(mpii_sample):
    ds = MpiiKeypoints(mpii_sample / "test_mpii.json", mpii_sample, transform())
    s = ds[1]
    rec = ds.records[1]
    np.testing.assert_allclose(apply_affine(rec.center, s["meta"]["affine_input"]), [127.5, 127.5], atol=1e-9)
    kp_hm = apply_affine(rec.keypoints[:, :2], s["meta"]["affine_heatmap"])
    w = s["weights"].numpy() > 0
    np.testing.assert_allclose(s["keypoints_hm"].numpy()[w], kp_hm[w], atol=1e-4)
    assert s["image"].shape == (3, 256, 256)
    torch.manual_seed(1)
    aug = MpiiKeypoints(
        mpii_sample / "test_mpii.json", mpii_sample, transform(AugmentConfig(flip_prob=1.0, rotation_prob=1.0))
    )
    s = aug[1]
    assert s["meta"]["flipped"]
    kp_hm = apply_affine(rec.keypoints[:, :2], s["meta"]["affine_heatmap"])[MPII16.flip_index]
    w = s["weights"].numpy() > 0
    np.testing.assert_allclose(s["keypoints_hm"].numpy()[w], kp_hm[w], atol=1e-4)


def test_bad_annotations(tmp_path):
    rec = {"image": "x.jpg", "center": [10, 10], "scale": 1.0, "joints": [[1, 1]] * 15, "joints_vis": [1] * 15}
    (tmp_path / "a.json").write_text(json.dumps([rec]))
    with pytest.raises(ValueError, match=r"annotation 0 \(x.jpg\) has joints \(15, 2\)"):
        MpiiKeypoints(tmp_path / "a.json", tmp_path, transform())
    rec.update(joints=[[1, 1]] * 16, joints_vis=[1] * 16, scale=-2)
    (tmp_path / "a.json").write_text(json.dumps([rec]))
    with pytest.raises(ValueError, match="non-positive scale"):
        MpiiKeypoints(tmp_path / "a.json", tmp_path, transform())
    with pytest.raises(FileNotFoundError, match="missing.json"):
        MpiiKeypoints(tmp_path / "missing.json", tmp_path, transform())
    rec.update(scale=2)
    (tmp_path / "a.json").write_text(json.dumps([rec]))
    with pytest.raises(FileNotFoundError, match="x.jpg"):
        MpiiKeypoints(tmp_path / "a.json", tmp_path, transform())[0]


def test_gt_valid_mat(tmp_path):
    n = 3
    rng = np.random.default_rng(0)
    head = rng.uniform(1, 100, (2, 2, n))
    missing = rng.integers(0, 2, (16, n))
    pos = rng.uniform(1, 500, (16, 2, n))
    savemat(tmp_path / "gt_valid.mat", {"headboxes_src": head, "jnt_missing": missing, "pos_gt_src": pos})
    gt = load_mpii_gt(tmp_path / "gt_valid.mat")
    assert gt["headboxes"].shape == (n, 2, 2) and gt["jnt_missing"].shape == (n, 16)
    np.testing.assert_allclose(gt["headboxes"][2, 1], head[1, :, 2] - 1)  # bottom-right corner of person 2
    np.testing.assert_allclose(gt["joints"][1, 5], pos[5, :, 1] - 1)
    np.testing.assert_array_equal(gt["jnt_missing"][0], missing[:, 0].astype(bool))
    savemat(tmp_path / "bad.mat", {"jnt_missing": missing})
    with pytest.raises(ValueError, match="headboxes_src"):
        load_mpii_gt(tmp_path / "bad.mat")
    with pytest.raises(FileNotFoundError, match="nope.mat"):
        load_mpii_gt(tmp_path / "nope.mat")
