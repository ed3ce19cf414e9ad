"""codec.py: weights rule, the no-augmentation round trip image -> heatmap -> perfect heatmap -> decode ->
image (within 0.01 px), and the two Gaussian flavours. The perfect heatmap is built here (reference splat)."""

import math

import numpy as np
import pytest
import torch

from dmpose.codec import DMCodec, GaussianCodec, build_codec, heatmap_to_image, image_to_heatmap, keypoint_weights
from dmpose.geometry import box_to_center_scale, crop_affine
from dmpose.spec import CodecSpec, DMLossOptions, PoseSpec


def splat_bilinear(points_hm, size_wh):
    """Reference: the four bilinear demander masses of each dot on a float64 (K, H, W) heatmap."""
    w, h = size_wh
    out = np.zeros((len(points_hm), h, w))
    for k, (x, y) in enumerate(points_hm):
        x0, y0 = math.floor(x), math.floor(y)
        fx, fy = x - x0, y - y0
        for dx, dy, m in [(0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)]:
            if 0 <= x0 + dx < w and 0 <= y0 + dy < h:
                out[k, y0 + dy, x0 + dx] += m
    return out


@pytest.mark.parametrize("input_wh,hm_wh", [((192, 256), (48, 64)), ((288, 384), (72, 96))])
def test_round_trip_image_heatmap_image(input_wh, hm_wh):
    rng = np.random.default_rng(0)
    codec = DMCodec(hm_wh, CodecSpec(name="dm", supplier_map="relu"))  # reads the bilinear masses as they are
    for _ in range(10):
        box = [rng.uniform(0, 300), rng.uniform(0, 200), rng.uniform(40, 300), rng.uniform(40, 400)]
        center, size = box_to_center_scale(box, input_wh[0] / input_wh[1])
        m_hm = crop_affine(center, size, 0.0, hm_wh)
        # keypoints anywhere in the box whose dots keep all four demanders inside the heatmap
        kp_img = np.array(box[:2]) + rng.uniform(0.05, 0.95, (17, 2)) * np.array(box[2:])
        kp_hm = image_to_heatmap(kp_img, m_hm)
        target = codec.encode(kp_hm, np.full(17, 2))
        assert target["weights"].tolist() == [1.0] * 17
        heatmaps = torch.from_numpy(splat_bilinear(target["keypoints_hm"].astype(np.float64), hm_wh))[None]
        coords, conf = codec.decode(heatmaps.float())
        back = codec.to_image(coords[0], m_hm)
        assert np.abs(back - kp_img).max() < 0.01
        assert torch.all(conf > 0.999)


def test_batched_heatmap_to_image_matches_single():
    rng = np.random.default_rng(3)
    mats = np.stack([crop_affine(rng.uniform(50, 100, 2), [96, 128], rng.uniform(-30, 30), (48, 64)) for _ in range(3)])
    pts = rng.uniform(0, 40, (3, 5, 2))
    batched = heatmap_to_image(pts, mats)
    for b in range(3):
        np.testing.assert_allclose(batched[b], heatmap_to_image(pts[b], mats[b]))
        np.testing.assert_allclose(image_to_heatmap(batched[b], mats[b]), pts[b], atol=1e-9)


def test_weights_rule():
    kp = np.array([[-0.5, 0.0], [-0.51, 0.0], [47.49, 63.49], [47.5, 10.0], [10.0, 63.5], [5.0, 5.0], [np.nan, 1]])
    vis = np.array([1, 1, 2, 2, 2, 0, 2])
    np.testing.assert_array_equal(keypoint_weights(kp, vis, (48, 64)), [1, 0, 1, 0, 0, 0, 0])
    t = DMCodec((48, 64)).encode(kp, vis)
    assert t["keypoints_hm"].dtype == np.float32 and np.all(t["keypoints_hm"][t["weights"] == 0] == 0)


def _quadratic_peak(hm, i, j):
    """Exact sub-pixel peak of a sampled Gaussian (its log is a quadratic)."""
    lg = np.log(hm[i - 1 : i + 2, j - 1 : j + 2])
    ox = (lg[1, 2] - lg[1, 0]) / (2 * (2 * lg[1, 1] - lg[1, 0] - lg[1, 2]))
    oy = (lg[2, 1] - lg[0, 1]) / (2 * (2 * lg[1, 1] - lg[0, 1] - lg[2, 1]))
    return j + ox, i + oy


def test_gaussian_flavours_peak_position():
    kp = np.array([[20.3, 30.7], [10.5, 12.49]])
    off = GaussianCodec((48, 64), sigma=2.0, flavour="official").encode(kp, [2, 1])
    unb = GaussianCodec((48, 64), sigma=2.0, flavour="unbiased").encode(kp, [2, 1])
    for k, (x, y) in enumerate(kp):
        hm = off["heatmaps"][k]
        i, j = np.unravel_index(hm.argmax(), hm.shape)
        assert (j, i) == (math.floor(x + 0.5), math.floor(y + 0.5)) and hm[i, j] == pytest.approx(1.0)
        hm = unb["heatmaps"][k].astype(np.float64)
        i, j = np.unravel_index(hm.argmax(), hm.shape)
        np.testing.assert_allclose(_quadratic_peak(hm, i, j), (x, y), atol=1e-4)
    # truncated to the 3-sigma window around the peak: 13 x 13 nonzero pixels for sigma 2
    assert (off["heatmaps"][0] > 0).sum() == 13 * 13


def test_gaussian_zero_weight_gives_empty_heatmap_and_decode_argmax():
    codec = GaussianCodec((48, 64), sigma=2.0, flavour="official")
    t = codec.encode(np.array([[100.0, 5.0], [12.0, 20.0]]), [2, 2])
    assert t["weights"].tolist() == [0.0, 1.0] and t["heatmaps"][0].max() == 0
    coords, _ = codec.decode(torch.from_numpy(t["heatmaps"])[None])
    np.testing.assert_allclose(coords[0, 1].numpy(), [12.0, 20.0])


def test_build_codec_and_errors():
    dm = build_codec(PoseSpec.build("hrnet_tiny", "coco17", (192, 256)))
    assert isinstance(dm, DMCodec) and dm.heatmap_wh == (48, 64)
    # one default per option: a DM codec reads the DM loss's default supplier map
    assert (dm.spec.supplier_map, dm.spec.supplier_beta) == (DMLossOptions().suppliers, DMLossOptions().supplier_beta)
    g = build_codec(PoseSpec.build("hrnet_tiny", "coco17", (192, 256),
                                   codec=CodecSpec(name="gaussian", sigma=3.0, flavour="unbiased")))
    assert isinstance(g, GaussianCodec) and g.sigma == 3.0 and g.flavour == "unbiased" and g.decode_rule == "argmax"
    with pytest.raises(ValueError, match="flavour"):
        GaussianCodec((48, 64), flavour="dark")
    with pytest.raises(TypeError, match="PoseSpec"):
        build_codec("mse")
    with pytest.raises(ValueError, match="needs a 'dm' codec spec"):
        DMCodec((48, 64), CodecSpec(name="gaussian"))
