"""Training-step cost, data excluded: forward + loss + backward + Adam step on one fixed batch.

Usage: python benchmarks/bench_train.py [--threads 1] [--repeats 5] [--w32-batch 8] [--device cpu] [--no-cpu-tuning]

Rows: hrnet_tiny at the default job's size (128x96 input, batch 32, as configs/synthetic.yaml) and HRNet-W32
at 256x192 (batch --w32-batch), each with the DM loss at the default tolerance, with tol=0 (exactly 1000
Sinkhorn iterations, the paper's) and with MSE (Gaussian targets), the same batch in one run. Prints the
median step time and the ratio to MSE; the three losses' steps are interleaved, and on the CPU the process
is tuned as the trainer tunes it (`dmpose.train.loop.tune_cpu_process`; `--no-cpu-tuning` leaves it alone). The batch is a real one (synthetic data, augmentation on); the model is
freshly initialised (HRNet's init), so the DM solver sees early-training heatmaps (`--tiny-weights CKPT`: a trained hrnet_tiny instead). Target (CPU, default job): DM <= 1.05 x MSE.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def batch_for(input_wh, n: int, seed: int = 0):
    from torch.utils.data import DataLoader

    from dmpose.data.synthetic import ensure_synthetic
    from dmpose.train import load_config
    from dmpose.train.loop import build_datasets

    cfg = load_config(data={"model": {"input_wh": list(input_wh)}, "loss": {"name": "mse", "mse": {"sigma": 2.0}},
                            "data": {"root": str(ensure_synthetic()), "subset": 64}})
    torch.manual_seed(seed)
    ds, _ = build_datasets(cfg, cfg.pose_spec())
    return next(iter(DataLoader(ds, batch_size=n, shuffle=True)))


def step_times(arch: str, batch: dict, losses: tuple[str, ...], repeats: int, device: str,
               weights: str | None = None) -> dict[str, float]:
    """Median step time per loss, the losses' steps interleaved (one step of each in turn), so that a change
    in the machine's load falls on all of them alike. Each loss trains its own copy of the same model."""
    from dmpose.loss import dm_loss, mse_loss
    from dmpose.models import build_model, load_model
    from dmpose.spec import DMLossOptions

    x = batch["image"].to(device)
    kp, w = batch["keypoints_hm"].to(device), batch["weights"].to(device)
    tgt = batch["target"]["heatmaps"].to(device)
    runs = {}
    for loss in losses:
        torch.manual_seed(0)
        model = (load_model(weights) if weights else build_model(arch, num_joints=17)).to(device).train()
        opts = {"dm": DMLossOptions(), "dm_tol0": DMLossOptions(tol=0.0)}.get(loss)
        runs[loss] = (model, torch.optim.Adam(model.parameters(), lr=1e-3), opts)
    times: dict[str, list[float]] = {loss: [] for loss in losses}
    for i in range(repeats + 1):
        for loss, (model, opt, opts) in runs.items():
            t0 = time.perf_counter()
            hm = model(x).float()
            value = mse_loss(hm, tgt, w) if loss == "mse" else dm_loss(hm, kp, w, opts)
            value.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:  # the first step warms up allocators and caches
                times[loss].append(time.perf_counter() - t0)
    return {loss: statistics.median(v) for loss, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--w32-batch", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-w32", action="store_true")
    ap.add_argument("--tiny-weights", default=None,
                    help="a trained hrnet_tiny checkpoint (e.g. a default job's last.safetensors) for the hrnet_tiny "
                         "row: the solver then sees trained heatmaps instead of HRNet's initialisation")
    ap.add_argument("--no-cpu-tuning", action="store_true",
                    help="leave denormals and the allocator as they are (the trainer tunes them on the CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tuning = "untuned"
    if args.device == "cpu" and not args.no_cpu_tuning:
        from dmpose.train.loop import tune_cpu_process

        tuning = tune_cpu_process()
    rows = [("hrnet_tiny", (96, 128), 32)]
    if not args.skip_w32:
        rows.append(("hrnet_w32", (192, 256), args.w32_batch))
    print(f"torch {torch.__version__}, {args.threads} thread(s), device {args.device} ({tuning}), median of "
          f"{args.repeats} steps, the losses' steps interleaved")
    print(f"{'model':<12} {'input':>8} {'batch':>5} {'MSE s':>8} {'DM s':>8} {'DM/MSE':>7} {'DM tol=0 s':>11} {'tol0/MSE':>8}")
    for arch, wh, n in rows:
        batch = batch_for(wh, n)
        weights = args.tiny_weights if arch == "hrnet_tiny" else None
        t = step_times(arch, batch, ("mse", "dm", "dm_tol0"), args.repeats, args.device, weights)
        print(f"{arch:<12} {wh[1]}x{wh[0]:<4} {n:>5} {t['mse']:>8.3f} {t['dm']:>8.3f} {t['dm'] / t['mse']:>7.3f} "
              f"{t['dm_tol0']:>11.3f} {t['dm_tol0'] / t['mse']:>8.2f}")


if __name__ == "__main__":
    main()
