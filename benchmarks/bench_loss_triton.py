"""GPU benchmark of the Triton kernels: DM loss (value + gradient) and the 2x2 decode, against their floors.

    python benchmarks/bench_loss_triton.py [--sizes 64x48,96x72] [--problems 544,2176] [--dtypes fp32,bf16]
        [--stages loss,configs,decode] [--reps 10] [--configs 256x4,512x8,1024x8] [--json F] [--md F] [--dry-run]

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
Floors for the sweeps actually run (``sweeps`` = mean iterations + 3: two supplier passes and one gradient
pass): memory = sweeps x P x N x heatmap bytes + the fp32 gradient write, at the measured copy bandwidth (a
DRAM floor: a problem set that fits in L2 can beat it); arithmetic = the larger of the FMA floor and the
special-function floor (4 sqrt + 4 exp + 1 reciprocal per pixel per sweep at 16 MUFU ops/clock/SM). The
"ratio" column is the time over the higher of the two. Small problem sets are launch-bound (~5 us a launch):
the "CUDA graph" row replays the default-tolerance call from a captured graph.
Without a CUDA device it says plainly that no GPU numbers exist yet and exits 0 (``--dry-run``: also checks
the arguments and writes the plan to --json).

Heatmaps: those of benchmarks/bench_loss.py (a blurred peak near a random sub-pixel dot, a weaker second
mode, noise; much of each heatmap <= 0, as in training). Timing: CUDA events, median of --reps after a
warm-up.
"""

from __future__ import annotations

import argparse
import os
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
MUFU_PER_SM_CLOCK = 16  # special-function (ex2, rsqrt, rcp) results per SM per clock on sm_80/sm_90
MUFU_PER_PIXEL_SWEEP = 9  # 4 sqrt + 4 exp + 1 reciprocal (a / s) per pixel per sweep
EXTRA_SWEEPS = 3  # two supplier passes and one gradient pass besides the iterations
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


PAPER_ITERS = 1000  # tol=0 runs (3 under --cpu-smoke)
DEVICE = "cuda"  # "cpu" only for --cpu-smoke (Triton's interpreter, wall-clock timing, tiny sizes)


def gpu_time_ms(fn, reps: int) -> float:
    if DEVICE == "cpu":
        import time

        t0 = time.perf_counter()
        fn()  # once: the interpreter's time says nothing about speed
        return (time.perf_counter() - t0) * 1e3
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
    x = torch.empty(256 * 2**20 if DEVICE == "cuda" else 2**20, dtype=torch.uint8, device=DEVICE)
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


def dname(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def batch_shape(p: int) -> tuple[int, int]:
    """(images, joints) for P problems: P / 17 images of 17 joints when it divides, else one image."""
    return (p // JOINTS, JOINTS) if p % JOINTS == 0 else (1, p)


def floors(p: int, n: int, elem: int, sweeps: float, bw: float, fma_rate: float, sfu_rate: float,
           fma_per_pixel_sweep: float = FMA_PER_PIXEL_ITER) -> dict:
    """Memory and arithmetic floors (ms) for ``sweeps`` passes over P problems of N pixels."""
    mem = (sweeps * p * n * elem + p * n * 4) / bw * 1e3
    fma = sweeps * p * n * fma_per_pixel_sweep / fma_rate * 1e3
    sfu = sweeps * p * n * MUFU_PER_PIXEL_SWEEP / sfu_rate * 1e3
    arith = max(fma, sfu)
    return {"sweeps": sweeps, "floor_memory_ms": mem, "floor_fma_ms": fma, "floor_sfu_ms": sfu,
            "floor_arith_ms": arith, "floor_ms": max(mem, arith), "floor_bound": "memory" if mem >= arith else
            ("special functions" if sfu >= fma else "FMA")}


def make_problems(h: int, w: int, dtype: torch.dtype, p: int = BATCH * JOINTS, seed: int = 0):
    """The CPU benchmark's realistic heatmaps (bench_loss.realistic_batch), on the GPU in ``dtype``."""
    from bench_loss import realistic_batch

    from dmpose.loss import demanders

    hm, dots = realistic_batch(p, h, w, DEVICE, seed=seed)
    xy, mass = demanders(dots)
    return hm.to(dtype), xy.float(), mass.float(), dots


def row(problem: str, what: str, ms: float | None, iters: float | None = None, fl: dict | None = None,
        note: str = "") -> dict:
    r = {"problem": problem, "what": what, "ms": ms, "mean_iterations": iters, "note": note}
    if fl:
        r.update(fl)
        r["ratio_to_floor"] = ms / fl["floor_ms"] if ms is not None and fl["floor_ms"] > 0 else None
    return r


def graph_time_ms(fn, reps: int) -> float:
    """``fn`` captured once in a CUDA graph and replayed: the launch overhead removed."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()  # compile / warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return gpu_time_ms(graph.replay, reps)


def bench_configs(h: int, w: int, p: int, dtype: torch.dtype, rates: dict, reps: int, configs: str) -> list[dict]:
    """The kernel at the default tolerance and at tol=0 for several launch shapes (pixels per block x warps)."""
    from dmpose.kernels.sinkhorn import dm_sinkhorn_triton

    hm, xy, mass, _ = make_problems(h, w, dtype, p)
    name = f"{h}x{w}x{p} {dname(dtype)}"
    iters = dm_sinkhorn_triton(hm, xy, mass, eps=1.0, max_iters=1000, tol=1e-5)[3].float().mean().item()
    rows = []
    for cfg in configs.split(","):
        block, warps = parse_config(cfg)
        for tol, it in ((1e-5, iters), (0.0, float(PAPER_ITERS))):
            fl = floors(p, h * w, hm.element_size(), it + EXTRA_SWEEPS, **rates)
            try:
                t = gpu_time_ms(lambda: dm_sinkhorn_triton(hm, xy, mass, eps=1.0, max_iters=PAPER_ITERS if tol == 0 else 1000, tol=tol,
                                                           grad="exact", block=block, num_warps=warps),
                                reps if tol else max(2, reps // 3))
                rows.append(row(name, f"config BLOCK={block} warps={warps}, tol={tol:g} exact", t, it, fl))
            except Exception as exc:  # a launch shape the chip refuses (registers, shared memory): say so
                rows.append(row(name, f"config BLOCK={block} warps={warps}, tol={tol:g} exact", None, it, fl,
                                f"failed: {type(exc).__name__}: {exc}"[:100]))
    return rows


def bench_loss(h: int, w: int, p: int, dtype: torch.dtype, rates: dict, reps: int, pot: bool, graphs: bool) -> list[dict]:
    from dmpose.kernels.sinkhorn import dm_sinkhorn_triton
    from dmpose.sinkhorn import dm_sinkhorn_torch

    hm, xy, mass, dots = make_problems(h, w, dtype, p)
    n = h * w
    name = f"{h}x{w}x{p} {dname(dtype)}"
    rows = []
    default = dict(eps=1.0, max_iters=1000, tol=1e-5, grad="exact")
    paper = dict(eps=1.0, max_iters=PAPER_ITERS, tol=0.0, grad="exact")
    iters = dm_sinkhorn_triton(hm, xy, mass, **default)[3].float().mean().item()
    fl_def = floors(p, n, hm.element_size(), iters + EXTRA_SWEEPS, **rates)
    fl_paper = floors(p, n, hm.element_size(), PAPER_ITERS + EXTRA_SWEEPS, **rates)

    t = gpu_time_ms(lambda: dm_sinkhorn_triton(hm, xy, mass, **default), reps)
    rows.append(row(name, "triton, tol=1e-5 exact", t, iters, fl_def))
    if graphs:
        try:
            tg = graph_time_ms(lambda: dm_sinkhorn_triton(hm, xy, mass, **default), reps)
            rows.append(row(name, "triton, tol=1e-5 exact, CUDA graph", tg, iters, fl_def))
        except Exception as exc:  # a host sync inside the call cannot be captured: say so
            rows.append(row(name, "triton, tol=1e-5 exact, CUDA graph", None, iters, fl_def,
                            f"capture failed: {type(exc).__name__}: {exc}"[:100]))
    t_env = gpu_time_ms(lambda: dm_sinkhorn_triton(hm, xy, mass, **dict(default, grad="envelope")), reps)
    rows.append(row(name, "triton, tol=1e-5 envelope", t_env, iters, fl_def))
    t0 = gpu_time_ms(lambda: dm_sinkhorn_triton(hm, xy, mass, **paper), max(2, reps // 3))
    rows.append(row(name, "triton, tol=0 (1000 it) exact", t0, 1000, fl_paper))
    tt = gpu_time_ms(lambda: dm_sinkhorn_torch(hm, xy, mass, **default), max(2, reps // 2))
    rows.append(row(name, "torch twin, tol=1e-5 exact", tt, None, fl_def, f"torch/triton {tt / t:.1f}x"))
    tt0 = gpu_time_ms(lambda: dm_sinkhorn_torch(hm, xy, mass, **paper), 2)
    rows.append(row(name, "torch twin, tol=0 (1000 it) exact", tt0, 1000, fl_paper, f"torch/triton {tt0 / t0:.1f}x"))
    if pot:
        rows.append(bench_pot(hm, xy, mass, h, w, t0, name))
    rows += bench_dm_loss(hm, dots, h, w, p, fl_def, reps)
    return rows


def bench_dm_loss(hm, dots, h: int, w: int, p: int, fl: dict, reps: int) -> list[dict]:
    """The public API end to end: dm_loss forward + backward (defaults) on each backend."""
    from dmpose.loss import dm_loss

    b, k = batch_shape(p)
    x = hm.view(b, k, h, w).clone().requires_grad_(True)
    kp = dots.view(b, k, 2)
    name = f"{h}x{w}x{p} {dname(hm.dtype)}"
    rows = []
    for backend in ("triton", "torch"):
        def step():
            x.grad = None
            dm_loss(x, kp, backend=backend).backward()

        t = gpu_time_ms(step, reps)
        rows.append(row(name, f"dm_loss fwd+bwd, backend={backend}", t, fl.get("sweeps", 0) - EXTRA_SWEEPS, fl))
    return rows


def bench_pot(hm, xy, mass, h: int, w: int, t_triton0: float, name: str) -> dict:
    what = "POT solve_batch log, 1000 it, fwd only"
    try:
        import ot.batch

        from dmpose.sinkhorn import pixel_demander_cost, suppliers
    except ImportError as exc:
        return row(name, what, None, note=f"unavailable: {exc}")
    a, _, _ = suppliers(hm.float())
    a = (a + 1e-12) / (1 + 1e-12 * a.shape[1])  # POT's log domain needs a > 0 and b > 0 (as in bench_loss)
    C = pixel_demander_cost(h, w, xy)
    b = (mass + 1e-12) / (1 + 4e-12)
    try:
        fn = lambda: ot.batch.solve_batch(C, reg=1.0, a=a, b=b, max_iter=1000, tol=0.0,  # noqa: E731
                                          method="log_sinkhorn", grad="detach")
        t = gpu_time_ms(fn, 2)
    except Exception as exc:  # POT API differences or out of memory: say so
        return row(name, what, None, note=f"failed: {type(exc).__name__}: {exc}"[:80])
    return row(name, what, t, 1000, note=f"POT/triton(tol=0) {t / t_triton0:.1f}x")


def bench_decode(h: int, w: int, p: int, dtype: torch.dtype, bw: float, reps: int) -> list[dict]:
    from dmpose.decode import decode_2x2

    b, k = batch_shape(p)
    hm = make_problems(h, w, dtype, p)[0].view(b, k, h, w)
    name = f"{h}x{w}x{p} {dname(dtype)}"
    bytes_moved = hm.numel() * hm.element_size() + p * 3 * 4  # heatmaps read, coords (x, y) + confidence written
    rows = []
    for backend in ("triton", "torch"):
        t = gpu_time_ms(lambda: decode_2x2(hm, backend=backend), reps)
        achieved = bytes_moved / (t * 1e-3)
        r = row(name, f"decode_2x2 {backend}", t, note=f"{100 * achieved / bw:.0f}% of copy BW")
        r.update({"floor_memory_ms": bytes_moved / bw * 1e3, "floor_ms": bytes_moved / bw * 1e3,
                  "floor_bound": "memory", "achieved_GBps": achieved / 1e9, "fraction_of_copy_bw": achieved / bw})
        r["ratio_to_floor"] = t / r["floor_ms"]
        rows.append(r)
    return rows


def parse_size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    if h < 2 or w < 2:
        raise ValueError(f"heatmap size must be at least 2x2, got {text!r}")
    return h, w


def parse_config(text: str) -> tuple[int, int]:
    block, warps = (int(v) for v in text.lower().split("x"))
    if block < 16 or block & (block - 1) or warps < 1 or warps & (warps - 1):
        raise ValueError(f"a launch config is BLOCKxWARPS, both powers of two (BLOCK >= 16), got {text!r}")
    return block, warps


def fmt(v, digits: int = 3) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


COLUMNS = ["problem", "what", "ms", "mean it", "mem floor ms", "arith floor ms", "ratio to higher floor", "note"]


def table(rows: list[dict]) -> str:
    body = [[r["problem"], r["what"], fmt(r["ms"]), fmt(r.get("mean_iterations"), 1), fmt(r.get("floor_memory_ms")),
             fmt(r.get("floor_arith_ms")), fmt(r.get("ratio_to_floor"), 1) + ("x" if r.get("ratio_to_floor") else ""),
             r.get("note", "")] for r in rows]
    return markdown_table(COLUMNS, body, align="llrrrrrl")


def write_outputs(args, meta: dict, rows: list[dict], text: str) -> None:
    import json

    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    if args.md:
        Path(args.md).write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64x48,96x72", help="heatmap sizes HxW, comma separated")
    parser.add_argument("--problems", default=str(BATCH * JOINTS),
                        help="numbers of problems P (heatmaps), comma separated; 544 = 32 images x 17 joints")
    parser.add_argument("--dtypes", default="fp32,bf16", help="heatmap dtypes: fp32, bf16, fp16")
    parser.add_argument("--stages", default="loss,configs,decode", help="which of loss, configs, decode to run")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--configs", default="256x4,512x8,1024x8",
                        help="kernel launch shapes BLOCKxWARPS to time at the default tolerance and tol=0")
    parser.add_argument("--config-problems", default=None, help="problem counts for the configs stage (default --problems)")
    parser.add_argument("--no-pot", action="store_true", help="skip POT's batched solver")
    parser.add_argument("--no-graphs", action="store_true", help="skip the CUDA-graph replay row")
    parser.add_argument("--json", default=None, help="write {meta, rows} here")
    parser.add_argument("--md", default=None, help="write the header and the markdown table here")
    parser.add_argument("--dry-run", action="store_true", help="check the arguments and print the plan; no GPU work")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run every stage's code once on CPU tensors under TRITON_INTERPRET=1 at a tiny size "
                             "(checks the script, not the speed); implies tiny --sizes/--problems")
    args = parser.parse_args()
    if args.cpu_smoke:
        global DEVICE, PAPER_ITERS
        DEVICE, PAPER_ITERS = "cpu", 3
        os.environ["TRITON_INTERPRET"] = "1"  # before dmpose's kernel modules are imported
        args.sizes, args.problems, args.config_problems, args.reps = "9x7", "2", "2", 1
        args.configs, args.no_pot, args.no_graphs = args.configs.split(",")[0].replace("x8", "x4"), True, True
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    problems = [int(v) for v in args.problems.split(",")]
    config_problems = [int(v) for v in (args.config_problems or args.problems).split(",")]
    dtypes = [DTYPES[d.strip()] for d in args.dtypes.split(",")]
    stages = [s.strip() for s in args.stages.split(",")]
    bad = sorted(set(stages) - {"loss", "configs", "decode"})
    if bad or any(p < 1 for p in problems + config_problems):
        parser.error(f"unknown stages {bad} or a problem count < 1")
    configs = [parse_config(c) for c in args.configs.split(",")]
    plan = {"sizes": sizes, "problems": problems, "config_problems": config_problems,
            "dtypes": [dname(d) for d in dtypes], "stages": stages, "configs": configs, "reps": args.reps}

    reason = None
    if args.cpu_smoke:
        return cpu_smoke(args, sizes, problems, config_problems, dtypes, stages, plan)
    if args.dry_run:
        reason = "dry run"
    elif not torch.cuda.is_available():
        reason = "no CUDA device (torch.cuda.is_available() is False)"
    else:
        from dmpose.kernels import triton_status

        ok, why = triton_status("cuda")
        if not ok:
            reason = f"Triton cannot run here ({why})"
    if reason:
        if not torch.cuda.is_available():
            print("no CUDA device: GPU stages skipped. No GPU numbers exist yet: this machine has no CUDA device.")
            print("The Triton kernels are tested here under TRITON_INTERPRET=1 and compiled ahead of time for "
                  "sm_90 (see benchmarks/RESULTS.md); run this script on a GPU machine for the timings.")
        print(f"skipped ({reason}); plan: {plan}")
        write_outputs(args, {"skipped": reason, "plan": plan}, [], f"skipped: {reason}\n")
        return 0

    props = torch.cuda.get_device_properties(0)
    clock, clock_src = sm_clock_hz()
    fma_rate = props.multi_processor_count * FP32_LANES_PER_SM * clock
    sfu_rate = props.multi_processor_count * MUFU_PER_SM_CLOCK * clock
    bw = copy_bandwidth(args.reps)
    rates = {"bw": bw, "fma_rate": fma_rate, "sfu_rate": sfu_rate}
    head = run_header("DM loss, Triton", "cuda", sizes=args.sizes, problems=args.problems, dtypes=args.dtypes,
                      stages=args.stages, reps=args.reps, configs=args.configs)
    rates_line = (f"copy bandwidth: {bw / 1e9:.0f} GB/s; fp32 FMA rate {fma_rate / 1e12:.1f} T/s, special functions "
                  f"{sfu_rate / 1e12:.2f} T/s ({clock_src})")
    print(head)
    print(rates_line, flush=True)
    rows: list[dict] = []
    for h, w in sizes:
        for dtype in dtypes:
            if "loss" in stages:
                for p in problems:
                    rows += bench_loss(h, w, p, dtype, rates, args.reps, not args.no_pot, not args.no_graphs)
            if "configs" in stages:
                for p in config_problems:
                    rows += bench_configs(h, w, p, dtype, rates, args.reps, args.configs)
            if "decode" in stages:
                for p in problems:
                    rows += bench_decode(h, w, p, dtype, bw, args.reps)
            print(f"done {h}x{w} {dname(dtype)}: {len(rows)} rows", flush=True)
    text = table(rows)
    print(text)
    meta = {"device": props.name, "sms": props.multi_processor_count, "copy_bw_Bps": bw, "fma_rate": fma_rate,
            "sfu_rate": sfu_rate, "clock_hz": clock, "clock_source": clock_src, "plan": plan,
            "torch": torch.__version__, "command": sys.argv}
    write_outputs(args, meta, rows, head + "\n" + rates_line + "\n\n" + text)
    return 0


def cpu_smoke(args, sizes, problems, config_problems, dtypes, stages, plan) -> int:
    """Every stage's code path once on CPU tensors (interpreter, wall clock): a check of the script only."""
    from dmpose.kernels import triton_status

    ok, why = triton_status("cpu")
    if not ok:
        print(f"cpu smoke skipped: {why}")
        return 0
    rates = {"bw": copy_bandwidth(1), "fma_rate": 1e12, "sfu_rate": 1e11}
    rows: list[dict] = []
    for h, w in sizes:
        for dtype in dtypes:
            if "loss" in stages:
                rows += bench_loss(h, w, problems[0], dtype, rates, 1, False, False)
            if "configs" in stages:
                rows += bench_configs(h, w, config_problems[0], dtype, rates, 1, args.configs)
            if "decode" in stages:
                rows += bench_decode(h, w, problems[0], dtype, rates["bw"], 1)
    text = table(rows)
    print(text)
    print(f"cpu smoke: {len(rows)} rows (CPU interpreter timings, not GPU numbers)")
    write_outputs(args, {"skipped": "cpu smoke (interpreter, not GPU numbers)", "plan": plan}, rows, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
