"""Keypoint sets: built-ins agree with COCO's own files (pycocotools sigmas, the sample json's names and
skeleton); custom YAML loads; bad YAML fails with a message naming the field."""

import json

import numpy as np
import pytest
from pycocotools.cocoeval import Params

from dmpose.keypoints import KeypointSpec, builtin_keypoint_sets, load_keypoint_set


def test_builtins():
    assert {"coco17", "mpii16"} <= set(builtin_keypoint_sets())
    coco = load_keypoint_set("coco17")
    assert coco.num_keypoints == 17
    np.testing.assert_allclose(coco.sigmas, Params(iouType="keypoints").kpt_oks_sigmas)
    mpii = load_keypoint_set("mpii16")
    assert mpii.num_keypoints == 16 and mpii.names[0] == "right_ankle" and mpii.names[15] == "left_wrist"
    for ks in (coco, mpii):
        fi = ks.flip_index
        np.testing.assert_array_equal(fi[fi], np.arange(ks.num_keypoints))  # an involution
        for a, b in ks.flip_pairs:
            left_right = {ks.names[a].split("_")[0], ks.names[b].split("_")[0]}
            assert left_right == {"left", "right"}
        assert set(ks.upper_body) | set(ks.lower_body) == set(range(ks.num_keypoints))


def test_coco17_matches_coco_category(coco_sample):
    cat = json.loads((coco_sample / "test_coco.json").read_text())["categories"][0]
    coco = load_keypoint_set("coco17")
    assert list(coco.names) == cat["keypoints"]
    assert {tuple(sorted(p)) for p in coco.skeleton} == {tuple(sorted((a - 1, b - 1))) for a, b in cat["skeleton"]}


def test_custom_yaml_round_trip(tmp_path):
    f = tmp_path / "paw.yaml"
    f.write_text("keypoints: [nose, left_paw, right_paw]\nflip_pairs: [[left_paw, right_paw]]\n"
                 "sigmas: [0.05, 0.08, 0.08]\nskeleton: [[nose, left_paw]]\n")
    ks = load_keypoint_set(f)
    assert ks.name == "paw" and ks.flip_index.tolist() == [0, 2, 1] and ks.upper_body == ()
    assert KeypointSpec.from_dict(ks.to_dict()) == ks


@pytest.mark.parametrize(
    "text,match",
    [
        ("keypoints: [a, a]", "duplicate"),
        ("keypoints: [a, b]\nflip_pairs: [[a, c]]", "unknown keypoint 'c'"),
        ("keypoints: [a, b]\nsigmas: [0.1]", "sigmas"),
        ("keypoints: [a, b]\ncolour: red", "unknown field"),
        ("keypoints: [a, b, c]\nflip_pairs: [[a, b], [b, c]]", "more than one flip pair"),
        ("keypoints: []", "non-empty"),
        ("keypoints: [a, b\n", "invalid YAML"),
    ],
)
def test_bad_yaml_errors(tmp_path, text, match):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        load_keypoint_set(f)
    assert "bad.yaml" in str(info.value)


def test_missing_set():
    with pytest.raises(FileNotFoundError, match="coco18"):
        load_keypoint_set("coco18")
