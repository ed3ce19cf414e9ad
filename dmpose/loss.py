"""The distribution-matching (DM) loss and the MSE baseline.

Coordinates: keypoints are (x, y) in heatmap pixels, with pixel centres at integer coordinates
(pixel (i, j) is centred at x = j, y = i and covers [j-0.5, j+0.5) x [i-0.5, i+0.5)), x to the
right, y down.

Per joint, the suppliers are S = phi(H) / ||phi(H)||_1 over the pixels (phi = softplus by default,
relu in the paper; `dmpose.suppliers`), the demanders are placed
around the ground-truth dot (see `demanders`), the cost is the Euclidean distance between pixel
centres and demanders (raised to `cost_power`, 1 by default: the paper's), and the loss is <C, P> for
the entropic plan P (Sinkhorn, regularisation eps).
Joints are summed (the paper's Eq. 5), then the batch is reduced.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dmpose.heatmaps import check_heatmaps, compute_dtype, inside_heatmap, nonfinite_error, nonfinite_maps
from dmpose.kernels import select_loss_backend
from dmpose.kernels.cpu import cpu_kernel_skip_reason, cpu_tensor_skip_reason, demander_ce_cpu, dm_sinkhorn_cpu
from dmpose.sinkhorn import dm_sinkhorn_torch
from dmpose.spec import DMLossOptions, SpecError
from dmpose.suppliers import (
    log_softplus,
    log_softplus_derivative,
    log_supplier_distribution,
    require_log_map,
    supplier_map,
    supplier_map_derivative,
)

__all__ = ["dm_loss", "DMLoss", "DMLossOptions", "DMLossStats", "DMConvergenceWarning", "demanders",
           "demander_cross_entropy", "log_supplier_distribution",
           "mse_loss", "MSELoss"]


class DMConvergenceWarning(RuntimeWarning):
    """Sinkhorn stopped at max_iters before the marginal error reached tol (issued once per process)."""


_WARNED_UNCONVERGED = False


@dataclass(frozen=True)
class DMLossStats:
    """What one `dm_loss` call did (`DMLoss.last_stats`, or `dm_loss(..., return_stats=True)`).

    solved: joints solved (weight > 0 and finite); max_marginal_error: the worst L1 column-marginal error
    among them (0.0 when none); max_iterations / mean_iterations: Sinkhorn updates; unconverged: problems
    that stopped at max_iters with marginal error >= tol (always 0 for tol = 0, which runs max_iters by
    design); nonfinite: (batch, joint) heatmaps holding NaN/Inf that nonfinite="mask" left out (weight 0).
    """

    solved: int = 0
    max_marginal_error: float = 0.0
    max_iterations: int = 0
    mean_iterations: float = 0.0
    unconverged: int = 0
    nonfinite: int = 0
    tol: float = 0.0

    @property
    def converged(self) -> bool:
        return self.unconverged == 0


def demanders(keypoints: Tensor, mode: str = "subpixel") -> tuple[Tensor, Tensor]:
    """Demander locations (..., 4, 2) and masses (..., 4) for dots (..., 2) in heatmap pixels.

    subpixel: the four pixel centres around the dot, (x0, y0), (x0+1, y0), (x0, y0+1), (x0+1, y0+1)
    with x0 = floor(x), y0 = floor(y), and bilinear masses (1-|x-x_i|)(1-|y-y_i|). They sum to 1 and
    their mean is exactly the dot; a dot on a pixel centre gets mass 1 on that pixel and three zeros.
    naive: one demander at the centre of the pixel holding the dot, (floor(x+0.5), floor(y+0.5)),
    returned as four identical slots with masses (1, 0, 0, 0) so that both modes share one shape.
    Zero-mass demanders take no part in the transport. A dot in the outer half of a border pixel gives
    demanders outside the heatmap, which is fine (cost is just distance).
    """
    if mode == "subpixel":
        base = torch.floor(keypoints)
        frac = keypoints - base  # in [0, 1)
        offsets = keypoints.new_tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        xy = base.unsqueeze(-2) + offsets
        wx = torch.stack([1 - frac[..., 0], frac[..., 0]], dim=-1)
        wy = torch.stack([1 - frac[..., 1], frac[..., 1]], dim=-1)
        mass = (wy.unsqueeze(-1) * wx.unsqueeze(-2)).flatten(-2)  # order: (x0,y0) (x1,y0) (x0,y1) (x1,y1)
        return xy, mass
    if mode == "naive":
        centre = torch.floor(keypoints + 0.5)
        xy = centre.unsqueeze(-2).expand(*keypoints.shape[:-1], 4, 2).clone()
        mass = torch.zeros(*keypoints.shape[:-1], 4, dtype=keypoints.dtype, device=keypoints.device)
        mass[..., 0] = 1.0
        return xy, mass
    raise ValueError(f"demander mode must be one of ('subpixel', 'naive'), got {mode!r}")


def _validate(heatmaps, keypoints, weights) -> Tensor:
    b, k, h, w = check_heatmaps(heatmaps)
    if not isinstance(keypoints, Tensor) or keypoints.shape != (b, k, 2):
        got = tuple(keypoints.shape) if isinstance(keypoints, Tensor) else type(keypoints).__name__
        raise ValueError(f"keypoints must have shape (B, K, 2) = {(b, k, 2)} to match heatmaps, got {got}")
    if weights is None:
        weights = torch.ones(b, k, dtype=torch.float32, device=heatmaps.device)
    elif not isinstance(weights, Tensor) or weights.shape != (b, k):
        got = tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__
        raise ValueError(f"weights must have shape (B, K) = {(b, k)} or be None, got {got}")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(f"weights must be finite and >= 0, got min {weights.min().item()}")
    labelled = weights != 0
    bad = labelled & ~torch.isfinite(keypoints).all(-1)
    if bool(bad.any()):
        bi, ki = bad.nonzero()[0].tolist()
        raise ValueError(f"keypoints must be finite for joints with weight > 0: "
                         f"keypoints[{bi}, {ki}] = {keypoints[bi, ki].tolist()}")
    outside = labelled & ~inside_heatmap(keypoints, (w, h))
    if bool(outside.any()):
        bi, ki = outside.nonzero()[0].tolist()
        raise ValueError(f"keypoints[{bi}, {ki}] = {keypoints[bi, ki].tolist()} lies outside the {h}x{w} heatmap's "
                         f"area [-0.5, {w - 0.5}) x [-0.5, {h - 0.5}) but has weight {weights[bi, ki].item():g}; "
                         "such joints must get weight 0 (heatmap_weights does this)")
    return weights


def resolve_options(options: DMLossOptions | None, kwargs: dict[str, Any], source: str = "dm_loss") -> DMLossOptions:
    """`options` updated by `kwargs` (DMLossOptions field names), validated once. The old argument name
    `demanders` is still accepted for `demander_mode`, with a DeprecationWarning."""
    kwargs = dict(kwargs)
    renamed = "demanders" in kwargs
    if renamed:
        warnings.warn("the `demanders` option is now `demander_mode`", DeprecationWarning, stacklevel=3)
        kwargs["demander_mode"] = kwargs.pop("demanders")
    if options is not None and not isinstance(options, DMLossOptions):
        raise TypeError(f"options must be a DMLossOptions, got {type(options).__name__}")
    if not kwargs:
        return options if options is not None else DMLossOptions()
    base = options.model_dump() if options is not None else {}
    try:
        return DMLossOptions.validated({**base, **kwargs}, source=source)
    except SpecError as e:
        raise SpecError(str(e).replace("demander_mode", "demanders")) if renamed else e from None


def _solve_labelled(heatmaps: Tensor, keypoints: Tensor, flat_w: Tensor, idx: Tensor | None, opts: DMLossOptions,
                    backend: str, need_grad: bool, record: dict, values: Tensor, grad: Tensor | None
                    ) -> tuple[Tensor, Tensor | None]:
    """Solve the labelled problems (all when idx is None) on `backend`: the weighted values into `values` (B*K,)
    and, when need_grad, the weighted gradient into the zeroed `grad` (B*K, H, W); returns both."""
    b, k, h, w = heatmaps.shape
    out_dtype, everything = values.dtype, idx is None
    select = (lambda t: t) if everything else (lambda t: t[idx])
    xy, mass = demanders(select(keypoints.reshape(-1, 2)).to(out_dtype), opts.demander_mode)
    solve, grad_mode = dm_sinkhorn_torch, opts.grad if need_grad else "none"
    if backend == "cpu":
        reason = cpu_kernel_skip_reason(heatmaps, xy, opts.eps)
        if reason is not None and opts.backend == "cpu":
            raise ValueError(f"backend='cpu' cannot take these heatmaps: {reason}")
        if reason is None:  # the kernel reads the labelled rows in place and writes w * gradient there
            rows = torch.arange(b * k) if everything else idx
            cost, grad, record["marginal_error"], record["iterations"] = dm_sinkhorn_cpu(
                heatmaps.reshape(-1, h, w), xy, mass, eps=opts.eps, max_iters=opts.max_iters, tol=opts.tol,
                grad=grad_mode, supplier=opts.suppliers, beta=opts.supplier_beta, cost_power=opts.cost_power,
                rows=rows, grad_out=grad, grad_weight=select(flat_w))
            values[rows] = cost * select(flat_w)
            return values, grad
    if backend == "triton":
        from dmpose.kernels.sinkhorn import dm_sinkhorn_triton as solve

        xy, mass = xy.float(), mass.float()  # the kernels take fp32 coordinates and masses
        grad_mode = opts.grad  # one launch gives value and gradient
    hm_sel = select(heatmaps.reshape(-1, h, w))
    common = dict(eps=opts.eps, max_iters=opts.max_iters, tol=opts.tol, grad=grad_mode, cost_power=opts.cost_power)
    sup, beta = opts.suppliers, opts.supplier_beta
    if backend == "triton" and sup != "relu":
        # the kernel normalises relu(X): give it the (positive) supplier map and chain the gradient
        # through the map here, in torch (one elementwise pass each way)
        cost, g, record["marginal_error"], record["iterations"] = solve(
            supplier_map(hm_sel.float(), sup, beta), xy, mass, **common)
        g = g * supplier_map_derivative(hm_sel.float(), sup, beta)
    elif backend == "triton":
        cost, g, record["marginal_error"], record["iterations"] = solve(hm_sel, xy, mass, **common)
    else:
        cost, g, record["marginal_error"], record["iterations"] = solve(
            hm_sel, xy, mass, supplier=sup, beta=beta, **common)
    w_sel = select(flat_w)
    if everything:
        values = cost.to(out_dtype) * w_sel
        if need_grad:
            grad = g.to(out_dtype).mul_(w_sel[:, None, None])
    else:
        values[idx] = cost.to(out_dtype) * w_sel
        if need_grad:
            grad[idx] = g.to(out_dtype) * w_sel[:, None, None]
    return values, grad


class _DMLossFunction(torch.autograd.Function):
    """Forward solves the selected problems and saves the weighted gradient; backward scales it."""

    @staticmethod
    def forward(ctx, heatmaps: Tensor, keypoints: Tensor, weights: Tensor, opts: DMLossOptions, backend: str,
                need_grad: bool, record: dict) -> Tensor:
        b, k, h, w = heatmaps.shape
        out_dtype = compute_dtype(heatmaps)
        flat_w = weights.reshape(-1).to(out_dtype)
        labelled = flat_w != 0
        everything = bool(labelled.all())
        idx = None if everything else labelled.nonzero().squeeze(-1)  # only labelled joints are solved
        values = torch.zeros(b * k, dtype=out_dtype, device=heatmaps.device)
        # no gradient wanted (torch.no_grad(), or heatmaps that do not require grad): none is computed
        grad = torch.zeros(b * k, h, w, dtype=out_dtype, device=heatmaps.device) if need_grad else None
        if everything or idx.numel() > 0:
            values, grad = _solve_labelled(heatmaps, keypoints, flat_w, idx, opts, backend, need_grad, record,
                                           values, grad)
        if need_grad:
            ctx.save_for_backward(grad)
        ctx.heatmap_dtype = heatmaps.dtype
        return values.reshape(b, k)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (grad,) = ctx.saved_tensors
        b, k = grad_output.shape
        grad_h = grad.reshape(b, k, *grad.shape[1:]) * grad_output[..., None, None]
        return grad_h.to(ctx.heatmap_dtype), None, None, None, None, None, None


def dm_loss(
    heatmaps: Tensor,
    keypoints: Tensor,
    weights: Tensor | None = None,
    options: DMLossOptions | None = None,
    *,
    return_stats: bool = False,
    **kwargs: Any,
) -> Tensor | tuple[Tensor, DMLossStats]:
    """Distribution-matching loss between heatmaps and ground-truth dots.

    Args:
        heatmaps: (B, K, H, W) model output, any float dtype (fp16/bf16 computed in fp32). Any finite
            values work (the positive mass is summed after scaling by a power of two, so even 1e36 in
            fp32 gives the loss of the same heatmap scaled down).
        keypoints: (B, K, 2) dots (x, y) in heatmap pixels, pixel centres at integer coordinates.
        weights: (B, K) per-joint weights >= 0, or None for all ones. A joint with weight 0 gives
            exactly 0 and no gradient and is not solved; its keypoint may be anything (even NaN).
            A joint with weight > 0 must have its dot inside the heatmap's area
            [-0.5, W-0.5) x [-0.5, H-0.5), else ValueError naming it (`heatmap_weights` gives 0 there).
        options: a `DMLossOptions` (validated once; reuse it); keyword arguments (its field names)
            override single fields. The fields:
        eps: entropic regularisation (the paper's 1). max_iters: Sinkhorn updates at most (the
            paper's 1000). tol: per-problem stop once the L1 marginal error < tol; the default 1e-5 is
            reachable in fp32 (whose floor is ~1e-7, up to 1.5e-6) and gives the value to ~sqrt2*tol;
            tol = 0 runs exactly max_iters, as the paper did. A problem that reaches max_iters with
            error >= tol (small eps) is reported: a `DMConvergenceWarning` once per process with the worst
            error, and always in the stats (see return_stats).
        demander_mode: "subpixel" (four bilinear demanders, the paper's) or "naive" (one, for ablation).
        suppliers: the supplier map phi whose normalisation phi(H) / sum phi(H) is transported
            (`dmpose.suppliers`): "softplus" (the default: softplus(beta H) / beta with beta =
            supplier_beta, default 8; never dies in training) or "relu" (the paper's exact form, whose maps die
            when a network is trained from scratch: docs/training.md). A DM model's decode reads
            the same map (`dmpose.suppliers.decoded_map`, named in the spec's codec). Only relu is
            scale-invariant. cost: "l2" only (the Euclidean distance d in heatmap pixels); cost_power p in
            (0, 1]: the cost is d ** p (1, the default, is the paper's; p < 1 is concave, so the last pixel
            onto the dot earns more than a pixel far away: docs/findings.md).
        grad: "exact" (default): the gradient of <C, P*> itself (implicit differentiation). At eps 1
            the optimum of this loss over a free heatmap decodes ~0.1 px from the dot (the entropic
            plan blurs), at eps 0.25 on it. "envelope": cheaper, but the gradient of a different
            objective, <C, P> + eps KL(P || a x b), whose optimum concentrates the mass on the nearest
            pixel (bias up to 0.27 px): it brings quantisation back. The value is <C, P> in both modes.
        backend: "auto" (Triton for CUDA tensors; on the CPU the compiled C kernel `dmpose.kernels.cpu`
            where it compiles, else torch; float64 heatmaps always take the torch path), "torch", "triton"
            or "cpu" (the C kernel, or ValueError with the reason it cannot run).
        reduction: "mean" (sum over joints, mean over the batch; an empty batch gives 0, not NaN),
            "sum", or "none" -> (B, K).
        nonfinite: "raise" (default): a heatmap holding NaN/Inf is a ValueError naming its (batch, joint);
            "mask": such joints are left out (value 0, gradient 0, as weight 0) and counted in the stats'
            `nonfinite` (e.g. for a trainer that skips and counts non-finite steps).
        return_stats: also return a `DMLossStats` (worst marginal error, iterations, unconverged and
            non-finite counts): `(loss, stats)`. `DMLoss` keeps the latest in `last_stats`.

    A heatmap with no positive mass uses softmax(H) as its suppliers (finite loss, and a gradient
    that reaches every pixel). Memory is O(B*K*H*W*4); the iterations never enter autograd; under
    `torch.no_grad()`, or for heatmaps that do not require grad, no gradient is computed at all.
    """
    opts = resolve_options(options, kwargs)
    weights = _validate(heatmaps, keypoints, weights)
    # one summing pass answers for all-finite maps (the usual case); the per-map check only when it is not finite
    finite = bool(torch.isfinite(heatmaps.detach().sum()))
    bad = None if finite else nonfinite_maps(heatmaps.detach())
    n_bad = 0 if finite else int(bad.sum())
    if n_bad:
        if opts.nonfinite == "raise":
            raise nonfinite_error(bad, "heatmaps")
        weights = weights.masked_fill(bad, 0)
    backend = select_loss_backend(opts.backend, heatmaps.device)
    need_grad = torch.is_grad_enabled() and heatmaps.requires_grad
    record: dict = {}
    per_joint = _DMLossFunction.apply(heatmaps, keypoints.detach(), weights.detach(), opts, backend, need_grad,
                                      record)
    stats = _stats(record, float(opts.tol), n_bad)
    if opts.reduction == "none":
        loss = per_joint
    else:
        total = per_joint.sum()
        loss = total / max(heatmaps.shape[0], 1) if opts.reduction == "mean" else total
    return (loss, stats) if return_stats else loss


def _stats(record: dict, tol: float, n_bad: int) -> DMLossStats:
    """Summarise the solver's per-problem numbers (one device sync) and warn, once, about non-convergence."""
    global _WARNED_UNCONVERGED
    err, iters = record.get("marginal_error"), record.get("iterations")
    if err is None or err.numel() == 0:
        return DMLossStats(nonfinite=n_bad, tol=tol)
    err = err.detach().double()
    unconverged = (err >= tol).sum() if tol > 0 else torch.zeros((), dtype=torch.float64, device=err.device)
    it = iters.detach().double()
    worst, it_max, it_mean, n_unconv = torch.stack([err.max(), it.max(), it.mean(), unconverged.double()]).tolist()
    stats = DMLossStats(solved=err.numel(), max_marginal_error=worst, max_iterations=int(it_max),
                        mean_iterations=it_mean, unconverged=int(n_unconv), nonfinite=n_bad, tol=tol)
    if stats.unconverged and not _WARNED_UNCONVERGED:
        _WARNED_UNCONVERGED = True
        warnings.warn(f"dm_loss: Sinkhorn did not converge for {stats.unconverged} of {stats.solved} joints within "
                      f"{stats.max_iterations} iterations (worst marginal error {worst:.3g} >= tol {tol:g}; small eps "
                      "needs more max_iters). Warned once per process; DMLoss.last_stats / return_stats=True report "
                      "every call.", DMConvergenceWarning, stacklevel=3)
    return stats


class DMLoss(nn.Module):
    """`dm_loss` as a module; options as `dm_loss`'s, validated here once (`.options`, a DMLossOptions).
    After each call, `last_stats` holds that call's `DMLossStats` (worst marginal error, iterations,
    unconverged and non-finite counts)."""

    def __init__(self, options: DMLossOptions | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.options = resolve_options(options, kwargs, source="DMLoss")
        self.last_stats: DMLossStats | None = None  # the latest call's DMLossStats

    def forward(self, heatmaps: Tensor, keypoints: Tensor, weights: Tensor | None = None) -> Tensor:
        loss, self.last_stats = dm_loss(heatmaps, keypoints, weights, self.options, return_stats=True)
        return loss

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.model_dump().items())


class _DemanderCEFunction(torch.autograd.Function):
    """-sum_j m_j log S(y_j) of the selected maps, S = softplus(beta H) / sum softplus(beta H), with its
    gradient in closed form: d/dH_p = beta * w * (S_p sum_j m_j - [p = y_j] m_j) * dlogphi_p, dlogphi =
    sigmoid(x) / softplus(x) at x = beta H (`log_softplus_derivative`). One elementwise pass
    each way instead of autograd's chain through log, softplus and logsumexp."""

    @staticmethod
    def forward(ctx, flat: Tensor, pix: Tensor, m: Tensor, w: Tensor, beta: float) -> Tensor:
        x = flat * beta  # (n, H*W)
        log_phi, sp = log_softplus(x)  # log(beta phi): the shift by log beta cancels in S
        lse = torch.logsumexp(log_phi, dim=-1, keepdim=True)
        per = -(m * (log_phi.gather(-1, pix) - lse)).sum(-1) * w
        if flat.requires_grad:
            ctx.save_for_backward(x, sp, log_phi.sub_(lse), pix, m, w)  # log_phi - lse = log S
            ctx.beta = beta
        return per

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, sp, log_s, pix, m, w = ctx.saved_tensors
        g = log_s.exp().mul_(m.sum(-1, keepdim=True))  # S * sum_j m_j (the saved tensors stay as they are)
        g.scatter_add_(-1, pix, -m)
        return g.mul_(log_softplus_derivative(x, sp)).mul_((ctx.beta * w * grad_out)[:, None]), None, None, None, None


class _DemanderCECPUFunction(torch.autograd.Function):
    """`_DemanderCEFunction` on the compiled CPU kernel (`dmpose.kernels.cpu.demander_ce_cpu`, in double), for the
    maps flat[rows] read in place: the value of every row of flat (0 on rows not named) and, when it will be
    needed, the gradient, computed in the forward; backward scales it."""

    @staticmethod
    def forward(ctx, flat: Tensor, pix: Tensor, m: Tensor, w: Tensor, beta: float, rows: Tensor) -> Tensor:
        per, grad = demander_ce_cpu(flat, pix, m, w, beta, need_grad=ctx.needs_input_grad[0], rows=rows)
        if grad is not None:
            ctx.save_for_backward(grad)
        ctx.heatmap_dtype = flat.dtype
        return flat.new_zeros(flat.shape[0], dtype=torch.float32).index_put_((rows,), per)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (grad,) = ctx.saved_tensors
        return (grad * grad_out[:, None]).to(ctx.heatmap_dtype), None, None, None, None, None


def demander_cross_entropy(heatmaps: Tensor, keypoints: Tensor, weights: Tensor | None = None,
                           options: DMLossOptions | None = None, **kwargs: Any) -> Tensor:
    """Cross-entropy of the DM supplier distribution S at the demanders: -sum_j b_j log S(y_j) per joint
    (the demanders and masses of `demanders`, options.demander_mode; demanders outside the heatmap are left
    out and the others' masses renormalised). Its minimum over a free map is S = b, the same distribution
    the DM loss's optimum approaches, so it biases nothing; unlike DM's gradient (proportional to the mass
    already on a pixel) its gradient on the dot's pixels does not vanish when the map is elsewhere.
    Joints summed and the batch reduced as `dm_loss` (options.reduction). Softplus suppliers only; only
    labelled joints are computed (fp32, fp64 for fp64 input; log S as `log_supplier_distribution`), on the
    backend options.backend names (auto: the compiled C kernel, in double, for fp32 CPU tensors where it compiles)."""
    opts = resolve_options(options, kwargs, source="demander_cross_entropy")
    weights = _validate(heatmaps, keypoints, weights)
    require_log_map(opts.suppliers)
    b, k, h, w = heatmaps.shape
    dtype = compute_dtype(heatmaps)
    flat_w = weights.reshape(-1).to(dtype)
    idx = (flat_w != 0).nonzero().squeeze(-1)  # only labelled joints
    xy, mass = demanders(keypoints.reshape(-1, 2)[idx].to(dtype), opts.demander_mode)
    ix, iy = xy[..., 0].long(), xy[..., 1].long()  # demanders sit on pixel centres
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h) & (mass > 0)
    m = torch.where(inside, mass, 0.0)
    m = m / m.sum(-1, keepdim=True).clamp_min(torch.finfo(m.dtype).tiny)
    pix = iy.clamp(0, h - 1) * w + ix.clamp(0, w - 1)
    on_cpu_kernel = select_loss_backend(opts.backend, heatmaps.device) == "cpu"
    if on_cpu_kernel:
        reason = cpu_tensor_skip_reason(heatmaps)
        if reason is not None and opts.backend == "cpu":
            raise ValueError(f"backend='cpu' cannot take these heatmaps: {reason}")
        on_cpu_kernel = reason is None
    flat = heatmaps.reshape(b * k, h * w)
    if on_cpu_kernel:  # reads the labelled rows in place; the gradient comes back for all rows (zero elsewhere)
        per_joint = _DemanderCECPUFunction.apply(flat, pix, m, flat_w[idx], opts.supplier_beta, idx)
    else:
        per_joint = torch.zeros(b * k, dtype=dtype, device=heatmaps.device).index_put(
            (idx,), _DemanderCEFunction.apply(flat[idx].to(dtype), pix, m, flat_w[idx], opts.supplier_beta))
    per_joint = per_joint.reshape(b, k)
    if opts.reduction == "none":
        return per_joint
    total = per_joint.sum()
    return total / max(b, 1) if opts.reduction == "mean" else total


def mse_loss(heatmaps: Tensor, targets: Tensor, weights: Tensor | None = None, *, reduction: str = "mean") -> Tensor:
    """The MSE baseline of SimpleBaseline/HRNet: 0.5 * mean over pixels of (w * (H - T))^2, averaged
    over joints (as the official JointsMSELoss), then reduced over the batch ("mean", "sum", "none")."""
    if heatmaps.shape != targets.shape or heatmaps.dim() != 4:
        raise ValueError(f"heatmaps and targets must both be (B, K, H, W), got {tuple(heatmaps.shape)} and "
                         f"{tuple(targets.shape)}")
    if weights is None:
        weights = torch.ones(heatmaps.shape[:2], dtype=heatmaps.dtype, device=heatmaps.device)
    diff = (heatmaps.float() - targets.float()) * weights.float()[..., None, None]
    per_joint = 0.5 * diff.pow(2).mean(dim=(-2, -1))  # (B, K)
    if reduction == "none":
        return per_joint
    per_image = per_joint.mean(-1)
    if reduction == "mean":
        return per_image.mean()
    if reduction == "sum":
        return per_image.sum()
    raise ValueError(f"reduction must be one of ('mean', 'sum', 'none'), got {reduction!r}")


class MSELoss(nn.Module):
    """`mse_loss` as a module."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, heatmaps: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
        return mse_loss(heatmaps, targets, weights, reduction=self.reduction)
