"""COCO top-down pipeline on the real sample (shared/data/coco_sample): filtering counts, detections,
augmented crops whose keypoints still sit on the marker pixels, eval-mode round trip, bad input errors."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dmpose.codec import DMCodec, GaussianCodec
from dmpose.data.coco import CocoKeypoints
from dmpose.data.image import read_image, warp_affine
from dmpose.data.transforms import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, TopDownTransform
from dmpose.geometry import apply_affine, compose_affine, invert_affine
from dmpose.keypoints import load_keypoint_set

COCO17 = load_keypoint_set("coco17")


def make_transform(augment=None, codec=None, input_size=(192, 256), heatmap_size=(48, 64)):
    return TopDownTransform(input_size, heatmap_size, codec or DMCodec(heatmap_size), COCO17, augment)


def denormalise(image_tensor):
    img = image_tensor.numpy().transpose(1, 2, 0)
    return img * np.array(IMAGENET_STD, np.float32) * 255 + np.array(IMAGENET_MEAN, np.float32) * 255


def test_sample_counts_and_logged_filtering(coco_sample, caplog):
    with caplog.at_level(logging.INFO, logger="dmpose.data.coco"):
        ds = CocoKeypoints(coco_sample / "test_coco.json", coco_sample, make_transform())
    assert len(ds) == 12  # 14 persons, 2 with num_keypoints 0
    assert sum(int((r.keypoints[:, 2] > 0).sum()) for r in ds.records) == 181
    assert "12 person boxes kept" in caplog.text and "2 without labelled keypoints" in caplog.text
    assert {r.annotation_id for r in ds.records}.isdisjoint({1202706, 508900})


def test_detections_threshold(coco_sample):
    dets = json.loads((coco_sample / "test_coco_det_AP_H_56.json").read_text())
    ds = CocoKeypoints(
        coco_sample / "test_coco.json", coco_sample, make_transform(), coco_sample / "test_coco_det_AP_H_56.json"
    )
    assert len(ds) == len(dets) == 118
    ds = CocoKeypoints(
        coco_sample / "test_coco.json", coco_sample, make_transform(), coco_sample / "test_coco_det_AP_H_56.json", 0.5
    )
    assert len(ds) == sum(d["score"] >= 0.5 for d in dets)
    s = ds[0]
    assert s["meta"]["annotation_id"] == -1 and s["meta"]["score"] >= 0.5 and s["weights"].sum() == 0


def test_eval_mode_round_trip_and_crop_matches_affine(coco_sample):
    ds = CocoKeypoints(coco_sample / "test_coco.json", coco_sample, make_transform())
    for i in range(len(ds)):
        s = ds[i]
        meta, kps = s["meta"], s["meta"]["keypoints"]
        assert not meta["flipped"] and meta["rotation"] == 0.0
        w = s["weights"].numpy() > 0
        back = apply_affine(s["keypoints_hm"].numpy().astype(np.float64), invert_affine(meta["affine_heatmap"]))
        np.testing.assert_allclose(back[w], kps[w, :2], atol=1e-3)
        kp_hm = apply_affine(kps[:, :2], meta["affine_heatmap"])
        inside = np.all((kp_hm >= -0.5) & (kp_hm < np.array([47.5, 63.5])), axis=1)
        np.testing.assert_array_equal(w, (kps[:, 2] > 0) & inside)
    crop = warp_affine(read_image(coco_sample / ds.records[-1].file_name), meta["affine_input"], (192, 256))
    np.testing.assert_allclose(denormalise(s["image"]), crop, atol=1e-3)


def blob_image(shape_hw, point, sigma):
    h, w = shape_hw
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((xx - point[0]) ** 2 + (yy - point[1]) ** 2) / (2 * sigma**2)).astype(np.float32)


def test_augmented_crops_keep_keypoints_on_their_pixels(coco_sample):
    """Render a Gaussian marker at each labelled joint in the image, warp it with the sample's affine,
    and check the marker's centroid in the crop lands where keypoints_hm says (with the left/right swap)."""
    aug = AugmentConfig(rotation_prob=1.0, flip_prob=0.5, half_body_prob=0.3, shift_factor=0.16, shift_prob=0.5)
    ds = CocoKeypoints(coco_sample / "test_coco.json", coco_sample, make_transform(aug))
    torch.manual_seed(0)
    flips, checked = set(), 0
    for i in [0, 3, 7, 11] * 2:
        s = ds[i]
        meta = s["meta"]
        flips.add(meta["flipped"])
        # 1) the crop is the original image warped by the sample's input affine
        image = read_image(coco_sample / ds.records[i].file_name)
        np.testing.assert_allclose(
            denormalise(s["image"]), warp_affine(image, meta["affine_input"], (192, 256)), atol=1e-3
        )
        # 2) each joint's marker sits at keypoints_hm (mapped to input pixels)
        hm_to_in = compose_affine(meta["affine_input"], invert_affine(meta["affine_heatmap"]))
        perm = COCO17.flip_index if meta["flipped"] else np.arange(17)
        px_per_img = 192 / meta["size"][0]
        for j in np.flatnonzero(s["weights"].numpy()):
            src = meta["keypoints"][perm[j], :2]
            expected = apply_affine(s["keypoints_hm"][j].double().numpy(), hm_to_in)
            sigma_img = max(2.0, 1.5 / px_per_img)  # well sampled in the image and in the crop
            margin = 4 * sigma_img * px_per_img
            if np.any(expected < margin) or expected[0] > 191 - margin or expected[1] > 255 - margin:
                continue  # marker would be cut by the crop border
            img_h, img_w = image.shape[:2]
            if np.any(src < 4 * sigma_img) or src[0] > img_w - 1 - 4 * sigma_img or src[1] > img_h - 1 - 4 * sigma_img:
                continue  # marker would be cut by the image border
            marker = blob_image(image.shape[:2], src, sigma=sigma_img)
            warped = warp_affine(marker, meta["affine_input"], (192, 256)).astype(np.float64)
            yy, xx = np.mgrid[0:256, 0:192]
            centroid = np.array([(warped * xx).sum(), (warped * yy).sum()]) / warped.sum()
            assert np.abs(centroid - expected).max() < 0.15, (i, j, centroid, expected)
            checked += 1
    assert flips == {True, False} and checked > 50


def test_gaussian_targets_and_collate(coco_sample):
    codec = GaussianCodec((48, 64), sigma=2.0, flavour="unbiased")
    ds = CocoKeypoints(coco_sample / "test_coco.json", coco_sample, make_transform(AugmentConfig(), codec))
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    assert batch["image"].shape == (4, 3, 256, 192) and batch["image"].dtype == torch.float32
    assert batch["target"]["heatmaps"].shape == (4, 17, 64, 48)
    assert batch["keypoints_hm"].shape == (4, 17, 2) and batch["weights"].shape == (4, 17)
    assert batch["meta"]["affine_heatmap"].shape == (4, 2, 3)
    hm = batch["target"]["heatmaps"]
    assert torch.equal(hm.flatten(2).amax(-1) > 0, batch["weights"] > 0)


def test_augment_config_validation():
    with pytest.raises(ValueError, match="flip_prob"):
        AugmentConfig(flip_prob=1.5)
    with pytest.raises(ValueError, match="unknown augment option"):
        AugmentConfig.from_dict({"rotate": 30})
    assert AugmentConfig.from_dict({"rotation_factor": 30}).rotation_factor == 30


def _write_coco(tmp_path, annotations, image_name="a.jpg", image_bytes=None, category_keypoints=None):
    (tmp_path / "img").mkdir(exist_ok=True)
    if image_bytes is not None:
        (tmp_path / "img" / image_name).write_bytes(image_bytes)
    ann = {
        "images": [{"id": 1, "file_name": image_name, "width": 64, "height": 64}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person",
                        **({"keypoints": category_keypoints} if category_keypoints is not None else {})}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    return tmp_path / "ann.json", tmp_path / "img"


def _ann(aid, **kw):
    kps = [10, 10, 2] + [0, 0, 0] * 16
    return {
        "id": aid,
        "image_id": 1,
        "category_id": 1,
        "iscrowd": 0,
        "bbox": [5, 5, 30, 40],
        "keypoints": kps,
        "num_keypoints": 1,
        **kw,
    }


def test_bad_inputs(tmp_path):
    t = make_transform()
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoKeypoints(tmp_path / "nope.json", tmp_path, t)
    ann, img = _write_coco(tmp_path, [_ann(7, keypoints=[1, 2, 2] * 16)])
    with pytest.raises(ValueError, match="annotation id 7 has 48 keypoint values"):
        CocoKeypoints(ann, img, t)
    ann, img = _write_coco(tmp_path, [_ann(8, bbox=[0, 0, -3, 10])])
    with pytest.raises(ValueError, match="annotation id 8 has a negative box size"):
        CocoKeypoints(ann, img, t)
    names = list(t.keypoints.names)
    ann, img = _write_coco(tmp_path, [_ann(11)], category_keypoints=names[:5] + ["chin"] + names[6:])
    with pytest.raises(ValueError, match=r"ann.json: category 'person' names other keypoints than keypoint set "
                                         r"'coco17' \(keypoint 5 is 'chin' there and 'left_shoulder'"):
        CocoKeypoints(ann, img, t)
    ann, img = _write_coco(tmp_path, [_ann(11)], category_keypoints=names[:16])
    with pytest.raises(ValueError, match=r"\(16 keypoints, the keypoint set 17\)"):
        CocoKeypoints(ann, img, t)
    ann, img = _write_coco(tmp_path, [_ann(9), _ann(10, iscrowd=1)], category_keypoints=names)
    # a missing image is named when the dataset is built, not when its sample is first drawn
    with pytest.raises(FileNotFoundError, match=r"ann.json: 1 of 1 image files are missing from .*, e.g. a.jpg"):
        CocoKeypoints(ann, img, t)
    ann, img = _write_coco(tmp_path, [_ann(9)], image_bytes=b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(ValueError, match="corrupt.*a.jpg"):
        CocoKeypoints(ann, img, t)[0]


def test_standard_layout(coco_sample, tmp_path):
    from dmpose.data.layouts import coco_paths

    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    shutil.copy(coco_sample / "test_coco.json", tmp_path / "annotations" / "person_keypoints_val2017.json")
    ann, img = coco_paths(tmp_path, "val2017")
    assert ann.is_file() and img.is_dir()


def test_box_shift_moves_the_centre_within_its_factor_and_only_when_enabled():
    kp, vis = np.zeros((17, 2)), np.zeros(17)
    center, size = np.array([100.0, 120.0]), np.array([60.0, 80.0])
    base = dict(scale_factor=0.0, rotation_prob=0.0, flip_prob=0.0, half_body_prob=0.0)
    shifted = make_transform(AugmentConfig(**base, shift_factor=0.16, shift_prob=1.0))
    offsets = np.array([(shifted.draw(center, size, kp, vis, np.random.default_rng(i)).center - center) / size
                        for i in range(400)])
    assert np.abs(offsets).max() <= 0.16 and np.abs(offsets).max() > 0.15  # U(-f, f) of the size, per axis
    assert (offsets < 0).any(axis=0).all() and (offsets > 0).any(axis=0).all()
    half = make_transform(AugmentConfig(**base, shift_factor=0.16, shift_prob=0.5))
    moved = [not np.array_equal(half.draw(center, size, kp, vis, np.random.default_rng(i)).center, center)
             for i in range(400)]
    assert 0.4 < np.mean(moved) < 0.6
    # off (the default, HRNet's recipe): no draw is taken, so the other augmentations keep their random stream
    hrnet, off = make_transform(AugmentConfig()), make_transform(AugmentConfig(shift_factor=0.16, shift_prob=0.0))
    for i in range(20):
        a, b = (t.draw(center, size, kp, vis, np.random.default_rng(i)) for t in (hrnet, off))
        assert np.array_equal(a.center, b.center) and np.array_equal(a.size, b.size)
        assert (a.rotation, a.flip) == (b.rotation, b.flip)
    with pytest.raises(ValueError, match="shift_prob"):
        AugmentConfig(shift_prob=2.0)
    with pytest.raises(ValueError, match="shift_factor"):
        AugmentConfig(shift_factor=-0.1)
