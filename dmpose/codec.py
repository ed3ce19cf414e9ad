"""Codecs: one object turns keypoints into training targets and heatmaps back into keypoints.

The idea follows MMPose's codecs. Each codec works in HEATMAP pixels: `encode` takes keypoints already
mapped into the heatmap (with the image -> heatmap affine from `dmpose.geometry.crop_affine`) and
`decode` returns heatmap pixels. `to_image` / `to_heatmap` cross between heatmap and image pixels
with that same affine (its inverse), never with "x stride".

Convention: pixel centres at integer coordinates in every space; pixel (i, j) covers
[j-0.5, j+0.5) x [i-0.5, i+0.5); x right, y down; (x, y) in the last axis.

Keypoint weights (both codecs): 1 where the joint is labelled (v > 0) and its dot lies inside the
heatmap's area [-0.5, W-0.5) x [-0.5, H-0.5); else 0.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

from dmpose.decode import decode_2x2, decode_argmax
from dmpose.geometry import apply_affine, invert_affine

__all__ = ["DMCodec", "GaussianCodec", "build_codec", "heatmap_weights", "keypoint_weights", "heatmap_to_image",
           "image_to_heatmap"]


def heatmap_weights(keypoints: Tensor, visible: Tensor, heatmap_size: tuple[int, int] | None = None, *,
                    heatmap_wh: tuple[int, int] | None = None) -> Tensor:
    """Per-joint loss weights: 1 for a labelled joint (visible > 0, COCO v = 1 or 2) whose dot lies
    inside the heatmap's area [-0.5, W-0.5) x [-0.5, H-0.5), else 0 (unlabelled, outside, non-finite).

    heatmap_wh is (W, H); keypoints (..., 2) are (x, y) heatmap pixels. (The positional `heatmap_size`
    is the older (H, W) spelling, deprecated.) Joints outside the heatmap must get weight 0: the loss
    would still be finite, but it would pull mass towards the border.
    """
    if (heatmap_size is None) == (heatmap_wh is None):
        raise ValueError("give heatmap_wh=(W, H) (or the deprecated heatmap_size (H, W)), exactly one")
    if heatmap_wh is None:
        warnings.warn("heatmap_weights(..., heatmap_size=(H, W)) is deprecated: pass heatmap_wh=(W, H)",
                      DeprecationWarning, stacklevel=2)
        heatmap_wh = (heatmap_size[1], heatmap_size[0])
    w, h = heatmap_wh
    x, y = keypoints[..., 0], keypoints[..., 1]
    inside = (x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)
    return ((visible > 0) & inside & torch.isfinite(keypoints).all(-1)).to(torch.float32)


def keypoint_weights(keypoints_hm, visible, heatmap_size_wh) -> np.ndarray:
    """(K,) float32 numpy weights by `heatmap_weights` (the one rule): 1 for v > 0 and the dot
    inside [-0.5, W-0.5) x [-0.5, H-0.5), else 0. heatmap_size_wh is (W, H)."""
    kp = np.asarray(keypoints_hm, dtype=np.float64)
    vis = np.asarray(visible)
    if kp.ndim != 2 or kp.shape[1] != 2 or vis.shape != kp.shape[:1]:
        raise ValueError(f"keypoints must be (K, 2) and visible (K,), got {kp.shape} and {vis.shape}")
    return heatmap_weights(torch.from_numpy(kp), torch.from_numpy(vis.astype(np.float64)),
                           heatmap_wh=tuple(heatmap_size_wh)).numpy()


def _batched_affine(points, affines) -> np.ndarray:
    """`geometry.apply_affine` with one matrix, or per sample: points (B, K, 2) with affines (B, 2, 3)."""
    m = np.asarray(affines, dtype=np.float64)
    if m.ndim == 2:
        return apply_affine(points, m)
    if m.ndim != 3 or m.shape[-2:] != (2, 3):
        raise ValueError(f"affines must be (2, 3) or (B, 2, 3), got {m.shape}")
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[0] != m.shape[0]:
        raise ValueError(f"points must be (B, K, 2) for {m.shape[0]} affines, got {pts.shape}")
    return np.stack([apply_affine(p, a) for p, a in zip(pts, m)])


def heatmap_to_image(coords_hm, affine_hm) -> np.ndarray:
    """Heatmap pixels -> image pixels with the inverse of the image -> heatmap affine.

    coords_hm (K, 2) with one (2, 3) matrix, or (B, K, 2) with (B, 2, 3) matrices. Returns float64.
    """
    m = np.asarray(affine_hm, dtype=np.float64)
    inv = invert_affine(m) if m.ndim == 2 else np.stack([invert_affine(a) for a in m])
    if isinstance(coords_hm, Tensor):
        coords_hm = coords_hm.detach().cpu().double().numpy()
    return _batched_affine(coords_hm, inv)


def image_to_heatmap(points, affine_hm) -> np.ndarray:
    """Image pixels -> heatmap pixels with the image -> heatmap affine ((K,2)+(2,3) or (B,K,2)+(B,2,3))."""
    return _batched_affine(points, affine_hm)


class _Codec:
    name = ""

    def __init__(self, heatmap_size_wh):
        w, h = (int(v) for v in heatmap_size_wh)
        if w < 2 or h < 2:
            raise ValueError(f"heatmap size must be at least 2x2, got (W={w}, H={h})")
        self.heatmap_size = (w, h)

    to_image = staticmethod(heatmap_to_image)
    to_heatmap = staticmethod(image_to_heatmap)

    def weights(self, keypoints_hm, visible) -> np.ndarray:
        return keypoint_weights(keypoints_hm, visible, self.heatmap_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(heatmap_size={self.heatmap_size})"


class DMCodec(_Codec):
    """Distribution-matching targets: the keypoints themselves (heatmap px) plus weights.

    encode -> {"keypoints_hm": (K, 2) float32, "weights": (K,) float32};
    decode(heatmaps (B, K, H, W)) -> (coords (B, K, 2) heatmap px, confidence (B, K)) by decode_2x2.
    """

    name = "dm"

    def encode(self, keypoints_hm, visible) -> dict[str, np.ndarray]:
        kp = np.asarray(keypoints_hm, dtype=np.float64)
        weights = self.weights(kp, visible)
        kp = np.where(weights[:, None] > 0, kp, 0.0)  # unlabelled joints carry no position
        return {"keypoints_hm": kp.astype(np.float32), "weights": weights}

    def decode(self, heatmaps: Tensor) -> tuple[Tensor, Tensor]:
        return decode_2x2(heatmaps)


class GaussianCodec(_Codec):
    """Gaussian heatmap targets for the MSE baseline, in two flavours.

    official: the peak sits on the pixel nearest the keypoint (floor(x + 0.5)), as in the official HRNet
      code, i.e. the target carries the quantisation error;
    unbiased: the peak sits at the exact sub-pixel keypoint.
    Both use exp(-d^2 / (2 sigma^2)) truncated to the (2*ceil(3 sigma)+1)^2 window around the peak
    (HRNet's window) and the shared weight rule (module docstring); a zero-weight joint has an all-zero
    heatmap. encode -> {"heatmaps": (K, H, W) float32, "weights": (K,) float32};
    decode -> decode_argmax (argmax + quarter-pixel shift, as in HRNet).
    """

    name = "gaussian"
    flavours = ("official", "unbiased")

    def __init__(self, heatmap_size_wh, sigma: float = 2.0, flavour: str = "official"):
        super().__init__(heatmap_size_wh)
        if flavour not in self.flavours:
            raise ValueError(f"flavour must be one of {self.flavours}, got {flavour!r}")
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)
        self.flavour = flavour

    def encode(self, keypoints_hm, visible) -> dict[str, np.ndarray]:
        kp = np.asarray(keypoints_hm, dtype=np.float64)
        weights = self.weights(kp, visible)
        w, h = self.heatmap_size
        centre = np.floor(kp + 0.5) if self.flavour == "official" else kp
        centre = np.where(weights[:, None] > 0, centre, 0.0)
        radius = math.ceil(3 * self.sigma)
        dx = np.arange(w, dtype=np.float64)[None, :] - centre[:, 0:1]  # (K, W)
        dy = np.arange(h, dtype=np.float64)[None, :] - centre[:, 1:2]  # (K, H)
        gx = np.exp(-(dx**2) / (2 * self.sigma**2)) * (np.abs(dx) <= radius)
        gy = np.exp(-(dy**2) / (2 * self.sigma**2)) * (np.abs(dy) <= radius)
        heatmaps = gy[:, :, None] * gx[:, None, :] * weights[:, None, None]
        return {"heatmaps": heatmaps.astype(np.float32), "weights": weights}

    def decode(self, heatmaps: Tensor) -> tuple[Tensor, Tensor]:
        return decode_argmax(heatmaps)

    def __repr__(self) -> str:
        return f"GaussianCodec(heatmap_size={self.heatmap_size}, sigma={self.sigma}, flavour={self.flavour!r})"


def build_codec(name: str, heatmap_size_wh, **options) -> DMCodec | GaussianCodec:
    """Codec by name: "dm" or "gaussian" (options: sigma, flavour)."""
    if name == "dm":
        if options:
            raise ValueError(f"the dm codec takes no options, got {sorted(options)}")
        return DMCodec(heatmap_size_wh)
    if name == "gaussian":
        return GaussianCodec(heatmap_size_wh, **options)
    raise ValueError(f"unknown codec {name!r}; expected 'dm' or 'gaussian'")

