"""Throughput and compute of the dmpose architectures at 256x192.

Forward (eval, no grad) and forward+backward (train mode, a mean-square loss on the heatmaps)
images/s, plus GFLOPs per image counted from the model itself: forward hooks sum the multiply-
accumulates of every Conv2d / ConvTranspose2d / Linear on a meta-device forward (the pose papers call
MACs "FLOPs"; BN, ReLU, additions and upsampling are not counted). Reported, never asserted.

CPU: batch 8, float32. CUDA (when present): batch 32, bf16 autocast, channels_last.

    python benchmarks/bench_models.py --models hrnet_tiny,hrnet_w32,simplebaseline_res50 --iters 3
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import header, markdown_table  # noqa: E402

from dmpose.models import build_model, list_models  # noqa: E402

INPUT = (256, 192)


def count_macs(name: str, num_joints: int = 17) -> int:
    """MACs per image of one forward pass, counted on the meta device (no memory, no compute)."""
    model = build_model(name, num_joints=num_joints, device="meta").eval()
    total = 0

    def hook(module: nn.Module, inputs, output) -> None:
        nonlocal total
        if isinstance(module, nn.ConvTranspose2d):  # every input element meets every kernel tap
            kh, kw = module.kernel_size
            total += inputs[0][0].numel() * (module.out_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output[0].numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += output[0].numel() * module.in_features

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.empty(1, 3, *INPUT, device="meta"))
    return total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(name: str, device: torch.device, batch: int, iters: int, warmup: int) -> tuple[float, float]:
    """(forward images/s, forward+backward images/s)."""
    model = build_model(name).to(device)
    x = torch.randn(batch, 3, *INPUT, device=device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)

    def run(train: bool) -> float:
        model.train(train)
        for i in range(warmup + iters):
            if i == warmup:
                _sync(device)
                start = time.perf_counter()
            if train:
                with autocast:
                    loss = model(x).float().square().mean()
                loss.backward()
                model.zero_grad(set_to_none=True)
            else:
                with torch.no_grad(), autocast:
                    model(x)
        _sync(device)
        return batch * iters / (time.perf_counter() - start)

    return run(False), run(True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="hrnet_tiny,hrnet_w32,simplebaseline_res50",
                        help=f"comma-separated names or 'all' ({', '.join(list_models())})")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per measurement")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on CPU, 32 on CUDA")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cpu", action="store_true", help="benchmark the CPU even when CUDA is present")
    parser.add_argument("--flops-only", action="store_true", help="only parameters and GFLOPs (meta device, instant)")
    args = parser.parse_args()

    names = list_models() if args.models == "all" else args.models.split(",")
    if args.flops_only:
        print(header("Model size", "cpu", input_hw=f"{INPUT[0]}x{INPUT[1]}", joints=17))
        rows = [(name, f"{sum(p.numel() for p in build_model(name, device='meta').parameters()) / 1e6:.1f}",
                 f"{count_macs(name) / 1e9:.2f}") for name in names]
        print(markdown_table(("model", "params (M)", "GFLOPs/image (MACs)"), rows))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    batch = args.batch or (32 if cuda else 8)
    if cuda:
        where = f"GPU: {torch.cuda.get_device_name()} — batch {batch}, bf16 autocast, channels_last"
    else:
        where = (f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads — "
                 f"batch {batch}, float32")
        if not torch.cuda.is_available():
            print("No CUDA GPU present: CPU results only.")
    print(f"{where}; input {INPUT[0]}x{INPUT[1]}; {args.iters} timed iterations after {args.warmup} warm-up; "
          f"torch {torch.__version__}\n")
    print("| model | params (M) | GFLOPs/image (MACs) | forward img/s | fwd+bwd img/s |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        params = sum(p.numel() for p in build_model(name, device="meta").parameters())
        gmacs = count_macs(name) / 1e9
        fwd, train = throughput(name, device, batch, args.iters, args.warmup)
        print(f"| {name} | {params / 1e6:.1f} | {gmacs:.2f} | {fwd:.1f} | {train:.1f} |", flush=True)


if __name__ == "__main__":
    main()
