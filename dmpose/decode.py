"""Heatmap decoders (torch). Both return heatmap-pixel coordinates.

Convention: pixel centres at integer coordinates, pixel (i, j) is centred at x = j, y = i and covers
[j-0.5, j+0.5) x [i-0.5, i+0.5); x to the right, y down. Coordinates are (x, y) in the last axis.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dmpose.heatmaps import check_heatmaps, nonfinite_error, nonfinite_maps, pow2_scale
from dmpose.kernels import select_backend

__all__ = ["decode_2x2", "decode_argmax"]

NONFINITE = ("raise", "mask")


def _finite_part(heatmaps: Tensor, nonfinite: str) -> tuple[Tensor, Tensor | None]:
    """The heatmaps in float32 with non-finite maps zeroed (nonfinite="mask") or a ValueError naming the
    first (batch, joint) that holds NaN/Inf (nonfinite="raise"); and the (B, K) mask of those maps (None
    when every map is finite)."""
    if nonfinite not in NONFINITE:
        raise ValueError(f"nonfinite must be one of {NONFINITE}, got {nonfinite!r}")
    hm = heatmaps.float()
    if torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return hm, None  # a traced graph (ONNX export, torch.compile) cannot raise on data: maps pass as they are
    bad = nonfinite_maps(hm)
    if not bool(bad.any()):
        return hm, None
    if nonfinite == "raise":
        raise nonfinite_error(bad, "heatmaps")
    return hm.masked_fill(bad[..., None, None], 0.0), bad


def _masked(coords: Tensor, conf: Tensor, bad: Tensor | None) -> tuple[Tensor, Tensor]:
    if bad is None:
        return coords, conf
    return coords.masked_fill(bad[..., None], float("nan")), conf.masked_fill(bad, 0.0)


def decode_2x2(heatmaps: Tensor, *, backend: str = "auto", nonfinite: str = "raise") -> tuple[Tensor, Tensor]:
    """The distribution-matching decode: the 2x2 window of largest positive mass.

    For each (B, K) heatmap, r = relu(H); the 2x2 window with the largest sum of r is chosen, its four
    values are normalised to sum 1, and the keypoint is their weighted mean position. This inverts the
    sub-pixel demanders exactly: a heatmap holding the four bilinear masses of a dot decodes to the dot.

    Confidence: the window's share of the heatmap's positive mass, sum(window) / sum(r), in [0, 1].
    The DM loss is invariant to scaling H by a positive factor, so a raw peak value means nothing for
    DM-trained models; this share is scale-invariant (1.0 = all mass inside one 2x2 window).
    A heatmap with no positive mass decodes to the centre of the 2x2 window with the largest raw sum,
    with confidence 0.

    backend: "auto" (Triton for CUDA tensors, torch otherwise), "torch" or "triton" (CUDA, or the CPU
    under TRITON_INTERPRET=1; elsewhere a ValueError with the reason). Both give the same coordinates.
    Any finite values decode right: each map is first scaled by a power of two (exact) that brings its
    largest positive value (else its largest magnitude) near 1, so window sums never overflow.

    nonfinite: "raise" (default): a map holding NaN/Inf is a ValueError naming its (batch, joint);
    "mask": such maps decode to coords NaN and confidence 0 (count them with `coords.isnan()`).

    Returns:
        coords (B, K, 2) float32 (x, y) in heatmap pixels, conf (B, K) float32.
    """
    check_heatmaps(heatmaps, min_size=2)
    hm, bad = _finite_part(heatmaps, nonfinite)
    flat = hm.flatten(-2)
    peak = flat.amax(-1)
    hm = hm * pow2_scale(torch.where(peak > 0, peak, flat.abs().amax(-1)))[..., None, None]
    if select_backend(backend, heatmaps.device) == "triton":
        from dmpose.kernels.decode import decode_2x2_triton

        return _masked(*decode_2x2_triton(hm), bad)
    b, k, h, w = heatmaps.shape
    r = hm.clamp_min(0)
    total = r.sum(dim=(-2, -1))
    has_mass = total > 0
    # Window (i, j) covers pixels (i, j), (i, j+1), (i+1, j), (i+1, j+1); fall back to raw values when
    # the heatmap has no positive mass so that the window is still meaningful.
    src = torch.where(has_mass[..., None, None], r, hm)
    win = src[..., :-1, :-1] + src[..., :-1, 1:] + src[..., 1:, :-1] + src[..., 1:, 1:]
    idx = win.flatten(-2).argmax(dim=-1)
    i0 = torch.div(idx, w - 1, rounding_mode="floor")
    j0 = idx - i0 * (w - 1)

    flat = r.flatten(-2)
    base = i0 * w + j0
    corners = torch.stack([base, base + 1, base + w, base + w + 1], dim=-1)  # (B,K,4): TL TR BL BR
    vals = flat.gather(-1, corners)
    wsum = vals.sum(-1)
    safe = torch.where(wsum > 0, wsum, torch.ones_like(wsum))
    share_right = torch.where(wsum > 0, (vals[..., 1] + vals[..., 3]) / safe, torch.full_like(wsum, 0.5))
    share_down = torch.where(wsum > 0, (vals[..., 2] + vals[..., 3]) / safe, torch.full_like(wsum, 0.5))
    x = j0.float() + share_right
    y = i0.float() + share_down
    conf = torch.where(has_mass, wsum / torch.where(has_mass, total, torch.ones_like(total)), torch.zeros_like(total))
    return _masked(torch.stack([x, y], dim=-1), conf.clamp(0.0, 1.0), bad)


def decode_argmax(heatmaps: Tensor, *, nonfinite: str = "raise") -> tuple[Tensor, Tensor]:
    """The classic decode for MSE-trained heatmaps (as in the official HRNet code).

    Argmax pixel, then a quarter-pixel shift in x and in y toward the higher of the two neighbours
    (only where both neighbours exist). Confidence is the raw heatmap maximum (not scale-invariant).
    nonfinite: as for `decode_2x2` ("raise" names the first non-finite (batch, joint); "mask" gives NaN, 0).

    Returns:
        coords (B, K, 2) float32 (x, y) in heatmap pixels, conf (B, K) float32.
    """
    check_heatmaps(heatmaps)
    b, k, h, w = heatmaps.shape
    hm, bad = _finite_part(heatmaps, nonfinite)
    flat = hm.flatten(-2)
    conf, idx = flat.max(dim=-1)
    py = torch.div(idx, w, rounding_mode="floor")
    px = idx - py * w

    def neighbour_diff(plus: Tensor, minus: Tensor, inside: Tensor) -> Tensor:
        diff = flat.gather(-1, plus.clamp(0, h * w - 1)[..., None]) - flat.gather(-1, minus.clamp(0, h * w - 1)[..., None])
        return torch.where(inside, torch.sign(diff[..., 0]), torch.zeros_like(conf))

    dx = neighbour_diff(idx + 1, idx - 1, (px > 0) & (px < w - 1))
    dy = neighbour_diff(idx + w, idx - w, (py > 0) & (py < h - 1))
    coords = torch.stack([px.float() + 0.25 * dx, py.float() + 0.25 * dy], dim=-1)
    return _masked(coords, conf, bad)
