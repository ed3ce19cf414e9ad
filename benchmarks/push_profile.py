"""Where does each loss push a heatmap up?  The radial profile of -dL/dH around the dot (docs/dm-loss.md).

Measures, for one batch of 32 augmented training crops of the synthetic COCO set (128x96 input, 32x24 heatmaps)
through a freshly initialised hrnet_tiny (seed 0), the descent direction -dL/dH of every labelled joint's map,
normalised by that map's mean |dL/dH| and averaged per 1-px ring of distance from the dot, for seven losses: MSE
(unbiased Gaussian, sigma 1), DM with softplus suppliers at beta 1 and beta 8 (the default), the demander
cross-entropy at beta 8 (the `loss.aux_ce` term), DM with the paper's relu suppliers, and DM (beta 8) with the
concave costs sqrt(d) and d^0.25 (`loss.dm.cost_power`). "share up within 2 px"
is the share of a map's total upward push (the positive part of -dL/dH) that lands within 2 px of the dot.
Prints a markdown table and draws docs/dm_push_profile.png. `--weights CKPT` profiles a trained hrnet_tiny's
heatmaps instead (e.g. a DM-alone run's last.safetensors; no plot then).

    python benchmarks/push_profile.py                     # the table and docs/dm_push_profile.png (a few seconds)
    python benchmarks/push_profile.py --weights runs/dm_alone/last.safetensors

The crops are the first 32 of the fixed crop pool the 400-step DM probe trained on (docs/dm-loss.md): the
default synthetic set (1000 + 100 images, seed 0, generated on first use), the HRNet augmentation, eight
shuffled passes over the training persons drawn from numpy's default_rng(0), images stored as float16.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import dmpose  # noqa: E402
from dmpose.codec import DMCodec, GaussianCodec  # noqa: E402
from dmpose.data.coco import CocoKeypoints  # noqa: E402
from dmpose.data.image import read_image  # noqa: E402
from dmpose.data.layouts import coco_paths  # noqa: E402
from dmpose.data.synthetic import ensure_synthetic  # noqa: E402
from dmpose.data.transforms import AugmentConfig, TopDownTransform  # noqa: E402
from dmpose.keypoints import load_keypoint_set  # noqa: E402
from dmpose.loss import demander_cross_entropy, dm_loss, mse_loss  # noqa: E402

INPUT_WH, HM_WH = (96, 128), (24, 32)


def probe_crops(data: Path, n: int = 32, passes: int = 8, seed: int = 0) -> dict:
    """The first `n` crops of the probe's pool: `passes` shuffled, augmented passes over the training persons."""
    transform = TopDownTransform(INPUT_WH, HM_WH, DMCodec(HM_WH), load_keypoint_set("coco17"), AugmentConfig())
    ds = CocoKeypoints(*coco_paths(data, "train2017"), transform)
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(ds)) for _ in range(passes)])[:n]
    images, kps, wts, decoded = [], [], [], {}
    for idx in order:
        rec = ds.records[idx]
        if rec.file_name not in decoded:
            decoded[rec.file_name] = read_image(ds.image_dir / rec.file_name)
        centre, size = ds.center_size(idx)
        s = ds.transform(decoded[rec.file_name], centre, size, rec.keypoints[:, :2], rec.keypoints[:, 2], rng)
        images.append(s["image"].half())
        kps.append(s["keypoints_hm"])
        wts.append(s["weights"])
    return {"images": torch.stack(images), "keypoints": torch.stack(kps), "weights": torch.stack(wts)}


def profile(g: torch.Tensor, kp: torch.Tensor, w: torch.Tensor, rmax: int = 16):
    """Mean normalised push per 1-px ring around the dot, and the share of the upward push within 2 px."""
    b, k, h, wd = g.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(wd, dtype=torch.float32), indexing="ij")
    d = ((xs - kp[..., 0, None, None]) ** 2 + (ys - kp[..., 1, None, None]) ** 2).sqrt()
    inside = (w > 0) & (kp[..., 0] >= 0) & (kp[..., 0] <= wd - 1) & (kp[..., 1] >= 0) & (kp[..., 1] <= h - 1)
    push = -g / g.abs().mean((-2, -1), keepdim=True).clamp_min(1e-30)
    rings = [float(push[inside][(d[inside] >= r) & (d[inside] < r + 1)].mean()) for r in range(rmax)]
    up = push.clamp_min(0)
    share = ((up * (d <= 2)).sum((-2, -1)) / up.sum((-2, -1)).clamp_min(1e-30))[inside]
    return rings, float(share.mean())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="a trained hrnet_tiny checkpoint (default: a fresh network)")
    p.add_argument("--data", type=Path, default=None, help="synthetic COCO root (default: the generated cache)")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "dm_push_profile.png")
    p.add_argument("--no-plot", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    crops = probe_crops(a.data or ensure_synthetic(None, 1000, 100, 0))
    x, kp, w = crops["images"].float(), crops["keypoints"], crops["weights"]
    torch.manual_seed(0)
    net = dmpose.load_model(a.weights).eval() if a.weights else dmpose.build_model("hrnet_tiny")
    with torch.no_grad():
        h = net(x)
    codec = GaussianCodec((24, 32), sigma=1.0, flavour="unbiased")
    tgt = torch.from_numpy(np.stack([codec.encode(k.numpy(), (ww > 0).numpy().astype(np.float32) * 2)["heatmaps"]
                                     for k, ww in zip(kp, w)]))
    arms = {"MSE (Gaussian sigma 1)": lambda hh: mse_loss(hh, tgt, w),
            "DM softplus beta 1": lambda hh: dm_loss(hh, kp, w, suppliers="softplus", supplier_beta=1.0),
            "DM softplus beta 8 (default)": lambda hh: dm_loss(hh, kp, w, suppliers="softplus", supplier_beta=8.0),
            "cross-entropy, beta 8 (loss.aux_ce)": lambda hh: demander_cross_entropy(hh, kp, w, supplier_beta=8.0),
            "DM relu (paper)": lambda hh: dm_loss(hh, kp, w, suppliers="relu"),
            "DM beta 8, cost sqrt(d) (cost_power 0.5)": lambda hh: dm_loss(hh, kp, w, cost_power=0.5),
            "DM beta 8, cost d^0.25 (cost_power 0.25)": lambda hh: dm_loss(hh, kp, w, cost_power=0.25)}
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
    if not a.no_plot and a.weights is None:
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
        fig.savefig(a.plot, dpi=90)
        print(f"plot: {a.plot}")


if __name__ == "__main__":
    main()
