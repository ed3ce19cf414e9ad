"""GPU benchmark of the Triton kernels: DM loss (value + gradient) and the 2x2 decode, against their floors.

    python benchmarks/bench_loss_triton.py [--sizes 64x48,96x72] [--reps 10] [--configs 256x4,512x8,1024x8]

Prints, in one run on one CUDA device, a markdown table ready for benchmarks/RESULTS.md:
- copy bandwidth (device-to-device ``copy_``), the yardstick of the memory floors;
- loss forward+backward at the default tolerance (1e-5, exact gradient) vs its physical floor, for the
  kernel alone and for ``dm_loss(...).backward()`` end to end (both backends): one read
  of the heatmaps and one write of the fp32 gradient at the measured copy bandwidth (target <= 3x), at
  H x W x 544 problems (batch 32 x 17 joints), fp32 and bf16 heatmaps;
- ``tol=0`` (1000 iterations, the paper's setting) vs its arithmetic floor: 8 fp32 multiply-adds per
  pixel per iteration (s_i = sum_l Kt_il u_l and v_j += a_i/s_i Kt_ij) at the chip's FMA rate;
- the torch path (``dm_sinkhorn_torch``) on the same GPU, and POT's batched log-Sinkhorn
  (``ot.batch.solve_batch``, 1000 iterations, forward only) on the same GPU;
- decode: achieved bandwidth of ``decode_2x2`` (Triton) vs the copy bandwidth (target >= 50%).
Without a CUDA device it says plainly that no GPU numbers exist yet and exits 0.

Heatmaps: those of benchmarks/bench_loss.py (a blurred peak near a random sub-pixel dot, a weaker second
mode, noise; much of each heatmap <= 0, as in training). Timing: CUDA events, median of --reps after a
warm-up.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository (dmpose)
from harness import header as run_header  # noqa: E402
from harness import markdown_table

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ (bench_loss)

BATCH, JOINTS = 32, 17
FMA_PER_PIXEL_ITER = 8  # multiplicative form: 4 for s_i, 4 for the column sums
FP32_LANES_PER_SM = 128  # Hopper / Ampere-class fp32 lanes per SM (one FMA per lane per clock)


def gpu_time_ms(fn, reps: int) -> float:
    fn()  # warm-up (and Triton's compile)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth(reps: int) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted)."""
    x = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = gpu_time_ms(lambda: y.copy_(x), reps)
    return 2 * x.numel() / (ms * 1e-3)


def sm_clock_hz() -> tuple[float, str]:
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True)
        try:
            return float(out.stdout.split()[0]) * 1e6, "nvidia-smi max SM clock"
        except (IndexError, ValueError):
            pass
    return 1.98e9, "assumed 1.98 GHz (H100/H200 SXM boost)"


def make_problems(h: int, w: int, dtype: torch.dtype, seed: int = 0):
    """The CPU benchmark's realistic heatmaps (bench_loss.realistic_batch), on the GPU in ``dtype``."""
    from bench_loss import realistic_batch

    from dmpose.loss import demanders

    hm, dots = realistic_batch(BATCH * JOINTS, h, w, "cuda", seed=seed)
    xy, mass = demanders(dots)
    return hm.to(dtype), xy.float(), mass.float(), dots


def bench_configs(h: int, w: int, dtype: torch.dtype, bw: float, reps: int, configs: str) -> list[list[str]]:
    """The kernel at the default tolerance for several launch shapes (pixels per block x warps)."""
    from dmpose.kernels.sinkhorn import dm_sinkhorn_triton

    hm, xy, mass, _ = make_problems(h, w, dtype)
    name = f"{h}x{w}x{hm.shape[0]} {str(dtype).removeprefix('torch.')}"
    floor_mem = hm.numel() * (hm.element_size() + 4) / bw * 1e3
    rows = []
    for cfg in configs.split(","):
        block, warps = (int(v) for v in cfg.lower().split("x"))
        t = gpu_time_ms(lambda: dm_sinkhorn_triton(hm, xy, mass, eps=1.0, max_iters=1000, tol=1e-5, grad="exact",
                                                   block=block, num_warps=warps), reps)
        rows.append([name, f"triton tol=1e-5 exact, BLOCK={block} warps={warps}", f"{t:.3f}",
                     f"memory {floor_mem:.3f}", f"{t / floor_mem:.1f}x", ""])
    return rows


def bench_loss(h: int, w: int, dtype: torch.dtype, bw: float, fma_rate: float, reps: int) -> list[list[str]]:
    from dmpose.kernels.sinkhorn import dm_sinkhorn_triton
    from dmpose.sinkhorn import dm_sinkhorn_torch

    hm, xy, mass, dots = make_problems(h, w, dtype)
    p, n = hm.shape[0], h * w
    name = f"{h}x{w}x{p} {str(dtype).removeprefix('torch.')}"
    rows = []
    floor_mem = p * n * (hm.element_size() + 4) / bw * 1e3
    default = dict(eps=1.0, max_iters=1000, tol=1e-5, grad="exact")
    paper = dict(eps=1.0, max_iters=1000, tol=0.0, grad="exact")
    floor_fma = p * n * FMA_PER_PIXEL_ITER * 1000 / fma_rate * 1e3

    iters = dm_sinkhorn_triton(hm, xy, mass, **default)[3].float().mean().item()
    t = gpu_time_ms(lambda: dm_sinkhorn_triton(hm, xy, mass, **default), reps)
    rows.append([name, "triton, tol=1e-5 exact", f"{t:.3f}", f"memory {floor_mem:.3f}", f"{t / floor_mem:.1f}x",
                 f"{iters:.1f}"])
    t_env = gpu_time_ms(lambda: dm_sinkhorn_triton(hm, xy, mass, **dict(default, grad="envelope")), reps)
    rows.append([name, "triton, tol=1e-5 envelope", f"{t_env:.3f}", f"memory {floor_mem:.3f}",
                 f"{t_env / floor_mem:.1f}x", f"{iters:.1f}"])
    t0 = gpu_time_ms(lambda: dm_sinkhorn_triton(hm, xy, mass, **paper), max(2, reps // 3))
    rows.append([name, "triton, tol=0 (1000 it)", f"{t0:.3f}", f"FMA {floor_fma:.3f}", f"{t0 / floor_fma:.1f}x", "1000"])
    tt = gpu_time_ms(lambda: dm_sinkhorn_torch(hm, xy, mass, **default), reps)
    rows.append([name, "torch twin, tol=1e-5", f"{tt:.3f}", "", f"torch/triton {tt / t:.1f}x", ""])
    tt0 = gpu_time_ms(lambda: dm_sinkhorn_torch(hm, xy, mass, **paper), 2)
    rows.append([name, "torch twin, tol=0 (1000 it)", f"{tt0:.3f}", "", f"torch/triton {tt0 / t0:.1f}x", "1000"])
    rows.append([name, "POT solve_batch log, 1000 it, fwd only", *bench_pot(hm, xy, mass, h, w, t0)])
    rows += bench_dm_loss(hm, dots, h, w, floor_mem, reps)
    return rows


def bench_dm_loss(hm, dots, h: int, w: int, floor_mem: float, reps: int) -> list[list[str]]:
    """The public API end to end: dm_loss forward + backward (defaults) on each backend."""
    from dmpose.loss import dm_loss

    x = hm.view(BATCH, JOINTS, h, w).clone().requires_grad_(True)
    kp = dots.view(BATCH, JOINTS, 2)
    name = f"{h}x{w}x{BATCH * JOINTS} {str(hm.dtype).removeprefix('torch.')}"
    rows = []
    for backend in ("triton", "torch"):
        def step():
            x.grad = None
            dm_loss(x, kp, backend=backend).backward()

        t = gpu_time_ms(step, reps)
        rows.append([name, f"dm_loss fwd+bwd, backend={backend}", f"{t:.3f}", f"memory {floor_mem:.3f}",
                     f"{t / floor_mem:.1f}x", ""])
    return rows


def bench_pot(hm, xy, mass, h: int, w: int, t_triton0: float) -> list[str]:
    try:
        import ot.batch

        from dmpose.sinkhorn import pixel_demander_cost, suppliers
    except ImportError as exc:
        return [f"unavailable: {exc}", "", "", ""]
    a, _, _ = suppliers(hm.float())
    a = (a + 1e-12) / (1 + 1e-12 * a.shape[1])  # POT's log domain needs a > 0 and b > 0 (as in bench_loss)
    C = pixel_demander_cost(h, w, xy)
    b = (mass + 1e-12) / (1 + 4e-12)
    try:
        fn = lambda: ot.batch.solve_batch(C, reg=1.0, a=a, b=b, max_iter=1000, tol=0.0,  # noqa: E731
                                          method="log_sinkhorn", grad="detach")
        t = gpu_time_ms(fn, 2)
    except Exception as exc:  # POT API differences or out of memory: say so
        return [f"failed: {type(exc).__name__}: {exc}"[:80], "", "", ""]
    return [f"{t:.3f}", "", f"POT/triton(tol=0) {t / t_triton0:.1f}x", "1000"]


def bench_decode(h: int, w: int, dtype: torch.dtype, bw: float, reps: int) -> list[list[str]]:
    from dmpose.decode import decode_2x2

    hm = make_problems(h, w, dtype)[0].view(BATCH, JOINTS, h, w)
    name = f"{h}x{w}x{BATCH * JOINTS} {str(dtype).removeprefix('torch.')}"
    bytes_read = hm.numel() * hm.element_size()
    rows = []
    for backend in ("triton", "torch"):
        t = gpu_time_ms(lambda: decode_2x2(hm, backend=backend), reps)
        achieved = bytes_read / (t * 1e-3)
        rows.append([name, f"decode_2x2 {backend}", f"{t:.3f}", f"copy {bytes_read / bw * 1e3:.3f}",
                     f"{100 * achieved / bw:.0f}% of copy BW", ""])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64x48,96x72", help="heatmap sizes HxW, comma separated")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--configs", default="256x4,512x8,1024x8",
                        help="kernel launch shapes BLOCKxWARPS to time at the default tolerance")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("No GPU numbers exist yet: this machine has no CUDA device (torch.cuda.is_available() is False).")
        print("The Triton kernels are tested here under TRITON_INTERPRET=1 and compiled ahead of time for "
              "sm_90 (see benchmarks/RESULTS.md); run this script on a GPU machine for the timings.")
        return 0
    from dmpose.kernels import triton_status

    ok, reason = triton_status("cuda")
    if not ok:
        print(f"No GPU numbers: Triton cannot run here ({reason}).")
        return 0

    props = torch.cuda.get_device_properties(0)
    clock, clock_src = sm_clock_hz()
    fma_rate = props.multi_processor_count * FP32_LANES_PER_SM * clock
    bw = copy_bandwidth(args.reps)
    print(run_header("DM loss, Triton", "cuda", sizes=args.sizes, reps=args.reps, configs=args.configs))
    print(f"copy bandwidth: {bw / 1e9:.0f} GB/s; fp32 FMA rate {fma_rate / 1e12:.1f} T/s ({clock_src})")
    rows = []
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.lower().split("x"))
        for dtype in (torch.float32, torch.bfloat16):
            rows += bench_loss(h, w, dtype, bw, fma_rate, args.reps)
            rows += bench_configs(h, w, dtype, bw, args.reps, args.configs)
            rows += bench_decode(h, w, dtype, bw, args.reps)
    print(markdown_table(["problem", "what", "ms", "floor ms", "ratio", "mean iterations"], rows, align="l" * 6))
    return 0


if __name__ == "__main__":
    sys.exit(main())
