"""DM loss forward+backward: dmpose defaults vs dmpose tol=0 (the paper's 1000 iterations) vs POT.

Usage: python benchmarks/bench_loss.py [--sizes 64x48,96x72] [--joints 544] [--repeats 3] [--device cpu] [--threads N]
       [--backend auto|torch|cpu|triton]

On a CPU shared with other busy processes, --threads 1 is much faster than 2 (OpenMP threads wait
for the busy core): measure on a quiet machine and say which thread count.

Prints one table per run, everything measured side by side in that run, with ratios. Targets (issue 2,
CPU): defaults >= 50x faster than tol=0 at equal loss; tol=0 >= 5x faster than POT's batched log
Sinkhorn (1000 iterations, forward only: POT's autodiff through 1000 iterations does not fit in
memory; by default it runs --pot-iters iterations and its time is scaled to 1000, which is exact for
a fixed-iteration solver up to set-up cost, and its loss column is then that of the shorter run);
defaults <= 0.5 s per step at 64x48x544.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from harness import Table, header

from dmpose import demanders, dm_loss
from dmpose.sinkhorn import pixel_demander_cost, suppliers


def realistic_batch(n: int, h: int, w: int, device: str, seed: int = 0):
    """Heatmaps like a half-trained model's: a blurred peak near the dot, a second weaker mode, noise."""
    g = torch.Generator().manual_seed(seed)
    dots = torch.rand(n, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    off = (torch.rand(n, 2, generator=g) - 0.5) * 4
    other = torch.rand(n, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])
    d1 = (xs - (dots[:, 0] + off[:, 0])[:, None, None]) ** 2 + (ys - (dots[:, 1] + off[:, 1])[:, None, None]) ** 2
    d2 = (xs - other[:, 0, None, None]) ** 2 + (ys - other[:, 1, None, None]) ** 2
    hm = torch.exp(-d1 / 8) + 0.3 * torch.exp(-d2 / 8) + 0.05 * torch.randn(n, h, w, generator=g) - 0.02
    return hm.to(device), dots.to(device)


def timed(fn, repeats: int, sync, warmup: bool = True) -> tuple[float, object]:
    if warmup:
        fn()
        sync()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64x48,96x72")
    parser.add_argument("--joints", type=int, default=544, help="problems per step (batch 32 x 17 joints)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "cpu", "triton"),
                        help="dm_loss backend (auto: Triton on CUDA, the compiled C kernel on the CPU where it compiles)")
    parser.add_argument("--skip-pot", action="store_true")
    parser.add_argument("--pot-iters", type=int, default=50,
                        help="POT runs this many iterations (tol=0: a fixed cost per iteration) and is scaled to 1000")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    from dmpose.kernels import select_loss_backend

    backend = select_loss_backend(args.backend, args.device)
    print(header("DM loss, eps=1", args.device, problems=args.joints, sizes=args.sizes, repeats=args.repeats,
                 backend=f"{args.backend} -> {backend}"))
    if not torch.cuda.is_available():
        print("No GPU on this machine: CPU numbers only; no GPU numbers exist from this run.\n")
    table = Table("heatmap", "method", "iterations", "time / step", "vs defaults", "loss (sum)",
                  "max rel. diff to tol=0 per problem")
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.split("x"))
        hm, dots = realistic_batch(args.joints, h, w, args.device)
        hm4, kp4 = hm.reshape(args.joints, 1, h, w), dots.reshape(args.joints, 1, 2)

        def step(tol):
            x = hm4.clone().requires_grad_(True)
            per_problem = dm_loss(x, kp4, tol=tol, reduction="none", backend=args.backend)
            per_problem.sum().backward()
            return per_problem.detach().double().flatten()

        t_def, l_def = timed(lambda: step(1e-5), args.repeats, sync)
        t_full, l_full = timed(lambda: step(0.0), 1, sync, warmup=False)
        rows = [("dmpose defaults (tol 1e-5), fwd+bwd", "<=12", t_def, l_def), ("dmpose tol=0, fwd+bwd", "1000", t_full, l_full)]
        if not args.skip_pot:
            import ot

            a, _, _ = suppliers(hm.double())
            a = (a + 1e-12) / (1 + 1e-12 * a.shape[1])  # POT's log-domain needs a > 0
            xy, mass = demanders(dots.double())
            C = pixel_demander_cost(h, w, xy).transpose(1, 2).contiguous()  # POT: (P, pixels, demanders)
            mass = (mass + 1e-12) / (1 + 4e-12)

            def pot():
                res = ot.batch.solve_batch(C, 1.0, a=a, b=mass, max_iter=args.pot_iters, tol=0.0, method="log_sinkhorn", grad="detach")
                return res.value_linear.flatten()

            t_pot, l_pot = timed(pot, 1, sync, warmup=False)
            scaled = f"1000 (ran {args.pot_iters}, time x{1000 / args.pot_iters:g})"
            rows.append(("POT ot.batch log_sinkhorn, fwd only (fp64)", scaled, t_pot * 1000 / args.pot_iters, l_pot))
        for name, iters, t, value in rows:
            rel = ((value.cpu() - l_full.cpu()).abs() / l_full.cpu()).max().item()
            table.add_row(f"{h}x{w}", name, iters, f"{t * 1e3:.1f} ms", f"{t / t_def:.1f}x", f"{value.sum().item():.4f}", f"{rel:.1e}")
    table.print()


if __name__ == "__main__":
    main()
