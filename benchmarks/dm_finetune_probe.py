"""Why DM alone degrades a good model (docs/findings.md): three measurements of the candidates.

1. The entropic optimum's bias: free maps (one per dot, 24 x 32, softplus beta 8 suppliers) optimised under each
   loss until converged, for dots on a 9 x 9 grid of sub-pixel offsets; the distance of each optimum's decode (the
   2x2 decode of the supplier distribution) from its dot, and its signed component towards the nearest pixel
   centre (positive: the optimum is pulled onto the pixel grid).
2. What each loss asks of a good model's maps: at the start checkpoint's heatmaps on the validation GT crops, one
   small step along each loss's negative gradient per map (the step's norm a fixed share of the map's); the change
   of the decode's error, the share of joints whose error falls, and the share of the gradient's squared norm on
   pixels within 2 px of the dot (how much of the push acts near the dot, where the position is decided).
3. What the fine-tuned models did: each given run folder's last weights on the same crops: median / mean error,
   compactness and the signed error component towards the nearest pixel centre of the dot.

Usage (the run folders are the regime runs' own, with checkpoints, e.g. runs/regimes/…):

    python benchmarks/dm_finetune_probe.py --start RUN/best.safetensors --models ce=RUN1 dm=RUN2 ... \
        --json results/probes/dm_finetune_probe.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dmpose.codec import build_codec  # noqa: E402
from dmpose.decode import decode_2x2  # noqa: E402
from dmpose.loss import demander_cross_entropy, dm_loss  # noqa: E402
from dmpose.models import load_model  # noqa: E402
from dmpose.suppliers import decoded_map  # noqa: E402
from dmpose.train import load_config  # noqa: E402
from dmpose.train.datasets import build_datasets  # noqa: E402
from dmpose.train.validate import heatmap_metrics  # noqa: E402

BETA = 8.0
LOSSES = {
    "DM eps 1": lambda h, kp, w: dm_loss(h, kp, w, eps=1.0, supplier_beta=BETA, tol=1e-7, reduction="sum"),
    "DM eps 0.25": lambda h, kp, w: dm_loss(h, kp, w, eps=0.25, supplier_beta=BETA, tol=1e-7, max_iters=3000,
                                            reduction="sum"),
    "DM eps 1, cost sqrt(d)": lambda h, kp, w: dm_loss(h, kp, w, eps=1.0, supplier_beta=BETA, tol=1e-7,
                                                       cost_power=0.5, reduction="sum"),
    "DM eps 1, cost d^0.25": lambda h, kp, w: dm_loss(h, kp, w, eps=1.0, supplier_beta=BETA, tol=1e-7,
                                                      cost_power=0.25, reduction="sum"),
    "CE": lambda h, kp, w: demander_cross_entropy(h, kp, w, supplier_beta=BETA, reduction="sum"),
}


def toward_pixel(pred: torch.Tensor, dot: torch.Tensor) -> torch.Tensor:
    """The signed component of pred - dot along the unit vector from the dot to its nearest pixel centre (0 for a
    dot on a centre)."""
    u = torch.round(dot) - dot
    n = u.norm(dim=-1, keepdim=True)
    u = torch.where(n > 1e-6, u / n.clamp_min(1e-6), torch.zeros_like(u))
    return ((pred - dot) * u).sum(-1)


def free_map_optima(steps: int) -> dict[str, dict[str, float]]:
    grid = torch.arange(9, dtype=torch.float64) / 9
    fx, fy = torch.meshgrid(grid, grid, indexing="xy")
    dots = torch.stack([11 + fx.flatten(), 15 + fy.flatten()], -1)[:, None]  # (81, 1, 2) in a 24 x 32 map
    out = {}
    for name, loss in LOSSES.items():
        h = torch.zeros(len(dots), 1, 32, 24, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([h], lr=0.05)
        w = torch.ones(len(dots), 1, dtype=torch.float64)
        for _ in range(steps):
            opt.zero_grad()
            loss(h, dots, w).backward()
            opt.step()
        coords = _decode(h.detach())
        err = (coords - dots).norm(dim=-1).flatten()
        out[name] = {"mean_error": float(err.mean()), "max_error": float(err.max()),
                     "toward_pixel": float(toward_pixel(coords, dots).mean())}
    return out


def _decode(h: torch.Tensor) -> torch.Tensor:
    return decode_2x2(decoded_map(h, "softplus", BETA))[0].double()


def crops(cfg, spec, n: int):
    _, val = build_datasets(cfg, spec)
    ds = val.gt_dataset
    items = [ds[i] for i in range(min(n, len(ds)))]
    return (torch.stack([s["image"] for s in items]), torch.stack([s["keypoints_hm"] for s in items]),
            torch.stack([s["weights"] for s in items]))


@torch.no_grad()
def heatmaps_of(path: Path, images: torch.Tensor) -> tuple[torch.Tensor, object]:
    model = load_model(path)
    return torch.cat([model(images[i:i + 64]).float() for i in range(0, len(images), 64)]), model.spec


def one_step_response(hm: torch.Tensor, kp: torch.Tensor, w: torch.Tensor, codec, share: float) -> dict:
    """Per loss: one step of each labelled map along its negative gradient, of norm `share` x the map's norm;
    the change of the median error, the mean change over the joints already within 1 px of their dot, the share
    of those whose error falls, and the share of the gradient's squared norm within 2 px of the dot."""
    lab = w > 0
    base = (codec.decode(hm)[0] - kp).norm(dim=-1)[lab]
    good = base < 1.0
    h, wd = hm.shape[-2:]
    ys = torch.arange(h).view(1, 1, h, 1).float()
    xs = torch.arange(wd).view(1, 1, 1, wd).float()
    near = ((xs - kp[..., 0, None, None]) ** 2 + (ys - kp[..., 1, None, None]) ** 2) <= 4.0
    out = {}
    for name, loss in LOSSES.items():
        x = hm.detach().double().requires_grad_(True)
        loss(x, kp.double(), w.double()).backward()
        g = x.grad.float()
        gn = g.flatten(2).norm(dim=-1).clamp_min(1e-30)[..., None, None]
        step = share * hm.flatten(2).norm(dim=-1)[..., None, None] * g / gn
        err = (codec.decode(hm - step)[0] - kp).norm(dim=-1)[lab]
        d = (err - base)[good]
        near_share = ((g ** 2) * near).sum((-2, -1)) / (g ** 2).sum((-2, -1)).clamp_min(1e-30)
        out[name] = {"median_error_change": float(err.median() - base.median()),
                     "good_joints_error_change": float(d.mean()), "good_joints_improved": float((d < 0).float().mean()),
                     "gradient_near_dot_share": float(near_share[lab].mean())}
    return out


def model_stats(hm: torch.Tensor, kp: torch.Tensor, w: torch.Tensor, codec) -> dict:
    m = heatmap_metrics(hm, kp, w, codec)
    lab = w > 0
    return {"median_error": float(m["error"].median()), "mean_error": float(m["error"].mean()),
            "compactness": float(m["compactness"].mean()),
            "toward_pixel": float(toward_pixel(m["coords"].double(), kp.double())[lab].mean())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--start", type=Path, required=True, help="the start checkpoint (a CE-trained default job)")
    p.add_argument("--models", nargs="*", default=[], help="NAME=RUN_FOLDER (its last.safetensors)")
    p.add_argument("--crops", type=int, default=330)
    p.add_argument("--steps", type=int, default=3000, help="Adam steps of the free-map optima")
    p.add_argument("--step-share", type=float, default=0.005, help="the one-step size, a share of the map's norm")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_config("synthetic")
    images, kp, w = crops(cfg, cfg.pose_spec(), args.crops)
    hm, spec = heatmaps_of(args.start, images)
    codec = build_codec(spec)
    result = {"free_map_optima": free_map_optima(args.steps),
              "one_step_at_start": one_step_response(hm, kp, w, codec, args.step_share),
              "models": {"start": model_stats(hm, kp, w, codec)}}
    per_name: dict[str, list[dict]] = {}
    for item in args.models:  # NAME=RUN_FOLDER; several folders of one name are averaged (seeds)
        name, _, run = item.partition("=")
        mhm, mspec = heatmaps_of(Path(run) / "last.safetensors", images)
        per_name.setdefault(name, []).append(model_stats(mhm, kp, w, build_codec(mspec)))
    for name, rows in per_name.items():
        result["models"][name] = {k: float(sum(r[k] for r in rows) / len(rows)) for k in rows[0]}
        result["models"][name]["runs"] = len(rows)
    result["settings"] = {"start": str(args.start), "models": args.models, "crops": len(images),
                          "steps": args.steps, "step_share": args.step_share, "supplier_beta": BETA}
    for section, rows in result.items():
        if section == "settings":
            continue
        keys = sorted({k for r in rows.values() for k in r})
        print(f"\n{section}\n\n| | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
        for name, r in rows.items():
            print(f"| {name} | " + " | ".join(f"{r.get(k, math.nan):+.4f}" for k in keys) + " |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
