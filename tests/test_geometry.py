"""geometry.py: box -> centre/size, crop affines (edges onto edges), inverses, flips. Hand-computed cases."""

import numpy as np
import pytest

from dmpose.geometry import (
    apply_affine,
    box_to_center_scale,
    compose_affine,
    crop_affine,
    fix_aspect_ratio,
    invert_affine,
)


def test_box_to_center_scale_hand_computed():
    # 100 wide, 50 tall box; input aspect 0.75 (192/256): height grows to 100/0.75, then x1.25.
    c, s = box_to_center_scale([10, 20, 100, 50], aspect_ratio=0.75)
    np.testing.assert_allclose(c, [60.0, 45.0])
    np.testing.assert_allclose(s, [125.0, 100 / 0.75 * 1.25])
    # tall box: the width grows instead
    c, s = box_to_center_scale([0, 0, 30, 200], aspect_ratio=0.75, padding=1.0)
    np.testing.assert_allclose(s, [150.0, 200.0])
    # batched
    c, s = box_to_center_scale(np.array([[10, 20, 100, 50], [0, 0, 30, 200]]), 0.75, padding=1.0)
    assert c.shape == s.shape == (2, 2)
    np.testing.assert_allclose(s[:, 0] / s[:, 1], 0.75)


def test_box_to_center_scale_rejects_negative_size():
    with pytest.raises(ValueError, match="non-negative"):
        box_to_center_scale([0, 0, -1, 5], 1.0)


def test_fix_aspect_ratio_never_shrinks():
    s = fix_aspect_ratio([[4.0, 4.0], [8.0, 2.0]], 2.0)
    np.testing.assert_allclose(s, [[8.0, 4.0], [8.0, 4.0]])


@pytest.mark.parametrize("out_wh", [(192, 256), (48, 64), (288, 384), (7, 5)])
def test_box_edges_map_onto_output_edges(out_wh):
    w_out, h_out = out_wh
    center, size = np.array([123.4, 56.7]), np.array([w_out * 1.7, h_out * 1.7])
    m = crop_affine(center, size, 0.0, out_wh)
    corners = center + np.array([[-0.5, -0.5], [0.5, 0.5], [0.5, -0.5]]) * size
    np.testing.assert_allclose(
        apply_affine(corners, m), [[-0.5, -0.5], [w_out - 0.5, h_out - 0.5], [w_out - 0.5, -0.5]], atol=1e-9
    )
    np.testing.assert_allclose(apply_affine(center, m), [(w_out - 1) / 2, (h_out - 1) / 2], atol=1e-9)


def test_whole_image_box_is_identity():
    # A box covering exactly the W x H pixels of an image (edges at -0.5 and W-0.5) onto the same size.
    w, h = 48, 64
    c, s = box_to_center_scale([-0.5, -0.5, w, h], aspect_ratio=w / h, padding=1.0)
    np.testing.assert_allclose(crop_affine(c, s, 0.0, (w, h)), [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def test_stride_4_pixel_centres():
    # Same box onto a 4x smaller output: output pixel j covers input pixels 4j..4j+3, so its centre
    # is at input x = 4j + 1.5 (not 4j: the "x stride" bias).
    w, h = 192, 256
    c, s = box_to_center_scale([-0.5, -0.5, w, h], aspect_ratio=w / h, padding=1.0)
    m_in = crop_affine(c, s, 0.0, (w, h))
    m_hm = crop_affine(c, s, 0.0, (w // 4, h // 4))
    hm_to_in = compose_affine(m_in, invert_affine(m_hm))
    np.testing.assert_allclose(apply_affine([[0, 0], [10, 3]], hm_to_in), [[1.5, 1.5], [41.5, 13.5]], atol=1e-9)


def test_rotation_is_counter_clockwise_on_screen():
    m = crop_affine([50, 50], [20, 20], 90.0, (20, 20))
    # A point to the right of the centre ends up above it (smaller y) in the output.
    p = apply_affine([[55.0, 50.0]], m)[0]
    np.testing.assert_allclose(p, [9.5, 9.5 - 5.0], atol=1e-9)


def test_flip_mirrors_output_pixel_centres():
    c, s, out = [40.0, 30.0], [32.0, 24.0], (16, 12)
    m, mf = crop_affine(c, s, 15.0, out), crop_affine(c, s, 15.0, out, flip=True)
    pts = np.random.default_rng(0).uniform(0, 80, size=(10, 2))
    a, b = apply_affine(pts, m), apply_affine(pts, mf)
    np.testing.assert_allclose(b[:, 0], out[0] - 1 - a[:, 0], atol=1e-9)
    np.testing.assert_allclose(b[:, 1], a[:, 1], atol=1e-9)


def test_invert_and_compose_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(20):
        m = crop_affine(rng.uniform(0, 500, 2), rng.uniform(10, 300, 2), rng.uniform(-90, 90), (48, 64),
                        flip=bool(rng.integers(2)))
        pts = rng.uniform(-100, 600, (5, 2))
        np.testing.assert_allclose(apply_affine(apply_affine(pts, m), invert_affine(m)), pts, atol=1e-9)
        np.testing.assert_allclose(compose_affine(invert_affine(m), m), [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="2x3"):
        invert_affine(np.eye(3))
    with pytest.raises(ValueError, match="singular"):
        invert_affine(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="positive"):
        crop_affine([0, 0], [0, 10], 0, (4, 4))
    with pytest.raises(ValueError, match="last axis"):
        apply_affine(np.zeros((3, 3)), np.zeros((2, 3)))


def reference_affine(center, size, rot_deg, out_wh, flip):
    """Independent construction: solve the affine from three box points and where they must land."""
    w, h = size
    t = np.deg2rad(rot_deg)
    # The content turns counter-clockwise on screen by rot (y down), so the box's own x and y axes, as
    # seen in the image, are the image axes turned clockwise on screen by rot.
    ex = np.array([np.cos(t), np.sin(t)])
    ey = np.array([-np.sin(t), np.cos(t)])
    src = np.array([center, center + ex * w / 2, center + ey * h / 2], dtype=np.float64)
    cx, cy = (out_wh[0] - 1) / 2, (out_wh[1] - 1) / 2
    dst = np.array([[cx, cy], [cx + out_wh[0] / 2, cy], [cx, cy + out_wh[1] / 2]])
    if flip:
        dst[:, 0] = out_wh[0] - 1 - dst[:, 0]
    a = np.concatenate([src, np.ones((3, 1))], axis=1)
    return np.linalg.solve(a, dst).T


def test_crop_affine_matches_three_point_reference():
    rng = np.random.default_rng(7)
    for _ in range(50):
        center, size = rng.uniform(-50, 600, 2), rng.uniform(5, 400, 2)
        rot, out = rng.uniform(-180, 180), (int(rng.integers(2, 400)), int(rng.integers(2, 400)))
        flip = bool(rng.integers(2))
        np.testing.assert_allclose(crop_affine(center, size, rot, out, flip),
                                   reference_affine(center, size, rot, out, flip), atol=1e-9)
