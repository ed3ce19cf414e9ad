"""Evaluation end to end: the whole geometry chain with an oracle model, the CLI, MPII PCKh, bad input.

The oracle is a torch module that, having seen the dataset once (`observe`: each crop's ground truth,
keyed by the crop's pixels, so the predictor needs no hook into the model), renders for each crop the
heatmaps a perfect model would output: the ground-truth keypoints mapped into the crop with the affine
that warped it, then into the heatmap by the edge-aligned rescale (plain float64 algebra here, not
dmpose's heatmap affine), drawn as the four bilinear masses of the dot (what the DM loss's sub-pixel
demanders ask for) or as an unbiased Gaussian. On the mirrored crop it renders the mirrored scene:
x -> W-1-x with left and right exchanged, independently of dmpose's flip_back. dmpose's own inference
then has to flip back, average, decode, and invert the affine; any half-pixel or flip error costs AP.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from dmpose.codec import DMCodec
from dmpose.data.coco import CocoKeypoints
from dmpose.data.mpii import MpiiKeypoints
from dmpose.data.transforms import TopDownTransform
from dmpose.eval.evaluate import evaluate_coco_predictions, evaluate_mpii_predictions
from dmpose.eval.predictor import TopDownPredictor
from dmpose.eval.runner import predict_dataset
from dmpose.keypoints import load_keypoint_set
from dmpose.spec import CodecSpec, PoseSpec

torch.set_num_threads(1)  # 2 shared cores: more threads are slower under load

INPUT_WH, HEATMAP_WH = (192, 256), (48, 64)
COCO = load_keypoint_set("coco17")
MPII = load_keypoint_set("mpii16")


def render(points: np.ndarray, labelled: np.ndarray, size_wh, kind: str, sigma: float = 2.0) -> np.ndarray:
    """(B, K, 2) heatmap-pixel points -> (B, K, H, W) float64 heatmaps; unlabelled joints stay zero.

    kind "dots": the four bilinear masses on the pixel centres around the point (integer-centre pixels;
    masses falling outside the heatmap are dropped); "gaussian": exp(-d^2 / 2 sigma^2) centred exactly
    on the point."""
    w, h = size_wh
    b, k, _ = points.shape
    out = np.zeros((b, k, h, w))
    xs, ys = np.arange(w), np.arange(h)
    for i in range(b):
        for j in range(k):
            if not labelled[i, j]:
                continue
            x, y = points[i, j]
            if kind == "gaussian":
                out[i, j] = np.exp(-((ys[:, None] - y) ** 2 + (xs[None, :] - x) ** 2) / (2 * sigma**2))
                continue
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            fx, fy = x - x0, y - y0
            corners = ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy))
            for dx, dy, m in corners:
                if 0 <= x0 + dx < w and 0 <= y0 + dy < h:
                    out[i, j, y0 + dy, x0 + dx] += m
    return out


class Oracle(nn.Module):
    """A perfect top-down model: renders each crop's ground truth (see the module docstring)."""

    def __init__(self, flip_pairs, heatmap_wh=HEATMAP_WH, kind: str = "dots"):
        super().__init__()
        self.heatmap_wh, self.kind = heatmap_wh, kind
        k = 1 + max(max(p) for p in flip_pairs)
        self.partner = list(range(k))
        for a, b in flip_pairs:
            self.partner[a], self.partner[b] = b, a
        self.truth: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        self.calls = {"direct": 0, "mirrored": 0}

    def truth_keypoints(self, meta: dict) -> np.ndarray:
        """(K, 3) image px + COCO flag: what the crop shows."""
        return np.asarray(meta["keypoints"], dtype=np.float64)

    def observe(self, dataset) -> Oracle:
        """Ground truth -> heatmap pixels WITHOUT dmpose's heatmap affine: image -> input crop with the
        affine that warped the crop, then input -> heatmap by the edge-aligned rescale written out here,
        x_hm = (x_in + 0.5) * W_hm / W_in - 0.5. dmpose maps back with the inverse of its own image ->
        heatmap affine, so a "x stride" or half-pixel slip between the two affines shows up as error."""
        for i in range(len(dataset)):
            sample = dataset[i]
            kp = self.truth_keypoints(sample["meta"])
            aff = np.asarray(sample["meta"]["affine_input"], dtype=np.float64)  # image -> input crop
            in_h, in_w = sample["image"].shape[-2:]
            scale = np.array([self.heatmap_wh[0] / in_w, self.heatmap_wh[1] / in_h])
            points_in = kp[:, :2] @ aff[:, :2].T + aff[:, 2]
            self.truth[sample["image"].numpy().tobytes()] = ((points_in + 0.5) * scale - 0.5, kp[:, 2] > 0)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keys = [c.numpy().tobytes() for c in x]
        if all(k in self.truth for k in keys):
            self.calls["direct"] += 1
            points = np.stack([self.truth[k][0] for k in keys])
            labelled = np.stack([self.truth[k][1] for k in keys])
        else:
            keys = [c.flip(-1).numpy().tobytes() for c in x]
            assert all(k in self.truth for k in keys), "the flip test must mirror the crop along its width"
            self.calls["mirrored"] += 1
            partner = self.partner + list(range(len(self.partner), self.truth[keys[0]][0].shape[0]))
            points = np.stack([self.truth[k][0][partner] for k in keys])
            labelled = np.stack([self.truth[k][1][partner] for k in keys])
            points[..., 0] = (self.heatmap_wh[0] - 1) - points[..., 0]
        return torch.from_numpy(render(points, labelled, self.heatmap_wh, self.kind)).float()


COCO_SPEC = PoseSpec.build("oracle", "coco17", INPUT_WH, codec=CodecSpec(name="dm", supplier_map="relu"))  # dots
MPII_SPEC = PoseSpec.build("oracle", "mpii16", (256, 256))


def coco_sample_dataset(root: Path, detections: bool = False) -> CocoKeypoints:
    transform = TopDownTransform(INPUT_WH, HEATMAP_WH, DMCodec(HEATMAP_WH), COCO, augment=None)
    det = root / "test_coco_det_AP_H_56.json" if detections else None
    return CocoKeypoints(root / "test_coco.json", root, transform, detections=det)


@pytest.mark.parametrize("flip", [False, True])
def test_oracle_dots_2x2_decode_gives_perfect_ap(coco_sample, flip):
    """Measured: AP 1.000 and zero keypoint error, flip on and off. Deliberately broken copies of the chain
    (monkeypatched, flip on) fail the AP bound alone: flip_back one pixel off -> AP 0.972 (median error
    1.98 px); flip without the joint swap -> AP 0.348; decoded points half a heatmap pixel off before
    the inverse affine -> AP 0.920."""
    ds = coco_sample_dataset(coco_sample)
    oracle = Oracle(COCO.flip_pairs).observe(ds).eval()
    seen = []
    preds = predict_dataset(
        TopDownPredictor(oracle, COCO_SPEC, flip=flip),
        ds,
        batch_size=5,
        progress=lambda done, total, rate: seen.append((done, total)),
    )
    assert oracle.calls == {"direct": 3, "mirrored": 3 if flip else 0}
    assert seen == [(5, 12), (10, 12), (12, 12)]
    assert len(preds) == 12  # 14 persons, 2 without labelled keypoints (test_coco.json)
    _, metrics, info = evaluate_coco_predictions(preds, coco_sample / "test_coco.json", COCO.sigmas)
    assert metrics["AP"] >= 0.99 and metrics["AR"] >= 0.99, metrics
    assert info["joint_threshold"] == 0.05 and info["instances_after_nms"] == 12
    # Stronger than AP: every labelled keypoint comes back to its annotation (a one-pixel flip error or a
    # half-pixel shift would leave errors of a pixel or more here while OKS on these large people stays high).
    gt = preds.meta["keypoints"]
    labelled = gt[..., 2] > 0
    err = np.linalg.norm(preds.keypoints - gt[..., :2], axis=-1)[labelled]
    assert err.max() < 1e-3, np.percentile(err, [50, 90, 100])
    assert np.all(preds.confidence[labelled] > 0.999)


def test_oracle_gaussians_argmax_decode(coco_sample):
    """Unbiased Gaussians (sigma 2 heatmap px) at the exact keypoint, decoded by argmax + quarter offset.

    Measured on the 4-image sample (flip on and off alike): AP 1.000, AR 1.000; keypoint error median
    0.80 image px, 90th percentile 1.42, max 2.24 (the quarter-pixel rule quantises the position to
    a quarter heatmap pixel and the heatmap pixel is 2.5-7 image px on these people). AP saturates on
    these large people; the error bound is the informative number. The bounds asserted are loose."""
    ds = coco_sample_dataset(coco_sample)
    for flip in (False, True):
        spec = COCO_SPEC.replace(codec=CodecSpec(name="gaussian"))
        oracle = Oracle(COCO.flip_pairs, kind="gaussian").observe(ds).eval()
        preds = predict_dataset(TopDownPredictor(oracle, spec, flip=flip), ds, batch_size=12)
        _, metrics, info = evaluate_coco_predictions(preds, coco_sample / "test_coco.json", COCO.sigmas)
        assert info["joint_threshold"] == 0.2
        assert metrics["AP"] >= 0.95, metrics
        gt = preds.meta["keypoints"]
        labelled = gt[..., 2] > 0
        err = np.linalg.norm(preds.keypoints - gt[..., :2], axis=-1)[labelled]
        assert np.median(err) < 1.2 and err.max() < 3.5, np.percentile(err, [50, 90, 100])
        # the quarter-pixel rule cannot be exact: some error must remain
        assert np.median(err) > 0.1


class DetectionOracle(Oracle):
    """The oracle for detection boxes: each detection shows the annotated person whose (equally padded)
    box overlaps its crop box most, IoU > 0.5; a detection matching nobody gets empty heatmaps."""

    def __init__(self, gt_json: Path, flip_pairs):
        super().__init__(flip_pairs)
        self.people: dict[int, list] = {}
        for a in json.loads(Path(gt_json).read_text())["annotations"]:
            if not a.get("iscrowd", 0) and a["num_keypoints"] > 0:
                self.people.setdefault(a["image_id"], []).append(a)

    def truth_keypoints(self, meta: dict) -> np.ndarray:
        aspect = INPUT_WH[0] / INPUT_WH[1]
        c, s = np.asarray(meta["center"]), np.asarray(meta["size"])
        best, best_iou = np.zeros((17, 3)), 0.5
        for a in self.people.get(int(meta["image_id"]), []):
            x, y, w, h = a["bbox"]
            gc = np.array([x + w / 2, y + h / 2])
            gs = np.array([max(w, h * aspect), max(h, w / aspect)]) * 1.25
            lo, hi = np.maximum(c - s / 2, gc - gs / 2), np.minimum(c + s / 2, gc + gs / 2)
            inter = np.prod(np.clip(hi - lo, 0, None))
            iou = inter / (np.prod(s) + np.prod(gs) - inter)
            if iou > best_iou:
                best, best_iou = np.asarray(a["keypoints"], np.float64).reshape(17, 3), iou
        return best


def test_oracle_with_detection_boxes(coco_sample):
    """The paper's path: detection boxes (118 on the sample, duplicates and misses included), box score x
    joint confidence, OKS-NMS. Measured: 70 instances survive NMS, AP 1.000 flip on and off."""
    ds = coco_sample_dataset(coco_sample, detections=True)
    assert len(ds) == 118
    oracle = DetectionOracle(coco_sample / "test_coco.json", COCO.flip_pairs).observe(ds).eval()
    preds = predict_dataset(TopDownPredictor(oracle, COCO_SPEC), ds, batch_size=64)
    np.testing.assert_allclose(preds.meta["score"], [r.score for r in ds.records])
    results, metrics, info = evaluate_coco_predictions(preds, coco_sample / "test_coco.json", COCO.sigmas)
    assert info["instances"] == 118 and len(results) == info["instances_after_nms"] < 100  # duplicates suppressed
    assert metrics["AP"] >= 0.99, metrics


def write_head_boxes(records: list, path: Path) -> Path:
    """A gt_valid.mat-style file made by the test (the sample ships none): per person a square head box
    (1-based, like the official file) spanning upper neck (8) to head top (9), its side their distance,
    and jnt_missing from joints_vis."""
    from scipy.io import savemat

    boxes, missing = [], []
    for r in records:
        neck, top = np.asarray(r["joints"][8], float), np.asarray(r["joints"][9], float)
        mid, half = (neck + top) / 2, np.linalg.norm(top - neck) / 2
        boxes.append([mid - half, mid + half])  # [[x1, y1], [x2, y2]]
        missing.append([0 if v else 1 for v in r["joints_vis"]])
    savemat(path, {"headboxes_src": np.asarray(boxes).transpose(1, 2, 0), "jnt_missing": np.asarray(missing).T})
    return path


def test_mpii_oracle_gives_pckh_100(mpii_sample, tmp_path):
    from dmpose.data.mpii import load_mpii_gt

    records = json.loads((mpii_sample / "test_mpii.json").read_text())
    gt = load_mpii_gt(write_head_boxes(records, tmp_path / "gt_valid.mat"))
    transform = TopDownTransform((256, 256), (64, 64), DMCodec((64, 64)), MPII, augment=None)
    ds = MpiiKeypoints(mpii_sample / "test_mpii.json", mpii_sample, transform)
    for flip in (False, True):
        oracle = Oracle(MPII.flip_pairs, heatmap_wh=(64, 64)).observe(ds).eval()
        preds = predict_dataset(TopDownPredictor(oracle, MPII_SPEC, flip=flip), ds, batch_size=4)
        at_05, at_01 = evaluate_mpii_predictions(preds, gt)
        assert at_05.columns["Mean"] == 100.0 and at_01.columns["Mean"] == 100.0, at_01.columns
        assert int(at_05.visible_counts.sum()) == 76  # the sample's labelled joints
        assert preds.meta["image"] == [r["image"] for r in records]
    # a model that predicts every joint 50 px right of the truth: PCKh@0.5 below 100 (head sizes are 20-60 px)
    shifted = preds.keypoints.copy()
    preds.keypoints = shifted + np.array([50.0, 0.0])
    assert evaluate_mpii_predictions(preds, gt)[0].columns["Mean"] < 50


# --- the command line ----------------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_synthetic(tmp_path_factory) -> Path:
    from dmpose.data.synthetic import ensure_synthetic

    return ensure_synthetic(tmp_path_factory.mktemp("synth") / "coco", 4, 3, seed=0)


@pytest.fixture(scope="module")
def fresh_checkpoint(tmp_path_factory) -> Path:
    """A freshly initialised hrnet_tiny at a small input (64x48: fast on the CPU), DM decode."""
    import dmpose

    torch.manual_seed(0)
    model = dmpose.build_model("hrnet_tiny", num_joints=17)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    return dmpose.save_checkpoint(
        model, path, meta={"input_size": [64, 48], "decode": "2x2", "flip_pairs": [list(p) for p in COCO.flip_pairs]}
    )


def invoke(*args: str):
    from dmpose.cli import app

    return runner.invoke(app, ["eval", *args, "--workers", "0"], env={"COLUMNS": "200"})


@pytest.mark.parametrize("boxes", [["--gt-boxes"], []])
def test_cli_eval_on_synthetic(tiny_synthetic, fresh_checkpoint, tmp_path, boxes):
    from dmpose.eval.coco import PAPER_COLUMNS

    out = tmp_path / "out"
    result = invoke(
        "--ckpt", str(fresh_checkpoint), "--data", str(tiny_synthetic), "--out", str(out), "--batch", "8", *boxes
    )
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "AP50" in line)
    assert [c for c in header.replace("┃", " ").split()] == list(PAPER_COLUMNS)
    metrics = json.loads((out / "metrics_val2017.json").read_text())
    results = json.loads((out / "person_keypoints_val2017_dmpose_results.json").read_text())
    assert set(metrics["metrics"]) >= set(PAPER_COLUMNS) and metrics["decode"] == "2x2" and metrics["flip"]
    assert 0.0 <= metrics["metrics"]["AP"] <= 1.0 and 0.0 <= metrics["metrics"]["AR"] <= 1.0
    assert all(0.0 <= metrics["metrics"][c] <= 1.0 or metrics["metrics"][c] == -1.0 for c in PAPER_COLUMNS)
    assert len(results) == metrics["instances_after_nms"] > 0
    assert all(len(r["keypoints"]) == 51 and r["category_id"] == 1 for r in results)
    if boxes:
        assert metrics["boxes"] == "GT boxes" and "GT boxes" in result.output
    else:
        assert metrics["boxes"].startswith("detections") and "GT boxes" not in result.output
        dets = json.loads(
            (tiny_synthetic / "person_detection_results" / "COCO_val2017_detections_AP_H_56_person.json").read_text()
        )
        assert metrics["instances"] == len(dets)


def test_cli_eval_test_dev_writes_results_only(tiny_synthetic, fresh_checkpoint, tmp_path):
    """test-dev: image info only (no annotations), detections; the results json and no metrics."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    val = json.loads((tiny_synthetic / "annotations" / "person_keypoints_val2017.json").read_text())
    info = {k: v for k, v in val.items() if k != "annotations"}
    (root / "annotations" / "image_info_test-dev2017.json").write_text(json.dumps(info))
    (root / "test2017").symlink_to(tiny_synthetic / "val2017")
    dets = tiny_synthetic / "person_detection_results" / "COCO_val2017_detections_AP_H_56_person.json"
    out = tmp_path / "out"
    result = invoke(
        "--ckpt",
        str(fresh_checkpoint),
        "--data",
        str(root),
        "--split",
        "test-dev2017",
        "--dets",
        str(dets),
        "--out",
        str(out),
        "--no-flip",
        "--decode",
        "argmax",
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["person_keypoints_test-dev2017_dmpose_results.json"]
    result = invoke("--ckpt", str(fresh_checkpoint), "--data", str(root), "--split", "test-dev2017", "--gt-boxes")
    assert result.exit_code == 1 and "ground-truth boxes" in result.output


def test_cli_eval_mpii(mpii_sample, tmp_path):
    """MPII through the CLI on the HRNet layout (annot/valid.json, annot/gt_valid.mat, images/)."""
    import dmpose

    root = tmp_path / "mpii"
    (root / "annot").mkdir(parents=True)
    (root / "images").symlink_to(mpii_sample)
    records = json.loads((mpii_sample / "test_mpii.json").read_text())
    (root / "annot" / "valid.json").write_text(json.dumps(records))
    write_head_boxes(records, root / "annot" / "gt_valid.mat")
    torch.manual_seed(0)
    ckpt = dmpose.save_checkpoint(
        dmpose.build_model("hrnet_tiny", num_joints=16),
        tmp_path / "mpii.safetensors",
        meta={"input_size": [64, 64], "decode": "2x2"},
    )
    out = tmp_path / "out"
    result = invoke("--ckpt", str(ckpt), "--dataset", "mpii", "--data", str(root), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "PCKh@0.5" in result.output and "Ankle" in result.output
    metrics = json.loads((out / "mpii_valid_metrics.json").read_text())
    assert set(metrics["metrics"]) == {"PCKh@0.5", "PCKh@0.1"} and metrics["persons"] == 5
    assert len(json.loads((out / "mpii_valid_predictions.json").read_text())) == 5


def test_cli_eval_bad_input_names_the_problem(tiny_synthetic, fresh_checkpoint, tmp_path):
    missing_ckpt = tmp_path / "nope.safetensors"
    result = invoke("--ckpt", str(missing_ckpt), "--data", str(tiny_synthetic))
    assert result.exit_code == 1 and "checkpoint not found" in result.output and "nope.safetensors" in result.output
    assert "evaluating" not in result.output  # no progress bar before the input is known to be good

    missing_root = tmp_path / "no_such_root"
    result = invoke("--ckpt", str(fresh_checkpoint), "--data", str(missing_root))
    assert result.exit_code == 1 and "data root not found" in result.output and "no_such_root" in result.output

    bad = tmp_path / "broken_dets.json"
    bad.write_text('[{"image_id": 1, "bbox": [0, 0')
    result = invoke("--ckpt", str(fresh_checkpoint), "--data", str(tiny_synthetic), "--dets", str(bad))
    assert result.exit_code == 1 and "broken_dets.json" in result.output and "not valid JSON" in result.output

    bad.write_text('[{"image_id": 1000001, "score": 0.9}]')  # no bbox
    result = invoke("--ckpt", str(fresh_checkpoint), "--data", str(tiny_synthetic), "--dets", str(bad))
    assert result.exit_code == 1 and "entry 0" in result.output and "bbox" in result.output

    result = invoke("--ckpt", str(fresh_checkpoint), "--data", str(tiny_synthetic), "--decode", "soft")
    assert result.exit_code == 1 and "decode rule 'soft'" in result.output

    no_dets = tmp_path / "no_dets"
    (no_dets / "annotations").mkdir(parents=True)
    result = invoke("--ckpt", str(fresh_checkpoint), "--data", str(no_dets))
    assert result.exit_code == 1 and "detection file not found" in result.output and "--gt-boxes" in result.output

    result = invoke("--ckpt", str(fresh_checkpoint), "--data", str(tiny_synthetic), "--gt-boxes", "--dets", str(bad))
    assert result.exit_code == 1 and "not both" in result.output


def test_checkpoint_metadata_problems_are_named(tiny_synthetic, tmp_path):
    import dmpose

    torch.manual_seed(0)
    model = dmpose.build_model("hrnet_tiny", num_joints=17)
    wrong_hm = dmpose.save_checkpoint(
        model, tmp_path / "wrong_hm.safetensors", meta={"input_size": [64, 48], "heatmap_size": [8, 8], "decode": "2x2"}
    )
    result = invoke("--ckpt", str(wrong_hm), "--data", str(tiny_synthetic), "--gt-boxes")
    assert result.exit_code == 1 and "heatmap_size" in result.output and "(16, 12)" in result.output
    mpii_model = dmpose.save_checkpoint(
        dmpose.build_model("hrnet_tiny", num_joints=16), tmp_path / "m.safetensors", meta={"input_size": [64, 48]}
    )
    result = invoke("--ckpt", str(mpii_model), "--data", str(tiny_synthetic))
    assert result.exit_code == 1 and "num_joints=16" in result.output and "coco17" in result.output


def test_decode_rule_comes_from_the_spec():
    """Old files: the decode field, else the loss name (dm -> 2x2), else argmax (foreign weights are
    MSE-trained); an override swaps the rule and the map it reads."""
    def rule(**meta):
        return PoseSpec.from_legacy_meta({"arch": "hrnet_tiny", "num_joints": 17, **meta}).decode

    assert rule(decode="2x2") == "2x2" and rule(loss={"name": "dm", "eps": 1.0}) == "2x2"
    assert rule(loss="mse") == "argmax" and rule() == "argmax"
    spec = COCO_SPEC.with_decode("argmax")
    assert spec.decode == "argmax" and spec.codec.supplier_map == "raw" and COCO_SPEC.with_decode(None) is COCO_SPEC
    with pytest.raises(ValueError, match="decode rule 'soft'"):
        COCO_SPEC.with_decode("soft")


def test_predict_dataset_refuses_augmentation(coco_sample):
    from dmpose.data.transforms import AugmentConfig

    transform = TopDownTransform(INPUT_WH, HEATMAP_WH, DMCodec(HEATMAP_WH), COCO, augment=AugmentConfig())
    ds = CocoKeypoints(coco_sample / "test_coco.json", coco_sample, transform)
    with pytest.raises(ValueError, match="augment"):
        predict_dataset(TopDownPredictor(Oracle(COCO.flip_pairs), COCO_SPEC), ds)


def test_default_synthetic_root_follows_dmpose_cache(monkeypatch, tmp_path):
    from dmpose.data.synthetic import default_synthetic_root

    monkeypatch.setenv("DMPOSE_CACHE", str(tmp_path / "cache"))
    assert default_synthetic_root() == tmp_path / "cache" / "synthetic-coco"
    monkeypatch.delenv("DMPOSE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_synthetic_root() == tmp_path / "xdg" / "dmpose" / "synthetic-coco"


def test_old_layout_checkpoint_evaluates_identically_to_its_spec_layout(tiny_synthetic, fresh_checkpoint, tmp_path):
    """fresh_checkpoint is written in the field-per-key layout (no spec); re-saved with the spec read from
    it, the same weights give the same results and metrics."""
    import dmpose
    from dmpose.eval.evaluate import evaluate_checkpoint
    from dmpose.models.checkpoint import read_checkpoint_meta, read_checkpoint_spec

    assert "spec" not in read_checkpoint_meta(fresh_checkpoint)
    spec = read_checkpoint_spec(fresh_checkpoint)
    assert spec.input_wh == (48, 64) and spec.decode == "2x2" and spec.keypoints.name == "coco17"
    new = dmpose.save_checkpoint(dmpose.load_model(fresh_checkpoint), tmp_path / "new.safetensors", spec=spec)
    assert read_checkpoint_meta(new)["spec"] == spec.model_dump(mode="json")
    old_report = evaluate_checkpoint(fresh_checkpoint, tiny_synthetic, gt_boxes=True, batch_size=8)
    new_report = evaluate_checkpoint(new, tiny_synthetic, gt_boxes=True, batch_size=8)
    assert old_report.results == new_report.results and old_report.metrics == new_report.metrics
    assert old_report.settings["decode"] == "2x2" and old_report.metrics["AP"] >= 0.0


def test_eval_out_is_checked_before_inference_and_written_all_or_none(
    tiny_synthetic, fresh_checkpoint, tmp_path, monkeypatch
):
    import dmpose.eval.evaluate as ev

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    calls = []
    monkeypatch.setattr(ev, "predict_dataset", lambda *a, **k: calls.append(1))
    for out in (blocker, blocker / "sub"):
        with pytest.raises(OSError):
            ev.evaluate_checkpoint(fresh_checkpoint, tiny_synthetic, gt_boxes=True, out=out)
    with pytest.raises(ValueError, match="oks_threshold"):
        ev.evaluate_checkpoint(fresh_checkpoint, tiny_synthetic, gt_boxes=True, oks_threshold=2.0)
    assert calls == []  # nothing ran
    monkeypatch.undo()

    texts = []
    real = ev.atomic_output

    def failing_second(path):
        texts.append(path)
        if len(texts) == 2:
            raise OSError("disk full (simulated)")
        return real(path)

    monkeypatch.setattr(ev, "atomic_output", failing_second)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        ev.evaluate_checkpoint(fresh_checkpoint, tiny_synthetic, gt_boxes=True, out=out, batch_size=8)
    assert not out.exists() or list(out.iterdir()) == []
