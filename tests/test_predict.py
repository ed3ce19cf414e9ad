"""Prediction: `dmpose.Predictor`, `dmpose.viz` and `dmpose predict` on the COCO sample, an oracle, a
briefly trained model, a generated video, and bad input.

The models run at a 64x48 input (hrnet_tiny, fast on the CPU); the oracle test runs at COCO's 192x256.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import dmpose
from dmpose.geometry import box_to_center_scale, crop_affine
from dmpose.predict import BOX_PADDING, AnnotatedVideoWriter, Person, Predictor, load_boxes_file
from dmpose.spec import CodecSpec, PoseSpec
from dmpose.viz import confidence_colour, draw_heatmaps, draw_pose

torch.set_num_threads(1)  # 2 shared cores

runner = CliRunner()
IMAGES = ("000000000785.jpg", "000000040083.jpg", "000000196141.jpg", "000000197388.jpg")
DETS = "test_coco_det_AP_H_56.json"


def invoke(*args: str):
    from dmpose.cli import app

    return runner.invoke(app, ["predict", *args], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def tiny_predictor(tiny_ckpt) -> Predictor:
    return Predictor(tiny_ckpt, device="cpu")


def gt_people(root: Path):
    """{file name: (boxes (N, 4), keypoints (N, 17, 3))} for the annotated people with labelled joints."""
    data = json.loads((root / "test_coco.json").read_text())
    names = {im["id"]: im["file_name"] for im in data["images"]}
    out: dict[str, tuple[list, list]] = {}
    for ann in data["annotations"]:
        kp = np.asarray(ann["keypoints"], np.float64).reshape(17, 3)
        if ann.get("iscrowd") or not (kp[:, 2] > 0).any():
            continue
        b, k = out.setdefault(names[ann["image_id"]], ([], []))
        b.append(ann["bbox"])
        k.append(kp)
    return {n: (np.asarray(b), np.asarray(k)) for n, (b, k) in out.items()}


# --- the Python API -----------------------------------------------------------------------------------

def test_predictor_shapes_inputs_and_crop_bounds(coco_sample, tiny_predictor):
    path = coco_sample / IMAGES[0]
    dets = [d for d in json.loads((coco_sample / DETS).read_text()) if d["image_id"] == 785]
    boxes = np.array([d["bbox"] + [d["score"]] for d in dets])
    people = tiny_predictor.predict(path, boxes)
    assert len(people) == len(dets) and all(isinstance(p, Person) for p in people)
    for p, box in zip(people, boxes):
        assert p.keypoints.shape == (17, 2) and p.scores.shape == (17,)
        assert np.all((p.scores >= 0) & (p.scores <= 1)) and p.bbox_score == pytest.approx(box[4])
        np.testing.assert_allclose(p.bbox, box[:4])
        centre, size = box_to_center_scale(box[:4], 48 / 64, BOX_PADDING)  # the padded crop box
        assert np.all(np.abs(p.keypoints - centre) <= size / 2 + 1e-6)
    # the same image as a path, BGR array and RGB array gives the same people
    bgr = cv2.imread(str(path))
    for again in (tiny_predictor.predict(bgr, boxes), tiny_predictor.predict(bgr[:, :, ::-1].copy(), boxes, rgb=True)):
        np.testing.assert_allclose(np.stack([p.keypoints for p in again]), np.stack([p.keypoints for p in people]))
    # no boxes: one person filling the frame; a batch of images; an empty box list: nobody
    h, w = bgr.shape[:2]
    (whole,) = tiny_predictor.predict(bgr)
    np.testing.assert_allclose(whole.bbox, [-0.5, -0.5, w, h])
    assert whole.bbox_score == 1.0
    batch = tiny_predictor.predict_batch([bgr, coco_sample / IMAGES[1]], [boxes[:2], None])
    assert [len(b) for b in batch] == [2, 1]
    np.testing.assert_allclose(batch[0][1].keypoints, people[1].keypoints, atol=1e-4)
    assert tiny_predictor.predict(bgr, np.zeros((0, 4))) == []
    with_hm = tiny_predictor.predict(bgr, boxes[:1], heatmaps=True)[0]
    assert with_hm.crop.shape == (64, 48, 3) and with_hm.heatmaps.shape == (17, 16, 12)


class GroundTruthOracle(nn.Module):
    """Returns, for the crops the predictor makes of `boxes`, the heatmaps a perfect model would: each
    joint's four bilinear dot masses at the ground truth mapped image -> input crop with the crop's affine
    (built here from the box with dmpose.geometry, as any caller would) and input -> heatmap by the
    edge-aligned rescale written out, x_hm = (x_in + 0.5) * W_hm / W_in - 0.5. On the mirrored crop it
    renders the mirrored scene (x -> W-1-x, left and right exchanged), independently of dmpose's flip."""

    def __init__(self, boxes, keypoints, spec: PoseSpec):
        super().__init__()
        w_in, h_in = spec.input_wh
        self.hm_wh = spec.heatmap_wh
        pts = []
        for box, kp in zip(boxes, keypoints):
            c, s = box_to_center_scale(box, w_in / h_in, BOX_PADDING)
            a = crop_affine(c, s, 0.0, spec.input_wh)
            p_in = kp[:, :2] @ a[:, :2].T + a[:, 2]
            pts.append((p_in + 0.5) * np.array([self.hm_wh[0] / w_in, self.hm_wh[1] / h_in]) - 0.5)
        self.points, self.labelled = np.stack(pts), keypoints[..., 2] > 0
        self.partner = list(spec.keypoints.flip_index)
        self.pos, self.last = 0, None

    def render(self, points, labelled):
        w, h = self.hm_wh
        out = np.zeros((len(points), points.shape[1], h, w))
        for i, j in zip(*np.nonzero(labelled)):
            x, y = points[i, j]
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            fx, fy = x - x0, y - y0
            corners = ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy))
            for dx, dy, m in corners:
                if 0 <= x0 + dx < w and 0 <= y0 + dy < h:
                    out[i, j, y0 + dy, x0 + dx] += m
        return torch.from_numpy(out).float()

    def forward(self, x):
        if self.last is not None and torch.equal(x, self.last.flip(-1)):  # the mirrored crops of the last batch
            sl = slice(self.pos - len(x), self.pos)
            pts, lab = self.points[sl][:, self.partner].copy(), self.labelled[sl][:, self.partner]
            pts[..., 0] = (self.hm_wh[0] - 1) - pts[..., 0]
            self.last = None
            return self.render(pts, lab)
        sl = slice(self.pos, self.pos + len(x))
        self.pos += len(x)
        self.last = x
        return self.render(self.points[sl], self.labelled[sl])


@pytest.mark.parametrize("flip", [True, False])
def test_oracle_predict_returns_ground_truth(coco_sample, flip):
    spec = PoseSpec.build("oracle", "coco17", (192, 256), codec=CodecSpec(name="dm", supplier_map="relu"))  # dots
    checked = 0
    for name, (boxes, kps) in gt_people(coco_sample).items():
        oracle = GroundTruthOracle(boxes, kps, spec)
        people = Predictor.from_model(oracle, spec, device="cpu", flip=flip, batch_size=3).predict(
            coco_sample / name, boxes)
        assert oracle.pos == len(boxes)
        labelled = kps[..., 2] > 0
        inside = labelled & np.all((oracle.points >= 0) & (oracle.points <= np.array(spec.heatmap_wh) - 1), -1)
        pred = np.stack([p.keypoints for p in people])
        err = np.linalg.norm(pred - kps[..., :2], axis=-1)[inside]
        assert err.max() < 1e-3, (name, np.percentile(err, [50, 100]))
        checked += int(inside.sum())
    assert checked > 100


def test_predict_equals_eval_results(coco_sample, tiny_ckpt, tmp_path):
    """Same checkpoint and boxes: every row of `dmpose eval`'s results json is one of predict's people."""
    from dmpose.eval.evaluate import evaluate_checkpoint

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    shutil.copy(coco_sample / "test_coco.json", root / "annotations" / "person_keypoints_val2017.json")
    (root / "val2017").symlink_to(coco_sample)
    report = evaluate_checkpoint(tiny_ckpt, root, dets=coco_sample / DETS, out=tmp_path / "eval", device="cpu")
    eval_rows = json.loads(report.files["results"].read_text())
    out = tmp_path / "pred"
    result = invoke(*[str(coco_sample / n) for n in IMAGES], "--ckpt", str(tiny_ckpt), "--boxes",
                    str(coco_sample / DETS), "--bbox-thr", "0", "--nms-thr", "1", "--out", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    people = {json.loads((out / f"{Path(n).stem}.json").read_text())["image_id"]:
              json.loads((out / f"{Path(n).stem}.json").read_text())["people"] for n in IMAGES}
    coco_rows = json.loads((out / "coco_results.json").read_text())
    assert len(coco_rows) == sum(map(len, people.values())) == report.settings["instances"]
    for row in eval_rows:
        kp = np.asarray(row["keypoints"]).reshape(17, 3)
        cands = [np.concatenate([np.asarray(p["keypoints"]), np.asarray(p["keypoint_scores"])[:, None]], 1)
                 for p in people[row["image_id"]]]
        best = min(np.abs(c - kp).max() for c in cands)
        assert best < 1e-4, (row["image_id"], best)
        assert min(abs(r["score"] - row["score"]) for r in coco_rows if r["image_id"] == row["image_id"]) < 1e-6


# --- drawing ------------------------------------------------------------------------------------------

def train_briefly(tmp_path: Path, steps: int = 12) -> Path:
    """hrnet_tiny trained for a few DM-loss steps on a tiny synthetic COCO set (64x48), saved."""
    from torch.utils.data import DataLoader

    from dmpose.codec import DMCodec
    from dmpose.data.coco import CocoKeypoints
    from dmpose.data.synthetic import generate_synthetic_coco
    from dmpose.data.transforms import TopDownTransform
    from dmpose.keypoints import load_keypoint_set
    from dmpose.loss import dm_loss

    root = tmp_path / "synth"
    generate_synthetic_coco(root, 6, 2, seed=0)
    transform = TopDownTransform((48, 64), (12, 16), DMCodec((12, 16)), load_keypoint_set("coco17"))
    ds = CocoKeypoints(root / "annotations" / "person_keypoints_train2017.json", root / "train2017", transform)
    torch.manual_seed(0)
    model = dmpose.build_model("hrnet_tiny", num_joints=17).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(ds, batch_size=8, shuffle=True)
    step = 0
    while step < steps:
        for batch in loader:
            loss = dm_loss(model(batch["image"]), batch["keypoints_hm"], batch["weights"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == steps:
                break
    return dmpose.save_checkpoint(model.eval(), tmp_path / "trained.safetensors",
                                  meta={"input_size": [64, 48], "decode": "2x2"})


def test_overlay_is_drawn_where_the_keypoints_are(coco_sample, tmp_path):
    predictor = Predictor(train_briefly(tmp_path), device="cpu")
    image = cv2.imread(str(coco_sample / IMAGES[1]))
    boxes, _ = gt_people(coco_sample)[IMAGES[1]]
    people = predictor.predict(image, boxes)
    thr = float(np.median(np.concatenate([p.scores for p in people])))  # half the joints shown, half hidden
    overlay = draw_pose(image, people, predictor.keypoint_spec, kpt_thr=thr, radius=3, thickness=1)
    assert overlay.shape == image.shape and not np.shares_memory(overlay, image)
    h, w = image.shape[:2]
    shown = [(p.keypoints[j], p.scores[j]) for p in people for j in range(17) if p.scores[j] >= thr]
    hidden = [p.keypoints[j] for p in people for j in range(17) if p.scores[j] < thr]
    drawn = 0
    for (x, y), _s in shown:
        xi, yi = int(round(x)), int(round(y))
        if 0 <= xi < w and 0 <= yi < h:
            near = {confidence_colour(s2) for (p2, s2) in shown if np.abs(np.round(p2) - (xi, yi)).max() <= 3}
            assert tuple(int(v) for v in overlay[yi, xi]) in near
            drawn += 1
    assert drawn > 5
    # a hidden joint far from every shown joint, box and limb is left as it was
    untouched = draw_pose(image, [Person(p.bbox, p.bbox_score, p.keypoints, np.zeros(17)) for p in people],
                          predictor.keypoint_spec, kpt_thr=thr, radius=3, thickness=1)
    for x, y in hidden:
        xi, yi = int(round(x)), int(round(y))
        if 0 <= xi < w and 0 <= yi < h:
            assert np.array_equal(untouched[yi, xi], image[yi, xi]) or any(
                abs(xi - bx) <= 2 or abs(xi - bx - bw) <= 2 or abs(yi - by) <= 2 or abs(yi - by - bh) <= 2
                or (by - 16 <= yi <= by and bx <= xi <= bx + 40)  # the box's anti-aliased edge or score label
                for bx, by, bw, bh in boxes)
    # heatmap panels: K joints + the all-joints panel, in a grid of crops
    p = predictor.predict(image, boxes[:1], heatmaps=True)[0]
    grid = draw_heatmaps(p.crop[:, :, ::-1], p.heatmaps, predictor.keypoint_names)
    assert grid.shape == (4 * 64, 5 * 48, 3) and grid.dtype == np.uint8  # 18 panels -> 4 rows x 5 columns


# --- the command line ---------------------------------------------------------------------------------

def test_cli_writes_json_overlays_and_coco_results(coco_sample, tiny_ckpt, tmp_path):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    shutil.copy(coco_sample / IMAGES[0], img_dir / IMAGES[0])
    shutil.copy(coco_sample / IMAGES[1], img_dir / "holiday.jpg")  # not a COCO id
    out = tmp_path / "out"
    result = invoke(str(img_dir), "--ckpt", str(tiny_ckpt), "--out", str(out), "--heatmaps", "--no-flip",
                    "--no-detector")
    assert result.exit_code == 0, result.output
    assert "one person filling the frame" in result.output and "not COCO ids" in result.output
    assert "2 images, 0 video frames, 2 people" in result.output
    names = sorted(p.name for p in out.iterdir())
    written = ["000000000785.json", "000000000785_pose.jpg", "000000000785_heatmaps_0.jpg", "holiday.json",
               "holiday_pose.jpg", "holiday_heatmaps_0.jpg", "coco_results.json"]
    assert names == sorted([*written, ".dmpose-predict.json"])
    assert json.loads((out / ".dmpose-predict.json").read_text()) == sorted(written)  # the manifest
    rec = json.loads((out / "000000000785.json").read_text())
    assert set(rec) == {"source", "image_id", "image_size", "exif_orientation", "keypoint_names", "boxes", "people"}
    assert rec["exif_orientation"] == 1
    assert rec["image_id"] == 785 and len(rec["keypoint_names"]) == 17 and rec["boxes"] == "full frame"
    (person,) = rec["people"]
    assert set(person) == {"bbox", "bbox_score", "keypoints", "keypoint_scores"}
    assert person["bbox"] == [-0.5, -0.5, 640, 425] and np.asarray(person["keypoints"]).shape == (17, 2)
    other = json.loads((out / "holiday.json").read_text())["image_id"]
    rows = json.loads((out / "coco_results.json").read_text())
    assert sorted(r["image_id"] for r in rows) == sorted([785, other]) and other != 785
    assert all(len(r["keypoints"]) == 51 and r["category_id"] == 1 for r in rows)
    assert cv2.imread(str(out / "holiday_pose.jpg")).shape == (333, 500, 3)
    # --out pointing at the inputs' folder never overwrites an input
    before = (img_dir / "holiday.jpg").read_bytes()
    result = invoke(str(img_dir / "holiday.jpg"), "--ckpt", str(tiny_ckpt), "--out", str(img_dir), "--no-detector")
    assert result.exit_code == 0 and (img_dir / "holiday.jpg").read_bytes() == before


def test_video_round_trip(coco_sample, tiny_ckpt, tmp_path):
    frames = [cv2.resize(cv2.imread(str(coco_sample / n)), (96, 64)) for n in IMAGES + IMAGES[:1]]
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (96, 64))
    for f in frames:
        writer.write(f)
    writer.release()
    predictor = Predictor(tiny_ckpt, device="cpu", flip=False)
    assert [fr.index for fr in predictor.predict_video(video)] == [0, 1, 2, 3, 4]
    out = tmp_path / "out"
    result = invoke(str(video), "--ckpt", str(tiny_ckpt), "--out", str(out), "--stride", "2", "--no-detector")
    assert result.exit_code == 0, result.output
    rec = json.loads((out / "clip.json").read_text())
    assert [r["frame"] for r in rec["frames"]] == [0, 2, 4] and rec["stride"] == 2
    assert all(len(r["people"]) == 1 and len(r["people"][0]["keypoints"]) == 17 for r in rec["frames"])
    cap = cv2.VideoCapture(str(out / "clip_pose.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 3
    assert not list(out.glob(".*.tmp"))
    from dmpose.predict.media import video_codec

    assert video_codec(out / "clip_pose.mp4") == ("h264", 5.0)  # H.264 (browsers play it), every 2nd of 10 fps
    same = invoke(str(video), "--ckpt", str(tiny_ckpt), "--out", str(tmp_path / "out1"), "--no-detector")
    assert same.exit_code == 0 and video_codec(tmp_path / "out1" / "clip_pose.mp4") == ("h264", 10.0)


def test_annotated_video_writer_is_atomic(tmp_path):
    frame = np.full((32, 48, 3), 128, np.uint8)
    path = tmp_path / "v.mp4"
    with AnnotatedVideoWriter(path, 10.0) as video:
        for _ in range(3):
            video.write(frame)
        assert not path.exists()  # under its final name only once complete
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    cap.release()
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="boom"), AnnotatedVideoWriter(path, 10.0) as video:
        video.write(frame)
        raise RuntimeError("boom")
    with pytest.raises(ValueError, match="frame 1 is 24x32"), AnnotatedVideoWriter(path, 10.0) as video:
        video.write(frame)
        video.write(frame[:, :24])
    with pytest.raises(ValueError, match="no frame"), AnnotatedVideoWriter(tmp_path / "empty.mp4", 10.0):
        pass
    assert path.read_bytes() == before  # an existing file is left as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]  # no temporary file, no empty video


# --- bad input ----------------------------------------------------------------------------------------

def test_bad_images_and_videos_are_named_and_counted(coco_sample, tiny_ckpt, tmp_path):
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"not a jpeg")
    bad_video = tmp_path / "broken.mp4"
    bad_video.write_bytes(b"\x00" * 100)
    good = coco_sample / IMAGES[2]
    out = tmp_path / "out"
    result = invoke(str(tmp_path / "missing.jpg"), str(corrupt), str(bad_video), str(good), "--ckpt", str(tiny_ckpt),
                    "--out", str(out), "--no-flip", "--no-detector")
    assert result.exit_code == 1
    assert "missing.jpg" in result.output and "broken.jpg" in result.output and "broken.mp4" in result.output
    assert "3 input(s) failed" in result.output and "1 images" in result.output
    assert (out / "000000196141.json").is_file() and not (out / "broken.json").exists()
    assert not (out / "broken_pose.mp4").exists() and not list(out.glob(".*.tmp"))


def test_names_with_rich_markup_print_literally(coco_sample, tiny_ckpt, tmp_path):
    """A path that reads as rich markup (x[/b].jpg: the folder 'x[' and the file 'b].jpg') neither crashes
    the run nor is swallowed; the next input is still predicted, and its name a[red]b prints as it is."""
    bad = tmp_path / "x[" / "b].jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"not a jpeg")
    good = tmp_path / "a[red]b.jpg"
    shutil.copy(coco_sample / IMAGES[0], good)
    out = tmp_path / "out"
    result = invoke(str(bad), str(good), "--ckpt", str(tiny_ckpt), "--out", str(out), "--no-flip", "--no-detector")
    assert result.exit_code == 1, result.output
    assert f"corrupt or unsupported image file: {bad}" in result.output  # the literal path
    assert "1 images, 0 video frames, 1 people" in result.output and "1 input(s) failed" in result.output
    assert "not COCO ids (a[red]b.jpg)" in result.output
    assert json.loads((out / "a[red]b.json").read_text())["source"] == str(good)
    assert (out / "a[red]b_pose.jpg").is_file() and not (out / "b].json").exists()


def test_checkpoint_and_boxes_problems_are_named(coco_sample, tiny_ckpt, tmp_path):
    img = str(coco_sample / IMAGES[0])
    no_size = dmpose.save_checkpoint(dmpose.build_model("hrnet_tiny", num_joints=17), tmp_path / "nosize.safetensors",
                                     meta={"decode": "2x2"})
    result = invoke(img, "--ckpt", str(no_size), "--out", str(tmp_path / "o"), "--no-detector")
    assert result.exit_code == 1 and "input_size" in result.output and "nosize.safetensors" in result.output
    no_decode = dmpose.save_checkpoint(dmpose.build_model("hrnet_tiny", num_joints=17), tmp_path / "nodec.safetensors",
                                       meta={"input_size": [64, 48]})
    result = invoke(img, "--ckpt", str(no_decode), "--out", str(tmp_path / "o"), "--no-detector")
    assert result.exit_code == 1 and "decode" in result.output

    bad = tmp_path / "boxes.json"
    bad.write_text('{"000000000785.jpg": [[1, 2, 3')
    result = invoke(img, "--ckpt", str(tiny_ckpt), "--boxes", str(bad))
    assert result.exit_code == 1 and "boxes.json" in result.output and "not valid JSON" in result.output
    bad.write_text(json.dumps({"000000000785.jpg": [[10, 20, 30, 40, 0.9]], "nope.jpg": [[1, 2, 3, 4]]}))
    result = invoke(img, "--ckpt", str(tiny_ckpt), "--boxes", str(bad))
    assert result.exit_code == 1 and "entry 'nope.jpg'" in result.output and "names no input" in result.output
    bad.write_text(json.dumps({"000000000785.jpg": [[10, 20, -3, 40]]}))
    result = invoke(img, "--ckpt", str(tiny_ckpt), "--boxes", str(bad))
    assert result.exit_code == 1 and "box 0" in result.output
    dets = json.loads((coco_sample / DETS).read_text())
    bad.write_text(json.dumps(dets))  # boxes for 4 images, only one given
    result = invoke(img, "--ckpt", str(tiny_ckpt), "--boxes", str(bad))
    first_other = next(i for i, d in enumerate(dets) if d["image_id"] != 785)
    assert result.exit_code == 1 and f"entry {first_other}" in result.output and "matches no input" in result.output
    # both formats match the same way: by COCO id / file name, and by path
    result = invoke(img, str(coco_sample / IMAGES[1]), "--ckpt", str(tiny_ckpt), "--boxes", str(bad), "--out",
                    str(tmp_path / "o"), "--no-flip")
    assert result.exit_code == 1  # still entries for images not given
    bad.write_text(json.dumps([d for d in dets if d["image_id"] == 785]))
    result = invoke(img, str(coco_sample / IMAGES[1]), "--ckpt", str(tiny_ckpt), "--boxes", str(bad), "--out",
                    str(tmp_path / "o"), "--no-flip")
    assert result.exit_code == 0 and "1 input(s) have no boxes" in result.output
    assert json.loads((tmp_path / "o" / "000000040083.json").read_text())["people"] == []
    boxes = load_boxes_file(coco_sample / DETS, [coco_sample / n for n in IMAGES])
    assert sum(len(e.boxes) for e in boxes.values()) == len(dets) and boxes[coco_sample / IMAGES[0]].image_id == 785
    bad.write_text(json.dumps({img: [[10, 20, 30, 40]], IMAGES[1]: [[1, 2, 3, 4, 0.5]]}))
    result = invoke(img, str(coco_sample / IMAGES[1]), "--ckpt", str(tiny_ckpt), "--boxes", str(bad), "--out",
                    str(tmp_path / "o"), "--no-flip")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "000000040083.json").read_text())["people"][0]["bbox_score"] == 0.5
    boxes = load_boxes_file(bad, [coco_sample / n for n in IMAGES[:2]])
    assert boxes[coco_sample / IMAGES[1]].scores.tolist() == [0.5] and boxes[Path(img)].scores.tolist() == [1.0]


def test_spec_checkpoint_with_a_custom_keypoint_set(coco_sample, tmp_path):
    """A checkpoint that stores its spec: a 5-joint set with its own skeleton, BGR input channels, argmax
    decode; the crops are normalised as the spec says and the CLI draws any joint count."""
    from dmpose.spec import CodecSpec, KeypointSpec, Normalisation

    kps = KeypointSpec(name="five", names=("head", "l_hand", "r_hand", "l_foot", "r_foot"),
                       flip_pairs=((1, 2), (3, 4)), skeleton=((0, 1), (0, 2), (0, 3), (0, 4)))
    norm = Normalisation(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), channel_order="BGR")
    spec = PoseSpec.build("hrnet_tiny", kps, (48, 64), codec=CodecSpec(name="gaussian"), normalisation=norm)
    torch.manual_seed(0)
    ckpt = dmpose.save_checkpoint(dmpose.build_model("hrnet_tiny", num_joints=5), tmp_path / "five.safetensors",
                                  spec=spec)
    predictor = Predictor(ckpt, device="cpu")
    assert predictor.spec == spec and predictor.keypoint_names == kps.names
    seen = []
    spy = Predictor.from_model(lambda x: (seen.append(x), torch.zeros(len(x), 5, 16, 12))[1], spec, device="cpu",
                               flip=False)
    image = cv2.imread(str(coco_sample / IMAGES[0]))
    (person,) = spy.predict(image, [[100, 50, 120, 160]])
    from dmpose.predict import build_crops

    crop = build_crops(image[:, :, ::-1].copy(), np.array([[100, 50, 120, 160]]), spec, keep_crops=True)[3][0]
    expected = (crop[:, :, ::-1] / 255.0 - np.array(norm.mean)) / np.array(norm.std)  # BGR channels
    np.testing.assert_allclose(seen[0][0].numpy(), expected.transpose(2, 0, 1), atol=1e-5)
    assert person.keypoints.shape == (5, 2)
    out = tmp_path / "out"
    result = invoke(str(coco_sample / IMAGES[0]), "--ckpt", str(ckpt), "--out", str(out), "--kpt-thr", "0",
                    "--no-detector")
    assert result.exit_code == 0, result.output
    rec = json.loads((out / "000000000785.json").read_text())
    assert rec["keypoint_names"] == list(kps.names) and len(rec["people"][0]["keypoints"]) == 5
    assert len(json.loads((out / "coco_results.json").read_text())[0]["keypoints"]) == 15


def test_predict_never_replaces_a_file_it_did_not_write(coco_sample, tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(coco_sample / IMAGES[0], tmp_path / IMAGES[0])
    (out / "000000000785.json").write_text("hand-made")
    (out / "coco_results.json").write_text("[]  # an old evaluation")
    result = invoke(str(tmp_path / IMAGES[0]), "--ckpt", str(tiny_ckpt), "--out", str(out), "--no-flip",
                    "--no-detector")
    assert result.exit_code == 0, result.output
    assert (out / "000000000785.json").read_text() == "hand-made"
    assert (out / "coco_results.json").read_text() == "[]  # an old evaluation"
    assert json.loads((out / "000000000785_2.json").read_text())["image_id"] == 785
    assert json.loads((out / "coco_results_2.json").read_text())[0]["image_id"] == 785
    # a second call replaces what the first wrote (its manifest lists them), and still not the others
    again = invoke(str(tmp_path / IMAGES[0]), "--ckpt", str(tiny_ckpt), "--out", str(out), "--no-flip", "--no-detector")
    assert again.exit_code == 0 and not (out / "000000000785_3.json").exists()
    assert (out / "000000000785.json").read_text() == "hand-made"


def test_two_inputs_of_one_coco_name_get_their_own_image_ids(coco_sample, tiny_ckpt, tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        shutil.copy(coco_sample / IMAGES[0], tmp_path / d / IMAGES[0])
    out = tmp_path / "out"
    result = invoke(str(tmp_path / "a" / IMAGES[0]), str(tmp_path / "b" / IMAGES[0]), "--ckpt", str(tiny_ckpt),
                    "--out", str(out), "--no-flip", "--no-detector")
    assert result.exit_code == 0, result.output
    ids = [r["image_id"] for r in json.loads((out / "coco_results.json").read_text())]
    assert len(ids) == 2 and len(set(ids)) == 2 and 785 in ids


def test_a_video_with_undecodable_frames_is_reported_and_fails(coco_sample, tiny_ckpt, tmp_path):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    for i in range(12):
        frame = np.full((48, 64, 3), 20 * i, np.uint8)
        cv2.putText(frame, str(i), (5, 30), 0, 1, (255, 255, 255))
        writer.write(frame)
    writer.release()
    data = bytearray(video.read_bytes())
    n = len(data)
    data[n // 3: n // 3 + n // 4] = bytes(n // 4)  # a damaged middle
    video.write_bytes(bytes(data))
    out = tmp_path / "out"
    result = invoke(str(video), "--ckpt", str(tiny_ckpt), "--out", str(out), "--no-flip", "--no-detector")
    assert result.exit_code == 1
    assert "video frame(s) could not be decoded" in result.output and "1 input(s) failed" in result.output
    rec = json.loads((out / "clip.json").read_text())
    assert rec["lost_frames"] and len(rec["frames"]) + len(rec["lost_frames"]) == 12


def test_a_camera_index_is_a_source(tiny_ckpt, tmp_path, monkeypatch):
    """A fake capture device stands in for camera 0 (OpenCV's VideoCapture(0)): 5 frames, then it stops."""
    import dmpose.predict.media as media

    class FakeCamera:
        def __init__(self, index):
            assert index == 0  # a device index, not a file name
            self.frames = [np.full((48, 64, 3), 40 * i, np.uint8) for i in range(5)]

        def isOpened(self):
            return True

        def get(self, prop):
            return {cv2.CAP_PROP_FPS: 15.0, cv2.CAP_PROP_FRAME_WIDTH: 64, cv2.CAP_PROP_FRAME_HEIGHT: 48}.get(prop, -1)

        def read(self):
            return (True, self.frames.pop(0)) if self.frames else (False, None)

        def release(self):
            pass

    real = cv2.VideoCapture
    monkeypatch.setattr(media.cv2, "VideoCapture", lambda source: FakeCamera(source) if isinstance(source, int)
                        else real(source))
    files, problems = media.collect_inputs(["0"])
    assert not problems and files == [media.camera(0)] and media.is_video(files[0])
    out = tmp_path / "out"
    result = invoke("0", "--ckpt", str(tiny_ckpt), "--out", str(out), "--no-flip", "--max-frames", "4", "--no-detector")
    assert result.exit_code == 0, result.output
    rec = json.loads((out / "camera0.json").read_text())
    assert [r["frame"] for r in rec["frames"]] == [0, 1, 2, 3] and rec["fps"] == 15.0
    assert media.video_codec(out / "camera0_pose.mp4") == ("h264", 15.0)
