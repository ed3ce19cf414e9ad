"""Where does each loss push a fresh network's heatmaps up?  The radial profile of -dL/dH around the dot.

One batch of 32 training crops (the probe's fixed pool, /tmp/dmr/pool_p8_s0.pt; see dm_train_probe.py) through a
freshly initialised hrnet_tiny (seed 0), 128x96 input, 32x24 heatmaps. For each loss, the descent direction
-dL/dH of every labelled joint's map is normalised by that map's mean |dL/dH| and averaged per 1-px ring of
distance from the dot. "share up within 2 px": the share of the map's total upward push (sum of the positive
part of -dL/dH) that lands within 2 px of the dot. Output: a table (stdout) and docs/dm_push_profile.png.
`--weights CKPT` profiles a trained hrnet_tiny's heatmaps instead (e.g. a DM-alone run's last.safetensors, where
DM has stalled at a few px; no plot then).

  python experiments/push_profile.py [--weights CKPT] [--no-plot]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

import dmpose
from dmpose.codec import GaussianCodec
from dmpose.loss import demander_cross_entropy, dm_loss, mse_loss

ROOT = Path(__file__).resolve().parent


def profile(g: torch.Tensor, kp: torch.Tensor, w: torch.Tensor, rmax: int = 16):
    b, k, h, wd = g.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(wd, dtype=torch.float32), indexing="ij")
    d = ((xs - kp[..., 0, None, None]) ** 2 + (ys - kp[..., 1, None, None]) ** 2).sqrt()
    inside = (w > 0) & (kp[..., 0] >= 0) & (kp[..., 0] <= wd - 1) & (kp[..., 1] >= 0) & (kp[..., 1] <= h - 1)
    push = -g / g.abs().mean((-2, -1), keepdim=True).clamp_min(1e-30)
    rings = [float(push[inside][(d[inside] >= r) & (d[inside] < r + 1)].mean()) for r in range(rmax)]
    up = push.clamp_min(0)
    share = ((up * (d <= 2)).sum((-2, -1)) / up.sum((-2, -1)).clamp_min(1e-30))[inside]
    return rings, float(share.mean())


def main():
    torch.set_num_threads(1)
    pool = torch.load("/tmp/dmr/pool_p8_s0.pt")
    x, kp, w = pool["images"][:32].float(), pool["keypoints"][:32], pool["weights"][:32]
    torch.manual_seed(0)
    weights = sys.argv[sys.argv.index("--weights") + 1] if "--weights" in sys.argv else None
    net = dmpose.load_model(weights).eval() if weights else dmpose.build_model("hrnet_tiny")
    with torch.no_grad():
        h = net(x)
    codec = GaussianCodec((24, 32), sigma=1.0, flavour="unbiased")
    tgt = torch.from_numpy(np.stack([codec.encode(k.numpy(), (ww > 0).numpy().astype(np.float32) * 2)["heatmaps"]
                                     for k, ww in zip(kp, w)]))
    arms = {"MSE (Gaussian sigma 1)": lambda hh: mse_loss(hh, tgt, w),
            "DM softplus beta 1": lambda hh: dm_loss(hh, kp, w, suppliers="softplus", supplier_beta=1.0),
            "DM softplus beta 8 (default)": lambda hh: dm_loss(hh, kp, w, suppliers="softplus", supplier_beta=8.0),
            "cross-entropy, beta 8 (loss.aux_ce)": lambda hh: demander_cross_entropy(hh, kp, w, supplier_beta=8.0),
            "DM relu (paper)": lambda hh: dm_loss(hh, kp, w, suppliers="relu")}
    res = {}
    for name, fn in arms.items():
        hh = h.clone().requires_grad_()
        fn(hh).backward()
        res[name] = profile(hh.grad, kp, w)
    print("| loss | push at 0-1 px | 1-2 | 2-3 | 3-4 | 4-6 | 8-10 | share of the upward push within 2 px |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (rings, share) in res.items():
        print(f"| {name} | {rings[0]:+.2f} | {rings[1]:+.2f} | {rings[2]:+.2f} | {rings[3]:+.2f} | "
              f"{np.mean(rings[4:6]):+.2f} | {np.mean(rings[8:10]):+.2f} | {share:.3f} |")
    if "--no-plot" not in sys.argv and weights is None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, (rings, _) in res.items():
            ax.plot(np.arange(len(rings)) + 0.5, rings, marker=".", label=name)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("distance from the dot (heatmap px)")
        ax.set_ylabel("-dL/dH / mean |dL/dH|")
        ax.set_title("push on a fresh network's heatmaps (up > 0)", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(ROOT.parent / "docs" / "dm_push_profile.png", dpi=90)


if __name__ == "__main__":
    main()
