"""Float64 torch reference for the kernels, written from the maths note (no code shared with dmpose).

Row-softmax Sinkhorn on the live demanders only: pi_ij = softmax_j(ell_j - C_ij / eps) with
ell = log b + g / eps, the g-update ell <- ell + log b - log col, the stopping rule of the kernels, and the
two gradients (exact implicit differentiation with A = diag(col) - sum_i a_i pi_i pi_i^T, which is the
note's diag(b) at convergence and keeps A 1 = 0 exactly before it, solved as a graph Laplacian; envelope f),
chained through a = relu(H)/S or, for a heatmap with no positive mass, a = softmax(H).
"""

from __future__ import annotations

import torch


def pixel_grid(h: int, w: int) -> torch.Tensor:
    """(H*W, 2) float64 (x, y) pixel centres in row-major order: pixel (i, j) sits at (x=j, y=i)."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=-1)


def suppliers(h: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """a from one flattened float64 heatmap; True when the softmax fallback was used."""
    r = h.clamp_min(0)
    if r.sum() > 0:
        return r / r.sum(), False
    return torch.softmax(h, dim=0), True


def solve_laplacian(G: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """w with A w = h (up to a constant) for A = diag(col) - G, col = G 1: a graph Laplacian.

    Its diagonal is formed as the sum of the off-diagonal couplings (col_j - G_jj would cancel
    catastrophically when pi is nearly one-hot, at small eps); the gauge is fixed by dropping the slot
    with the largest coupling (w = 0 there), slots with no coupling get w = 0, and the remaining
    positive-definite block is solved in float64 after symmetric diagonal scaling.
    """
    K = G - torch.diag(torch.diag(G))
    d = K.sum(1)
    keep = d > 0
    keep[int(torch.argmax(d))] = False
    w = torch.zeros_like(h)
    if keep.any():
        A = (torch.diag(d) - K)[keep][:, keep]
        s = A.diagonal().rsqrt()
        w[keep] = s * torch.linalg.solve(s[:, None] * A * s[None, :], s * h[keep])
    return w


def solve_one(h: torch.Tensor, xy: torch.Tensor, mass: torch.Tensor, *, eps: float, max_iters: int,
              tol: float, grad: str):
    """One problem in float64: h (H, W), xy (4, 2), mass (4,). Returns cost, grad (H, W), err, iterations."""
    hh, ww = h.shape
    hf = h.double().flatten()
    a, softmax_mode = suppliers(hf)
    live = mass > 0
    pts = xy.double()[live]
    b = mass.double()[live]
    C = torch.cdist(pixel_grid(hh, ww), pts)  # (N, M) Euclidean
    ell = b.log()
    iters = 0
    while iters < max_iters:
        pi = torch.softmax(ell - C / eps, dim=1)
        col = a @ pi
        err = (col - b).abs().sum()
        if tol > 0 and err < tol:
            break
        ell = ell + b.log() - col.log()
        ell = ell - ell.max()
        iters += 1
    pi = torch.softmax(ell - C / eps, dim=1)
    cbar = (C * pi).sum(1)
    cost = a @ cbar
    col = a @ pi
    err = (col - b).abs().sum()
    if grad == "exact":
        gamma = cbar - pi @ solve_laplacian((a[:, None] * pi).T @ pi, (a[:, None] * pi * (C - cbar[:, None])).sum(0))
    else:
        gamma = -eps * torch.logsumexp(ell - C / eps, dim=1)
    gbar = a @ gamma
    if softmax_mode:
        g = a * (gamma - gbar)
    else:
        g = (gamma - gbar) / hf.clamp_min(0).sum() * (hf > 0)
    return cost, g.view(hh, ww), err, iters


def dm_sinkhorn_reference(heatmaps, demander_xy, demander_mass, *, eps, max_iters, tol, grad="exact"):
    """Batched wrapper with the kernels' signature; float64 outputs (iterations int64)."""
    out = [solve_one(heatmaps[p], demander_xy[p], demander_mass[p], eps=eps, max_iters=max_iters, tol=tol,
                     grad=grad) for p in range(heatmaps.shape[0])]
    cost = torch.stack([o[0] for o in out])
    grad_h = torch.stack([o[1] for o in out])
    err = torch.stack([o[2] for o in out])
    iters = torch.tensor([o[3] for o in out])
    return cost, grad_h, err, iters


def subpixel_demanders(dots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, 2) dots (x, y) -> the four surrounding pixel centres (P, 4, 2) and bilinear masses (P, 4).

    Slot order: (x0, y0), (x0+1, y0), (x0, y0+1), (x0+1, y0+1); a dot on a centre line gives zero masses.
    """
    d = dots.double()
    base = d.floor()
    fx, fy = (d - base).unbind(-1)
    x0, y0 = base.unbind(-1)
    xy = torch.stack([torch.stack([x0, y0], -1), torch.stack([x0 + 1, y0], -1),
                      torch.stack([x0, y0 + 1], -1), torch.stack([x0 + 1, y0 + 1], -1)], dim=1)
    mass = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=-1)
    return xy.float(), mass.float()
