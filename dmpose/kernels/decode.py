"""Triton 2x2 max-sum decode: the same result as ``dmpose.decode.decode_2x2`` (torch), in one pass.

One program per (b, k) heatmap. The windows are streamed in row-major order; each program keeps, at
once, the best window of relu(H) and the best window of the raw values (used when the heatmap has no
positive mass), the first index winning ties as in ``torch.argmax``, plus the total positive mass
(every pixel counted exactly once through the window whose top-left, top-right, bottom-left or
bottom-right corner it is). Window sums are added in torch's order ((TL + TR) + BL) + BR and divisions
are correctly rounded, so the coordinates equal the torch path's bit for bit.

Coordinates: pixel (i, j) is centred at (x = j, y = i), x right, y down; outputs are (x, y) in heatmap
pixels.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dmpose.constants import MAX_BLOCK, triton_interpret

__all__ = ["decode_2x2_triton", "INTERPRETED", "MAX_BLOCK"]

INTERPRETED = triton_interpret()


@triton.jit
def _decode_2x2_kernel(h_ptr, coords_ptr, conf_ptr, H, W, BLOCK: tl.constexpr):
    p = tl.program_id(0)
    h_ptr += p.to(tl.int64) * H * W
    ww = W - 1
    n_win = (H - 1) * ww
    total = tl.zeros([], dtype=tl.float32)
    best_pos = tl.full([], -float("inf"), dtype=tl.float32)
    best_raw = tl.full([], -float("inf"), dtype=tl.float32)
    idx_pos = tl.zeros([], dtype=tl.int32)
    idx_raw = tl.zeros([], dtype=tl.int32)
    for start in range(0, n_win, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inb = offs < n_win
        i0 = offs // ww
        j0 = offs - i0 * ww
        q = h_ptr + i0 * W + j0
        v0 = tl.load(q, mask=inb, other=0.0).to(tl.float32)
        v1 = tl.load(q + 1, mask=inb, other=0.0).to(tl.float32)
        v2 = tl.load(q + W, mask=inb, other=0.0).to(tl.float32)
        v3 = tl.load(q + W + 1, mask=inb, other=0.0).to(tl.float32)
        r0 = tl.maximum(v0, 0.0)
        r1 = tl.maximum(v1, 0.0)
        r2 = tl.maximum(v2, 0.0)
        r3 = tl.maximum(v3, 0.0)
        # Positive mass, each pixel once: TL always; TR on the last window column; BL on the last window
        # row; BR on the last window of both.
        last_col = j0 == ww - 1
        last_row = i0 == H - 2
        part = r0 + tl.where(last_col, r1, 0.0) + tl.where(last_row, r2, 0.0) + tl.where(last_col & last_row, r3, 0.0)
        total += tl.sum(tl.where(inb, part, 0.0), axis=0)
        win_pos = tl.where(inb, ((r0 + r1) + r2) + r3, -float("inf"))
        win_raw = tl.where(inb, ((v0 + v1) + v2) + v3, -float("inf"))
        blk_pos = tl.max(win_pos, axis=0)
        blk_raw = tl.max(win_raw, axis=0)
        arg_pos = start + tl.argmax(win_pos, axis=0, tie_break_left=True)
        arg_raw = start + tl.argmax(win_raw, axis=0, tie_break_left=True)
        idx_pos = tl.where(blk_pos > best_pos, arg_pos, idx_pos)
        idx_raw = tl.where(blk_raw > best_raw, arg_raw, idx_raw)
        best_pos = tl.maximum(best_pos, blk_pos)
        best_raw = tl.maximum(best_raw, blk_raw)

    has_mass = total > 0.0
    idx = tl.where(has_mass, idx_pos, idx_raw)
    i0 = idx // ww
    j0 = idx - i0 * ww
    q = h_ptr + i0 * W + j0
    r0 = tl.maximum(tl.load(q).to(tl.float32), 0.0)
    r1 = tl.maximum(tl.load(q + 1).to(tl.float32), 0.0)
    r2 = tl.maximum(tl.load(q + W).to(tl.float32), 0.0)
    r3 = tl.maximum(tl.load(q + W + 1).to(tl.float32), 0.0)
    wsum = ((r0 + r1) + r2) + r3
    ok = wsum > 0.0
    safe = tl.where(ok, wsum, 1.0)
    share_right = tl.where(ok, tl.math.div_rn(r1 + r3, safe), 0.5)
    share_down = tl.where(ok, tl.math.div_rn(r2 + r3, safe), 0.5)
    conf = tl.where(has_mass, tl.math.div_rn(wsum, tl.where(has_mass, total, 1.0)), 0.0)
    conf = tl.minimum(tl.maximum(conf, 0.0), 1.0)
    tl.store(coords_ptr + p * 2, j0.to(tl.float32) + share_right)
    tl.store(coords_ptr + p * 2 + 1, i0.to(tl.float32) + share_down)
    tl.store(conf_ptr + p, conf)


def decode_2x2_triton(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``decode_2x2`` on the Triton backend: heatmaps (B, K, H, W) float16/bfloat16/float32, H, W >= 2.

    Returns coords (B, K, 2) float32 (x, y) in heatmap pixels (pixel (i, j) centred at x=j, y=i) and
    conf (B, K) float32, the best window's share of the heatmap's positive mass (0 with no mass).
    """
    if not isinstance(heatmaps, torch.Tensor) or heatmaps.dim() != 4:
        raise ValueError(f"heatmaps must be a (B, K, H, W) tensor, got {getattr(heatmaps, 'shape', type(heatmaps))}")
    b, k, h, w = heatmaps.shape
    if h < 2 or w < 2:
        raise ValueError(f"heatmaps must be at least 2x2, got H={h}, W={w}")
    if heatmaps.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"heatmaps dtype must be float16, bfloat16 or float32, got {heatmaps.dtype}")
    hm = heatmaps.contiguous()
    coords = torch.empty((b, k, 2), dtype=torch.float32, device=hm.device)
    conf = torch.empty((b, k), dtype=torch.float32, device=hm.device)
    if b * k == 0:
        return coords, conf
    block = min(MAX_BLOCK, triton.next_power_of_2((h - 1) * (w - 1)))
    _decode_2x2_kernel[(b * k,)](hm, coords, conf, h, w, BLOCK=block, num_warps=4 if block >= 512 else 2)
    return coords, conf
