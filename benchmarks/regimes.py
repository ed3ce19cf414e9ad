"""The DM-regime studies (docs/findings.md): named arms of the default job, run through the trainer, each run
stored small in the repository (its resolved config, metrics.csv, best.json and the command), and tables with
paired differences and 95 % confidence intervals built from those files only.

Usage (repository root):

    python benchmarks/regimes.py list                                  # regimes, arms, stored seeds
    python benchmarks/regimes.py run scratch --seeds 0 1 2 3 4 5       # train the missing (arm, seed) cells
    python benchmarks/regimes.py run finetune --arms ce dm --seeds 0    # some arms only
    python benchmarks/regimes.py collect RUNS_DIR                      # store finished run folders named
                                                                        # REGIME_ARM_sSEED (as `run` names them)
    python benchmarks/regimes.py report                                # docs/results/regimes.md

Every arm is `dmpose train synthetic` (the default job) plus the regime's and the arm's `--set` overrides plus
`train.seed=SEED`, one training at a time with the job's own `train.processes`. Stored runs live in
`results/regimes/REGIME/ARM_sSEED/`: `config.yaml` (resolved), `metrics.csv` (per epoch: losses, the loss terms'
gradient shares, AP, the heatmap metrics), `best.json`, `run.json` (command, git commit, exit code, wall time).
Checkpoints are not stored; the fine-tuning regime starts from the scratch regime's CE-alone seed-0 checkpoint,
which `run` trains first when its run folder is missing.

Statistics: the final epoch's values (a fixed budget, no selection on the validation set). For each arm against
the regime's reference arm, the paired difference over the seeds both have: mean, sample std and the 95 %
confidence interval mean +- t(0.975, n - 1) * std / sqrt(n).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "regimes"
TABLES = REPO / "docs" / "results" / "regimes.md"
STORED = ("config.yaml", "metrics.csv", "best.json", "run.json")


@dataclass(frozen=True)
class Regime:
    name: str
    title: str
    overrides: tuple[str, ...]
    arms: dict[str, tuple[str, tuple[str, ...]]]  # arm -> (what it is, its overrides)
    reference: str
    start: tuple[str, str, int] | None = None  # (regime, arm, seed) whose best.safetensors is model.pretrained
    notes: tuple[str, ...] = field(default=())
    pairs: tuple[tuple[str, str], ...] = field(default=())  # other (arm, against) pairs reported


_MSE = ("loss.name=mse", "loss.aux_ce=0")
_CE = ("loss.dm_weight=0",)
_DM = ("loss.aux_ce=0",)
# the DM variants that give the transport gradient reach near the dot: a concave cost d^p (p = 1 is the paper's)
_CONCAVE = {
    "dmsqrt": ("DM alone, cost sqrt(d) (loss.dm.cost_power 0.5)", (*_DM, "loss.dm.cost_power=0.5")),
    "dmp025": ("DM alone, cost d^0.25 (loss.dm.cost_power 0.25)", (*_DM, "loss.dm.cost_power=0.25")),
}
_FT = ("train.epochs=10", "optim.lr=2e-4", "schedule.name=constant", "schedule.warmup=0", "val.every=2")
REGIMES = {r.name: r for r in [
    Regime("scratch", "From scratch: the default job (1980 steps)", (), {
        "mse": ("MSE on Gaussian targets (sigma 1), argmax decode", _MSE),
        "ce": ("the demander cross-entropy alone (10 x CE; no DM term)", _CE),
        "dm": ("DM alone (softplus beta 8, eps 1)", _DM),
        "dmce1": ("DM + 1 x CE: DM's gradient share about a half", ("loss.aux_ce=1",)),
        "dm10": ("DM + 10 x CE (the shipped loss)", ()),
        "dmp025": _CONCAVE["dmp025"],
    }, reference="ce", pairs=(("dm10", "mse"), ("dmp025", "dm"))),
    Regime("finetune", "Fine-tuning a CE-trained default-job model (660 steps, Adam 2e-4 constant)", _FT, {
        "ce": ("CE alone: the control for the extra steps", _CE),
        "dm": ("DM alone, eps 1", _DM),
        "dmeps025": ("DM alone, eps 0.25", (*_DM, "loss.dm.eps=0.25")),
        "dmrelu": ("DM alone, eps 1, the paper's relu supplier map (the decode reads it too)",
                   (*_DM, "loss.dm.suppliers=relu")),
        "dm10": ("DM + 10 x CE (the shipped loss)", ()),
        "dmnaive": ("DM alone, eps 1, the naive one-demander variant (the dot's nearest pixel centre)",
                    (*_DM, "loss.dm.demander_mode=naive")),
        "dmit100": ("DM alone, eps 1, at most 100 Sinkhorn iterations", (*_DM, "loss.dm.max_iters=100")),
        "dmtol0": ("DM alone, eps 1, exactly 1000 iterations (tol 0: the paper's fixed count)",
                   (*_DM, "loss.dm.tol=0")),
        **_CONCAVE,
    }, reference="ce", start=("scratch", "ce", 0),
        pairs=(("dmeps025", "dm"), ("dmrelu", "dm"), ("dmnaive", "dm"), ("dmit100", "dm"), ("dmtol0", "dm"),
               ("dmsqrt", "dm"), ("dmp025", "dm")),
        notes=("Every arm starts from the scratch regime's CE-alone seed-0 run (AP 0.504); the seed changes the "
               "data order and augmentation only.",)),
    Regime("pretrain", "The backbone of the pretrained regime: MSE on a disjoint synthetic split (data seed 1)",
           ("data.synthetic.seed=1",), {"mse": ("MSE on other images (the generator's seed 1)", _MSE)},
           reference="mse", notes=("A proxy for ImageNet pretraining: the same task on other images.",)),
    Regime("pretrained", "A pretrained backbone with a fresh head (the default job's steps)",
           ("model.pretrained_head=false",), {
               "mse": ("MSE", _MSE), "ce": ("CE alone", _CE), "dm": ("DM alone", _DM), "dm10": ("DM + 10 x CE", ()),
               "dmrelu": ("DM alone with the paper's relu map", (*_DM, "loss.dm.suppliers=relu")),
               **_CONCAVE,
           }, reference="ce", start=("pretrain", "mse", 0),
           pairs=(("dm10", "mse"), ("dmsqrt", "dm"), ("dmp025", "dm")),
           notes=("Every arm starts from the pretrain regime's backbone (its heatmap head freshly initialised: "
                  "model.pretrained_head=false); a proxy for the paper's ImageNet-pretrained backbones.",)),
    Regime("long", "4x the default job's steps (7920 steps, 120 epochs)", ("train.epochs=120",), {
        "mse": ("MSE", _MSE), "ce": ("CE alone", _CE), "dm": ("DM alone", _DM), "dm10": ("DM + 10 x CE", ()),
    }, reference="ce", pairs=(("dm10", "mse"),)),
]}


def arm_overrides(regime: Regime, arm: str, seed: int, runs: Path) -> list[str]:
    sets = [*regime.overrides, *regime.arms[arm][1], f"train.seed={seed}"]
    if regime.start is not None:
        r, a, s = regime.start
        sets.insert(0, f"model.pretrained={runs / f'{r}_{a}_s{s}' / 'best.safetensors'}")
    return sets


def stored(regime: str, arm: str, seed: int) -> Path:
    return RESULTS / regime / f"{arm}_s{seed}"


# ---- running and storing ------------------------------------------------------------------------------

def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def store(run_dir: Path, regime: str, arm: str, seed: int, record: dict | None = None) -> Path:
    """Copy a finished run folder's small files into results/regimes/REGIME/ARM_sSEED (run.json: `record`, else the
    folder's own run.json)."""
    missing = [n for n in STORED[:3] if not (run_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir}: not a finished run folder (missing {', '.join(missing)})")
    record = record or json.loads((run_dir / "run.json").read_text())
    if record.get("rc", 0) != 0:
        raise ValueError(f"{run_dir}: the training exited with {record['rc']}; not stored")
    out = stored(regime, arm, seed)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in STORED[:3]:
        shutil.copyfile(run_dir / name, tmp / name)
    (tmp / "run.json").write_text(json.dumps(record, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def train(regime: Regime, arm: str, seed: int, runs: Path) -> Path:
    """One (arm, seed) through `python -m dmpose train synthetic`, stored; its run folder stays in `runs`."""
    sets = arm_overrides(regime, arm, seed, runs)
    run_dir = runs / f"{regime.name}_{arm}_s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "dmpose", "train", "synthetic", *[x for s in sets for x in ("--set", s)],
           "--out", str(run_dir)]
    t0 = time.time()
    rc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}).returncode
    record = {"command": "dmpose train synthetic " + " ".join(f"--set {s}" for s in sets),
              "git_commit": _git("rev-parse", "HEAD"), "rc": rc, "wall_s": round(time.time() - t0),
              "started": round(t0)}
    if rc != 0:
        raise RuntimeError(f"{regime.name} {arm} seed {seed}: the trainer exited with {rc}")
    return store(run_dir, regime.name, arm, seed, record)


def cmd_run(args) -> int:
    regime = REGIMES[args.regime]
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    if regime.start is not None:
        r, a, s = regime.start
        if not (runs / f"{r}_{a}_s{s}" / "best.safetensors").is_file():
            print(f"training the start checkpoint: {r} {a} seed {s}", flush=True)
            train(REGIMES[r], a, s, runs)
    for seed in args.seeds:
        for arm in args.arms or list(regime.arms):
            if (stored(regime.name, arm, seed) / "run.json").is_file():
                print(f"skip {regime.name} {arm} seed {seed}: stored")
                continue
            print(f"run {regime.name} {arm} seed {seed}", flush=True)
            train(regime, arm, seed, runs)
    return 0


def cmd_collect(args) -> int:
    n = 0
    for run_dir in sorted(Path(args.runs_dir).iterdir()):
        parts = run_dir.name.rsplit("_s", 1)
        if not run_dir.is_dir() or len(parts) != 2 or not parts[1].isdigit():
            continue
        regime, _, arm = parts[0].partition("_")
        if regime not in REGIMES or arm not in REGIMES[regime].arms or not (run_dir / "run.json").is_file():
            continue
        try:
            store(run_dir, regime, arm, int(parts[1]))
            n += 1
        except (OSError, ValueError) as e:
            print(f"not stored: {e}", file=sys.stderr)
    print(f"stored {n} run(s) in {RESULTS.relative_to(REPO)}")
    return 0


# ---- reading and reporting ----------------------------------------------------------------------------

def _num(v: str):
    try:
        return float(v)
    except ValueError:
        return v if v else None


def load(regime: str) -> dict[str, dict[int, dict]]:
    """{arm: {seed: {"final": last metrics.csv row, "validated": rows with AP, "best": best.json, "run": run.json}}}."""
    out: dict[str, dict[int, dict]] = {}
    for folder in sorted((RESULTS / regime).glob("*_s*")):
        arm, _, seed = folder.name.rpartition("_s")
        if not seed.isdigit() or not (folder / "metrics.csv").is_file():
            continue
        with open(folder / "metrics.csv", newline="") as f:
            rows = [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(f)]
        out.setdefault(arm, {})[int(seed)] = {
            "final": rows[-1], "rows": rows, "best": json.loads((folder / "best.json").read_text()),
            "run": json.loads((folder / "run.json").read_text())}
    return out


def value(run: dict, key: str) -> float:
    v = run["final"].get(key)
    return float(v) if isinstance(v, (int, float)) else math.nan


def mean_grad_share(run: dict, term: str) -> float:
    vals = [r.get(f"grad_share_{term}") for r in run["rows"]]
    vals = [v for v in vals if isinstance(v, float) and math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def interval(values: list[float]) -> tuple[float, float, float, int]:
    """(mean, sample std, half-width of the 95 % t interval, n) of finite values."""
    from scipy.stats import t

    v = np.asarray([x for x in values if math.isfinite(x)], float)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    if n == 1:
        return float(v[0]), math.nan, math.nan, 1
    sd = float(v.std(ddof=1))
    return float(v.mean()), sd, float(t.ppf(0.975, n - 1) * sd / math.sqrt(n)), n


def paired(runs: dict[str, dict[int, dict]], arm: str, ref: str, key: str) -> tuple[float, float, float, int]:
    seeds = sorted(set(runs.get(arm, {})) & set(runs.get(ref, {})))
    return interval([value(runs[arm][s], key) - value(runs[ref][s], key) for s in seeds])


def _fmt(m: float, sd: float, digits: int) -> str:
    if not math.isfinite(m):
        return "–"
    return f"{m:.{digits}f}" if not math.isfinite(sd) else f"{m:.{digits}f} ± {sd:.{digits}f}"


def _ci(m: float, half: float, digits: int) -> str:
    if not math.isfinite(m):
        return "–"
    if not math.isfinite(half):
        return f"{m:+.{digits}f}"
    return f"{m:+.{digits}f} [{m - half:+.{digits}f}, {m + half:+.{digits}f}]"


METRICS = [("AP", "AP", 3), ("val_median_loc_error_hm", "median error (hm px)", 3),
           ("val_loc_error_hm", "mean error (hm px)", 2), ("val_compactness_2px", "compactness 2 px", 3)]


def regime_table(regime: Regime) -> list[str]:
    runs = load(regime.name)
    lines = [f"## {regime.name}: {regime.title}", "",
             f"Command: `dmpose train synthetic {' '.join(f'--set {s}' for s in regime.overrides)}` + the arm's "
             "overrides + `--set train.seed=S`" + (f" + `--set model.pretrained=<{'_'.join(map(str, regime.start))}"
                                                 " best.safetensors>`" if regime.start else "") + ".", ""]
    lines += [f"{n}" for n in regime.notes] + ([""] if regime.notes else [])
    lines += ["| arm | what | overrides | seeds | " + " | ".join(m[1] for m in METRICS) + " | DM grad share |",
              "|---|---|---|---|" + "---|" * len(METRICS) + "---|"]
    for arm, (what, sets) in regime.arms.items():
        have = runs.get(arm, {})
        cells = [_fmt(*interval([value(r, k) for r in have.values()])[:2], d) for k, _, d in METRICS]
        share = interval([mean_grad_share(r, "dm") if "dm" in arm else (0.0 if arm in ("ce", "mse") else math.nan)
                          for r in have.values()])
        seeds = ",".join(str(s) for s in sorted(have)) or "–"
        lines.append(f"| {arm} | {what} | `{' '.join(sets) or '(the default job)'}` | {seeds} | "
                     + " | ".join(cells) + f" | {_fmt(*share[:2], 3)} |")
    lines += ["", f"Paired by seed against **{regime.reference}** (arm − {regime.reference}; mean and 95 % CI):", "",
              "| arm | n pairs | Δ AP | Δ median error (hm px) |", "|---|---|---|---|"]
    pairs = [(arm, regime.reference) for arm in regime.arms if arm != regime.reference] + list(regime.pairs)
    for arm, against in pairs:
        d_ap, d_err = paired(runs, arm, against, "AP"), paired(runs, arm, against, "val_median_loc_error_hm")
        name = arm if against == regime.reference else f"{arm} − {against}"
        lines.append(f"| {name} | {d_ap[3]} | {_ci(d_ap[0], d_ap[2], 3)} | {_ci(d_err[0], d_err[2], 3)} |")
    lines.append("")
    return lines


def cmd_report(args) -> int:
    lines = ["# DM regimes (generated)", "",
             "Generated by `python benchmarks/regimes.py report` from the stored runs in `results/regimes/` only; do "
             "not edit. Final-epoch values on the synthetic validation split: AP on the detection boxes with the flip "
             "test; errors (decode vs dot, heatmap px; x 4 for input px) and compactness (the decoded map's mass "
             "within 2 px of the prediction) on the GT boxes without flip. Cells: mean ± sample std over the seeds "
             "listed. DM grad share: ||d(w DM)/dH|| over the sum of the terms' norms, mean over the run's logged "
             "steps. Findings: docs/findings.md.", ""]
    for regime in REGIMES.values():
        if (RESULTS / regime.name).is_dir():
            lines += regime_table(regime)
    TABLES.parent.mkdir(parents=True, exist_ok=True)
    TABLES.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {TABLES.relative_to(REPO)}")
    return 0


def cmd_list(args) -> int:
    for regime in REGIMES.values():
        runs = load(regime.name) if (RESULTS / regime.name).is_dir() else {}
        print(f"{regime.name}: {regime.title} (reference {regime.reference})")
        for arm, (_, sets) in regime.arms.items():
            seeds = " ".join(f"s{s}" for s in sorted(runs.get(arm, {}))) or "-"
            print(f"   {arm:<10} {' '.join(sets) or '(default job)':<60} stored: {seeds}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    r = sub.add_parser("run")
    r.add_argument("regime", choices=sorted(REGIMES))
    r.add_argument("--arms", nargs="*")
    r.add_argument("--seeds", nargs="+", type=int, default=[0])
    r.add_argument("--runs", default="runs/regimes", help="where the run folders (with checkpoints) are kept")
    c = sub.add_parser("collect")
    c.add_argument("runs_dir")
    sub.add_parser("report")
    args = p.parse_args(argv)
    if args.cmd == "run" and args.arms:
        unknown = [a for a in args.arms if a not in REGIMES[args.regime].arms]
        if unknown:
            p.error(f"unknown arm(s) {unknown} of {args.regime}: {sorted(REGIMES[args.regime].arms)}")
    return {"list": cmd_list, "run": cmd_run, "collect": cmd_collect, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
