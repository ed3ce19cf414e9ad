"""Weight import: official HRNet layout (plain, wrapped, `module.`, MMPose), ImageNet backbones,
and clear errors. Synthetic state dicts are built from the official key fixture (random values)."""

from __future__ import annotations

import pytest
import torch

import dmpose
from dmpose.models.convert import (
    ConversionError,
    convert_checkpoint,
    convert_state_dict,
    read_foreign_state_dict,
    unwrap_state_dict,
)
from official_keys import read_key_fixture, single_thread

pytestmark = pytest.mark.usefixtures("single_thread")
assert single_thread  # imported for its fixture


def random_state(layout: dict[str, tuple[list[int], str]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values with BN statistics that keep activations finite (positive variances)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, (shape, dtype) in layout.items():
        if dtype == "int64":
            state[key] = torch.randint(0, 1000, shape, generator=g)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.05
    return state


@pytest.fixture(scope="module")
def official_w32():
    layout, _ = read_key_fixture(32)
    state = random_state(layout)
    reference = dmpose.build_model("hrnet_w32").eval()
    reference.load_state_dict(state, strict=True)  # the direct load the conversion must equal
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(x)
    return state, x, expected


WRAPPINGS = {
    "official": lambda s: s,
    "state_dict": lambda s: {"state_dict": s, "epoch": 140, "perf": 0.744},
    "module": lambda s: {"module." + k: v for k, v in s.items()},
    "mmpose0": lambda s: {"state_dict": {("keypoint_head." if k.startswith("final_layer") else "backbone.") + k: v for k, v in s.items()}},
    "mmpose1": lambda s: {"state_dict": {("head." if k.startswith("final_layer") else "backbone.") + k: v for k, v in s.items()}},
}


@pytest.mark.parametrize("wrapping", list(WRAPPINGS))
def test_official_layout_converts_strictly(official_w32, wrapping):
    state, _, _ = official_w32
    model, report = convert_state_dict(unwrap_state_dict(WRAPPINGS[wrapping](state)), "hrnet_w32")
    assert not report.is_partial and report.dropped == {} and report.tracking_missing == 0
    assert len(report.loaded) == len(state) and report.num_joints == 17
    assert report.renamed == (0 if wrapping in ("official", "state_dict") else len(state))
    got = model.state_dict()
    for key, value in state.items():
        assert torch.equal(got[key], value), key


def test_official_file_converts_to_a_checkpoint_with_equal_outputs(tmp_path, official_w32):
    state, x, expected = official_w32
    src = tmp_path / "src.pth"
    torch.save(WRAPPINGS["mmpose1"](state), src)
    out = tmp_path / "out.safetensors"
    report = convert_checkpoint(src, "hrnet_w32", out, meta={"input_size": [256, 192]})
    assert not report.is_partial
    model = dmpose.load_model(out)
    assert model.checkpoint_meta["converted_from"] == "src.pth"
    assert model.checkpoint_meta["heatmap_size"] == [64, 48]
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def hrnet_classification_state(layout):
    """An ImageNet HRNet-W32 classification checkpoint: the pose backbone keys, no pose head, plus the
    classification parts (incre/downsample modules, 2048-channel final_layer, classifier) and the
    multi-scale fuse layers of stage4's last module."""
    state = random_state({k: v for k, v in layout.items() if not k.startswith("final_layer")})
    extras = {
        "incre_modules.0.0.conv1.weight": [32, 32, 1, 1],
        "downsamp_modules.0.0.weight": [256, 128, 3, 3],
        "final_layer.0.weight": [2048, 1024, 1, 1],
        "final_layer.1.weight": [2048],
        "final_layer.1.running_var": [2048],
        "classifier.weight": [1000, 2048],
        "classifier.bias": [1000],
        "stage4.2.fuse_layers.1.0.0.0.weight": [64, 32, 3, 3],
        "stage4.2.fuse_layers.3.2.0.0.weight": [128, 128, 3, 3],
    }
    state.update({k: torch.randn(s) for k, s in extras.items()})
    return state, extras


def test_hrnet_imagenet_backbone_needs_partial_and_reports_drops(official_w32):
    layout, _ = read_key_fixture(32)
    state, extras = hrnet_classification_state(layout)
    with pytest.raises(ConversionError, match=r"2 missing \(final_layer.weight, final_layer.bias\).*--partial"):
        convert_state_dict(state, "hrnet_w32")

    model, report = convert_state_dict(state, "hrnet_w32", partial=True)
    assert report.missing == ["final_layer.weight", "final_layer.bias"]
    dropped = sorted(k for keys in report.dropped.values() for k in keys)
    assert dropped == sorted(extras)
    assert len(report.dropped) == 3  # classification head, classification final_layer, multi-scale fuse
    assert len(report.loaded) == len(state) - len(extras)
    got = model.state_dict()
    for key in report.loaded:
        assert torch.equal(got[key], state[key]), key
    assert model.final_layer.weight.abs().max() < 0.01  # the head keeps its N(0, 0.001) initialisation


def test_torchvision_resnet_initialises_simplebaseline_backbone():
    reference = dmpose.build_model("simplebaseline_res50", device="meta").state_dict()
    backbone = {k: v for k, v in reference.items() if not k.startswith(("deconv_layers", "final_layer"))}
    assert list(backbone)[0] == "conv1.weight" and list(backbone)[-1].startswith("layer4.2.bn3")
    backbone_keys = list(backbone)
    state = random_state({k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in backbone.items()})
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)

    model, report = convert_state_dict(state, "simplebaseline_res50", partial=True)
    assert report.dropped == {"ResNet ImageNet classifier": ["fc.weight", "fc.bias"]}
    assert all(k.startswith(("deconv_layers.", "final_layer.")) for k in report.missing)
    assert len(report.loaded) == len(backbone_keys)
    assert torch.equal(model.layer3[5].conv2.weight, state["layer3.5.conv2.weight"])


@pytest.fixture
def tiny_state():
    torch.manual_seed(0)
    return {k: v.clone() for k, v in dmpose.build_model("hrnet_tiny", num_joints=5).state_dict().items()}


def test_num_joints_is_taken_from_the_source_head(tiny_state):
    model, report = convert_state_dict(tiny_state, "hrnet_tiny")
    assert report.num_joints == 5 and model.num_joints == 5


def test_unexpected_and_misshaped_keys_are_listed(tiny_state):
    tiny_state["extra_branch.weight"] = torch.zeros(3)
    tiny_state["conv1.weight"] = torch.zeros(32, 3, 5, 5)
    del tiny_state["layer1.0.conv2.weight"]
    with pytest.raises(ConversionError) as err:
        convert_state_dict(tiny_state, "hrnet_tiny")
    msg = str(err.value)
    assert "1 unexpected (extra_branch.weight)" in msg
    assert "1 misshaped (conv1.weight (32, 3, 5, 5) != (32, 3, 3, 3))" in msg
    assert "1 missing (layer1.0.conv2.weight)" in msg
    # --partial accepts the missing key but never the unexplained or mis-shaped backbone ones
    with pytest.raises(ConversionError, match="unexpected"):
        convert_state_dict(tiny_state, "hrnet_tiny", partial=True)


def test_other_joint_set_needs_partial_and_keeps_backbone(tiny_state):
    with pytest.raises(ConversionError, match=r"final_layer.weight \(5, 16, 1, 1\) != \(16, 16, 1, 1\)"):
        convert_state_dict(tiny_state, "hrnet_tiny", num_joints=16)
    model, report = convert_state_dict(tiny_state, "hrnet_tiny", num_joints=16, partial=True)
    assert [s.split()[0] for s in report.head_shape_skipped] == ["final_layer.weight", "final_layer.bias"]
    assert torch.equal(model.conv1.weight, tiny_state["conv1.weight"])


def test_missing_num_batches_tracked_is_counted_not_an_error(tiny_state):
    old = {k: v for k, v in tiny_state.items() if not k.endswith("num_batches_tracked")}
    _, report = convert_state_dict(old, "hrnet_tiny")
    assert report.tracking_missing == len(tiny_state) - len(old) > 0 and not report.is_partial


def test_duplicate_after_prefix_stripping(tiny_state):
    state = dict(tiny_state)
    state["module.conv1.weight"] = state["conv1.weight"]
    with pytest.raises(ConversionError, match="two source keys map to 'conv1.weight'"):
        convert_state_dict(state, "hrnet_tiny")


class NotATensor:
    """A value that is not a tensor, as a corrupt state dict might hold."""


def test_source_reading_errors(tmp_path, tiny_state):
    with pytest.raises(FileNotFoundError, match="source checkpoint not found"):
        read_foreign_state_dict(tmp_path / "none.pth")
    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": tiny_state, "meta": NotATensor()}, pickled)
    with pytest.raises(ValueError, match=r"weights_only=True.*Re-save only its state dict"):
        read_foreign_state_dict(pickled)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pth is not a PyTorch checkpoint"):
        read_foreign_state_dict(garbage)
    listy = tmp_path / "list.pth"
    torch.save([1, 2], listy)
    with pytest.raises(ValueError, match="expected a state dict"):
        read_foreign_state_dict(listy)


def test_unknown_arch_is_a_clear_error(tiny_state):
    with pytest.raises(ValueError, match="unknown model 'hrnet_w7'"):
        convert_state_dict(tiny_state, "hrnet_w7")


def test_cli_convert_reports_a_partial_load_as_a_table(tmp_path, tiny_state):
    from typer.testing import CliRunner

    from dmpose.cli import app

    backbone = {"module." + k: v for k, v in tiny_state.items() if not k.startswith("final_layer")}
    src = tmp_path / "backbone.pth"
    torch.save({"state_dict": backbone}, src)
    out = tmp_path / "out.safetensors"
    runner = CliRunner()
    strict = runner.invoke(app, ["convert", str(src), "--arch", "hrnet_tiny", "-o", str(out)])
    assert strict.exit_code == 1 and "2 missing" in strict.output and "--partial" in strict.output
    assert not out.exists()
    result = runner.invoke(app, ["convert", str(src), "--arch", "hrnet_tiny", "-o", str(out), "--partial"])
    assert result.exit_code == 0, result.output
    assert "left at init" in result.output and "final_layer.weight" in result.output
    assert dmpose.load_model(out).checkpoint_meta["partial_load"] is True
    spec = dmpose.load_model(out).spec  # a full spec, the unstated facts from the official recipe
    assert spec.keypoints.name == "coco17" and spec.input_wh == (192, 256) and spec.decode == "argmax"
    assert "official recipes" in result.output and "decode=argmax" in result.output


def test_convert_writes_the_facts_it_is_given(tmp_path, tiny_state):
    from dmpose.models.checkpoint import read_checkpoint_spec

    src, out = tmp_path / "w.pth", tmp_path / "out.safetensors"
    torch.save(tiny_state, src)  # 5 joints: no built-in set
    with pytest.raises(ValueError, match="no built-in keypoint set"):
        convert_checkpoint(src, "hrnet_tiny", out)
    assert not out.exists()
    torch.save(dmpose.build_model("hrnet_tiny", num_joints=16).state_dict(), src)
    report = convert_checkpoint(src, "hrnet_tiny", out, input_wh=(64, 64), decode="2x2",
                                normalisation={"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
                                               "channel_order": "BGR"})
    spec = read_checkpoint_spec(out)
    assert spec == report.spec and spec.input_wh == (64, 64) and spec.heatmap_wh == (16, 16)
    assert spec.decode == "2x2" and spec.normalisation.channel_order == "BGR" and report.defaulted == [
        f"keypoints={spec.keypoints.name}"]
