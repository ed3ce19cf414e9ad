"""Experiment (docs/dm-training.md, fourth session): is the slow learning of the normalised-map losses (DM, and
the demander cross-entropy) caused by their optimum being a map of unbounded sharpness (a 4-pixel distribution,
so the logits are driven apart without limit)? This runs `dmpose train` with `loss.aux_ce`'s cross-entropy
replaced by the cross-entropy against the *normalised Gaussian* target of loss.mse (sigma, flavour): the same
supplier map and reach, but an optimum of bounded sharpness.

    python experiments/ce_gaussian_target.py dmpose/configs/study/base.yaml --set loss.aux_ce=100 --out DIR

(aux_ce=100 makes the DM part negligible; any `dmpose train` arguments work.)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import dmpose.loss as L  # noqa: E402


def gaussian_cross_entropy(heatmaps, keypoints, weights=None, options=None, **kwargs):
    """-sum_k G_k log S_k with G the loss.mse Gaussian target normalised to sum 1 (joints summed, batch mean)."""
    from dmpose.codec import GaussianCodec

    b, k, h, w = heatmaps.shape
    codec = GaussianCodec((w, h), sigma=SIGMA, flavour=FLAVOUR)
    kp, wt = keypoints.detach().cpu().numpy(), weights.detach().cpu().numpy()
    import numpy as np

    g = torch.from_numpy(np.stack([codec.encode(a, v > 0)["heatmaps"] for a, v in zip(kp, wt)])).flatten(2)
    g = g / g.sum(-1, keepdim=True).clamp_min(1e-12)
    log_s = L.log_supplier_distribution(heatmaps, options.suppliers, options.supplier_beta)
    return -(g * log_s).sum(-1).mul(weights).sum() / max(b, 1)


SIGMA, FLAVOUR = 1.0, "unbiased"

if __name__ == "__main__":
    L.demander_cross_entropy = gaussian_cross_entropy
    from dmpose.cli import app

    app(args=["train", *sys.argv[1:]])
