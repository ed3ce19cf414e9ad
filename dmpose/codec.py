"""Codecs: one object turns keypoints into training targets and heatmaps back into keypoints.

The idea follows MMPose's codecs: `build_codec(spec)` gives the one codec of a `PoseSpec` (DM or Gaussian),
and everything that reads heatmaps asks it — the predictor, the flip test, ONNX export, validation and the
training diagnostics. Each codec works in HEATMAP pixels:

  encode(keypoints_hm, visible)   training targets (the DM dots, or Gaussian heatmaps) and joint weights
  read(heatmaps)                  the map the decode reads: the supplier map's distribution phi(H) / sum phi(H)
                                  of a DM model (`dmpose.suppliers.decoded_map`), the raw heatmaps of an MSE one
  average_flip(maps, maps_flip)   the flip test's average, of two read maps (the second already flipped back)
  decode_maps(maps)               the spec's decode rule (`DECODERS`) on read maps: heatmap px + confidence
  decode(heatmaps)                decode_maps(read(heatmaps))
  normalised(maps)                read maps as distributions (sum 1; a raw map through relu), for compactness
  to_image / to_heatmap           heatmap <-> image pixels with the image -> heatmap affine (its inverse),
                                  never with "x stride"

Convention: pixel centres at integer coordinates in every space; pixel (i, j) covers
[j-0.5, j+0.5) x [i-0.5, i+0.5); x right, y down; (x, y) in the last axis.

Keypoint weights (both codecs): 1 where the joint is labelled (v > 0) and its dot lies inside the
heatmap's area [-0.5, W-0.5) x [-0.5, H-0.5); else 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from dmpose.decode import decode_2x2, decode_argmax
from dmpose.geometry import apply_affine, invert_affine
from dmpose.heatmaps import inside_heatmap
from dmpose.spec import DECODE_RULES, CodecSpec, PoseSpec
from dmpose.suppliers import decoded_map

__all__ = ["DECODERS", "HeatmapCodec", "DMCodec", "GaussianCodec", "build_codec", "codec_for", "heatmap_weights",
           "keypoint_weights", "heatmap_to_image", "image_to_heatmap"]

#: Decode rule (`spec.DecodeRule`) -> decoder of read maps: (B, K, H, W) -> (coords (B, K, 2) heatmap px, conf (B, K)).
DECODERS: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {"2x2": decode_2x2, "argmax": decode_argmax}
assert tuple(sorted(DECODERS)) == tuple(sorted(DECODE_RULES))


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
    inside = inside_heatmap(keypoints, heatmap_wh)
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


class HeatmapCodec:
    """What DM and Gaussian codecs share: the codec spec, the heatmap size (W, H), the weight rule, reading,
    flip averaging and decoding (module docstring). Build one with `build_codec(spec)`."""

    name = ""

    def __init__(self, heatmap_wh, spec: CodecSpec):
        w, h = (int(v) for v in heatmap_wh)
        if w < 2 or h < 2:
            raise ValueError(f"heatmap size must be at least 2x2, got (W={w}, H={h})")
        if spec.name != self.name:
            raise ValueError(f"{type(self).__name__} needs a {self.name!r} codec spec, got {spec.name!r}")
        self.heatmap_wh = (w, h)
        self.spec = spec
        self.decoder = DECODERS[spec.decode]

    to_image = staticmethod(heatmap_to_image)
    to_heatmap = staticmethod(image_to_heatmap)

    @property
    def decode_rule(self) -> str:
        return self.spec.decode

    def weights(self, keypoints_hm, visible) -> np.ndarray:
        return keypoint_weights(keypoints_hm, visible, self.heatmap_wh)

    def read(self, heatmaps: Tensor) -> Tensor:
        """The map the decode reads (float32, (..., H, W)): `decoded_map` of the spec's supplier map (for "raw",
        the heatmaps themselves)."""
        return decoded_map(heatmaps, self.spec.supplier_map, self.spec.supplier_beta)

    @staticmethod
    def average_flip(maps: Tensor, flipped_maps: Tensor) -> Tensor:
        """The flip test: the mean of a read map and the read map of the mirrored crop, flipped back
        (`dmpose.eval.inference.flip_back`); DM models average distributions, MSE models raw heatmaps."""
        if maps.shape != flipped_maps.shape:
            raise ValueError(f"average_flip: shapes differ, {tuple(maps.shape)} vs {tuple(flipped_maps.shape)}")
        return 0.5 * (maps + flipped_maps)

    def decode_maps(self, maps: Tensor, **options) -> tuple[Tensor, Tensor]:
        """The spec's decode rule on read maps: (coords (B, K, 2) heatmap px, confidence (B, K)); options go to
        the decoder (`backend`, `nonfinite`)."""
        return self.decoder(maps, **options)

    def decode(self, heatmaps: Tensor, **options) -> tuple[Tensor, Tensor]:
        """Raw model heatmaps (B, K, H, W) -> (coords heatmap px, confidence): `decode_maps(read(heatmaps))`."""
        return self.decode_maps(self.read(heatmaps), **options)

    def normalised(self, maps: Tensor) -> Tensor:
        """Read maps as distributions over their pixels: themselves for a supplier map; a raw (MSE) map through
        relu, normalised (softmax where it has no positive pixel)."""
        return decoded_map(maps, "relu") if self.spec.supplier_map == "raw" else maps

    def __repr__(self) -> str:
        return f"{type(self).__name__}(heatmap_wh={self.heatmap_wh}, {self.spec!r})"


class DMCodec(HeatmapCodec):
    """Distribution-matching targets: the keypoints themselves (heatmap px) plus weights.

    encode -> {"keypoints_hm": (K, 2) float32, "weights": (K,) float32}; decode reads the supplier map's
    distribution (spec.supplier_map, default the DM loss's) and decodes it by spec.decode ("2x2" by default).
    """

    name = "dm"

    def __init__(self, heatmap_wh, spec: CodecSpec | None = None):
        super().__init__(heatmap_wh, spec if spec is not None else CodecSpec(name="dm"))

    def encode(self, keypoints_hm, visible) -> dict[str, np.ndarray]:
        kp = np.asarray(keypoints_hm, dtype=np.float64)
        weights = self.weights(kp, visible)
        kp = np.where(weights[:, None] > 0, kp, 0.0)  # unlabelled joints carry no position
        return {"keypoints_hm": kp.astype(np.float32), "weights": weights}


class GaussianCodec(HeatmapCodec):
    """Gaussian heatmap targets for the MSE baseline, in two flavours.

    official: the peak sits on the pixel nearest the keypoint (floor(x + 0.5)), as in the official HRNet
      code, i.e. the target carries the quantisation error;
    unbiased: the peak sits at the exact sub-pixel keypoint.
    Both use exp(-d^2 / (2 sigma^2)) truncated to the (2*ceil(3 sigma)+1)^2 window around the peak
    (HRNet's window) and the shared weight rule (module docstring); a zero-weight joint has an all-zero
    heatmap. encode -> {"heatmaps": (K, H, W) float32, "weights": (K,) float32};
    decode: the raw heatmaps by spec.decode ("argmax" by default: argmax + quarter-pixel shift, as in HRNet).
    """

    name = "gaussian"
    flavours = ("official", "unbiased")

    def __init__(self, heatmap_wh, sigma: float = 2.0, flavour: str = "official", *, spec: CodecSpec | None = None):
        if spec is None:
            if flavour not in self.flavours:
                raise ValueError(f"flavour must be one of {self.flavours}, got {flavour!r}")
            if not sigma > 0:
                raise ValueError(f"sigma must be > 0, got {sigma}")
            spec = CodecSpec(name="gaussian", sigma=float(sigma), flavour=flavour)
        super().__init__(heatmap_wh, spec)
        self.sigma = float(spec.sigma)
        self.flavour = spec.flavour

    def encode(self, keypoints_hm, visible) -> dict[str, np.ndarray]:
        kp = np.asarray(keypoints_hm, dtype=np.float64)
        weights = self.weights(kp, visible)
        w, h = self.heatmap_wh
        centre = np.floor(kp + 0.5) if self.flavour == "official" else kp
        centre = np.where(weights[:, None] > 0, centre, 0.0)
        radius = math.ceil(3 * self.sigma)
        dx = np.arange(w, dtype=np.float64)[None, :] - centre[:, 0:1]  # (K, W)
        dy = np.arange(h, dtype=np.float64)[None, :] - centre[:, 1:2]  # (K, H)
        gx = np.exp(-(dx**2) / (2 * self.sigma**2)) * (np.abs(dx) <= radius)
        gy = np.exp(-(dy**2) / (2 * self.sigma**2)) * (np.abs(dy) <= radius)
        heatmaps = gy[:, :, None] * gx[:, None, :] * weights[:, None, None]
        return {"heatmaps": heatmaps.astype(np.float32), "weights": weights}


def build_codec(spec: PoseSpec) -> DMCodec | GaussianCodec:
    """The codec of a pose spec: its codec spec (name, decode rule, supplier map, sigma, flavour) at its
    heatmap size."""
    if not isinstance(spec, PoseSpec):
        raise TypeError(f"build_codec takes a dmpose.spec.PoseSpec, got {type(spec).__name__}")
    return codec_for(spec.codec, spec.heatmap_wh)


def codec_for(codec: CodecSpec, heatmap_wh) -> DMCodec | GaussianCodec:
    """The codec of a codec spec at a heatmap size (W, H) (`build_codec` of a whole PoseSpec is the usual way)."""
    return DMCodec(heatmap_wh, codec) if codec.name == "dm" else GaussianCodec(heatmap_wh, spec=codec)
