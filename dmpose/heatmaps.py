"""Heatmap tensors: the checks, dtypes and mass rules every heatmap consumer shares (the loss, the solver,
the supplier maps, the decoders, the codec).

Heatmaps are (B, K, H, W) (or (..., H, W) maps): one map per (batch, joint), pixel (i, j) centred at
x = j, y = i (pixel centres at integer coordinates), covering [j-0.5, j+0.5) x [i-0.5, i+0.5).

- `check_heatmaps`: the one shape/dtype check, returning (B, K, H, W); `inside_heatmap`: the dot-inside rule.
- `nonfinite_maps` / `nonfinite_error`: which maps hold NaN/Inf, and the error naming the first of them.
- `compute_dtype`: float64 for float64 input, float32 for every other float dtype (bf16/fp16 included).
- `pow2_scale`: exact powers of two that bring a map's peak into [1, 2), so sums of scaled values never
  overflow for finite input.
- `normalise_mass`: phi / sum phi over the last axis with that scaling, and the one dead-map rule: a map with
  no positive mass is read as softmax of its logits (the raw heatmap), so the result is always a distribution.

This module imports only torch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["check_heatmaps", "inside_heatmap", "nonfinite_maps", "nonfinite_error", "compute_dtype", "pow2_scale",
           "normalise_mass"]


def check_heatmaps(heatmaps: Any, name: str = "heatmaps", min_size: int = 1) -> tuple[int, int, int, int]:
    """The one (B, K, H, W) heatmap check: a 4-d floating-point tensor with H, W >= min_size; returns its shape."""
    if not isinstance(heatmaps, Tensor) or heatmaps.dim() != 4:
        got = tuple(heatmaps.shape) if isinstance(heatmaps, Tensor) else type(heatmaps).__name__
        raise ValueError(f"{name} must be a (B, K, H, W) tensor, got shape {got}")
    if not heatmaps.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {heatmaps.dtype}")
    h, w = heatmaps.shape[-2:]
    if h < min_size or w < min_size:
        raise ValueError(f"{name} must be at least {min_size}x{min_size}, got H={h}, W={w}")
    return tuple(heatmaps.shape)


def inside_heatmap(keypoints: Tensor, heatmap_wh: tuple[int, int]) -> Tensor:
    """Whether each dot (..., 2) (x, y) lies in the heatmap's area [-0.5, W-0.5) x [-0.5, H-0.5) (False for NaN);
    heatmap_wh is (W, H)."""
    w, h = heatmap_wh
    x, y = keypoints[..., 0], keypoints[..., 1]
    return (x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)


def nonfinite_maps(heatmaps: Tensor) -> Tensor:
    """(B, K) bool: the maps of a (B, K, H, W) tensor that hold a NaN or an Inf."""
    return ~torch.isfinite(heatmaps).flatten(2).all(-1)


def nonfinite_error(bad: Tensor, what: str = "heatmaps") -> ValueError:
    """The error for the (B, K) mask `bad` of non-finite maps, naming the first (batch, joint) and the count."""
    bi, ki = bad.nonzero()[0].tolist()
    return ValueError(f"{what}[{bi}, {ki}] holds NaN/Inf values ({int(bad.sum())} of the {bad.numel()} (batch, joint) "
                      "heatmaps are not finite); pass nonfinite='mask' to leave such joints out and count them")


def compute_dtype(t: Tensor) -> torch.dtype:
    """The dtype heatmap arithmetic runs in (the losses, the solver, the supplier maps): float64 for float64
    input, float32 for every other float dtype (bf16/fp16 heatmaps included)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def pow2_scale(peak: Tensor) -> Tensor:
    """Powers of two 2^-floor(log2 peak) that bring each positive `peak` into [1, 2) (1 where peak <= 0 or is
    not finite), the exponent clamped to the dtype's normal range (fp32: [-120, 125], as the Triton kernel).
    Multiplying by them is exact, so sums of the scaled values stay finite for any finite input."""
    info = torch.finfo(peak.dtype)
    lo, hi = math.log2(info.tiny) + 6, math.floor(math.log2(info.max)) - 2
    safe = torch.where((peak > 0) & torch.isfinite(peak), peak, torch.ones_like(peak))
    e = torch.floor(torch.log2(safe)).clamp_min_(lo).clamp_max_(hi)  # (two one-sided clamps: ONNX-exportable)
    return torch.exp2(-e)


def normalise_mass(values: Tensor, logits: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(a, total, scale, dead) over the last axis of `values` (..., N):

    a = relu(values) / sum relu(values), the sum taken after scaling by `pow2_scale` of the largest value (so a
    is right for any finite input); where no value is positive ("dead"), a = softmax(logits) (default: the
    values themselves). total = the scaled sum, scale = the power of two, dead = (...,) bool. Traceable: no
    data-dependent Python branch (ONNX export of the decode uses it)."""
    scale = pow2_scale(values.amax(-1))
    r = values.clamp_min(0) * scale[..., None]
    total = r.sum(-1)
    dead = total <= 0
    a = r / torch.where(dead, torch.ones_like(total), total)[..., None]
    fallback = torch.softmax(values if logits is None else logits, dim=-1)
    return torch.where(dead[..., None], fallback, a), total, scale, dead
