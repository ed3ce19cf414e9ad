"""Boxes, crop affines and their inverses: the ONE place in dmpose where affine matrices are built.

Convention: in every image space (original image, input crop, heatmap) pixel centres sit at integer
coordinates; pixel (i, j) is centred at (x=j, y=i) and covers [j-0.5, j+0.5) x [i-0.5, i+0.5); x to
the right, y down; points are (x, y) in the last axis.

A person box is described by its centre (x, y) and size (w, h) in image pixels (no '/200' units).
`crop_affine` maps that box so that its outer EDGES land on the output's outer pixel edges
(-0.5 .. W_out-0.5, -0.5 .. H_out-0.5). Calling it with the input size gives the image -> input
affine; calling it with the heatmap size gives the image -> heatmap affine for the same box. This is
the unbiased (UDP-style) transform: never convert between spaces with "x stride".

All matrices are 2x3 float64 and map source coordinates to destination coordinates: p' = M @ [x, y, 1].
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "box_to_center_scale",
    "fix_aspect_ratio",
    "crop_affine",
    "invert_affine",
    "apply_affine",
    "compose_affine",
]


def fix_aspect_ratio(size_wh, aspect_ratio: float) -> np.ndarray:
    """Grow (w, h) along one axis so that w / h == aspect_ratio (never shrinks). Works on (..., 2)."""
    if not aspect_ratio > 0:
        raise ValueError(f"aspect_ratio must be > 0, got {aspect_ratio}")
    size = np.asarray(size_wh, dtype=np.float64)
    w, h = size[..., 0], size[..., 1]
    wider = w > aspect_ratio * h
    new_w = np.where(wider, w, h * aspect_ratio)
    new_h = np.where(wider, w / aspect_ratio, h)
    return np.stack([new_w, new_h], axis=-1)


def box_to_center_scale(box_xywh, aspect_ratio: float, padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """COCO box [x, y, w, h] -> (centre (x, y), size (w, h)) in image pixels.

    The centre is x + w/2, y + h/2 (the box's own coordinates, pixel centres at integers); the size is
    the box expanded to `aspect_ratio` (= input width / input height) and then multiplied by `padding`.
    Accepts a single box (4,) or a batch (N, 4); returns arrays of matching leading shape, float64.
    """
    box = np.asarray(box_xywh, dtype=np.float64)
    if box.shape[-1] != 4:
        raise ValueError(f"box_xywh must have 4 values in its last axis, got shape {box.shape}")
    if np.any(box[..., 2:] < 0):
        raise ValueError(f"box size must be non-negative, got {box[..., 2:].tolist()}")
    center = box[..., :2] + 0.5 * box[..., 2:]
    size = fix_aspect_ratio(box[..., 2:], aspect_ratio) * padding
    return center, size


def crop_affine(center, size, rotation_deg: float, out_size_wh, flip: bool = False) -> np.ndarray:
    """Image -> output affine (2x3 float64) for a rotated box, optionally mirrored.

    The box of `size` (w, h) centred on `center` (x, y), in image pixels, is rotated by `rotation_deg`
    about its centre (positive = the image content turns counter-clockwise on screen, y down) and its
    outer edges are mapped onto the output's outer pixel edges: x in [-0.5, W_out-0.5],
    y in [-0.5, H_out-0.5]. So the box centre goes to ((W_out-1)/2, (H_out-1)/2) and the scale is
    W_out / w along x, H_out / h along y.

    flip=True mirrors the output horizontally, x' = W_out - 1 - x (pixel-centre coordinates), as part of
    the same matrix; left/right joint swapping is the caller's job.
    """
    cx, cy = (float(v) for v in np.asarray(center, dtype=np.float64).reshape(2))
    w, h = (float(v) for v in np.asarray(size, dtype=np.float64).reshape(2))
    w_out, h_out = (int(v) for v in np.asarray(out_size_wh).reshape(2))
    if not (w > 0 and h > 0):
        raise ValueError(f"box size must be positive, got (w={w}, h={h})")
    if w_out < 1 or h_out < 1:
        raise ValueError(f"output size must be at least 1x1, got (W={w_out}, H={h_out})")
    theta = math.radians(float(rotation_deg))
    cos, sin = math.cos(theta), math.sin(theta)
    # Rotation with y down: (1, 0) -> (cos, -sin), i.e. counter-clockwise on screen.
    rot = np.array([[cos, sin], [-sin, cos]])
    lin = np.diag([w_out / w, h_out / h]) @ rot
    out_center = np.array([(w_out - 1) / 2.0, (h_out - 1) / 2.0])
    shift = out_center - lin @ np.array([cx, cy])
    m = np.concatenate([lin, shift[:, None]], axis=1)
    if flip:
        mirror = np.array([[-1.0, 0.0, w_out - 1.0], [0.0, 1.0, 0.0]])
        m = compose_affine(mirror, m)
    return m


def _as_affine(m) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (2, 3):
        raise ValueError(f"an affine matrix must be 2x3, got shape {m.shape}")
    return m


def compose_affine(outer, inner) -> np.ndarray:
    """The affine applying `inner` first, then `outer` (both 2x3)."""
    outer, inner = _as_affine(outer), _as_affine(inner)
    lin = outer[:, :2] @ inner[:, :2]
    shift = outer[:, :2] @ inner[:, 2] + outer[:, 2]
    return np.concatenate([lin, shift[:, None]], axis=1)


def invert_affine(m) -> np.ndarray:
    """Inverse of a 2x3 affine (float64); raises for a singular matrix."""
    m = _as_affine(m)
    lin = m[:, :2]
    det = np.linalg.det(lin)
    if abs(det) < 1e-12:
        raise ValueError(f"affine matrix is singular (det={det})")
    inv = np.linalg.inv(lin)
    return np.concatenate([inv, (-inv @ m[:, 2])[:, None]], axis=1)


def apply_affine(points, m) -> np.ndarray:
    """Apply a 2x3 affine to points of shape (..., 2) (x, y); returns float64 of the same shape."""
    m = _as_affine(m)
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape[-1] != 2:
        raise ValueError(f"points must have (x, y) in the last axis, got shape {pts.shape}")
    return pts @ m[:, :2].T + m[:, 2]
