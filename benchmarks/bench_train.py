"""Training-step cost, data excluded: forward + loss + backward + Adam step on one fixed batch.

Usage: python benchmarks/bench_train.py [--threads 1] [--repeats 5] [--w32-batch 8] [--device cpu] [--no-cpu-tuning]
       [--amp auto|bf16|fp16|off] [--contiguous]

Rows: hrnet_tiny at the default job's size (128x96 input, batch 32, as configs/synthetic.yaml) and HRNet-W32
at 256x192 (batch --w32-batch), each with the DM loss at the default tolerance, the default job's loss (DM +
its cross-entropy term), DM with tol=0 (exactly 1000 Sinkhorn iterations, the paper's) and MSE (Gaussian
targets), the same batch in one run. Prints the median step time and the ratio to MSE; the losses' steps are
interleaved. The model runs as the trainer runs it: autocast as train.amp (auto: bf16 on a CPU with native
bf16), channels_last as the default job, and on the CPU the process tuned as the trainer tunes it
(`dmpose.train.loop.tune_cpu_process`; `--no-cpu-tuning` leaves it alone). The batch is a real one (synthetic
data, augmentation on); the model is freshly initialised (HRNet's init), so the DM solver sees early-training
heatmaps (`--tiny-weights CKPT`: a trained hrnet_tiny instead). Target (CPU, default job): DM <= 1.05 x MSE.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import interleaved_medians  # noqa: E402


def batch_for(input_wh, n: int, seed: int = 0):
    from torch.utils.data import DataLoader

    from dmpose.data.synthetic import ensure_synthetic
    from dmpose.train import load_config
    from dmpose.train.datasets import build_datasets

    cfg = load_config(data={"model": {"input_wh": list(input_wh)}, "loss": {"name": "mse", "mse": {"sigma": 2.0}},
                            "data": {"root": str(ensure_synthetic()), "subset": 64}})
    torch.manual_seed(seed)
    ds, _ = build_datasets(cfg, cfg.pose_spec())
    return next(iter(DataLoader(ds, batch_size=n, shuffle=True)))


def step_times(arch: str, batch: dict, losses: tuple[str, ...], repeats: int, device: str,
               weights: str | None = None, amp_dtype: torch.dtype | None = None,
               channels_last: bool = False) -> dict[str, float]:
    """Median step time per loss, the losses' steps interleaved (one step of each in turn), so that a change
    in the machine's load falls on all of them alike. Each loss trains its own copy of the same model, under
    autocast to `amp_dtype` (None: fp32) and in channels_last when asked, as the trainer does; the losses are
    fp32. "dm_job" is the default job's loss (configs/synthetic.yaml: DM + loss.aux_ce x the demander
    cross-entropy), "dm_job_torch" the same on the torch path (backend="torch"; the others take backend "auto":
    the compiled C kernel on the CPU where it compiles)."""
    from dmpose.loss import demander_cross_entropy, dm_loss, mse_loss
    from dmpose.models import build_model, load_model
    from dmpose.spec import DMLossOptions
    from dmpose.train import load_config

    job = load_config("synthetic").loss
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = batch["image"].to(device).contiguous(memory_format=fmt)
    kp, w = batch["keypoints_hm"].to(device), batch["weights"].to(device)
    tgt = batch["target"]["heatmaps"].to(device)
    runs = {}
    for loss in losses:
        torch.manual_seed(0)
        model = (load_model(weights) if weights else build_model(arch, num_joints=17)).to(device).train()
        model = model.to(memory_format=fmt)
        opts = {"dm": DMLossOptions(), "dm_tol0": DMLossOptions(tol=0.0), "dm_job": job.dm,
                "dm_job_torch": job.dm.model_copy(update={"backend": "torch"})}.get(loss)
        runs[loss] = (model, torch.optim.Adam(model.parameters(), lr=1e-3), opts)

    def loss_value(loss: str, hm: torch.Tensor, opts) -> torch.Tensor:
        if loss == "mse":
            return mse_loss(hm, tgt, w)
        value = dm_loss(hm, kp, w, opts)
        return value + job.aux_ce * demander_cross_entropy(hm, kp, w, opts) if loss.startswith("dm_job") else value

    def step(loss: str) -> None:
        model, opt, opts = runs[loss]
        with torch.autocast(device.split(":")[0], dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            hm = model(x)
        loss_value(loss, hm.float(), opts).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    return interleaved_medians({loss: (lambda loss=loss: step(loss)) for loss in losses}, repeats)


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
    ap.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                    help="autocast of the model as the trainer's train.amp (auto: bf16 on a CPU with native bf16)")
    ap.add_argument("--contiguous", action="store_true",
                    help="the default NCHW memory format instead of the default job's channels_last")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from dmpose.train import load_config
    from dmpose.train.runtime import autocast_dtype as _amp

    amp_dtype = _amp(load_config(data={"train": {"amp": args.amp}}), torch.device(args.device))[0]
    channels_last = not args.contiguous and load_config("synthetic").model.channels_last
    tuning = "untuned"
    if args.device == "cpu" and not args.no_cpu_tuning:
        from dmpose.train.runtime import tune_cpu_process

        tuning = tune_cpu_process()
    rows = [("hrnet_tiny", (96, 128), 32)]
    if not args.skip_w32:
        rows.append(("hrnet_w32", (192, 256), args.w32_batch))
    amp = str(amp_dtype).removeprefix("torch.") if amp_dtype else "fp32"
    print(f"torch {torch.__version__}, {args.threads} thread(s), device {args.device} ({tuning}), model {amp}"
          f"{', channels_last' if channels_last else ''}, median of {args.repeats} steps, the losses' steps "
          "interleaved; DM+CE: the default job's loss")
    if args.device == "cpu":
        from dmpose.kernels.cpu import cpu_kernel_status

        ok, why = cpu_kernel_status()
        print(f"DM backend auto on the CPU: {'the compiled C kernel' if ok else 'torch'} ({why})")
    print(f"{'model':<12} {'input':>8} {'batch':>5} {'MSE s':>8} {'DM s':>8} {'DM/MSE':>7} {'DM+CE s':>8} "
          f"{'/MSE':>6} {'DM+CE torch s':>13} {'/MSE':>6} {'DM tol=0 s':>11} {'tol0/MSE':>8}")
    for arch, wh, n in rows:
        batch = batch_for(wh, n)
        weights = args.tiny_weights if arch == "hrnet_tiny" else None
        t = step_times(arch, batch, ("mse", "dm", "dm_job", "dm_job_torch", "dm_tol0"), args.repeats, args.device,
                       weights, amp_dtype, channels_last)
        print(f"{arch:<12} {wh[1]}x{wh[0]:<4} {n:>5} {t['mse']:>8.3f} {t['dm']:>8.3f} {t['dm'] / t['mse']:>7.3f} "
              f"{t['dm_job']:>8.3f} {t['dm_job'] / t['mse']:>6.3f} {t['dm_job_torch']:>13.3f} "
              f"{t['dm_job_torch'] / t['mse']:>6.3f} {t['dm_tol0']:>11.3f} {t['dm_tol0'] / t['mse']:>8.2f}")


if __name__ == "__main__":
    main()
