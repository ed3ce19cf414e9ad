"""Decoders: the 2x2 max-sum rule inverts the sub-pixel demanders; argmax + quarter offset."""

import pytest
import torch

from dmpose import decode_2x2, decode_argmax, demanders


def splat(dots, h, w):
    """Heatmaps (1, K, H, W) holding the demander masses of each dot (dots inside the grid)."""
    xy, mass = demanders(dots.double())
    hm = torch.zeros(1, len(dots), h, w, dtype=torch.float64)
    for k in range(len(dots)):
        for (x, y), m in zip(xy[k].tolist(), mass[k].tolist()):
            if m > 0:
                hm[0, k, int(y), int(x)] += m
    return hm


def test_round_trip_of_demanders_within_1e_4_px():
    h, w = 13, 7
    g = torch.Generator().manual_seed(0)
    dots = torch.rand(200, 2, generator=g, dtype=torch.float64) * torch.tensor([w - 1.0, h - 1.0])
    edges = torch.tensor(
        [[0.0, 0.0], [w - 1.0, h - 1.0], [3.0, 5.0], [0.0, 6.5], [6.0, 0.25], [w - 1.0, 0.0], [2.5, h - 1.0]],
        dtype=torch.float64,
    )
    dots = torch.cat([dots, edges])
    coords, conf = decode_2x2(splat(dots, h, w))
    assert (coords[0].double() - dots).abs().max() < 1e-4
    torch.testing.assert_close(conf, torch.ones_like(conf))


def test_confidence_is_scale_invariant_and_a_share_of_mass():
    g = torch.Generator().manual_seed(1)
    hm = torch.randn(2, 3, 9, 8, generator=g)
    c1, s1 = decode_2x2(hm)
    c2, s2 = decode_2x2(25.0 * hm)
    torch.testing.assert_close(c1, c2)
    torch.testing.assert_close(s1, s2)
    assert ((s1 > 0) & (s1 <= 1)).all()
    # a hand-made case: window mass 3 out of a total positive mass of 4, negative values ignored
    hm = torch.zeros(1, 1, 4, 4)
    hm[0, 0, 1, 1], hm[0, 0, 1, 2], hm[0, 0, 2, 2], hm[0, 0, 3, 0], hm[0, 0, 0, 3] = 1.0, 1.0, 1.0, 1.0, -5.0
    coords, conf = decode_2x2(hm)
    assert conf.item() == pytest.approx(0.75)
    assert coords[0, 0].tolist() == pytest.approx([1 + 2 / 3, 1 + 1 / 3])


def test_no_positive_mass_decodes_finitely_with_zero_confidence():
    hm = -torch.rand(1, 2, 6, 5)
    hm[0, 1] = 0.0
    coords, conf = decode_2x2(hm)
    assert torch.isfinite(coords).all() and (conf == 0).all()


def test_argmax_with_quarter_offset_towards_the_higher_neighbour():
    hm = torch.zeros(1, 2, 5, 6)
    hm[0, 0, 2, 3], hm[0, 0, 2, 4], hm[0, 0, 1, 3] = 1.0, 0.5, 0.2  # right and up are higher
    hm[0, 1, 0, 5], hm[0, 1, 1, 5] = 2.0, 1.0  # on the border: no shift across it, y has one neighbour only
    coords, conf = decode_argmax(hm)
    assert coords[0, 0].tolist() == [3.25, 1.75]
    assert coords[0, 1].tolist() == [5.0, 0.0]
    assert conf[0].tolist() == [1.0, 2.0]


@pytest.mark.parametrize("bad", [torch.zeros(4, 4), torch.zeros(1, 1, 1, 5)])
def test_bad_shapes_are_rejected(bad):
    with pytest.raises(ValueError, match="heatmaps must"):
        decode_2x2(bad)
