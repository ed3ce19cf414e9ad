"""Triton Sinkhorn for the distribution-matching loss: value and gradient in one launch.

One program per problem p (an (image, joint) pair). Its pixels are the suppliers, its (up to) four
sub-pixel demanders the consumers; the solver state is four numbers held in registers while the pixels
are streamed in blocks of at most 1024 from cache every iteration. Costs are recomputed from
coordinates and never stored. See /docs (and the maths note) for the formulas; in short:

- a = relu(H) / sum relu(H) (fp32 arithmetic for fp16/bf16/fp32 input); a heatmap with no positive mass
  uses a = softmax(H) instead, so that joint still gets a gradient (the chain rule follows suit).
- Coordinates: pixel (i, j) of the H x W heatmap sits at (x = j, y = i) (integer pixel centres, x to the
  right, y down); ``demander_xy`` is (x, y) in the same heatmap pixels. Cost = Euclidean distance.
- A demander slot with mass exactly 0 is dead and takes no part (its potential is irrelevant).
- Iteration (row-softmax form): u (4 numbers) starts at b; s_i = sum_l Kt_il u_l with the row-shifted
  kernel Kt_ij = exp(-(C_ij - min_l C_il)/eps); column marginal col_j = u_j sum_i a_i Kt_ij / s_i;
  err = sum_j |col_j - b_j|; stop this problem when tol > 0 and err < tol, else u_j <- b_j / (col_j/u_j)
  rescaled by its maximum. ``iterations`` counts u-updates; tol = 0 runs exactly ``max_iters``.
  For eps < 0.05 the same iteration runs in log-sum-exp form on log u (fp32 would underflow).
- Final plan pi_ij = Kt_ij u_j / s_i (defined for every pixel), cost = sum_i a_i sum_j C_ij pi_ij.
- grad="exact": dL/da_k = cbar_k - w . pi_k with A w = h, A = diag(col) - sum_i a_i pi_i pi_i^T (4x4
  solve in fp32 as a grounded graph Laplacian, free of cancellation; diag(col) = diag(b) at convergence);
  grad="envelope": dL/da_k = f_k = -eps log sum_j b_j exp((g_j - C_kj)/eps) (+ const).
  Both are chained through a = relu(H)/S (or the softmax) into d cost / d H.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dmpose.constants import (
    DEFAULT_BLOCK,
    DEFAULT_WARPS,
    GRAD_MODES,
    HEATMAP_DTYPE_NAMES,
    MAX_BLOCK,
    SHIFTED_MIN_EPS,
    triton_interpret,
)

__all__ = ["dm_sinkhorn_triton", "launch_config", "LOG_DOMAIN_BELOW_EPS", "MAX_BLOCK", "INTERPRETED"]

INTERPRETED = triton_interpret()  # how this module's kernels were built
LOG_DOMAIN_BELOW_EPS = SHIFTED_MIN_EPS  # row-shifted Kt >= exp(-sqrt(2)/eps): fp32-safe above this eps
HEATMAP_DTYPES = tuple(getattr(torch, name) for name in HEATMAP_DTYPE_NAMES)


@triton.jit
def _costs(offs, W, dx, dy, POWER: tl.constexpr):
    """C [BLOCK, 4]: distance ** POWER from pixel ``offs`` (x = offs % W, y = offs // W) to the 4 demanders."""
    row = offs // W
    px = (offs - row * W).to(tl.float32)
    py = row.to(tl.float32)
    ddx = px[:, None] - dx[None, :]
    ddy = py[:, None] - dy[None, :]
    d = tl.sqrt(ddx * ddx + ddy * ddy)
    if POWER != 1.0:  # compile-time: the paper's cost (POWER 1) is the distance itself
        d = tl.where(d > 0.0, tl.exp2(POWER * tl.log2(tl.where(d > 0.0, d, 1.0))), 0.0)
    return d


@triton.jit
def _load_supply(h_ptr, offs, N, softmax_mode, shift, sc, inv):
    """Heatmap values (fp32) and supplier masses a of one block (0 outside the heatmap)."""
    inb = offs < N
    h = tl.load(h_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    if softmax_mode:
        a = tl.exp(h - shift) * inv
    else:
        a = (tl.maximum(h, 0.0) * sc) * inv
    a = tl.where(inb, a, 0.0)
    return h, a


@triton.jit
def _row_min(C, live):
    return tl.min(tl.where(live[None, :], C, 1.0e30), axis=1)


@triton.jit
def _sweep_multiplicative(h_ptr, N, W, dx, dy, POWER: tl.constexpr, live, u, softmax_mode, shift, sc, inv,
                          neg_inv_eps,
                          BLOCK: tl.constexpr):
    """v_j = sum_i a_i Kt_ij / s_i for the current u (the column marginals are u_j v_j)."""
    acc = tl.zeros([4], dtype=tl.float32)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        h, a = _load_supply(h_ptr, offs, N, softmax_mode, shift, sc, inv)
        C = _costs(offs, W, dx, dy, POWER)
        m = _row_min(C, live)
        kt = tl.where(live[None, :], tl.exp((C - m[:, None]) * neg_inv_eps), 0.0)
        s = tl.sum(kt * u[None, :], axis=1)
        acc += tl.sum(kt * (a / s)[:, None], axis=0)
    return acc


@triton.jit
def _sweep_log(h_ptr, N, W, dx, dy, POWER: tl.constexpr, live, ell, softmax_mode, shift, sc, inv, inv_eps,
               BLOCK: tl.constexpr):
    """log col_j = log sum_i a_i pi_ij(ell) (ell = log u), by a streamed log-sum-exp over pixels."""
    run_max = tl.full([4], -1.0e30, dtype=tl.float32)
    run_sum = tl.zeros([4], dtype=tl.float32)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        h, a = _load_supply(h_ptr, offs, N, softmax_mode, shift, sc, inv)
        C = _costs(offs, W, dx, dy, POWER)
        m = _row_min(C, live)
        z = tl.where(live[None, :], ell[None, :] - (C - m[:, None]) * inv_eps, -1.0e30)
        zmax = tl.max(z, axis=1)
        lse = zmax + tl.log(tl.sum(tl.exp(z - zmax[:, None]), axis=1))
        log_a = tl.log(tl.where(a > 0.0, a, 1.0))
        keep = (a > 0.0)[:, None] & live[None, :]
        t = tl.where(keep, z - lse[:, None] + log_a[:, None], -1.0e30)  # log(a_i pi_ij)
        new_max = tl.maximum(run_max, tl.max(t, axis=0))
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(t - new_max[None, :]), axis=0)
        run_max = new_max
    return run_max + tl.log(run_sum)


@triton.jit
def _plan_rows(C, live, ell, eps, inv_eps):
    """Row-softmax plan pi [BLOCK, 4], cbar_i = sum_j C_ij pi_ij and the potential f_i (up to a constant)."""
    m = _row_min(C, live)
    z = tl.where(live[None, :], ell[None, :] - (C - m[:, None]) * inv_eps, -1.0e30)
    zmax = tl.max(z, axis=1)
    e = tl.exp(z - zmax[:, None])
    s = tl.sum(e, axis=1)
    pi = e / s[:, None]
    cbar = tl.sum(C * pi, axis=1)
    f = m - eps * (zmax + tl.log(s))
    return pi, cbar, f


@triton.jit
def _column(x, k):
    """Column k of a [BLOCK, 4] tensor."""
    slot = tl.arange(0, 4)
    return tl.sum(tl.where(slot[None, :] == k, x, 0.0), axis=1)


@triton.jit
def _solve_laplacian(G0, G1, G2, G3, live, rhs):
    """Solve A w = rhs for the 4x4 A = diag(col) - G, G = sum_i a_i pi_i pi_i^T (rows G0..G3), rhs . 1 = 0.

    A is a weighted graph Laplacian: off-diagonal couplings K_jl = G_jl >= 0, diagonal
    A_jj = sum_{l != j} K_jl (= col_j - G_jj, formed without cancellation), A 1 = 0. The gauge is fixed
    by grounding the live slot with the largest coupling (its w is 0); the grounded system is solved
    by Gaussian elimination in the GTH manner: every pivot is recomputed as a sum of non-negative
    couplings (plus the accumulated coupling to ground), so there is no subtractive cancellation however
    ill-conditioned A is (small eps: couplings of 1e-22 next to 1). Dead slots, and live slots with no
    coupling at all, get w = 0. Any additive constant in w is irrelevant (the chain rule projects it out).
    """
    slot = tl.arange(0, 4)
    r = slot[:, None]
    c = slot[None, :]
    G = tl.where(r == 0, G0[None, :], tl.where(r == 1, G1[None, :], tl.where(r == 2, G2[None, :], G3[None, :])))
    K = tl.where((r != c) & live[:, None] & live[None, :], G, 0.0)
    K = 0.5 * (K + tl.trans(K))  # exactly symmetric (the two halves were accumulated separately)
    ref = tl.argmax(tl.where(live, tl.sum(K, axis=1), -1.0), axis=0)
    ground = tl.sum(tl.where(c == ref, K, 0.0), axis=1)
    active = live & (slot != ref)
    K = tl.where((r != ref) & (c != ref), K, 0.0)
    x = tl.where(active, rhs, 0.0)
    U = tl.zeros([4, 4], dtype=tl.float32)
    piv = tl.zeros([4], dtype=tl.float32)
    for k in tl.static_range(4):
        row_k = tl.sum(tl.where(r == k, K, 0.0), axis=0)
        g_k = tl.sum(tl.where(slot == k, ground, 0.0), axis=0)
        x_k = tl.sum(tl.where(slot == k, x, 0.0), axis=0)
        p_k = tl.sum(row_k, axis=0) + g_k
        ok = tl.sum(tl.where((slot == k) & active, 1, 0), axis=0) > 0
        ok = ok & (p_k > 0.0)
        f = row_k / tl.where(ok, p_k, 1.0)  # K_jk / p_k (K symmetric)
        f = tl.where(ok, f, 0.0)
        K = K + f[:, None] * row_k[None, :]
        K = tl.where((r == k) | (c == k) | (r == c), 0.0, K)
        ground = ground + f * g_k
        x = x + f * x_k
        U = tl.where(r == k, row_k[None, :], U)
        piv = tl.where(slot == k, tl.where(ok, p_k, 0.0), piv)
    w = tl.zeros([4], dtype=tl.float32)
    for kk in tl.static_range(4):
        k = 3 - kk
        u_k = tl.sum(tl.where(r == k, U, 0.0), axis=0)
        p_k = tl.sum(tl.where(slot == k, piv, 0.0), axis=0)
        x_k = tl.sum(tl.where(slot == k, x, 0.0), axis=0)
        w_k = tl.where(p_k > 0.0, (x_k + tl.sum(u_k * w, axis=0)) / tl.where(p_k > 0.0, p_k, 1.0), 0.0)
        w = tl.where(slot == k, w_k, w)
    return w


@triton.jit
def _dm_sinkhorn_kernel(h_ptr, xy_ptr, mass_ptr, cost_ptr, grad_ptr, err_ptr, iters_ptr,
                        N, W, eps, max_iters, tol,
                        BLOCK: tl.constexpr, LOG_DOMAIN: tl.constexpr, EXACT: tl.constexpr, POWER: tl.constexpr):
    p = tl.program_id(0)
    h_ptr += p.to(tl.int64) * N
    grad_ptr += p.to(tl.int64) * N
    slot = tl.arange(0, 4)
    dx = tl.load(xy_ptr + p * 8 + slot * 2)
    dy = tl.load(xy_ptr + p * 8 + slot * 2 + 1)
    b = tl.load(mass_ptr + p * 4 + slot)
    live = b > 0.0
    inv_eps = 1.0 / eps

    # Suppliers. Pass 1: the largest value. Pass 2: the positive mass S, summed after scaling by a power
    # of two (sc) that keeps it finite and normal for any finite input, and the softmax fallback's
    # normaliser Z. a = relu(H) * sc / (S * sc) exactly as relu(H) / S, or softmax(H) when S == 0.
    hmax = tl.full([], -float("inf"), dtype=tl.float32)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        h = tl.load(h_ptr + offs, mask=offs < N, other=-float("inf")).to(tl.float32)
        hmax = tl.maximum(hmax, tl.max(h, axis=0))
    pos_max = tl.where(hmax > 0.0, hmax, 1.0)
    sc = tl.exp2(-tl.minimum(tl.maximum(tl.floor(tl.log2(pos_max)), -120.0), 125.0))
    S = tl.zeros([], dtype=tl.float32)
    Z = tl.zeros([], dtype=tl.float32)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inb = offs < N
        h = tl.load(h_ptr + offs, mask=inb, other=0.0).to(tl.float32)
        S += tl.sum(tl.maximum(h, 0.0) * sc, axis=0)
        Z += tl.sum(tl.where(inb, tl.exp(h - hmax), 0.0), axis=0)
    softmax_mode = S <= 0.0
    inv = 1.0 / tl.where(softmax_mode, Z, S)

    # Sinkhorn iterations; each problem stops on its own tolerance.
    u = tl.where(live, b, 0.0)
    ell = tl.where(live, tl.log(tl.where(live, b, 1.0)), 0.0)
    it = tl.zeros([], dtype=tl.int32)
    go = it < max_iters
    while go:
        if LOG_DOMAIN:
            log_col = _sweep_log(h_ptr, N, W, dx, dy, POWER, live, ell, softmax_mode, hmax, sc, inv, inv_eps, BLOCK)
            col = tl.exp(log_col)
        else:
            v = _sweep_multiplicative(h_ptr, N, W, dx, dy, POWER, live, u, softmax_mode, hmax, sc, inv, -inv_eps, BLOCK)
            col = u * v
        err = tl.sum(tl.where(live, tl.abs(col - b), 0.0), axis=0)
        converged = (tol > 0.0) & (err < tol)
        if LOG_DOMAIN:
            ell_new = tl.where(live, ell + tl.log(tl.where(live, b, 1.0)) - log_col, 0.0)
            ell_new = ell_new - tl.max(tl.where(live, ell_new, -1.0e30), axis=0)
            ell = tl.where(converged, ell, ell_new)
        else:
            u_new = tl.where(live, b / tl.maximum(v, 1.1754944e-38), 0.0)  # v clamped at fp32's tiny
            u_new = u_new / tl.max(u_new, axis=0)
            u = tl.where(converged, u, u_new)
        it += tl.where(converged, 0, 1)
        go = ((tol <= 0.0) | (err >= tol)) & (it < max_iters)  # i.e. not converged and budget left
    if not LOG_DOMAIN:
        ell = tl.where(live, tl.log(tl.where(live, u, 1.0)), 0.0)

    # Plan with the final u: cost, marginals and what the gradient needs.
    cost = tl.zeros([], dtype=tl.float32)
    fsum = tl.zeros([], dtype=tl.float32)
    col = tl.zeros([4], dtype=tl.float32)
    hvec = tl.zeros([4], dtype=tl.float32)
    G0 = tl.zeros([4], dtype=tl.float32)
    G1 = tl.zeros([4], dtype=tl.float32)
    G2 = tl.zeros([4], dtype=tl.float32)
    G3 = tl.zeros([4], dtype=tl.float32)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        h, a = _load_supply(h_ptr, offs, N, softmax_mode, hmax, sc, inv)
        C = _costs(offs, W, dx, dy, POWER)
        pi, cbar, f = _plan_rows(C, live, ell, eps, inv_eps)
        cost += tl.sum(a * cbar, axis=0)
        ap = a[:, None] * pi
        col += tl.sum(ap, axis=0)
        if EXACT:
            hvec += tl.sum(ap * (C - cbar[:, None]), axis=0)
            G0 += tl.sum(ap * _column(pi, 0)[:, None], axis=0)
            G1 += tl.sum(ap * _column(pi, 1)[:, None], axis=0)
            G2 += tl.sum(ap * _column(pi, 2)[:, None], axis=0)
            G3 += tl.sum(ap * _column(pi, 3)[:, None], axis=0)
        else:
            fsum += tl.sum(a * f, axis=0)
    err = tl.sum(tl.where(live, tl.abs(col - b), 0.0), axis=0)
    if EXACT:
        w = _solve_laplacian(G0, G1, G2, G3, live, hvec)
        gbar = cost - tl.sum(w * col, axis=0)
    else:
        w = tl.zeros([4], dtype=tl.float32)
        gbar = fsum

    # Gradient: gamma_k = dL/da_k, chained through a = relu(H)/S (or the softmax fallback).
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        h, a = _load_supply(h_ptr, offs, N, softmax_mode, hmax, sc, inv)
        C = _costs(offs, W, dx, dy, POWER)
        pi, cbar, f = _plan_rows(C, live, ell, eps, inv_eps)
        if EXACT:
            gamma = cbar - tl.sum(pi * w[None, :], axis=1)
        else:
            gamma = f
        g = tl.where(softmax_mode, a * (gamma - gbar), tl.where(h > 0.0, ((gamma - gbar) * inv) * sc, 0.0))
        tl.store(grad_ptr + offs, g, mask=offs < N)

    tl.store(cost_ptr + p, cost)
    tl.store(err_ptr + p, err)
    tl.store(iters_ptr + p, it)


def _check(heatmaps, demander_xy, demander_mass, eps, max_iters, tol, grad, cost_power) -> None:
    if not isinstance(heatmaps, torch.Tensor) or heatmaps.dim() != 3:
        raise ValueError(f"heatmaps must be a (P, H, W) tensor, got {getattr(heatmaps, 'shape', type(heatmaps))}")
    if heatmaps.dtype not in HEATMAP_DTYPES:
        raise ValueError(f"heatmaps dtype must be float16, bfloat16 or float32, got {heatmaps.dtype}")
    p = heatmaps.shape[0]
    if tuple(demander_xy.shape) != (p, 4, 2):
        raise ValueError(f"demander_xy must have shape ({p}, 4, 2), got {tuple(demander_xy.shape)}")
    if tuple(demander_mass.shape) != (p, 4):
        raise ValueError(f"demander_mass must have shape ({p}, 4), got {tuple(demander_mass.shape)}")
    for name, t in (("demander_xy", demander_xy), ("demander_mass", demander_mass)):
        if t.device != heatmaps.device:
            raise ValueError(f"{name} is on {t.device}, heatmaps on {heatmaps.device}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if int(max_iters) < 1:
        raise ValueError(f"max_iters must be >= 1, got {max_iters}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
    if not 0 < cost_power <= 1:
        raise ValueError(f"cost_power must be in (0, 1], got {cost_power!r}")


def launch_config(n_pixels: int, block: int | None = None, num_warps: int | None = None) -> tuple[int, int]:
    """(pixels per block, warps) for problems of ``n_pixels``: the defaults, shrunk for tiny heatmaps."""
    if block is None:
        block = max(16, min(DEFAULT_BLOCK, triton.next_power_of_2(n_pixels)))
    if block > MAX_BLOCK or block < 16 or block & (block - 1):
        raise ValueError(f"block must be a power of two in [16, {MAX_BLOCK}], got {block}")
    if num_warps is None:
        num_warps = DEFAULT_WARPS if block >= DEFAULT_BLOCK else 4
    return block, num_warps


def dm_sinkhorn_triton(heatmaps: torch.Tensor, demander_xy: torch.Tensor, demander_mass: torch.Tensor, *,
                       eps: float, max_iters: int, tol: float, grad: str = "exact", cost_power: float = 1.0,
                       block: int | None = None, num_warps: int | None = None):
    """Solve P entropic OT problems (heatmap pixels -> 4 demanders) and differentiate them, one launch.

    Args:
        heatmaps: (P, H, W) float16/bfloat16/float32 raw heatmaps; pixel (i, j) sits at (x=j, y=i).
        demander_xy: (P, 4, 2) float32 demander positions (x, y) in heatmap pixels (integer centres).
        demander_mass: (P, 4) float32 demander masses; a slot with mass exactly 0 is dead.
        eps: entropic weight (> 0); below 0.05 the iterations run in log-sum-exp form.
        max_iters: the most u-updates per problem (>= 1).
        tol: stop a problem once its L1 marginal error is below tol; 0 runs exactly max_iters.
        grad: "exact" (gradient of <C, P>) or "envelope" (gradient of <C,P> + eps KL(P | a x b)).
        cost_power: the cost is distance ** cost_power, in (0, 1] (1: the paper's; a compile-time constant).
        block, num_warps: launch tuning (pixels per streamed block, warps per program); see launch_config.

    Returns:
        cost (P,) float32 = <C, P> (both grad modes), grad_heatmaps (P, H, W) float32 = d cost / d heatmaps,
        marginal_error (P,) float32 = sum_j |sum_i P_ij - b_j| of the returned plan, iterations (P,) int32.
    """
    _check(heatmaps, demander_xy, demander_mass, eps, max_iters, tol, grad, cost_power)
    p, h, w = heatmaps.shape
    dev = heatmaps.device
    hm = heatmaps.contiguous()
    xy = demander_xy.to(torch.float32).contiguous()
    mass = demander_mass.to(torch.float32).contiguous()
    cost = torch.empty(p, dtype=torch.float32, device=dev)
    grad_h = torch.empty((p, h, w), dtype=torch.float32, device=dev)
    err = torch.empty(p, dtype=torch.float32, device=dev)
    iters = torch.empty(p, dtype=torch.int32, device=dev)
    if p == 0 or h * w == 0:
        if h * w == 0 and p > 0:
            raise ValueError(f"heatmaps must have at least one pixel, got H={h}, W={w}")
        return cost, grad_h, err, iters
    block, num_warps = launch_config(h * w, block, num_warps)
    _dm_sinkhorn_kernel[(p,)](
        hm, xy, mass, cost, grad_h, err, iters, h * w, w, float(eps), int(max_iters), float(tol),
        BLOCK=block, LOG_DOMAIN=bool(eps < LOG_DOMAIN_BELOW_EPS), EXACT=grad == "exact", POWER=float(cost_power),
        num_warps=num_warps,
    )
    return cost, grad_h, err, iters
