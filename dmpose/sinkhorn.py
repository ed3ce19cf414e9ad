"""Batched entropic optimal transport between heatmap pixels and a few demanders (torch).

One problem per (image, joint): N pixels with masses a (sum 1) against M <= 4 demanders with masses b
(sum 1; a demander with mass exactly 0 is dead and takes no part), cost C (N, M). The entropic plan
(Cuturi's regularisation with weight eps, equivalently eps * KL(P || a x b)) is P_ij = a_i * pi_ij with
the row-softmax

    pi_ij(g) = b_j exp((g_j - C_ij)/eps) / sum_l b_l exp((g_l - C_il)/eps),

and the demander potentials g are found by Sinkhorn so that the columns match. Only g is iterated
(see ../shared/notes/dm-loss-math.md), the iterations never go through autograd, and gradients are
computed from the solution:

* ``exact``: the gradient of the transport cost L = <C, P> itself, by implicit differentiation of the
  column constraint (a 4x4 solve per problem, gauge fixed by adding 1 1^T over the live demanders).
* ``envelope``: the pixel potential f, the gradient of a *different* objective,
  <C, P> + eps KL(P || a x b). Its minimiser concentrates mass on the nearest pixel (up to 0.27 px of
  bias on a 12x12 test at eps 1): it brings back the quantisation sub-pixel demanders exist to remove.

Two forms of the same iteration: ``shifted`` (each pixel's smallest cost subtracted before
exponentiating, so the kernel is formed once in [e^(-sqrt2/eps), 1] and iterations are multiply-adds;
safe in fp32 for eps >= 0.05 when the demanders lie in one unit square) and ``lse`` (log-sum-exp,
for small eps). Pixel coordinates follow the dmpose convention: pixel (i, j) is centred at (x=j, y=i).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# SHIFTED_MIN_EPS: below this eps the row-shifted kernel may underflow in fp32; ``method="auto"`` switches to
# log-sum-exp (the one definition, shared with the kernels)
from dmpose.constants import SHIFTED_MIN_EPS
from dmpose.heatmaps import compute_dtype, normalise_mass
from dmpose.suppliers import supplier_map, supplier_map_derivative

__all__ = [
    "SinkhornResult",
    "sinkhorn",
    "exact_grad_a",
    "solve_grounded_laplacian",
    "envelope_grad_a",
    "pixel_demander_cost",
    "suppliers",
    "dm_sinkhorn_torch",
    "SHIFTED_MIN_EPS",
]



@dataclass
class SinkhornResult:
    """Solution of P problems with N pixels and M demanders (demander-major layout: (P, M, N)).

    g: (P, M) demander potentials (0 on dead demanders; defined up to a common constant).
    f: (P, N) pixel potentials f_i = -eps log sum_j b_j exp((g_j - C_ji)/eps), finite for every pixel.
    pi: (P, M, N) row-softmax of the plan (P_ji = a_i pi_ji), defined for zero-mass pixels too.
    cbar: (P, N) each pixel's mean cost under its row, cbar_i = sum_j C_ji pi_ji.
    cost: (P,) transport cost <C, P> = <a, cbar>.
    dual: (P,) <a, f> + <b, g>, the value of <C, P> + eps KL(P || a x b) at convergence.
    col: (P, M) column marginals of the plan; marginal_error: (P,) sum_j |col_j - b_j|.
    iterations: (P,) number of potential updates done for each problem.
    """

    g: Tensor
    f: Tensor
    pi: Tensor
    cbar: Tensor
    cost: Tensor
    dual: Tensor
    col: Tensor
    marginal_error: Tensor
    iterations: Tensor


def sinkhorn(
    a: Tensor,
    C: Tensor,
    b: Tensor,
    *,
    eps: float,
    max_iters: int = 1000,
    tol: float = 1e-5,
    method: str = "auto",
) -> SinkhornResult:
    """Solve P entropic OT problems in a batch (no autograd through the iterations).

    Args:
        a: (P, N) pixel masses, each row >= 0 summing to 1 (zero-mass pixels are fine).
        C: (P, M, N) costs, demander-major. b: (P, M) demander masses, >= 0 summing to 1; zero
            entries are dead demanders.
        eps: regularisation weight (> 0). max_iters: most potential updates per problem.
        tol: each problem stops once its L1 column-marginal error is below tol (checked every
            iteration, at no extra cost); tol = 0 runs exactly max_iters updates.
        method: "shifted", "lse" or "auto" (shifted for eps >= SHIFTED_MIN_EPS).
    """
    if method == "auto":
        method = "shifted" if eps >= SHIFTED_MIN_EPS else "lse"
    with torch.no_grad():
        live = b > 0
        if method == "shifted":
            return _sinkhorn_shifted(a, C, b, live, eps, max_iters, tol)
        if method == "lse":
            return _sinkhorn_lse(a, C, b, live, eps, max_iters, tol)
    raise ValueError(f"method must be 'auto', 'shifted' or 'lse', got {method!r}")


def _sinkhorn_shifted(a, C, b, live, eps, max_iters, tol) -> SinkhornResult:
    """Row-shifted multiplicative iterations on u_j = b_j exp(g_j/eps) (rescaled by its maximum).

    Dead demanders keep u_j = 0, so their kernel entries never count. Problems that meet tol are
    frozen; once half of the working set is frozen it is compacted, so late iterations touch only the
    few problems that still run.
    """
    masked = C if bool(live.all()) else C.masked_fill(~live[:, :, None], math.inf)
    m = masked.amin(dim=1)  # (P, N) each pixel's smallest cost to a live demander
    KtT = torch.sub(m.unsqueeze(1), C)
    if eps != 1.0:
        KtT.mul_(1.0 / eps)
    KtT.exp_()  # (P, M, N), live in [e^(-sqrt2/eps), 1]
    n_prob = a.shape[0]
    u, col = b.clone(), torch.zeros_like(b)
    err = torch.zeros(n_prob, dtype=a.dtype, device=a.device)
    iters = torch.zeros(n_prob, dtype=torch.int32, device=a.device)
    idx = torch.arange(n_prob, device=a.device)  # working set -> problem index
    w_KtT, w_a, w_b, w_live, w_u = KtT, a, b, live, u.clone()
    frozen = torch.zeros(n_prob, dtype=torch.bool, device=a.device)
    for it in range(max_iters + 1):
        s = torch.bmm(w_u.unsqueeze(1), w_KtT).squeeze(1)  # (p, N)
        v = torch.bmm((w_a / s).unsqueeze(1), w_KtT.transpose(1, 2)).squeeze(1)  # (p, M); this layout: 2x faster
        w_col = w_u * v
        w_err = (w_col - w_b).abs().sum(-1)
        done = ~frozen if it == max_iters else (~frozen & (w_err < tol) if tol > 0 else None)
        if done is not None and bool(done.any()):
            fin = idx[done]
            u[fin], col[fin], err[fin] = w_u[done], w_col[done], w_err[done]
            frozen = frozen | done
            if bool(frozen.all()):
                break
            if 2 * int(frozen.sum()) >= frozen.numel():  # compact: drop the frozen problems
                keep = ~frozen
                idx, w_KtT, w_a, w_b, w_live, w_u, v = (t[keep] for t in (idx, w_KtT, w_a, w_b, w_live, w_u, v))
                frozen = frozen[keep]
        u_new = torch.where(w_live, w_b / v.clamp_min(torch.finfo(v.dtype).tiny), torch.zeros_like(w_u))
        u_new = u_new / u_new.amax(dim=-1, keepdim=True)
        w_u = torch.where(frozen[:, None], w_u, u_new)
        iters[idx[~frozen]] += 1
    del w_KtT
    s = torch.bmm(u.unsqueeze(1), KtT).squeeze(1)
    pi = KtT.mul_(u.unsqueeze(-1)).div_(s.unsqueeze(1))  # the kernel's memory becomes the plan's
    f = m - eps * torch.log(s)
    ratio = torch.where(live, u / torch.where(live, b, torch.ones_like(b)), torch.ones_like(u))
    g = eps * torch.log(ratio)  # u_j = b_j exp(g_j / eps) up to a common factor; 0 on dead demanders
    return _finish(a, C, b, f, g, pi, col, err, iters)


def _sinkhorn_lse(a, C, b, live, eps, max_iters, tol) -> SinkhornResult:
    """Log-sum-exp iterations on g (for small eps, where the shifted kernel would underflow)."""
    neg_inf = torch.tensor(-math.inf, dtype=a.dtype, device=a.device)
    log_a = torch.where(a > 0, torch.log(a), neg_inf)
    log_b = torch.where(live, torch.log(b), neg_inf)
    g = torch.zeros_like(b)
    active = torch.ones(a.shape[0], dtype=torch.bool, device=a.device)
    iters = torch.zeros(a.shape[0], dtype=torch.int32, device=a.device)
    for it in range(max_iters + 1):
        f = -eps * torch.logsumexp(log_b[:, :, None] + (g[:, :, None] - C) / eps, dim=1)  # (P, N)
        g_new = -eps * torch.logsumexp(log_a[:, None, :] + (f[:, None, :] - C) / eps, dim=-1)  # (P, M)
        col = torch.where(live, b * torch.exp(((g - g_new) / eps).clamp_max(80.0)), torch.zeros_like(b))
        err = (col - b).abs().sum(-1)
        if tol > 0:
            active = active & ~(err < tol)
        if it == max_iters or not bool(active.any()):
            break
        g = torch.where(active[:, None] & live, g_new - g_new.masked_fill(~live, -math.inf).amax(-1, keepdim=True), g)
        iters += active.to(torch.int32)
    g = torch.where(live, g, torch.zeros_like(g))
    logits = log_b[:, :, None] + (g[:, :, None] - C) / eps
    pi = torch.softmax(logits, dim=1)
    f = -eps * torch.logsumexp(logits, dim=1)
    return _finish(a, C, b, f, g, pi, col, err, iters)


def _finish(a, C, b, f, g, pi, col, err, iters) -> SinkhornResult:
    cbar = (C * pi).sum(1)
    cost = (a * cbar).sum(-1)
    dual = (a * f).sum(-1) + (b * g).sum(-1)
    return SinkhornResult(g=g, f=f, pi=pi, cbar=cbar, cost=cost, dual=dual, col=col, marginal_error=err, iterations=iters)


def exact_grad_a(res: SinkhornResult, a: Tensor, C: Tensor, b: Tensor) -> Tensor:
    """dL/da for L = <C, P*> (up to a per-problem constant), by implicit differentiation.

    A = diag(col) - sum_i a_i pi_i pi_i^T is a graph Laplacian: with couplings G_jl = sum_i a_i pi_ji pi_li
    (j != l), A_jj = sum_{l != j} G_jl (the same number as col_j - G_jj, since each pi_i sums to 1,
    but built from non-negative terms, so nothing cancels when the plan is nearly one-hot). With
    h_l = sum_i a_i pi_li (C_li - cbar_i), solve A w = h with the gauge w_r = 0 on the demander of
    largest coupling; demanders without coupling (dead ones, or ones an unconverged plan never
    reaches) get w = 0 (`solve_grounded_laplacian`, the Triton kernel's elimination, in float64: no
    pivot is ever formed by subtraction, so it neither fails nor loses accuracy at small eps).
    Returns cbar_k - w . pi_k. C and pi are (P, M, N).
    """
    pi, cbar = res.pi, res.cbar
    a_pi = pi * a[:, None, :]  # (P, M, N)
    n_dem = b.shape[1]
    eye = torch.eye(n_dem, dtype=torch.float64, device=b.device)
    G = torch.bmm(a_pi, pi.transpose(1, 2)).double() * (1 - eye)  # off-diagonal couplings, >= 0
    # h_l = sum_i a_i pi_li (C_li - cbar_i), summed as written: splitting it cancels, and a demander
    # with tiny couplings needs its tiny h_l accurately
    h = torch.sub(C, cbar.unsqueeze(1)).mul_(a_pi).sum(-1).double()
    w = solve_grounded_laplacian(G, b > 0, h)
    return cbar - torch.bmm(w.to(pi.dtype).unsqueeze(1), pi).squeeze(1)


def solve_grounded_laplacian(G: Tensor, live: Tensor, rhs: Tensor) -> Tensor:
    """Solve A w = rhs for P small graph Laplacians A = diag(G 1) - G (G: (P, M, M) couplings >= 0, the
    diagonal ignored; live: (P, M) bool; rhs: (P, M)), in float64, batched over P.

    The gauge is fixed by grounding the live slot with the largest total coupling (its w is 0). The
    grounded system is solved by Gaussian elimination in the GTH manner, as the Triton kernel's
    `_solve_laplacian`: each pivot is the sum of the row's remaining non-negative couplings plus its
    accumulated coupling to ground, never a difference, so there is no cancellation however
    ill-conditioned A is (couplings of 1e-300 next to 1) and no singular-matrix error: a slot whose pivot
    is 0 (dead, uncoupled, or cut off from the ground with its whole component) gets w = 0.
    """
    G, rhs = G.double(), rhs.double()
    p, m = rhs.shape
    slot = torch.arange(m, device=rhs.device)
    off = slot[:, None] != slot[None, :]
    K = torch.where(live[:, :, None] & live[:, None, :] & off, G, torch.zeros_like(G))
    K = 0.5 * (K + K.transpose(1, 2))  # exactly symmetric
    ref = torch.where(live, K.sum(-1), torch.full_like(rhs, -1.0)).argmax(-1)  # (P,)
    is_ref = slot[None, :] == ref[:, None]
    ground = K.gather(2, ref[:, None, None].expand(p, m, 1)).squeeze(-1)  # coupling of each slot to ground
    active = live & ~is_ref
    K = K * (~is_ref)[:, :, None] * (~is_ref)[:, None, :]
    x = torch.where(active, rhs, torch.zeros_like(rhs))
    U = torch.zeros_like(K)
    piv = torch.zeros_like(rhs)
    for k in range(m):
        row = K[:, k, :].clone()
        g_k, x_k = ground[:, k].clone(), x[:, k].clone()
        p_k = row.sum(-1) + g_k
        ok = active[:, k] & (p_k > 0)
        f = torch.where(ok[:, None], row / torch.where(ok, p_k, torch.ones_like(p_k))[:, None], torch.zeros_like(row))
        K = K + f[:, :, None] * row[:, None, :]
        K[:, k, :] = 0
        K[:, :, k] = 0
        K = K * off
        ground = ground + f * g_k[:, None]
        x = x + f * x_k[:, None]
        U[:, k, :] = row
        piv[:, k] = torch.where(ok, p_k, torch.zeros_like(p_k))
    w = torch.zeros_like(rhs)
    for k in reversed(range(m)):
        p_k = piv[:, k]
        num = x[:, k] + (U[:, k, :] * w).sum(-1)
        w[:, k] = torch.where(p_k > 0, num / torch.where(p_k > 0, p_k, torch.ones_like(p_k)), torch.zeros_like(p_k))
    return w


def envelope_grad_a(res: SinkhornResult) -> Tensor:
    """dOT_KL/da = f, the gradient of <C, P> + eps KL(P || a x b) (not of <C, P>; see module doc)."""
    return res.f


def pixel_demander_cost(height: int, width: int, demander_xy: Tensor, power: float = 1.0) -> Tensor:
    """Cost (P, M, H*W) d ** power, d the Euclidean distance from each demander (x, y) to every pixel centre
    (x=j, y=i); power 1 (the paper's) is d itself."""
    dt, dev = demander_xy.dtype, demander_xy.device
    # the direct sqrt(dx^2 + dy^2) form (a matrix-product form cancels and is inexact near a demander), built
    # separably: the same numbers as torch.cdist's direct mode, bit for bit, about 5x faster on the CPU
    dx = torch.arange(width, dtype=dt, device=dev) - demander_xy[..., 0:1]  # (P, M, W)
    dy = torch.arange(height, dtype=dt, device=dev) - demander_xy[..., 1:2]  # (P, M, H)
    d = (dy.square().unsqueeze(-1) + dx.square().unsqueeze(-2)).sqrt_().flatten(-2)  # row-major pixels
    return d if power == 1.0 else d.pow_(power)


def _scaled_suppliers(heatmaps: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(a, S * scale, scale, dead) of (P, H, W) maps by `dmpose.heatmaps.normalise_mass`: the positive mass is
    summed after scaling each heatmap by a power of two, so S never overflows; S = (S * scale) / scale."""
    return normalise_mass(heatmaps.flatten(1))


def suppliers(heatmaps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Supplier masses a = relu(H) / ||relu(H)||_1 over the pixels of each (P, H, W) heatmap.

    Rule for a heatmap with no positive mass: a = softmax(H) over its pixels. The loss stays finite
    and, unlike through relu (whose gradient is zero there forever), the gradient reaches every pixel
    and raises those nearest the dot, giving the joint a way back.

    The sum is taken after scaling by a power of two (as the Triton kernel does), so `a` is right for
    any finite input, even where S itself exceeds the dtype's range (S is then inf).

    Returns a (P, H*W), S = ||relu(H)||_1 (P,), and the mask of heatmaps that use the fallback (P,).
    """
    a, total, scale, dead = _scaled_suppliers(heatmaps)
    return a, total / scale, dead


def dm_sinkhorn_torch(
    heatmaps: Tensor,
    demander_xy: Tensor,
    demander_mass: Tensor,
    *,
    eps: float,
    max_iters: int,
    tol: float,
    grad: str,
    supplier: str = "relu",
    beta: float | None = None,
    cost_power: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Loss and gradient of P heatmap-vs-demanders problems (the torch twin of the Triton kernel).

    supplier / beta: the supplier map (`dmpose.suppliers.supplier_map`): "relu" (the paper's, the
    kernel's) or "softplus" (phi = softplus(beta H) / beta, then the same normalisation; the gradient is
    chained through sigmoid(beta H)). cost_power: the cost is distance ** cost_power (1: the paper's).

    Args:
        heatmaps: (P, H, W) any float dtype; arithmetic in fp32 (fp64 if the input is fp64).
        demander_xy: (P, M, 2) demander positions (x, y) in heatmap pixels (pixel centres at integers).
        demander_mass: (P, M) masses, summing to 1; a zero entry is a dead demander.
    Returns:
        cost (P,) = <C, P>; grad_heatmaps (P, H, W) = d cost / d heatmaps (through the suppliers'
        normalisation, or the softmax fallback; None for grad="none"); marginal_error (P,); iterations (P,) int32.
    """
    dtype = compute_dtype(heatmaps)
    p, h, w = heatmaps.shape
    raw = heatmaps.to(dtype)
    hm = raw if supplier == "relu" else supplier_map(raw, supplier, beta)  # > 0: the relu below is the identity
    a, total, scale, dead = _scaled_suppliers(hm)  # total = S * scale (finite for any finite input)
    b = demander_mass.to(dtype)
    C = pixel_demander_cost(h, w, demander_xy.to(dtype), cost_power)
    res = sinkhorn(a, C, b, eps=eps, max_iters=max_iters, tol=tol)
    if grad == "none":  # value only (dm_loss under torch.no_grad())
        return res.cost, None, res.marginal_error, res.iterations
    gamma = exact_grad_a(res, a, C, b) if grad == "exact" else envelope_grad_a(res)
    centred = gamma - (a * gamma).sum(-1, keepdim=True)
    # d a / d H = (1 - a) / S on positive pixels, with 1/S = scale / (S * scale): the kernel's order
    relu_branch = centred / torch.where(dead, torch.ones_like(total), total)[:, None] * scale[:, None] * (hm.flatten(1) > 0)
    grad_h = torch.where(dead[:, None], a * centred, relu_branch)
    if supplier != "relu":
        grad_h = grad_h * supplier_map_derivative(raw, supplier, beta).flatten(1)
    return res.cost, grad_h.reshape(p, h, w), res.marginal_error, res.iterations
