"""The .safetensors checkpoint: round trip from metadata alone, atomic writes, clear errors."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

import dmpose
from dmpose.models import checkpoint as ckpt_mod
from dmpose.models.checkpoint import read_checkpoint_meta

META = {
    "input_size": [256, 192],
    "keypoint_names": ["nose", "left_eye", "right_eye"],
    "flip_pairs": [[1, 2]],
    "skeleton": [[0, 1], [0, 2]],
    "loss": {"name": "dm", "eps": 1.0},
    "decode": "2x2",
    "config": "model:\n  arch: hrnet_tiny\n  num_joints: 3\n",
    "best_ap": 0.5,  # not a known field: kept in `extra`, returned flattened
}


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = dmpose.build_model("hrnet_tiny", num_joints=3)
    # Non-trivial weights and BN statistics, so that a round trip that loses any tensor shows.
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) * 0.2 + 0.9 if t.dim() == 1 else torch.randn_like(t) * 0.1)
    return model.eval()


def test_round_trip_rebuilds_from_metadata_alone(tmp_path, tiny):
    path = dmpose.save_checkpoint(tiny, tmp_path / "m.safetensors", meta=META)
    model = dmpose.load_model(path)
    assert type(model) is type(tiny) and model.arch == "hrnet_tiny" and model.num_joints == 3
    assert not model.training
    for (k, a), (k2, b) in zip(tiny.state_dict().items(), model.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), tiny(x))

    meta = read_checkpoint_meta(path)
    assert meta["format"] == "dmpose-checkpoint/1" and meta["dmpose_version"] == dmpose.__version__
    assert meta["heatmap_size"] == [64, 48]  # derived from input_size and the output stride 4
    for key, value in META.items():
        assert meta[key] == value, key
    assert model.checkpoint_meta == meta


def test_resaving_a_loaded_model_keeps_its_metadata(tmp_path, tiny):
    first = dmpose.save_checkpoint(tiny, tmp_path / "a.safetensors", meta=META)
    second = dmpose.save_checkpoint(dmpose.load_model(first), tmp_path / "b.safetensors")
    assert read_checkpoint_meta(second) == read_checkpoint_meta(first)


def test_metadata_values_are_strings_and_structured_ones_json(tmp_path, tiny):
    from safetensors import safe_open

    path = dmpose.save_checkpoint(tiny, tmp_path / "m.safetensors", meta=META)
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata()
    assert raw["arch"] == "hrnet_tiny" and raw["decode"] == "2x2" and raw["config"] == META["config"]
    assert json.loads(raw["num_joints"]) == 3 and json.loads(raw["flip_pairs"]) == [[1, 2]]
    assert json.loads(raw["extra"]) == {"best_ap": 0.5}


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, tiny, monkeypatch):
    path = tmp_path / "m.safetensors"
    dmpose.save_checkpoint(tiny, path)
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt_mod.os, "fsync", crash)  # fails after the bytes were written to the temp file
    with pytest.raises(OSError, match="disk full"):
        dmpose.save_checkpoint(tiny, path, meta={"decode": "argmax"})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]

    fresh = tmp_path / "new.safetensors"
    with pytest.raises(OSError, match="disk full"):
        dmpose.save_checkpoint(tiny, fresh)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"num_joints": 4}, "contradicts the model's num_joints"),
        ({"arch": "hrnet_w32"}, "contradicts the model's arch"),
        ({"keypoint_names": ["a", "b"]}, "keypoint_names must be 3 strings"),
        ({"flip_pairs": [[1, 3]]}, r"flip_pairs entries must be index pairs in \[0, 3\)"),
        ({"input_size": [256]}, "input_size must be"),
        ({"decode": "soft-argmax"}, "decode must be one of"),
        ({"epoch_time": object()}, "JSON-serialisable"),
    ],
)
def test_bad_metadata_is_rejected_before_writing(tmp_path, tiny, meta, match):
    with pytest.raises(ValueError, match=match):
        dmpose.save_checkpoint(tiny, tmp_path / "m.safetensors", meta=meta)
    assert list(tmp_path.iterdir()) == []


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.safetensors"):
        dmpose.load_model(tmp_path / "nope.safetensors")


def test_not_a_safetensors_file(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"a": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="weights.pth is not a safetensors file"):
        dmpose.load_model(path)


def test_foreign_safetensors_without_metadata(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"a": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks required field\(s\) arch, num_joints.*dmpose convert"):
        dmpose.load_model(path)


def _write_raw(path, tensors, **metadata):
    save_file(tensors, str(path), metadata={"format": "dmpose-checkpoint/1", **metadata})
    return path


def test_unknown_arch(tmp_path):
    path = _write_raw(tmp_path / "x.safetensors", {"a": torch.zeros(1)}, arch="hrnet_w99", num_joints="17")
    with pytest.raises(ValueError, match="x.safetensors: cannot rebuild the model: unknown model 'hrnet_w99'"):
        dmpose.load_model(path)


def test_weights_that_do_not_fit_are_listed(tmp_path, tiny):
    state = {k: v.contiguous() for k, v in tiny.state_dict().items()}
    state.pop("conv1.weight")
    state["final_layer.weight"] = torch.zeros(4, 16, 1, 1)
    state["classifier.weight"] = torch.zeros(1)
    path = _write_raw(tmp_path / "x.safetensors", state, arch="hrnet_tiny", num_joints="3")
    with pytest.raises(ValueError) as err:
        dmpose.load_model(path)
    msg = str(err.value)
    assert "1 missing (conv1.weight)" in msg and "1 unexpected (classifier.weight)" in msg
    assert "final_layer.weight (4, 16, 1, 1) != (3, 16, 1, 1)" in msg


def test_other_format_version_is_refused(tmp_path):
    path = tmp_path / "x.safetensors"
    meta = {"format": "dmpose-checkpoint/9", "arch": "hrnet_tiny", "num_joints": "3"}
    save_file({"a": torch.zeros(1)}, str(path), metadata=meta)
    with pytest.raises(ValueError, match="unsupported checkpoint format 'dmpose-checkpoint/9'"):
        read_checkpoint_meta(path)


def test_map_location_places_the_weights(tmp_path, tiny):
    path = dmpose.save_checkpoint(tiny, tmp_path / "m.safetensors")
    model = dmpose.load_model(path, map_location="cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert os.path.getsize(path) > 4 * sum(p.numel() for p in tiny.parameters())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised while torch.compile imports its internals
def test_wrapped_models_save_their_own_keys(tmp_path, tiny):
    path = dmpose.save_checkpoint(torch.nn.DataParallel(tiny), tmp_path / "dp.safetensors")
    model = dmpose.load_model(path)  # strict load: no `module.` prefix in the file
    assert model.arch == "hrnet_tiny"
    compiled = torch.compile(tiny)  # compiles lazily on the first call: never called here
    path = dmpose.save_checkpoint(compiled, tmp_path / "compiled.safetensors")
    assert dmpose.load_model(path).num_joints == 3


# ---- the pose spec in the metadata -----------------------------------------------------------------
def _coco_tiny():
    torch.manual_seed(0)
    return dmpose.build_model("hrnet_tiny", num_joints=17).eval()


def test_spec_round_trips_through_metadata(tmp_path):
    from dmpose.models.checkpoint import read_checkpoint_spec
    from dmpose.spec import CodecSpec, PoseSpec

    spec = PoseSpec.build("hrnet_tiny", "coco17", (48, 64), codec=CodecSpec(name="gaussian", sigma=1.5))
    loss = dmpose.DMLossOptions(eps=0.5)
    path = dmpose.save_checkpoint(_coco_tiny(), tmp_path / "s.safetensors", spec=spec,
                                  meta={"best_ap": 0.1, "loss": loss})
    assert dmpose.DMLossOptions.validated({k: v for k, v in read_checkpoint_meta(path)["loss"].items()
                                           if k != "name"}) == loss
    assert read_checkpoint_spec(path) == spec
    model = dmpose.load_model(path)
    assert model.spec == spec and model.checkpoint_meta["best_ap"] == 0.1
    meta = read_checkpoint_meta(path)  # the old fields, written from the spec, stay readable
    assert meta["input_size"] == [64, 48] and meta["heatmap_size"] == [16, 12] and meta["decode"] == "argmax"
    again = dmpose.save_checkpoint(model, tmp_path / "again.safetensors")  # a loaded model keeps its spec
    assert read_checkpoint_spec(again) == spec
    with pytest.raises(ValueError, match="contradicts the model"):
        dmpose.save_checkpoint(dmpose.build_model("hrnet_tiny", num_joints=16), tmp_path / "x.safetensors", spec=spec)


def test_old_layout_checkpoint_gets_its_spec_from_the_fields(tmp_path):
    from dmpose.models.checkpoint import read_checkpoint_spec

    model = _coco_tiny()
    model.spec = None  # a file of the old layout: no spec (build_model now gives every model a default one)
    path = dmpose.save_checkpoint(model, tmp_path / "old.safetensors", meta={"input_size": [64, 48], "loss": "mse"})
    assert "spec" not in read_checkpoint_meta(path)
    spec = read_checkpoint_spec(path)
    assert spec.input_wh == (48, 64) and spec.heatmap_wh == (12, 16) and spec.keypoints.name == "coco17"
    assert spec.decode == "argmax" and dmpose.load_model(path).spec == spec


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("spec", lambda s: {**s, "input_wh": [50, 64]}, r"input_wh .* divisible"),
        ("spec", lambda s: {**s, "codec": {**s["codec"], "decode": "soft"}}, r"field codec\.decode"),
        ("spec", lambda s: {**s, "keypoints": {**s["keypoints"], "flip_pairs": [[1, 40]]}}, r"flip_pairs"),
        ("spec", lambda s: "not json {", r"field 'spec' is not valid JSON"),
        ("input_size", lambda s: "[0, 48]", r"field input_size"),
        ("input_size", lambda s: '"abc"', r"field input_size"),
        ("flip_pairs", lambda s: "[[1, 99]]", r"field flip_pairs"),
        ("extra", lambda s: '{"arch": 5}', r"field extra\.arch"),
    ],
)
def test_corrupt_metadata_field_is_named_on_read(tmp_path, field, value, match):
    from safetensors import safe_open

    from dmpose.models.checkpoint import read_checkpoint_spec
    from dmpose.spec import PoseSpec, SpecError

    good = dmpose.save_checkpoint(
        _coco_tiny(), tmp_path / "good.safetensors", spec=PoseSpec.build("hrnet_tiny", "coco17", (48, 64))
    )
    with safe_open(str(good), framework="pt") as f:
        raw = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if field != "spec":
        raw.pop("spec")  # old layout: the field-per-key values are the facts
    new = value(json.loads(raw["spec"]) if "spec" in raw else None)
    raw[field] = new if isinstance(new, str) else json.dumps(new)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=raw)
    with pytest.raises(ValueError, match=match) as err:
        read_checkpoint_spec(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(ValueError, match=match):
        dmpose.load_model(bad)
    assert err.type in (SpecError, ValueError)
