"""Native Triton loss (value + exact/envelope gradients) and decode against the torch path, on one device.

    python benchmarks/gpu_correctness.py [--json F] [--md F] [--problems 68] [--cpu-smoke | --dry-run]

Shapes 64x48, 96x72 and an odd 37x29; heatmap dtypes fp32/bf16/fp16; grad exact and envelope; tol=0 with
a fixed iteration count (both paths run the same updates: value within 1e-5 x max(1, |value|), gradient
within 1e-3 x max |gradient| + 1e-7) and the default tol=1e-5 (the stopping iteration may differ by one:
value within 1e-4 x max(1, |value|)); then dm_loss(...).backward() on both backends and decode_2x2 on both
backends (coordinates within 1e-4 px, confidences within 1e-5). Exit status 1 if any check fails.
--cpu-smoke runs it on CPU tensors under TRITON_INTERPRET=1 at one tiny shape (a check of the script).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = [(64, 48), (96, 72), (37, 29)]
DTYPES = ["float32", "bfloat16", "float16"]


def maxdiff(a, b) -> float:
    return (a.detach().double().cpu() - b.detach().double().cpu()).abs().max().item() if a.numel() else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=68, help="problems per case (68 = 4 images x 17 joints)")
    ap.add_argument("--fixed-iters", type=int, default=50, help="iterations of the tol=0 comparison")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    ap.add_argument("--dry-run", action="store_true", help="print the plan; run nothing")
    ap.add_argument("--cpu-smoke", action="store_true", help="CPU tensors, TRITON_INTERPRET=1, one tiny shape")
    args = ap.parse_args()
    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before dmpose's kernel modules are imported
    import torch
    from harness import markdown_table, skipped_without_cuda

    plan = {"shapes": SHAPES, "dtypes": DTYPES, "problems": args.problems, "fixed_iters": args.fixed_iters}
    if args.cpu_smoke:
        device, shapes, dtypes, p, fixed = "cpu", [(9, 7)], ["float32"], 2, 3
    elif skipped_without_cuda(args.dry_run, "correctness", plan, args.json):
        return 0
    else:
        device, shapes, dtypes, p, fixed = "cuda", SHAPES, DTYPES, args.problems, args.fixed_iters

    from bench_loss import realistic_batch

    from dmpose.decode import decode_2x2
    from dmpose.kernels.sinkhorn import dm_sinkhorn_triton
    from dmpose.loss import demanders, dm_loss
    from dmpose.sinkhorn import dm_sinkhorn_torch

    rows, failures = [], 0

    def check(case: str, what: str, diff: float, limit: float) -> None:
        nonlocal failures
        ok = diff <= limit
        failures += not ok
        rows.append({"case": case, "what": what, "max_diff": diff, "limit": limit, "ok": ok})

    for h, w in shapes:
        hm32, dots = realistic_batch(p, h, w, device, seed=h * 1000 + w)
        xy, mass = demanders(dots)
        xy, mass = xy.float(), mass.float()
        for dn in dtypes:
            hm = hm32.to(getattr(torch, dn))
            case = f"{h}x{w}x{p} {dn}"
            for grad in ("exact", "envelope"):
                for tol, iters, vlim in ((0.0, fixed, 1e-5), (1e-5, 1000, 1e-4)):
                    opts = dict(eps=1.0, max_iters=iters, tol=tol, grad=grad)
                    c1, g1, _, _ = dm_sinkhorn_triton(hm, xy, mass, **opts)
                    c2, g2, _, _ = dm_sinkhorn_torch(hm, xy, mass, **opts)
                    scale = max(1.0, c2.abs().max().item())
                    check(case, f"value, grad={grad}, tol={tol:g}", maxdiff(c1, c2), vlim * scale)
                    glim = (1e-3 if tol == 0 else 1e-2) * g2.abs().max().item() + 1e-7
                    check(case, f"gradient, grad={grad}, tol={tol:g}", maxdiff(g1, g2), glim)
            b, k = (p // 17, 17) if p % 17 == 0 else (1, p)
            grads, values = [], []
            for backend in ("triton", "torch"):
                x = hm.view(b, k, h, w).clone().requires_grad_(True)
                loss = dm_loss(x, dots.view(b, k, 2), backend=backend)
                loss.backward()
                values.append(loss.detach())
                grads.append(x.grad.float())
            check(case, "dm_loss value, triton vs torch", maxdiff(*values), 1e-4 * max(1.0, values[1].abs().item()))
            check(case, "dm_loss backward, triton vs torch", maxdiff(*grads), 1e-2 * grads[1].abs().max().item() + 1e-7)
            (xy1, cf1), (xy2, cf2) = (decode_2x2(hm.view(b, k, h, w), backend=be) for be in ("triton", "torch"))
            check(case, "decode_2x2 coordinates", maxdiff(xy1, xy2), 1e-4)
            check(case, "decode_2x2 confidence", maxdiff(cf1, cf2), 1e-5 * max(1.0, cf2.abs().max().item()))

    table = markdown_table(["case", "what", "max |diff|", "limit", "ok"],
                           [[r["case"], r["what"], f"{r['max_diff']:.3g}", f"{r['limit']:.3g}",
                             "yes" if r["ok"] else "**NO**"] for r in rows], align="llrrl")
    print(table)
    print(f"correctness on {device}: {len(rows) - failures}/{len(rows)} checks pass")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "plan": plan, "failures": failures, "rows": rows},
                                              indent=1))
    if args.md:
        Path(args.md).write_text(table + f"\n{len(rows) - failures}/{len(rows)} checks pass on {device}\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
