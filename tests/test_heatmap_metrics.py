"""Validation heatmap metrics (dmpose.train.validate.heatmap_pass / heatmap_metrics) on hand-made heatmaps
whose answers are known exactly: compactness, dead share, mean / median error, the model's own loss, and
that the decode reads the codec's supplier map (as TopDownPredictor does)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dmpose.codec import GaussianCodec, codec_for
from dmpose.decode import decode_2x2
from dmpose.spec import CodecSpec, DMLossOptions
from dmpose.suppliers import decoded_map
from dmpose.train.validate import heatmap_metrics, heatmap_pass

# codecs (the heatmap size matters only to the MSE codec's targets, (12, 10) in the heatmap_pass test)
DM_RELU = codec_for(CodecSpec(name="dm", supplier_map="relu"), (8, 8))
DM_SOFTPLUS = codec_for(CodecSpec(name="dm", supplier_map="softplus", supplier_beta=1.0), (8, 8))
MSE = codec_for(CodecSpec(name="gaussian", sigma=1.0, flavour="unbiased"), (12, 10))


def one(hm: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(hm, dtype=torch.float32)[None, None]


def test_all_mass_on_one_pixel_is_fully_compact_and_exact():
    hm = np.zeros((8, 8))
    hm[5, 3] = 2.0  # pixel x=3, y=5
    m = heatmap_metrics(one(hm), torch.tensor([[[3.0, 5.0]]]), torch.ones(1, 1), DM_RELU)
    assert m["coords"][0, 0].tolist() == [3.0, 5.0]
    assert float(m["error"][0]) == 0.0
    assert float(m["compactness"][0]) == pytest.approx(1.0, abs=1e-6)
    assert not bool(m["dead"][0])


def test_floor_plus_peak_gives_the_counted_fraction():
    # a flat floor of 1 plus one extra unit at (x=3, y=4), decoded by argmax (raw map): the prediction is
    # exactly (3, 4); 13 pixels lie within 2 px of it (dx^2 + dy^2 <= 4), so the share is (13 + 1) / 65
    hm = np.ones((8, 8))
    hm[4, 3] = 2.0
    raw = codec_for(CodecSpec(name="gaussian"), (8, 8))
    m = heatmap_metrics(one(hm), torch.tensor([[[3.0, 4.0]]]), torch.ones(1, 1), raw)
    assert m["coords"][0, 0].tolist() == [3.0, 4.0]
    assert float(m["compactness"][0]) == pytest.approx(14 / 65, abs=1e-6)
    # the normalised map of a raw (MSE) model sums to 1
    assert float(m["normalised"].sum()) == pytest.approx(1.0, abs=1e-6)


def test_uniform_map_share_is_pixels_in_the_disc_over_all_pixels():
    # uniform relu map; the 2x2 decode of a flat map lands on a window centre (j0 + 0.5, i0 + 0.5) whose
    # 2 px disc holds 8 pixel centres (offsets +-0.5, +-1.5 without the four +-1.5/+-1.5 corners) when
    # the window is inside (here: any window not on the border row/column would do; check the count)
    hm = np.ones((10, 10))
    m = heatmap_metrics(one(hm), torch.zeros(1, 1, 2), torch.ones(1, 1), DM_RELU)
    x, y = m["coords"][0, 0].tolist()
    ys, xs = np.mgrid[0:10, 0:10]
    inside = ((xs - x) ** 2 + (ys - y) ** 2 <= 4).sum()
    assert float(m["compactness"][0]) == pytest.approx(inside / 100, abs=1e-6)
    if 1.5 <= x <= 7.5 and 1.5 <= y <= 7.5:
        assert inside == 12  # +-0.5 and +-1.5 in both axes: 16 minus the 4 corners
    assert x % 1 == 0.5 and y % 1 == 0.5


def test_dead_share_counts_labelled_joints_with_no_positive_pixel():
    hm = torch.full((1, 3, 6, 6), -1.0)
    hm[0, 1, 2, 2] = 0.5  # joint 1 alive; joints 0 and 2 dead, joint 2 unlabelled
    m = heatmap_metrics(hm, torch.zeros(1, 3, 2), torch.tensor([[1.0, 1.0, 0.0]]), DM_RELU)
    assert m["dead"].tolist() == [True, False]
    # a dead relu map is read as softmax(H): uniform here, so it still sums to 1
    assert float(m["normalised"][0, 0].sum()) == pytest.approx(1.0, abs=1e-6)


def test_the_decode_reads_the_codec_supplier_map():
    torch.manual_seed(0)
    hm = torch.randn(2, 4, 8, 6) * 2 - 1
    kp, w = torch.zeros(2, 4, 2), torch.ones(2, 4)
    m = heatmap_metrics(hm, kp, w, DM_SOFTPLUS)
    expected, _ = decode_2x2(decoded_map(hm, "softplus", 1.0))
    assert torch.equal(m["coords"], expected)
    raw, _ = decode_2x2(hm)
    assert not torch.allclose(m["coords"], raw)  # the relu-of-raw decode differs: the softplus map is read


class FixedModel(nn.Module):
    """Returns the same heatmaps for every batch (one per sample, by position in the dataset)."""

    def __init__(self, heatmaps: torch.Tensor):
        super().__init__()
        self.heatmaps = heatmaps
        self.dummy = nn.Parameter(torch.zeros(1))
        self.seen = 0

    def forward(self, x):
        out = self.heatmaps[self.seen:self.seen + len(x)]
        self.seen += len(x)
        return out


def dataset(kp: torch.Tensor, w: torch.Tensor) -> list[dict]:
    return [{"image": torch.zeros(3, 8, 8), "keypoints_hm": kp[i], "weights": w[i]} for i in range(len(kp))]


def test_heatmap_pass_mean_median_and_zero_mse_on_its_own_target():
    # 3 images x 1 joint (+ 1 unlabelled): unbiased Gaussians at integer dots, dots displaced by 0, 1, 3 px
    hw = (12, 10)  # (W, H)
    enc = GaussianCodec(hw, sigma=1.0, flavour="unbiased")
    peaks = torch.tensor([[[4.0, 4.0]], [[5.0, 5.0]], [[6.0, 2.0]]])
    dots = peaks + torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]], [[0.0, 3.0]]])
    maps = torch.from_numpy(np.stack([enc.encode(p.numpy(), np.ones(1))["heatmaps"] for p in peaks]))
    model = FixedModel(torch.cat([maps, torch.zeros(3, 1, 10, 12)], dim=1))
    kp = torch.cat([dots, torch.zeros(3, 1, 2)], dim=1)
    w = torch.tensor([[1.0, 0.0]] * 3)
    metrics, fig = heatmap_pass(model, dataset(kp, w), MSE, DMLossOptions(), batch_size=2, crops=2)
    assert metrics["val_loc_error_hm"] == pytest.approx(4 / 3, abs=1e-6)
    assert metrics["val_median_loc_error_hm"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["val_dead_share"] == 0.0
    assert 0 < metrics["val_compactness_2px"] < 1
    assert math.isfinite(metrics["val_dm_loss"])
    # the model's own loss: MSE against the Gaussian targets of the dots, zero for the first image only
    model.seen = 0
    targets = torch.from_numpy(np.stack([enc.encode(k.numpy(), ww.numpy())["heatmaps"] for k, ww in zip(kp, w)]))
    from dmpose.loss import mse_loss

    assert metrics["val_loss"] == pytest.approx(float(mse_loss(model.heatmaps, targets, w)), rel=1e-5)
    assert fig["heatmaps"].shape == (2, 2, 10, 12) and fig["pred"].shape == (2, 2, 2)


def test_heatmap_pass_dm_one_pixel_maps():
    hm = torch.zeros(2, 1, 8, 8)
    hm[0, 0, 2, 3] = 1.0
    hm[1, 0, 6, 1] = 1.0
    kp = torch.tensor([[[3.0, 2.0]], [[1.0, 6.0]]])
    metrics, _ = heatmap_pass(FixedModel(hm), dataset(kp, torch.ones(2, 1)), DM_RELU, DMLossOptions(), batch_size=4)
    assert metrics["val_loc_error_hm"] == 0.0 and metrics["val_median_loc_error_hm"] == 0.0
    assert metrics["val_compactness_2px"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["val_dead_share"] == 0.0
    assert metrics["val_loss"] == metrics["val_dm_loss"]
