"""dmpose.eval.inference and the codec's reading: flip_back geometry, flip averaging, and the flip test with an
oracle model."""

from __future__ import annotations

import pytest
import torch

from dmpose.codec import DMCodec, GaussianCodec
from dmpose.decode import decode_2x2
from dmpose.eval.inference import flip_back, predict_heatmaps
from dmpose.spec import CodecSpec

H, W = 16, 12
FLIP_PAIRS = [(0, 1), (2, 3)]  # joint 4 (say, the nose) has no partner
PARTNER = [1, 0, 3, 2, 4]
RELU = DMCodec((W, H), CodecSpec(name="dm", supplier_map="relu"))  # the paper's map
MSE = GaussianCodec((W, H))  # reads raw heatmaps


def render_dots(xy: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """(B, K, 2) sub-pixel keypoints -> (B, K, H, W) heatmaps holding the four bilinear masses of each dot
    on the surrounding pixel centres (integer-centre convention), times `scale`."""
    b, k, _ = xy.shape
    hm = torch.zeros(b, k, H, W, dtype=torch.float64)
    for i in range(b):
        for j in range(k):
            x, y = float(xy[i, j, 0]), float(xy[i, j, 1])
            x0, y0 = int(x // 1), int(y // 1)
            fx, fy = x - x0, y - y0
            hm[i, j, y0, x0] += (1 - fx) * (1 - fy)
            hm[i, j, y0, x0 + 1] += fx * (1 - fy)
            hm[i, j, y0 + 1, x0] += (1 - fx) * fy
            hm[i, j, y0 + 1, x0 + 1] += fx * fy
    return (hm * scale).float()


def _keypoints(b: int = 3, k: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, k, 2, generator=g, dtype=torch.float64) * torch.tensor([W - 1.0, H - 1.0])


def test_flip_back_mirrors_x_and_swaps_joints():
    xy = _keypoints()
    coords, _ = decode_2x2(render_dots(xy))
    assert torch.allclose(coords.double(), xy, atol=1e-5)  # the rendering decodes to the dots
    back, _ = decode_2x2(flip_back(render_dots(xy), FLIP_PAIRS))
    expected = xy[:, PARTNER].clone()
    expected[..., 0] = (W - 1) - expected[..., 0]
    assert torch.allclose(back.double(), expected, atol=1e-5)
    # flip_back is its own inverse.
    hm = render_dots(xy)
    assert torch.equal(flip_back(flip_back(hm, FLIP_PAIRS), FLIP_PAIRS), hm)


class OracleModel:
    """A perfect model for one batch of crops: renders the true keypoints; on the mirrored crops it renders
    what a perfect model sees there (x -> W-1-x, left and right exchanged). Each call scales its output
    differently, as a DM-trained model may."""

    def __init__(self, crops: torch.Tensor, xy: torch.Tensor):
        self.crops, self.xy, self.calls = crops, xy, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if torch.equal(x, self.crops):
            return render_dots(self.xy, scale=1.0)
        assert torch.equal(x, self.crops.flip(-1)), "the flip test must mirror the crop along W"
        mirrored = self.xy[:, PARTNER].clone()
        mirrored[..., 0] = (W - 1) - mirrored[..., 0]
        return render_dots(mirrored, scale=37.0)


def test_flip_test_with_oracle_model_decodes_exactly():
    xy = _keypoints()
    crops = torch.rand(3, 3, 4 * H, 4 * W, generator=torch.Generator().manual_seed(1))
    model = OracleModel(crops, xy)
    heatmaps = predict_heatmaps(model, crops, RELU, flip_pairs=FLIP_PAIRS)
    assert model.calls == 2
    coords, conf = RELU.decode_maps(heatmaps)
    assert torch.allclose(coords.double(), xy, atol=1e-5)
    assert torch.allclose(conf, torch.ones_like(conf))
    # Without the flip test: one call, the map the codec reads (the rendering is already a distribution).
    model = OracleModel(crops, xy)
    plain = predict_heatmaps(model, crops, RELU)
    assert model.calls == 1 and torch.allclose(plain, render_dots(xy), atol=1e-7)
    # An MSE model's codec reads the raw heatmaps
    model = OracleModel(crops, xy)
    assert torch.equal(predict_heatmaps(model, crops, MSE), render_dots(xy))


def test_dm_average_uses_normalised_distributions():
    # Two predictions of the same joint, 10.3 and 10.7, at very different scales: the average of the two
    # distributions decodes to 10.5; averaging raw values would follow the larger one.
    a = render_dots(torch.tensor([[[10.3 - 5, 7.0]]], dtype=torch.float64), scale=1.0)
    b = render_dots(torch.tensor([[[10.7 - 5, 7.0]]], dtype=torch.float64), scale=100.0)
    dm, _ = decode_2x2(RELU.average_flip(RELU.read(a), RELU.read(b)))
    raw, _ = decode_2x2(MSE.average_flip(MSE.read(a), MSE.read(b)))
    assert dm[0, 0, 0].item() == pytest.approx(5.5, abs=1e-5)
    assert raw[0, 0, 0].item() == pytest.approx((0.3 + 70.0) / 101 + 5, abs=1e-5)
    assert torch.equal(MSE.average_flip(MSE.read(a), MSE.read(b)), 0.5 * (a + b))


def test_a_relu_codec_reads_normalised_maps_and_softmax_for_dead_ones():
    hm = torch.randn(2, 3, H, W)
    hm[1, 2] = -1.0  # no positive mass
    p = RELU.read(hm)
    assert (p >= 0).all()
    sums = p.sum(dim=(-2, -1))
    assert torch.allclose(sums[0], torch.ones(3)) and torch.allclose(sums[1, :2], torch.ones(2))
    # a dead map is read as softmax(H), the loss's own rule for it (one rule everywhere)
    assert torch.allclose(sums[1, 2], torch.tensor(1.0))
    torch.testing.assert_close(p[1, 2], torch.softmax(hm[1, 2].flatten(), 0).reshape(H, W))


@pytest.mark.parametrize(
    "pairs, match", [([(0, 5)], "bad flip pair"), ([(0, 1), (1, 2)], "more than one"), ([(2, 2)], "bad")]
)
def test_flip_back_rejects_bad_pairs(pairs, match):
    with pytest.raises(ValueError, match=match):
        flip_back(torch.zeros(1, 5, H, W), pairs)


def test_bad_decode_and_shapes():
    hm = torch.zeros(1, 5, H, W)
    with pytest.raises(ValueError, match="decode"):
        CodecSpec(name="dm", decode="soft-argmax")
    with pytest.raises(ValueError, match="shapes differ"):
        RELU.average_flip(hm, hm[:, :4])
    with pytest.raises(ValueError, match="heatmaps"):
        flip_back(hm[0], FLIP_PAIRS)
