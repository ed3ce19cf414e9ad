"""The distribution-matching (DM) loss and the MSE baseline.

Coordinates: keypoints are (x, y) in heatmap pixels, with pixel centres at integer coordinates
(pixel (i, j) is centred at x = j, y = i and covers [j-0.5, j+0.5) x [i-0.5, i+0.5)), x to the
right, y down.

Per joint, the suppliers are S = relu(H) / ||relu(H)||_1 over the pixels, the demanders are placed
around the ground-truth dot (see `demanders`), the cost is the Euclidean distance between pixel
centres and demanders, and the loss is <C, P> for the entropic plan P (Sinkhorn, regularisation eps).
Joints are summed (the paper's Eq. 5), then the batch is reduced.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dmpose.kernels import select_backend
from dmpose.sinkhorn import SUPPLIER_MAPS, dm_sinkhorn_torch, supplier_map, supplier_map_derivative

__all__ = ["dm_loss", "DMLoss", "demanders", "heatmap_weights", "mse_loss", "MSELoss", "supplier_map"]

_CHOICES = {
    "demanders": ("subpixel", "naive"),
    "cost": ("l2",),
    "grad": ("exact", "envelope"),
    "backend": ("auto", "torch", "triton"),
    "reduction": ("mean", "sum", "none"),
    "suppliers": SUPPLIER_MAPS,
}


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
    raise ValueError(f"demanders must be one of {_CHOICES['demanders']}, got {mode!r}")


def heatmap_weights(keypoints: Tensor, visible: Tensor, heatmap_size: tuple[int, int]) -> Tensor:
    """Per-joint loss weights: 1 for a labelled joint (visible > 0, COCO v = 1 or 2) whose dot lies
    inside the heatmap's area [-0.5, W-0.5) x [-0.5, H-0.5), else 0 (unlabelled, outside, non-finite).

    heatmap_size is (H, W); keypoints (..., 2) are (x, y) heatmap pixels. Joints outside the heatmap
    must get weight 0: the loss would still be finite, but it would pull mass towards the border.
    """
    h, w = heatmap_size
    x, y = keypoints[..., 0], keypoints[..., 1]
    inside = (x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)
    return ((visible > 0) & inside & torch.isfinite(keypoints).all(-1)).to(torch.float32)


def _validate(heatmaps, keypoints, weights, opts) -> Tensor:
    if not isinstance(heatmaps, Tensor) or heatmaps.dim() != 4:
        got = tuple(heatmaps.shape) if isinstance(heatmaps, Tensor) else type(heatmaps).__name__
        raise ValueError(f"heatmaps must be a (B, K, H, W) tensor, got shape {got}")
    if not heatmaps.is_floating_point():
        raise ValueError(f"heatmaps must be floating point, got dtype {heatmaps.dtype}")
    b, k, h, w = heatmaps.shape
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
        raise ValueError(f"keypoints must be finite for joints with weight > 0: keypoints[{bi}, {ki}] = {keypoints[bi, ki].tolist()}")
    eps = opts["eps"]
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    max_iters = opts["max_iters"]
    if isinstance(max_iters, bool) or not isinstance(max_iters, int) or max_iters < 1:
        raise ValueError(f"max_iters must be an integer >= 1, got {max_iters!r}")
    beta = opts["supplier_beta"]
    if isinstance(beta, bool) or not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"supplier_beta must be a finite number > 0, got {beta!r}")
    tol = opts["tol"]
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    for name, choices in _CHOICES.items():
        if opts[name] not in choices:
            raise ValueError(f"{name} must be one of {choices}, got {opts[name]!r}")
    return weights


class _DMLossFunction(torch.autograd.Function):
    """Forward solves the selected problems and saves the weighted gradient; backward scales it."""

    @staticmethod
    def forward(ctx, heatmaps: Tensor, keypoints: Tensor, weights: Tensor, opts: dict) -> Tensor:
        b, k, h, w = heatmaps.shape
        out_dtype = torch.float64 if heatmaps.dtype == torch.float64 else torch.float32
        flat_w = weights.reshape(-1).to(out_dtype)
        labelled = flat_w != 0
        everything = bool(labelled.all())
        idx = None if everything else labelled.nonzero().squeeze(-1)  # only labelled joints are solved
        values = torch.zeros(b * k, dtype=out_dtype, device=heatmaps.device)
        grad = torch.zeros(b * k, h, w, dtype=out_dtype, device=heatmaps.device)
        select = (lambda t: t) if everything else (lambda t: t[idx])
        if everything or idx.numel() > 0:
            xy, mass = demanders(select(keypoints.reshape(-1, 2)).to(out_dtype), opts["demanders"])
            hm_sel = select(heatmaps.reshape(-1, h, w))
            sup, beta = opts["suppliers"], float(opts["supplier_beta"])
            common = dict(eps=float(opts["eps"]), max_iters=opts["max_iters"], tol=float(opts["tol"]), grad=opts["grad"])
            if opts["backend"] == "triton":
                from dmpose.kernels.sinkhorn import dm_sinkhorn_triton

                xy, mass = xy.float(), mass.float()  # the kernels take fp32 coordinates and masses
                # the kernel normalises relu(X): give it the (positive) supplier map and chain the
                # gradient through the map here, in torch (one elementwise pass each way)
                x = hm_sel if sup == "relu" else supplier_map(hm_sel.float(), sup, beta)
                cost, g, _, _ = dm_sinkhorn_triton(x, xy, mass, **common)
                if sup != "relu":
                    g = g * supplier_map_derivative(hm_sel.float(), sup, beta)
            else:
                cost, g, _, _ = dm_sinkhorn_torch(hm_sel, xy, mass, supplier=sup, beta=beta, **common)
            w_sel = select(flat_w)
            if everything:
                values, grad = cost.to(out_dtype) * w_sel, g.to(out_dtype).mul_(w_sel[:, None, None])
            else:
                values[idx] = cost.to(out_dtype) * w_sel
                grad[idx] = g.to(out_dtype) * w_sel[:, None, None]
        ctx.save_for_backward(grad)
        ctx.heatmap_dtype = heatmaps.dtype
        return values.reshape(b, k)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (grad,) = ctx.saved_tensors
        b, k = grad_output.shape
        grad_h = grad.reshape(b, k, *grad.shape[1:]) * grad_output[..., None, None]
        return grad_h.to(ctx.heatmap_dtype), None, None, None


def dm_loss(
    heatmaps: Tensor,
    keypoints: Tensor,
    weights: Tensor | None = None,
    *,
    eps: float = 1.0,
    max_iters: int = 1000,
    tol: float = 1e-5,
    demanders: str = "subpixel",
    cost: str = "l2",
    grad: str = "exact",
    backend: str = "auto",
    reduction: str = "mean",
    suppliers: str = "relu",
    supplier_beta: float = 1.0,
) -> Tensor:
    """Distribution-matching loss between heatmaps and ground-truth dots.

    Args:
        heatmaps: (B, K, H, W) model output, any float dtype (fp16/bf16 computed in fp32).
        keypoints: (B, K, 2) dots (x, y) in heatmap pixels, pixel centres at integer coordinates.
        weights: (B, K) per-joint weights >= 0, or None for all ones. A joint with weight 0 gives
            exactly 0 and no gradient and is not solved; its keypoint may be anything (even NaN).
            Joints whose dot lies outside the heatmap must get weight 0 (see `heatmap_weights`).
        eps: entropic regularisation (the paper's 1). max_iters: Sinkhorn updates at most (the
            paper's 1000). tol: per-problem stop once the L1 marginal error < tol; the default 1e-5 is
            reachable in fp32 (whose floor is ~1e-7, up to 1.5e-6) and gives the value to ~sqrt2*tol;
            tol = 0 runs exactly max_iters, as the paper did.
        demanders: "subpixel" (four bilinear demanders, the paper's) or "naive" (one, for ablation).
        cost: "l2", the Euclidean distance in heatmap pixels.
        grad: "exact" (default): the gradient of <C, P*> itself (implicit differentiation). At eps 1
            the optimum of this loss over a free heatmap decodes ~0.1 px from the dot (the entropic
            plan blurs), at eps 0.25 on it. "envelope": cheaper, but the gradient of a different
            objective, <C, P> + eps KL(P || a x b), whose optimum concentrates the mass on the nearest
            pixel (bias up to 0.27 px): it brings quantisation back. The value is <C, P> in both modes.
        backend: "auto" (Triton for CUDA tensors, torch otherwise), "torch" or "triton".
        reduction: "mean" (sum over joints, mean over the batch), "sum", or "none" -> (B, K).
        suppliers: the supplier map phi whose normalisation phi(H) / sum phi(H) is transported:
            "relu" (the paper's) or "softplus" (softplus(beta H) / beta with beta = supplier_beta;
            never dies in training, see docs/training.md). Decode what the loss saw:
            `decode_2x2(supplier_map(H, suppliers, supplier_beta))`. Only relu is scale-invariant.

    A heatmap with no positive mass uses softmax(H) as its suppliers (finite loss, and a gradient
    that reaches every pixel). Memory is O(B*K*H*W*4); the iterations never enter autograd.
    """
    opts = dict(eps=eps, max_iters=max_iters, tol=tol, demanders=demanders, cost=cost, grad=grad, backend=backend,
                reduction=reduction, suppliers=suppliers, supplier_beta=supplier_beta)
    weights = _validate(heatmaps, keypoints, weights, opts)
    opts["backend"] = select_backend(backend, heatmaps.device)
    per_joint = _DMLossFunction.apply(heatmaps, keypoints.detach(), weights.detach(), opts)
    if reduction == "none":
        return per_joint
    total = per_joint.sum()
    return total / heatmaps.shape[0] if reduction == "mean" else total


class DMLoss(nn.Module):
    """`dm_loss` as a module; the options are those of `dm_loss`."""

    def __init__(
        self,
        *,
        eps: float = 1.0,
        max_iters: int = 1000,
        tol: float = 1e-5,
        demanders: str = "subpixel",
        cost: str = "l2",
        grad: str = "exact",
        backend: str = "auto",
        reduction: str = "mean",
        suppliers: str = "relu",
        supplier_beta: float = 1.0,
    ) -> None:
        super().__init__()
        self.options = dict(eps=eps, max_iters=max_iters, tol=tol, demanders=demanders, cost=cost, grad=grad, backend=backend,
                            reduction=reduction, suppliers=suppliers, supplier_beta=supplier_beta)

    def forward(self, heatmaps: Tensor, keypoints: Tensor, weights: Tensor | None = None) -> Tensor:
        return dm_loss(heatmaps, keypoints, weights, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


def mse_loss(heatmaps: Tensor, targets: Tensor, weights: Tensor | None = None, *, reduction: str = "mean") -> Tensor:
    """The MSE baseline of SimpleBaseline/HRNet: 0.5 * mean over pixels of (w * (H - T))^2, averaged
    over joints (as the official JointsMSELoss), then reduced over the batch ("mean", "sum", "none")."""
    if heatmaps.shape != targets.shape or heatmaps.dim() != 4:
        raise ValueError(f"heatmaps and targets must both be (B, K, H, W), got {tuple(heatmaps.shape)} and {tuple(targets.shape)}")
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
