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
