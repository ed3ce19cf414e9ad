"""`dmpose predict` / `dmpose eval` with the person detector (random FCOS weights saved as a .pth), the one-line
refusal without a source of boxes, and --bbox-thr / NMS / --max-people on given boxes."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from dmpose.detect import fcos
from dmpose.detect.fcos import FCOSConfig, firing_random_state_dict

torch.set_num_threads(1)  # 2 shared cores
runner = CliRunner()
IMAGE = "000000000785.jpg"


def invoke(*args: str):
    from dmpose.cli import app

    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def detector_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("det") / "fcos_random.pth"
    torch.save(firing_random_state_dict(0), path)
    return path


@pytest.fixture
def small_detector(monkeypatch):
    """The detector as the CLI builds it, at a 128-pixel resize instead of 800 (the same code, CPU-test speed)."""
    small = FCOSConfig(min_size=128, max_size=192)
    monkeypatch.setattr("dmpose.detect.person.fcos_resnet50_fpn", lambda config: fcos.fcos_resnet50_fpn(config=small))


def test_predict_with_a_detector_end_to_end(coco_sample, tiny_ckpt, detector_file, small_detector, tmp_path):
    image = str(coco_sample / IMAGE)
    common = ("predict", image, "--ckpt", str(tiny_ckpt), "--detector", str(detector_file), "--no-flip",
              "--device", "cpu", "--max-people", "3")
    result = invoke(*common, "--out", str(tmp_path / "a"), "--kpt-thr", "0")
    assert result.exit_code == 0, result.output
    assert "person detector: FCOS ResNet-50-FPN" in result.output
    rec = json.loads((tmp_path / "a" / "000000000785.json").read_text())
    h, w = cv2.imread(image).shape[:2]
    assert rec["boxes"] == "person detector" and 1 <= len(rec["people"]) <= 3
    scores = [p["bbox_score"] for p in rec["people"]]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 0.5  # --det-thr's default
    for p in rec["people"]:
        x, y, bw, bh = p["bbox"]
        assert -0.5 <= x and -0.5 <= y and x + bw <= w - 0.5 + 1e-3 and y + bh <= h - 0.5 + 1e-3
        assert len(p["keypoints"]) == 17
    assert len(json.loads((tmp_path / "a" / "coco_results.json").read_text())) == len(rec["people"])
    # --kpt-thr is what the overlay draws: every joint at 0, none at 1
    result = invoke(*common, "--out", str(tmp_path / "b"), "--kpt-thr", "1")
    assert result.exit_code == 0, result.output
    drawn, hidden = (cv2.imread(str(tmp_path / d / "000000000785_pose.jpg")) for d in "ab")
    assert np.abs(drawn.astype(int) - hidden.astype(int)).sum() > 0


def test_predict_without_boxes_or_detector_is_one_line(coco_sample, tiny_ckpt, tmp_path, monkeypatch):
    # no --boxes: the published detector, fetched (here: from a loopback port nothing listens on, the offline case)
    monkeypatch.setenv("DMPOSE_CACHE", str(tmp_path / "cache"))
    result = invoke("predict", str(coco_sample / IMAGE), "--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "o"))
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "fcos_resnet50_fpn_coco-99b0c9b7.pth" in lines[0], result.output
    assert "dmpose weights import" in lines[0] and "--no-detector" in lines[0]
    assert not (tmp_path / "o").exists()
    result = invoke("predict", str(coco_sample / IMAGE), "--ckpt", str(tiny_ckpt), "--detector",
                    str(tmp_path / "missing.pth"))
    assert result.exit_code == 1 and "missing.pth" in result.output
    boxes = tmp_path / "b.json"
    boxes.write_text(json.dumps({IMAGE: [[0, 0, 10, 10]]}))
    result = invoke("predict", str(coco_sample / IMAGE), "--ckpt", str(tiny_ckpt), "--boxes", str(boxes),
                    "--no-detector")
    assert result.exit_code == 1 and "--boxes" in result.output


def test_given_boxes_thresholds_nms_and_max_people(coco_sample, tiny_ckpt, tmp_path):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({IMAGE: [[10, 10, 100, 200, 0.9], [15, 12, 100, 200, 0.8], [300, 50, 60, 90, 0.2],
                                         [200, 100, 80, 120, 0.7], [400, 200, 50, 100, 0.6]]}))
    args = ("predict", str(coco_sample / IMAGE), "--ckpt", str(tiny_ckpt), "--boxes", str(boxes), "--no-flip",
            "--device", "cpu")
    result = invoke(*args, "--out", str(tmp_path / "a"), "--max-people", "2")
    assert result.exit_code == 0, result.output
    assert ("5 given, 1 dropped below --bbox-thr 0.3, 1 by NMS (--nms-thr 0.3), 1 over --max-people 2"
            in result.output)
    people = json.loads((tmp_path / "a" / "000000000785.json").read_text())["people"]
    assert [p["bbox_score"] for p in people] == [0.9, 0.7]
    result = invoke(*args, "--out", str(tmp_path / "b"), "--bbox-thr", "0", "--nms-thr", "1")
    assert result.exit_code == 0, result.output
    assert "5 given, 0 dropped below --bbox-thr 0, 0 by NMS (--nms-thr 1), 0 over --max-people" in result.output
    assert len(json.loads((tmp_path / "b" / "000000000785.json").read_text())["people"]) == 5


def test_eval_with_a_detector(coco_sample, tiny_ckpt, detector_file, small_detector, tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    shutil.copy(coco_sample / "test_coco.json", root / "annotations" / "person_keypoints_val2017.json")
    (root / "val2017").symlink_to(coco_sample)
    out = tmp_path / "out"
    result = invoke("eval", "--ckpt", str(tiny_ckpt), "--data", str(root), "--detector", str(detector_file),
                    "--out", str(out), "--no-flip", "--device", "cpu", "--workers", "0")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics_val2017.json").read_text())
    detections = json.loads((out / "person_detections_val2017_dmpose.json").read_text())
    assert metrics["boxes"] == "detections (person detector fcos_random.pth)"
    assert metrics["instances"] == len(detections) > 0
    ids = {im["id"] for im in json.loads((coco_sample / "test_coco.json").read_text())["images"]}
    assert {d["image_id"] for d in detections} <= ids and all(d["category_id"] == 1 for d in detections)
    result = invoke("eval", "--ckpt", str(tiny_ckpt), "--data", str(root), "--detector", str(detector_file),
                    "--gt-boxes")
    assert result.exit_code == 1 and "one source of person boxes" in result.output


def test_the_whole_chain_from_published_weights(coco_sample, tiny_ckpt, detector_file, small_detector, server,
                                                tmp_path, monkeypatch):
    """`dmpose predict photo.jpg` with nothing else: the published pose model and the published detector are
    fetched (here from a loopback server: random weights under published-style names), verified, converted and
    cached, the people detected, their poses estimated and drawn; a second call reuses the cache."""
    from dataclasses import replace

    from conftest import publish

    from dmpose.weights import REGISTRY, registry

    root, base, _ = server
    monkeypatch.setenv("DMPOSE_CACHE", str(tmp_path / "cache"))
    state = {("keypoint_head." if k.startswith("final_layer") else "backbone.") + k: v
             for k, v in load_file(str(tiny_ckpt)).items()}
    pose_file = publish(root, "hrnet_tiny_coco_64x48", {"state_dict": state})
    det_file = publish(root, "fcos_resnet50_fpn_coco", detector_file)
    pose = registry.WeightsEntry("tiny_published", "pose", f"{base}/{pose_file}", "hrnet_tiny", "a test server",
                                 keypoints="coco17", input_wh=(48, 64), dataset="a test", metric="AP", value=0.5)
    det = replace(REGISTRY[registry.DEFAULT_DETECTOR], url=f"{base}/{det_file}")
    monkeypatch.setitem(REGISTRY, pose.name, pose)
    monkeypatch.setitem(REGISTRY, det.name, det)
    monkeypatch.setattr(registry, "DEFAULT_POSE_MODEL", pose.name)
    monkeypatch.delenv("DMPOSE_WEIGHTS_MIRROR")
    image = shutil.copy(coco_sample / IMAGE, tmp_path / "photo.jpg")
    result = invoke("predict", str(image), "--out", str(tmp_path / "out"), "--no-flip", "--max-people", "2")
    assert result.exit_code == 0, result.output
    assert "no --ckpt: the published tiny_published" in result.output
    assert "person detector: the published fcos_resnet50_fpn_coco" in result.output
    rec = json.loads((tmp_path / "out" / "photo.json").read_text())
    assert rec["boxes"] == "person detector" and 1 <= len(rec["people"]) <= 2
    assert (tmp_path / "out" / "photo_pose.jpg").is_file()
    cached = sorted(p.name for p in (tmp_path / "cache" / "weights").iterdir())
    assert cached == ["fcos_resnet50_fpn_coco.safetensors", "tiny_published.safetensors"]
    for name in (pose_file, det_file):
        (root / name).unlink()  # the cache answers from now on
    again = invoke("predict", str(image), "--out", str(tmp_path / "out2"), "--no-flip", "--max-people", "2")
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "out2" / "photo.json").read_text())["people"] == rec["people"]
