"""Why does the DM loss not train a network?  A small, readable probe loop, DM vs MSE side by side.

Everything here uses the library's public pieces (dmpose.build_model, dm_loss, mse_loss, GaussianCodec,
decode_2x2 / decode_argmax, TopDownTransform, dmpose.eval); nothing in the library is changed.

Data: a FIXED pool of augmented training crops, built once from the synthetic COCO set (each image decoded
once) and cached to disk, so that every arm sees exactly the same samples in the same order for a seed and
no step pays for JPEG decoding or augmentation. Validation: the val split's GT-box crops (no augmentation).

Supplier maps.  dm_loss normalises relu(X)/sum relu(X) of whatever it is given, so an alternative supplier
map M = phi(H) of the raw heatmap H is tried by passing M (all positive, so the relu is the identity). The
decode at evaluation reads the same M (decode_2x2 on M), and so does the flip test (the wrapped model
outputs M).

  relu       M = H                                   (the paper's)
  softplus   M = softplus(beta H) / beta
  softmax    M = exp((H - max H) / T)                (per map; T fixed, or learned with --learn-temp)
  ste        M = relu(H) forward, identity gradient for negative pixels (straight-through), softmax for
             maps with no positive pixel (as the library's fallback)
  exp        M = exp(H) (softmax with T = 1 but no max shift: same map)

Diagnostics per logged step (training batch, before the update):
  dead        share of labelled joints whose RAW heatmap has no positive value
  mass2       share of the decoded map's mass (relu(M) normalised to sum 1) within 2 px of the dot
  err         median localisation error (heatmap px) of the decode (2x2 on M for DM, argmax on H for MSE)
  gH          norm of the gradient reaching the heatmaps (dL/dH, whole batch)
  bias, gbias final layer's bias mean and the mean of its gradient
and every --val-every steps the same (without gradients) on the fixed val crops.

Usage (one thread, 0 workers; see docs/training.md for the commands behind every number):
  python experiments/dm_train_probe.py --loss dm --supplier relu --steps 400 --name dm_relu_s0
  python experiments/dm_train_probe.py --loss mse --flavour unbiased --steps 400 --name mse_unb_s0
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import dmpose
from dmpose.codec import DMCodec, GaussianCodec
from dmpose.data.coco import CocoKeypoints, coco_paths
from dmpose.data.image import read_image
from dmpose.data.keypoints import load_keypoint_set
from dmpose.data.transforms import AugmentConfig, TopDownTransform
from dmpose.decode import decode_2x2, decode_argmax
from dmpose.loss import dm_loss, mse_loss

INPUT_WH, HM_WH = (96, 128), (24, 32)
ROOT = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------------- data
def _transform(augment: bool) -> TopDownTransform:
    ks = load_keypoint_set("coco17")
    return TopDownTransform(INPUT_WH, HM_WH, DMCodec(HM_WH), ks, AugmentConfig() if augment else None)


def build_pool(data: Path, passes: int, seed: int, out: Path) -> dict:
    """`passes` augmented epochs over the training persons, in a shuffled order fixed by `seed`."""
    t0 = time.time()
    ds = CocoKeypoints(*coco_paths(data, "train2017"), _transform(True))
    images: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(ds)) for _ in range(passes)])
    n = len(order)
    imgs = torch.empty(n, 3, INPUT_WH[1], INPUT_WH[0], dtype=torch.float16)
    kps = torch.empty(n, 17, 2)
    wts = torch.empty(n, 17)
    for i, idx in enumerate(order):
        rec = ds.records[idx]
        if rec.file_name not in images:
            images[rec.file_name] = read_image(ds.image_dir / rec.file_name)
        centre, size = ds.center_size(idx)
        s = ds.transform(images[rec.file_name], centre, size, rec.keypoints[:, :2], rec.keypoints[:, 2], rng)
        imgs[i], kps[i], wts[i] = s["image"].half(), s["keypoints_hm"], s["weights"]
    pool = {"images": imgs, "keypoints": kps, "weights": wts, "seed": seed, "passes": passes}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(pool, out)
    print(f"pool: {n} crops ({passes} passes over {len(ds)} persons) in {time.time() - t0:.1f} s -> {out}")
    return pool


def val_crops(data: Path) -> dict:
    ds = CocoKeypoints(*coco_paths(data, "val2017"), _transform(False))
    samples = [ds[i] for i in range(len(ds))]
    return {"images": torch.stack([s["image"] for s in samples]),
            "keypoints": torch.stack([s["keypoints_hm"] for s in samples]),
            "weights": torch.stack([s["weights"] for s in samples])}


# ------------------------------------------------------------------------------------- supplier maps
class _STERelu(torch.autograd.Function):
    """relu forward (plus a denormal-free 1e-30 so dm_loss keeps every pixel), identity backward."""

    @staticmethod
    def forward(ctx, h):
        return h.clamp_min(0) + 1e-30

    @staticmethod
    def backward(ctx, g):
        return g


def supplier_map(h: torch.Tensor, kind: str, beta: float = 1.0, temp: float | torch.Tensor = 1.0) -> torch.Tensor:
    """The map M = phi(H) that dm_loss (and the decode) sees."""
    if kind == "relu":
        return h
    if kind == "softplus":
        return F.softplus(beta * h) / beta
    if kind == "softmax":
        z = (h - h.amax(dim=(-2, -1), keepdim=True).detach()) / temp
        return torch.exp(z).clamp_min(1e-30)  # no exact zeros: dm_loss masks the gradient of pixels <= 0
    if kind == "shift":  # linear: H - min H per map (d M_i / d H_i = 1 on every pixel but the minimum)
        return (h - h.amin(dim=(-2, -1), keepdim=True)).clamp_min(0) + 1e-30
    if kind == "exp":
        return torch.exp(h.clamp(max=60.0))
    if kind == "ste":
        dead = (h.amax(dim=(-2, -1), keepdim=True) <= 0)
        soft = torch.exp(h - h.amax(dim=(-2, -1), keepdim=True).detach()).clamp_min(1e-30)
        return torch.where(dead, soft, _STERelu.apply(h))
    raise ValueError(kind)


class SupplierModel(nn.Module):
    """The network followed by the supplier map: what the decode and the flip test read."""

    def __init__(self, net, kind, beta, log_temp):
        super().__init__()
        self.net, self.kind, self.beta, self.log_temp = net, kind, beta, log_temp

    def temp(self):
        return self.log_temp.exp() if isinstance(self.log_temp, torch.Tensor) else self.log_temp

    def forward(self, x):
        return supplier_map(self.net(x), self.kind, self.beta, self.temp())


# -------------------------------------------------------------------------------------- diagnostics
def _mass_within(m: torch.Tensor, kp: torch.Tensor, radius: float = 2.0) -> torch.Tensor:
    """(B, K) share of relu(m)/sum within `radius` px of kp (0 for a map with no positive mass)."""
    b, k, h, w = m.shape
    r = m.float().clamp_min(0)
    tot = r.sum((-2, -1))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    d2 = (xs - kp[..., 0, None, None]) ** 2 + (ys - kp[..., 1, None, None]) ** 2
    inside = (r * (d2 <= radius**2)).sum((-2, -1))
    return torch.where(tot > 0, inside / tot.clamp_min(1e-30), torch.zeros_like(tot))


@torch.no_grad()
def diagnostics(h_raw: torch.Tensor, m: torch.Tensor, kp, wts, decode: str) -> dict:
    lab = wts > 0
    coords, conf = (decode_2x2 if decode == "2x2" else decode_argmax)(m.detach().float())
    err = (coords - kp).norm(dim=-1)[lab]
    dead = (h_raw.detach().amax((-2, -1)) <= 0)[lab]
    hr = h_raw.detach()[lab]
    r = m.detach().float().clamp_min(0)
    a = r / r.sum((-2, -1), keepdim=True).clamp_min(1e-30)
    hh, ww = a.shape[-2:]
    mean_xy = torch.stack([(a.sum(-2) * torch.arange(ww)).sum(-1), (a.sum(-1) * torch.arange(hh)).sum(-1)], -1)
    err_m = (mean_xy - kp).norm(dim=-1)[lab]
    return {"err_meandecode": err_m.median().item(), "dead": dead.float().mean().item(), "mass2": _mass_within(m.detach(), kp)[lab].mean().item(),
            "err": err.median().item(), "err_mean": err.mean().item(),
            "h_max": hr.amax((-2, -1)).mean().item(), "h_mean": hr.mean().item(), "h_std": hr.std().item()}


@torch.no_grad()
def evaluate_val(model: SupplierModel, val: dict, decode: str, bs: int = 64) -> dict:
    model.eval()
    hs = torch.cat([model.net(val["images"][i:i + bs]) for i in range(0, len(val["images"]), bs)])
    m = supplier_map(hs, model.kind, model.beta, model.temp())
    model.train()
    return diagnostics(hs, m, val["keypoints"], val["weights"], decode)


def coco_ap(model: SupplierModel, data: Path, decode: str) -> dict:
    """AP with GT boxes and with the detections (flip test), pycocotools via dmpose.eval."""
    from dmpose.eval.topdown import predict_dataset

    from dmpose.eval.evaluate import evaluate_coco_predictions

    ks = load_keypoint_set("coco17")
    ann, img_dir = coco_paths(data, "val2017")
    out = {}
    model.eval()
    for boxes in ("gt", "det"):
        ds = CocoKeypoints.from_root(data, "val2017", _transform(False), detections=(boxes == "det"))
        preds = predict_dataset(model, ds, decode, flip_pairs=ks.flip_pairs, batch_size=64)
        _, metrics, _ = evaluate_coco_predictions(preds, str(ann), ks.sigmas)
        out[f"AP_{boxes}"] = metrics["AP"]
        if decode == "2x2":  # the 2x2 decode's joint threshold, swept (0.05 is the library default)
            for thr in (0.0, 0.2):
                _, m2, _ = evaluate_coco_predictions(preds, str(ann), ks.sigmas, joint_threshold=thr)
                out[f"AP_{boxes}_thr{thr}"] = m2["AP"]
    model.train()
    return out


@torch.no_grad()
def shift_test(h, kp, w, eps, q=0.5) -> dict:
    """The issue's reading, tested directly: lower every value of each live map by q x its max (a uniform
    shift, what the final layer's bias does) and compare the per-joint DM cost before and after."""
    h = h.detach()
    live = (w > 0) & (h.amax((-2, -1)) > 0)
    if not bool(live.any()):
        return {}
    before = dm_loss(h, kp, live.float(), eps=eps, reduction="none")[live]
    shifted = h - q * h.amax((-2, -1), keepdim=True).clamp_min(0)
    after = dm_loss(shifted, kp, live.float(), eps=eps, reduction="none")[live]
    return {"shift_lowers_share": (after < before).float().mean().item(),
            "shift_cost_ratio_median": (after / before).median().item(),
            "shift_mass2_before": _mass_within(h, kp)[live].mean().item(),
            "shift_mass2_after": _mass_within(shifted, kp)[live].mean().item()}


@torch.no_grad()
def dot_push(g: torch.Tensor, m: torch.Tensor, kp, wts) -> dict:
    """Does the pixel nearest the dot get pushed up?  g = dL/dH (descent pushes -g).  Per labelled joint whose
    dot lies inside the map: the dot pixel's share of the normalised map's mass, its push -g relative to the
    map's mean |g|, and its rank (share of the map's pixels pushed up harder than the dot; 0 = strongest)."""
    b, k, h, w = g.shape
    xi, yi = kp[..., 0].round().long(), kp[..., 1].round().long()
    ok = (wts > 0) & (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    if not bool(ok.any()):
        return {}
    flat = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1))[..., None]
    push = -g.reshape(b, k, h * w).float()
    r = m.detach().float().clamp_min(0).reshape(b, k, h * w)
    a = r / r.sum(-1, keepdim=True).clamp_min(1e-30)
    p_dot = push.gather(-1, flat)
    rel = (p_dot[..., 0] / push.abs().mean(-1).clamp_min(1e-30))[ok]
    rank = (push > p_dot).float().mean(-1)[ok]
    a_dot = a.gather(-1, flat)[..., 0][ok]
    return {"dot_mass": a_dot.median().item(), "dot_mass_x_hw": (a_dot * h * w).median().item(),
            "dot_push_rel": rel.median().item(), "dot_push_rank": rank.median().item(),
            "dot_pushed_up": (rel > 0).float().mean().item()}


# ------------------------------------------------------------------------------------------- training
def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("/tmp/dmr/synth"))
    p.add_argument("--pool", type=Path, default=Path("/tmp/dmr/pool_p8_s0.pt"))
    p.add_argument("--pool-passes", type=int, default=8)
    p.add_argument("--loss", choices=("dm", "mse"), default="dm")
    p.add_argument("--supplier", choices=("relu", "softplus", "softmax", "exp", "ste", "shift"), default="relu")
    p.add_argument("--beta", type=float, default=1.0, help="softplus(beta H)/beta")
    p.add_argument("--beta-end", type=float, default=None,
                   help="anneal beta geometrically from --beta to this over the steps (broad -> sharp maps)")
    p.add_argument("--temp", type=float, default=1.0, help="softmax temperature (initial value if learned)")
    p.add_argument("--learn-temp", action="store_true")
    p.add_argument("--eps", type=float, default=1.0)
    p.add_argument("--grad", choices=("exact", "envelope"), default="exact")
    p.add_argument("--flavour", choices=("official", "unbiased"), default="unbiased")
    p.add_argument("--sigma", type=float, default=1.0, help="Gaussian sigma in heatmap px (HRNet: 2 at 64x48)")
    p.add_argument("--aux-mse", type=float, default=0.0, help="DM + this x MSE(unbiased Gaussian) on the raw H")
    p.add_argument("--mse-warm", type=int, default=0, help="MSE for the first N steps, then DM")
    p.add_argument("--bias-init", type=float, default=None, help="final layer bias init (default: library's 0)")
    p.add_argument("--final-std", type=float, default=None, help="final layer weight init std (library: 0.001)")
    p.add_argument("--cost-cap", type=float, default=None,
                   help="experiment only: cost min(distance, CAP) instead of the Euclidean distance (far field flattened)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--final-lr-mult", type=float, default=1.0, help="lr multiplier for the final layer")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--clip", type=float, default=0.0, help="grad-norm clip (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--ap", action="store_true", help="COCO AP (GT boxes and detections, flip test) at the end")
    p.add_argument("--name", default=None)
    a = p.parse_args(argv)

    torch.set_num_threads(1)
    if a.cost_cap is not None:  # the loss's cost matrix, capped (dm_sinkhorn_torch looks the function up at call time)
        import dmpose.sinkhorn as sk

        _euclid = sk.pixel_demander_cost
        sk.pixel_demander_cost = lambda h, w, xy: _euclid(h, w, xy).clamp_max(a.cost_cap)
    torch.set_flush_denormal(True)  # precaution for exp/softplus maps (no effect measured on a loaded machine)
    torch.manual_seed(a.seed)
    pool = torch.load(a.pool) if a.pool.exists() else build_pool(a.data, a.pool_passes, 0, a.pool)
    val = val_crops(a.data)
    n_pool = len(pool["images"])
    # the batch order: the pool's (shuffled once) order, offset per seed, wrapping around
    start = (a.seed * 997 * a.batch) % n_pool

    torch.manual_seed(a.seed)  # same weights for every arm of a seed
    net = dmpose.build_model("hrnet_tiny")
    if a.final_std is not None:
        nn.init.normal_(net.final_layer.weight, std=a.final_std)
    if a.bias_init is not None:
        nn.init.constant_(net.final_layer.bias, a.bias_init)
    log_temp = nn.Parameter(torch.tensor(math.log(a.temp))) if a.learn_temp else a.temp
    model = SupplierModel(net, a.supplier, a.beta, log_temp)
    final = list(net.final_layer.parameters())
    final_ids = {id(q) for q in final}
    groups = [{"params": [q for q in net.parameters() if id(q) not in final_ids], "mult": 1.0},
              {"params": final, "mult": a.final_lr_mult}]
    if a.learn_temp:
        groups.append({"params": [log_temp], "mult": 1.0})
    opt = torch.optim.Adam(groups, lr=a.lr)
    gcodec = GaussianCodec(HM_WH, sigma=a.sigma, flavour=a.flavour if a.loss == "mse" else "unbiased")
    decode = "argmax" if a.loss == "mse" else "2x2"
    name = a.name or f"{a.loss}_{a.supplier if a.loss == 'dm' else a.flavour}_s{a.seed}"
    log, vlog = [], []
    t_train, t0 = 0.0, time.time()
    model.train()
    for step in range(a.steps):
        idx = (start + step * a.batch + torch.arange(a.batch)) % n_pool
        x, kp, w = pool["images"][idx].float(), pool["keypoints"][idx], pool["weights"][idx]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps, a.lr, a.warmup) * g["mult"]
        if a.beta_end is not None:  # the training map and the one validation decodes move together
            model.beta = a.beta * (a.beta_end / a.beta) ** (step / max(1, a.steps - 1))
        ts = time.perf_counter()
        h = net(x)
        h.retain_grad()
        use_mse = a.loss == "mse" or step < a.mse_warm
        if use_mse or a.aux_mse > 0:
            tgt = torch.from_numpy(np.stack([gcodec.encode(k.numpy(), (ww > 0).numpy().astype(np.float32) * 2)["heatmaps"]
                                             for k, ww in zip(kp, w)]))
        if use_mse:
            m = h
            loss = mse_loss(h, tgt, w)
        else:
            m = supplier_map(h, a.supplier, model.beta, model.temp())
            loss = dm_loss(m, kp, w, eps=a.eps, grad=a.grad)
            if a.aux_mse > 0:
                loss = loss + a.aux_mse * mse_loss(h, tgt, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), a.clip if a.clip > 0 else float("inf"))
        bias_grad = net.final_layer.bias.grad.mean().item()
        opt.step()
        t_train += time.perf_counter() - ts
        if step % a.log_every == 0 or step == a.steps - 1:
            d = diagnostics(h, m, kp, w, "argmax" if use_mse else "2x2")
            # per labelled map: does lowering every value of the raw map (H - delta) lower the loss?
            # d loss / d delta = -sum_pixels dL/dH  -> "down" share = maps with sum dL/dH > 0
            per_map = h.grad.sum((-2, -1))[w > 0]
            d["shift_down_share"] = (per_map > 0).float().mean().item()
            live = (h.detach().amax((-2, -1)) > 0)[w > 0]  # a dead map's fallback gradient sums to 0
            d["shift_down_share_live"] = (per_map[live] > 0).float().mean().item() if bool(live.any()) else float("nan")
            d.update(dot_push(h.grad, h if use_mse else m, kp, w))
            if not use_mse and a.supplier == "relu":
                d.update(shift_test(h, kp, w, a.eps))
            d.update(step=step, loss=loss.item(), lr=opt.param_groups[0]["lr"], gH=h.grad.norm().item(),
                     gnorm=float(gnorm), bias=net.final_layer.bias.mean().item(), gbias=bias_grad,
                     temp=float(model.temp()), t=round(t_train, 1))
            log.append(d)
            print(f"{name} {step:4d} loss {d['loss']:8.4f} dead {d['dead']:.2f} mass2 {d['mass2']:.3f} err {d['err']:.2f} "
                  f"gH {d['gH']:.2e} bias {d['bias']:+.4f} down {d['shift_down_share']:.2f} gb {d['gbias']:+.2e} hmax {d['h_max']:+.4f} dot a*hw {d.get('dot_mass_x_hw', float('nan')):.2f} push {d.get('dot_push_rel', float('nan')):+.2f} rank {d.get('dot_push_rank', float('nan')):.2f} ({t_train:.0f}s)", flush=True)
        if (step + 1) % a.val_every == 0 or step == a.steps - 1:
            v = evaluate_val(model, val, decode)
            v["step"] = step + 1
            vlog.append(v)
            print(f"{name} VAL {step + 1:4d} err {v['err']:.2f} (mean {v['err_mean']:.2f}, mean-decode {v['err_meandecode']:.2f}) mass2 {v['mass2']:.3f} dead {v['dead']:.2f}", flush=True)
    result = {"name": name, "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
              "train_seconds": t_train, "ms_per_step": 1000 * t_train / a.steps, "log": log, "val": vlog,
              "final_val": vlog[-1]}
    if a.ap:
        ta = time.time()
        result["ap"] = coco_ap(model, a.data, decode)
        result["ap_seconds"] = time.time() - ta
        print(f"{name} AP {result['ap']}", flush=True)
    result["wall_seconds"] = time.time() - t0
    out = ROOT / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"{name}: {t_train:.0f} s training ({result['ms_per_step']:.0f} ms/step), wrote {out}")


if __name__ == "__main__":
    main()
