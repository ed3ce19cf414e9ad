"""hrnet_tiny's training step on the CPU per thread count, memory format and precision.

Usage: python benchmarks/bench_cpu_step.py [--repeats 7]

Forward + MSE loss + backward + Adam on one real batch at the default job's size (128x96 input, batch 32,
configs/synthetic.yaml), freshly initialised models, for 1 and 2 torch threads x NCHW / channels_last x fp32 /
bf16 autocast (the losses stay fp32, as in the trainer); the arms' steps are interleaved so that a load change
falls on all alike, and the process is tuned as the trainer tunes it (`tune_cpu_process`). Prints the median
step and the speed-up over 1 thread, fp32, NCHW. bf16 is only fast on a CPU with native bf16 (AVX512-BF16 /
AMX), where the trainer's `train.amp: auto` picks it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import batch_for  # noqa: E402
from harness import header, interleaved_medians, markdown_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    from dmpose.loss import mse_loss
    from dmpose.models import build_model
    from dmpose.train.runtime import cpu_has_native_bf16, tune_cpu_process

    tuning = tune_cpu_process()
    print(header("hrnet_tiny CPU step: threads x memory format x precision", "cpu", tuning=tuning,
                 native_bf16=cpu_has_native_bf16(), repeats=args.repeats))
    batch = batch_for((96, 128), 32)
    x, tgt, w = batch["image"], batch["target"]["heatmaps"], batch["weights"]
    arms = [(t, cl, bf16) for t in (1, 2) for cl in (False, True) for bf16 in (False, True)]
    runs = {}
    for arm in arms:
        torch.manual_seed(0)
        fmt = torch.channels_last if arm[1] else torch.contiguous_format
        model = build_model("hrnet_tiny", num_joints=17).train().to(memory_format=fmt)
        runs[arm] = (model, torch.optim.Adam(model.parameters(), lr=1e-3), x.contiguous(memory_format=fmt))

    def step(arm: tuple) -> None:
        model, opt, xx = runs[arm]
        torch.set_num_threads(arm[0])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=arm[2]):
            out = model(xx)
        mse_loss(out.float(), tgt, w).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    medians = interleaved_medians({arm: (lambda arm=arm: step(arm)) for arm in arms}, args.repeats)
    base = medians[(1, False, False)]
    rows = []
    for arm in arms:
        t = medians[arm]
        rows.append((arm[0], "channels_last" if arm[1] else "NCHW", "bf16 autocast" if arm[2] else "fp32",
                     f"{t:.3f}", f"{base / t:.2f}x"))
    print(markdown_table(("threads", "memory format", "precision", "s/step", "vs 1 thread fp32 NCHW"), rows))


if __name__ == "__main__":
    main()
