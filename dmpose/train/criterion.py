"""The training criterion: the config's loss built once, as named, weighted terms on the heatmaps.

Terms (each already multiplied by its weight; the loss is their sum, in this order):

  dm   loss.dm_weight x the DM loss on the dots (`dmpose.loss.dm_loss`, options loss.dm)
  mse  the MSE loss on Gaussian targets: the whole loss for loss.name "mse"; for "dm" the auxiliary term,
       weighted by loss.aux_mse at the run's progress (`LossConfig.aux_weight`)
  ce   loss.aux_ce (at the run's progress) x the demander cross-entropy (`dmpose.loss.demander_cross_entropy`)

Terms whose weight is 0 are not computed. Each joint is weighted by its visibility weight times
loss.joint_weights. The losses run in fp32, outside autocast.

`gradient_shares` measures what each term contributes to the gradient reaching the heatmaps:
share_t = ||d term_t / dH|| / sum over terms of ||d term_s / dH|| (norms over the whole batch).
Heatmaps are (B, K, H, W); keypoints (x, y) in heatmap pixels, pixel centres at integer coordinates.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from dmpose.codec import GaussianCodec
from dmpose.loss import demander_cross_entropy, dm_loss, mse_loss
from dmpose.train.config import TrainConfig

__all__ = ["Criterion", "gradient_shares"]


class Criterion:
    """`Criterion(cfg)(heatmaps, batch, progress)` -> the training loss; `.terms(...)` -> the weighted terms.

    Built once per run from a `TrainConfig`: the loss options, joint weights and (for MSE terms) the
    Gaussian codec are resolved here, not per step. `progress` = step / total steps in [0, 1] (the auxiliary
    weights may fall with it: loss.aux_until).
    """

    def __init__(self, cfg: TrainConfig, device: torch.device | str = "cpu") -> None:
        self.loss = cfg.loss
        self.name = cfg.loss.name
        self.device = torch.device(device)
        jw = cfg.joint_weights()
        self.joint_weights = None if jw is None else torch.tensor(jw, dtype=torch.float32, device=self.device)
        spec = cfg.pose_spec()
        self.gaussian = GaussianCodec(spec.heatmap_wh, sigma=cfg.mse_sigma(), flavour=cfg.loss.mse.flavour)

    def __repr__(self) -> str:
        parts = [f"dm x {self.loss.dm_weight:g}"] if self.name == "dm" and self.loss.dm_weight > 0 else []
        if self.name == "mse":
            parts.append("mse")
        for key, term in (("aux_mse", "mse"), ("aux_ce", "ce")):
            if self.name == "dm" and getattr(self.loss, key) > 0:
                parts.append(f"{term} x {getattr(self.loss, key):g}")
        return f"Criterion({' + '.join(parts)})"

    @property
    def term_names(self) -> tuple[str, ...]:
        """The terms this criterion can give (some may be 0-weighted at a given progress and left out)."""
        if self.name == "mse":
            return ("mse",)
        names = ("dm",) if self.loss.dm_weight > 0 else ()
        names += ("mse",) if self.loss.aux_mse > 0 else ()
        return names + (("ce",) if self.loss.aux_ce > 0 else ())

    def gaussian_targets(self, batch: dict) -> Tensor:
        """(B, K, H, W) Gaussian targets (loss.mse's sigma and flavour) for the dots of a DM batch."""
        kp, w = batch["keypoints_hm"].numpy(), batch["weights"].numpy()
        return torch.from_numpy(np.stack([self.gaussian.encode(k, v > 0)["heatmaps"] for k, v in zip(kp, w)]))

    def _weights(self, batch: dict) -> Tensor:
        w = batch["weights"].to(self.device, non_blocking=True)
        return w if self.joint_weights is None else w * self.joint_weights.to(w.dtype)

    def terms(self, heatmaps: Tensor, batch: dict, progress: float = 0.0) -> dict[str, Tensor]:
        """The weighted terms (fp32 scalars) for this batch, in the order they are summed."""
        w = self._weights(batch)
        hm = heatmaps.float()
        if self.name == "mse":
            return {"mse": mse_loss(hm, batch["target"]["heatmaps"].to(self.device, non_blocking=True), w)}
        kp = batch["keypoints_hm"].to(self.device, non_blocking=True)
        out: dict[str, Tensor] = {}
        if self.loss.dm_weight > 0:
            out["dm"] = self.loss.dm_weight * dm_loss(hm, kp, w, self.loss.dm)
        aux = self.loss.aux_weight(progress, "aux_mse")
        if aux > 0:
            out["mse"] = aux * mse_loss(hm, self.gaussian_targets(batch).to(self.device, non_blocking=True), w)
        aux = self.loss.aux_weight(progress, "aux_ce")
        if aux > 0:
            out["ce"] = aux * demander_cross_entropy(hm, kp, w, self.loss.dm)
        return out

    @staticmethod
    def total(terms: dict[str, Tensor], like: Tensor) -> Tensor:
        """The sum of the terms (0 when none is left, e.g. every auxiliary weight has fallen to 0)."""
        loss = None
        for t in terms.values():
            loss = t if loss is None else loss + t
        return like.new_zeros(()) if loss is None else loss

    def __call__(self, heatmaps: Tensor, batch: dict, progress: float = 0.0) -> Tensor:
        return self.total(self.terms(heatmaps, batch, progress), heatmaps.float())


def gradient_shares(terms: dict[str, Tensor], heatmaps: Tensor) -> dict[str, float]:
    """Per term t: `grad_norm_t` = ||d term_t / d heatmaps|| and `grad_share_t` = that norm over the sum of the
    terms' norms (nan when every norm is 0). The graph is kept (the step's backward follows)."""
    norms = {}
    for name, t in terms.items():
        (g,) = torch.autograd.grad(t, heatmaps, retain_graph=True, allow_unused=True)
        norms[name] = 0.0 if g is None else float(g.float().norm())
    total = sum(norms.values())
    out = {f"grad_norm_{n}": v for n, v in norms.items()}
    out.update({f"grad_share_{n}": (v / total if total > 0 else math.nan) for n, v in norms.items()})
    return out
