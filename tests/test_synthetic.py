"""Synthetic COCO-format dataset: exact layout, pycocotools reads it and COCOeval scores GT-as-predictions
AP 1.0, annotations are consistent (area = silhouette pixels, left/right colours), determinism, caching."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from typer.testing import CliRunner

from dmpose.data.coco import CocoKeypoints
from dmpose.data.image import read_image
from dmpose.data.layouts import coco_paths
from dmpose.data.synthetic import DETECTION_FILE, ensure_synthetic, generate_synthetic_coco


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "coco"
    generate_synthetic_coco(root, n_train=12, n_val=6, seed=3)
    return root


def quiet_coco(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_layout(synth):
    for split in ("train2017", "val2017"):
        ann, img_dir = coco_paths(synth, split)
        doc = json.loads(ann.read_text())
        assert {"info", "licenses", "images", "annotations", "categories"} <= set(doc)
        assert sorted(p.name for p in img_dir.iterdir()) == sorted(im["file_name"] for im in doc["images"])
        for im in doc["images"][:3]:
            h, w = read_image(img_dir / im["file_name"]).shape[:2]
            assert (w, h) == (im["width"], im["height"]) and 256 <= w <= 320 and 256 <= h <= 320
        assert doc["categories"][0]["keypoints"][9] == "left_wrist" and len(doc["categories"][0]["skeleton"]) == 19
    assert (synth / DETECTION_FILE).is_file()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools decode vs numpy 2
def test_annotations_consistent(synth):
    coco = quiet_coco(synth / "annotations" / "person_keypoints_train2017.json")
    n_border = n_occluded = 0
    for ann in coco.loadAnns(coco.getAnnIds()):
        img = coco.imgs[ann["image_id"]]
        kps = np.asarray(ann["keypoints"], dtype=float).reshape(17, 3)
        assert ann["area"] == int(mask_utils.decode(ann["segmentation"]).sum()) > 0
        assert ann["num_keypoints"] == int((kps[:, 2] > 0).sum())
        lab = kps[kps[:, 2] > 0]
        assert np.all(lab[:, 0] >= -0.5) and np.all(lab[:, 0] < img["width"] - 0.5)
        assert np.all(kps[kps[:, 2] == 0, :2] == 0)
        x, y, w, h = ann["bbox"]
        assert np.all(kps[kps[:, 2] == 2, 0] >= x) and np.all(kps[kps[:, 2] == 2, 0] <= x + w)
        n_border += x <= 0 or y <= 0 or x + w >= img["width"] - 1 or y + h >= img["height"] - 1
        n_occluded += int((kps[:, 2] == 1).sum())
    assert n_border > 0 and n_occluded > 0


def test_left_right_colours(synth):
    """Visible left elbows are warm (red > blue), right elbows cool (blue > red): the sides are distinguishable."""
    coco = quiet_coco(synth / "annotations" / "person_keypoints_train2017.json")
    votes = {"left": [], "right": []}
    for ann in coco.loadAnns(coco.getAnnIds()):
        image = read_image(synth / "train2017" / coco.imgs[ann["image_id"]]["file_name"]).astype(float)
        kps = np.asarray(ann["keypoints"], dtype=float).reshape(17, 3)
        for side, k in (("left", 7), ("right", 8)):
            if kps[k, 2] == 2:
                x, y = int(round(kps[k, 0])), int(round(kps[k, 1]))
                r, _, b = image[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].reshape(-1, 3).mean(0)
                votes[side].append(r > b if side == "left" else b > r)
    assert len(votes["left"]) >= 5 and len(votes["right"]) >= 5
    assert np.mean(votes["left"]) > 0.8 and np.mean(votes["right"]) > 0.8


def test_cocoeval_gt_as_predictions_is_perfect(synth):
    gt = quiet_coco(synth / "annotations" / "person_keypoints_val2017.json")
    preds = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
             for a in gt.loadAnns(gt.getAnnIds()) if a["num_keypoints"] > 0]
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(preds)
        ev = COCOeval(gt, dt, "keypoints")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0) and ev.stats[5] == pytest.approx(1.0)
    # the detection file is in COCO results format too
    dets = json.loads((synth / DETECTION_FILE).read_text())
    with contextlib.redirect_stdout(io.StringIO()):
        gt.loadRes(dets)
    assert min(d["score"] for d in dets) < 0.5 < max(d["score"] for d in dets)


def test_loader_reads_synthetic(synth):
    from dmpose.codec import DMCodec
    from dmpose.data.transforms import TopDownTransform
    from dmpose.keypoints import load_keypoint_set

    t = TopDownTransform((192, 256), (48, 64), DMCodec((48, 64)), load_keypoint_set("coco17"))
    ds = CocoKeypoints.from_root(synth, "val2017", t, detections=True)
    assert len(ds) == len(json.loads((synth / DETECTION_FILE).read_text()))
    assert ds[0]["image"].shape == (3, 256, 192)
    train = CocoKeypoints.from_root(synth, "train2017", t)
    n_labelled = sum(1 for a in json.loads(coco_paths(synth, "train2017")[0].read_text())["annotations"]
                     if a["num_keypoints"] > 0)
    assert len(train) <= n_labelled and len(train) > 0


def test_deterministic_for_a_seed(synth, tmp_path):
    generate_synthetic_coco(tmp_path / "again", n_train=12, n_val=6, seed=3)
    for rel in ("annotations/person_keypoints_train2017.json", "annotations/person_keypoints_val2017.json",
                DETECTION_FILE, "train2017/000000000007.jpg"):
        assert (tmp_path / "again" / rel).read_bytes() == (synth / rel).read_bytes(), rel
    generate_synthetic_coco(tmp_path / "other", n_train=2, n_val=0, seed=4)
    assert (tmp_path / "other/train2017/000000000001.jpg").read_bytes() != (
        synth / "train2017/000000000001.jpg"
    ).read_bytes()
    # a longer run starts with the same images: image i depends only on (seed, split, i)
    assert (tmp_path / "again/val2017/000001000002.jpg").read_bytes() == (
        synth / "val2017/000001000002.jpg"
    ).read_bytes()


def test_ensure_synthetic_generates_once(tmp_path):
    root = ensure_synthetic(tmp_path / "cache", n_train=2, n_val=1, seed=0)
    assert root.parent == tmp_path / "cache" and root.name.startswith("train2-val1-seed0-")
    marker = root / ".complete.json"
    stamp = marker.stat().st_mtime_ns
    assert ensure_synthetic(tmp_path / "cache", n_train=2, n_val=1, seed=0) == root
    assert marker.stat().st_mtime_ns == stamp  # reused
    other = ensure_synthetic(tmp_path / "cache", n_train=3, n_val=1, seed=0)  # other settings: another cache
    assert other != root and len(list((other / "train2017").iterdir())) == 3
    assert marker.stat().st_mtime_ns == stamp and len(list((root / "train2017").iterdir())) == 2  # untouched
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([root.name, other.name])  # no temp left


def test_cli_synth(tmp_path):
    from dmpose.cli.app import app

    runner = CliRunner()
    result = runner.invoke(app, ["data", "synth", str(tmp_path / "d"), "--train", "2", "--val", "1", "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert "train2017: 2 images" in result.output
    assert (tmp_path / "d" / "annotations" / "person_keypoints_val2017.json").is_file()
    result = runner.invoke(app, ["data", "synth", str(tmp_path / "d"), "--train", "2"])
    assert result.exit_code != 0 and "not empty" in result.output


def test_dataloader_workers_reproducible(synth):
    """Worker processes get their own torch seeds; the same seed gives the same augmented batches."""
    import torch
    from torch.utils.data import DataLoader

    from dmpose.codec import DMCodec
    from dmpose.data.transforms import AugmentConfig, TopDownTransform
    from dmpose.keypoints import load_keypoint_set

    t = TopDownTransform((96, 128), (24, 32), DMCodec((24, 32)), load_keypoint_set("coco17"), AugmentConfig())
    ds = CocoKeypoints.from_root(synth, "train2017", t)

    def first_batches():
        loader = DataLoader(ds, batch_size=4, num_workers=2, generator=torch.Generator().manual_seed(11))
        return [b for _, b in zip(range(2), loader)]

    a, b = first_batches(), first_batches()
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["keypoints_hm"], y["keypoints_hm"])
    # the two workers did not draw the same augmentation for different samples
    rotations = torch.cat([x["meta"]["rotation"] for x in a])
    assert len(set(rotations.tolist())) > 2
