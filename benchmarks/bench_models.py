"""Throughput, peak memory and compute of the dmpose architectures at 256x192 (or --input-size).

Forward (eval, no grad) and forward+backward (train mode, a mean-square loss on the heatmaps)
images/s, the peak memory of the forward+backward step, plus GFLOPs per image counted from the model
itself by `dmpose.models.flops.count_macs` on a meta-device forward: the multiply-accumulates of every
Conv2d / ConvTranspose2d / Linear (the pose papers call MACs "FLOPs"; BN, norms, activations,
additions and resampling are not counted), and in a second column also the window-attention
matmuls (q k^T, attn v) of the transformers. Reported, never asserted.

Peak memory: CUDA `max_memory_allocated` (tensors only); CPU the growth of the process's peak RSS
(ru_maxrss) during the model's runs, which is only meaningful for the first model that reaches a new
peak: run one model per invocation for CPU memory figures.

CPU: batch 8, float32. CUDA (when present): batch 32, bf16 autocast, channels_last.

    python benchmarks/bench_models.py --models hrnet_tiny,hrnet_w32,simplebaseline_res50 --iters 3
    python benchmarks/bench_models.py --models hrformer_small,hrformer_base --flops-only
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import header, markdown_table  # noqa: E402

from dmpose.models import build_model, list_models  # noqa: E402
from dmpose.models.flops import count_macs, count_params  # noqa: E402

INPUT = (256, 192)  # replaced by --input-size


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def throughput(name: str, device: torch.device, batch: int, iters: int, warmup: int) -> tuple[float, float, float]:
    """(forward images/s, forward+backward images/s, peak MiB of the forward+backward runs)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    before = 0.0 if device.type == "cuda" else _peak_mb(device)
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

    fwd = run(False)
    train = run(True)
    return fwd, train, _peak_mb(device) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="hrnet_tiny,hrnet_w32,simplebaseline_res50,hrformer_small,hrformer_base",
                        help=f"comma-separated names or 'all' ({', '.join(list_models())})")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per measurement")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on CPU, 32 on CUDA")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cpu", action="store_true", help="benchmark the CPU even when CUDA is present")
    parser.add_argument("--flops-only", action="store_true", help="only parameters and GFLOPs (meta device, no compute)")
    parser.add_argument("--input-size", default="256x192", help="HEIGHTxWIDTH (default 256x192)")
    args = parser.parse_args()
    global INPUT
    INPUT = tuple(int(v) for v in args.input_size.lower().split("x"))

    names = list_models() if args.models == "all" else args.models.split(",")
    if args.flops_only:
        print(header("Model size", "cpu", input_hw=f"{INPUT[0]}x{INPUT[1]}", joints=17,
                     flops="MACs of conv + linear layers, and with the attention matmuls"))
        rows = [(name, f"{count_params(name) / 1e6:.1f}", f"{count_macs(name, INPUT) / 1e9:.2f}",
                 f"{count_macs(name, INPUT, attention=True) / 1e9:.2f}") for name in names]
        print(markdown_table(("model", "params (M)", "GFLOPs/image", "with attention"), rows))
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
    print("| model | params (M) | GFLOPs/image | with attention | forward img/s | fwd+bwd img/s | peak MiB (fwd+bwd) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        params = count_params(name)
        gmacs, gmacs_attn = count_macs(name, INPUT) / 1e9, count_macs(name, INPUT, attention=True) / 1e9
        fwd, train, peak = throughput(name, device, batch, args.iters, args.warmup)
        print(f"| {name} | {params / 1e6:.1f} | {gmacs:.2f} | {gmacs_attn:.2f} | {fwd:.1f} | {train:.1f} | {peak:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
