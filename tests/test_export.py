"""`dmpose info` and `dmpose export`; the ONNX checks run only with the `onnx` extra installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from official_keys import single_thread
from typer.testing import CliRunner

import dmpose
from dmpose.cli import app
from dmpose.models.checkpoint import read_checkpoint_meta
from dmpose.suppliers import decoded_map

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),  # emitted inside torch.export
]
assert single_thread  # imported for its fixture
runner = CliRunner()


@pytest.fixture
def tiny_ckpt(tmp_path):
    """A 3-joint hrnet_tiny with weights large enough for distinct heatmaps of order 1."""
    torch.manual_seed(0)
    model = dmpose.build_model("hrnet_tiny", num_joints=3)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
        for m in model.modules():  # calibrate BN statistics so that eval activations stay O(1)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        model.train()(torch.randn(8, 3, 64, 48))
    path = dmpose.save_checkpoint(model.eval(), tmp_path / "tiny.safetensors",
                                  meta={"input_size": [64, 48], "keypoint_names": ["a", "b", "c"], "decode": "2x2"})
    return path, model.eval()


def test_info_shows_metadata_and_parameter_count(tiny_ckpt):
    path, model = tiny_ckpt
    result = runner.invoke(app, ["info", str(path), "--full"])  # the card's --full: every metadata field
    assert result.exit_code == 0, result.output
    n = sum(p.numel() for p in model.parameters())
    for text in ("hrnet_tiny", "num_joints", '["a", "b", "c"]', "[16, 12]", f"{n:,}"):
        assert text in result.output, text


def test_info_lists_architectures():
    result = runner.invoke(app, ["info", "--list"])
    assert result.exit_code == 0 and "hrnet_w32" in result.output and "simplebaseline_res152" in result.output


def test_info_on_a_foreign_file_fails_clearly(tmp_path):
    bad = tmp_path / "weights.pth"
    torch.save({"a": torch.zeros(1)}, bad)
    result = runner.invoke(app, ["info", str(bad)])
    assert result.exit_code == 1 and "is not a safetensors file" in result.output


def test_export_safetensors_round_trip(tiny_ckpt, tmp_path):
    path, model = tiny_ckpt
    out = tmp_path / "shipped.safetensors"
    result = runner.invoke(app, ["export", "--ckpt", str(path), "--format", "safetensors", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert read_checkpoint_meta(out) == read_checkpoint_meta(path)
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        assert torch.equal(dmpose.load_model(out)(x), model(x))


@pytest.mark.parametrize(("args", "match"), [(["--format", "tflite"], "must be 'safetensors' or 'onnx'"),
                                             (["--format", "safetensors", "--with-decode"], "ONNX export only")])
def test_export_rejects_bad_options(tiny_ckpt, args, match):
    path, _ = tiny_ckpt
    result = runner.invoke(app, ["export", "--ckpt", str(path), *args])
    assert result.exit_code == 1 and match in result.output


def _onnx_runtime():
    pytest.importorskip("onnx", reason="the onnx extra (pip install 'dmpose[onnx]') is not installed")
    pytest.importorskip("onnxscript", reason="the onnx extra (pip install 'dmpose[onnx]') is not installed")
    return pytest.importorskip("onnxruntime", reason="the onnx extra (pip install 'dmpose[onnx]') is not installed")


def test_onnx_with_decode_matches_torch_for_any_batch(tiny_ckpt, tmp_path):
    ort = _onnx_runtime()
    path, model = tiny_ckpt
    out = tmp_path / "tiny.onnx"
    result = runner.invoke(app, ["export", "--ckpt", str(path), "--format", "onnx", "--with-decode", "-o", str(out)])
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["heatmaps", "coords", "confidence"]
    x = torch.randn(3, 3, 64, 48, generator=torch.Generator().manual_seed(2))  # exported with batch 1
    heatmaps, coords, conf = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref_heatmaps = model(x)
    # the decode reads the map the loss saw (the spec's supplier map, softmax(H) for a dead map)
    ref_coords, ref_conf = dmpose.decode_2x2(decoded_map(ref_heatmaps, dmpose.load_model(path).spec.codec.supplier_map))
    assert heatmaps.shape == (3, 3, 16, 12) and coords.shape == (3, 3, 2) and conf.shape == (3, 3)
    np.testing.assert_allclose(heatmaps, ref_heatmaps.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(coords, ref_coords.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(conf, ref_conf.numpy(), atol=1e-4, rtol=0)


def test_onnx_heatmaps_only(tiny_ckpt, tmp_path):
    ort = _onnx_runtime()
    from dmpose.models.export import export_onnx

    _, model = tiny_ckpt
    out = export_onnx(model, tmp_path / "plain.onnx", input_wh=(32, 32))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["heatmaps"]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    (heatmaps,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(heatmaps, model(x).numpy(), atol=1e-4, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.onnx", "tiny.safetensors"]  # no temp left


def test_argmax_checkpoint_exports_decode_argmax(tmp_path):
    """An MSE-trained (argmax) checkpoint exported with the decode gives decode_argmax's results."""
    ort = _onnx_runtime()
    from dmpose.spec import CodecSpec, PoseSpec

    torch.manual_seed(0)
    model = dmpose.build_model("hrnet_tiny", num_joints=17).eval()
    spec = PoseSpec.build("hrnet_tiny", "coco17", (32, 48), codec=CodecSpec(name="gaussian"))
    path = dmpose.save_checkpoint(model, tmp_path / "mse.safetensors", spec=spec)
    out = tmp_path / "mse.onnx"
    result = runner.invoke(app, ["export", "--ckpt", str(path), "--format", "onnx", "--with-decode", "-o", str(out)])
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 48, 32, generator=torch.Generator().manual_seed(4))
    heatmaps, coords, conf = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        ref = model(x)
    ref_coords, ref_conf = dmpose.decode_argmax(ref)
    assert heatmaps.shape == (2, 17, 12, 8)
    np.testing.assert_allclose(coords, ref_coords.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(conf, ref_conf.numpy(), atol=1e-4, rtol=0)
    assert not np.allclose(coords, dmpose.decode_2x2(ref)[0].numpy(), atol=1e-2)  # not the DM decode


# ---- an ONNX file that deploys --------------------------------------------------------------------------

@pytest.fixture
def coco_tiny_ckpt(tmp_path):
    """A COCO-17 hrnet_tiny at 64x48 with a full spec (a fresh model: predict's numbers only need to agree)."""
    torch.manual_seed(0)
    model = dmpose.build_model("hrnet_tiny")
    spec = model.spec.replace(input_wh=(48, 64))
    return dmpose.save_checkpoint(model, tmp_path / "coco.safetensors", spec=spec)


def test_the_onnx_file_carries_the_spec_and_predict_equals_the_checkpoint(coco_tiny_ckpt, coco_sample, tmp_path):
    _onnx_runtime()
    from dmpose.models.onnx_model import OnnxPoseModel, read_onnx_spec

    onnx_path = tmp_path / "coco.onnx"
    result = runner.invoke(app, ["export", "--ckpt", str(coco_tiny_ckpt), "--format", "onnx", "--with-decode",
                                 "-o", str(onnx_path)])
    assert result.exit_code == 0, result.output
    spec, meta = read_onnx_spec(onnx_path)
    assert spec == dmpose.read_checkpoint_spec(coco_tiny_ckpt)  # names, skeleton, normalisation, sizes, decode, map
    assert meta["dmpose_outputs"] == "heatmaps,coords,confidence" and meta["dmpose_coords"] == "heatmap"
    assert repr(OnnxPoseModel(onnx_path)).startswith("OnnxPoseModel(")
    image = coco_sample / "000000000785.jpg"
    a = dmpose.Predictor(coco_tiny_ckpt, device="cpu").predict(str(image), boxes=[[280, 40, 170, 340, 1.0]])
    b = dmpose.Predictor(onnx_path).predict(str(image), boxes=[[280, 40, 170, 340, 1.0]])
    assert np.abs(a[0].keypoints - b[0].keypoints).max() < 1e-3  # image pixels
    assert np.abs(np.asarray(a[0].scores) - np.asarray(b[0].scores)).max() < 1e-4


def test_the_onnx_decode_graph_returns_image_pixels_from_the_crops_box(coco_tiny_ckpt, coco_sample, tmp_path):
    ort = _onnx_runtime()
    from dmpose.geometry import box_to_center_scale
    from dmpose.predict.predictor import BOX_PADDING, build_crops

    onnx_path = tmp_path / "img.onnx"
    result = runner.invoke(app, ["export", "--ckpt", str(coco_tiny_ckpt), "--format", "onnx", "--with-decode",
                                 "--image-coords", "-o", str(onnx_path)])
    assert result.exit_code == 0, result.output
    predictor = dmpose.Predictor(coco_tiny_ckpt, device="cpu", flip=False)
    image = dmpose.predict.load_image(str(coco_sample / "000000000785.jpg"))
    boxes = np.array([[280.0, 40.0, 170.0, 340.0], [10.0, 20.0, 60.0, 90.0]])
    expected = predictor.predict(image, boxes=boxes, rgb=True)
    spec = predictor.spec
    crops, _, _, _ = build_crops(image, boxes, spec)
    center, size = box_to_center_scale(boxes, spec.input_wh[0] / spec.input_wh[1], BOX_PADDING)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    coords, = session.run(["coords"], {"image": crops.numpy(), "center": center.astype(np.float32),
                                       "size": size.astype(np.float32)})
    for person, got in zip(expected, coords):
        assert np.abs(person.keypoints - got).max() < 1e-3


def test_eval_runs_the_onnx_file_with_the_checkpoints_answers(coco_tiny_ckpt, tmp_path):
    _onnx_runtime()
    from dmpose.data.synthetic import ensure_synthetic
    from dmpose.eval.evaluate import evaluate_checkpoint
    from dmpose.models.export import export_checkpoint

    data = ensure_synthetic(tmp_path / "synth", n_train=4, n_val=4, seed=0)
    onnx_path = export_checkpoint(coco_tiny_ckpt, tmp_path / "m.onnx", fmt="onnx")
    a = evaluate_checkpoint(coco_tiny_ckpt, data, gt_boxes=True, device="cpu")
    b = evaluate_checkpoint(onnx_path, data, gt_boxes=True)
    assert a.metrics.keys() == b.metrics.keys()
    assert all(abs(a.metrics[k] - b.metrics[k]) < 1e-6 for k in a.metrics)


def test_export_prints_no_warnings(coco_tiny_ckpt, tmp_path):
    import subprocess
    import sys

    _onnx_runtime()
    done = subprocess.run([sys.executable, "-m", "dmpose", "export", "--ckpt", str(coco_tiny_ckpt), "--format", "onnx",
                           "--with-decode", "-o", str(tmp_path / "q.onnx")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "torchvision" not in done.stderr, done.stderr
