"""Fit a free heatmap to a dot with the DM loss, then decode it: the loss and decode, end to end."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dmpose.decode import decode_2x2
from dmpose.loss import dm_loss
from dmpose.spec import DMLossOptions
from dmpose.suppliers import decoded_map


@dataclass
class DemoResult:
    dot: tuple[float, float]
    decoded: tuple[float, float]
    confidence: float
    loss_start: float
    loss_end: float
    steps: int

    @property
    def error_px(self) -> float:
        return ((self.decoded[0] - self.dot[0]) ** 2 + (self.decoded[1] - self.dot[1]) ** 2) ** 0.5


def fit_heatmap_to_dot(
    dot: tuple[float, float],
    size: tuple[int, int] = (64, 48),
    *,
    steps: int = 500,
    lr: float = 0.01,
    eps: float = 0.25,
    grad: str = "exact",
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> DemoResult:
    """Gradient descent (Adam) on a free (1, 1, H, W) heatmap under `dm_loss` (its default supplier map), then
    `decode_2x2` of the distribution the loss transported (`dmpose.suppliers.decoded_map`).

    dot is (x, y) in heatmap pixels (pixel centres at integer coordinates); size is (H, W).
    """
    h, w = size
    if not (-0.5 <= dot[0] < w - 0.5 and -0.5 <= dot[1] < h - 0.5):
        raise ValueError(f"dot {dot} lies outside the {h}x{w} heatmap area [-0.5, {w - 0.5}) x [-0.5, {h - 0.5})")
    gen = torch.Generator().manual_seed(seed)
    heatmap = (0.01 * torch.rand(1, 1, h, w, generator=gen, dtype=torch.float64)).requires_grad_(True)
    target = torch.tensor([[list(dot)]], dtype=torch.float64)
    opt = torch.optim.Adam([heatmap], lr=lr)
    losses = []
    for step in range(steps):
        opt.zero_grad()
        loss = dm_loss(heatmap, target, eps=eps, grad=grad, tol=1e-7)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    opts = DMLossOptions()  # the supplier map dm_loss used: the decode reads the distribution the loss transported
    coords, conf = decode_2x2(decoded_map(heatmap.detach(), opts.suppliers, opts.supplier_beta))
    return DemoResult(
        dot=(float(dot[0]), float(dot[1])),
        decoded=(coords[0, 0, 0].item(), coords[0, 0, 1].item()),
        confidence=conf[0, 0].item(),
        loss_start=losses[0],
        loss_end=dm_loss(heatmap.detach(), target, eps=eps, tol=1e-7).item(),
        steps=steps,
    )
