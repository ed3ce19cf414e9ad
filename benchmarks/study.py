"""The reproduction study of issue 15 (docs/reproduction.md): named arms, run through the trainer, one JSON per
(arm, seed), and a report built from those JSONs only.

Usage (repository root):

    python benchmarks/study.py list                               # the arms, and which results exist
    python benchmarks/study.py run dm_default mse_official_argmax --seeds 0 1 2
    python benchmarks/study.py run --item 4 --seeds 0             # every arm of one study item
    python benchmarks/study.py report                             # docs/results/tables.md + docs/study_*.png

Every arm is the base study config (`dmpose/configs/study/base.yaml`) plus the arm's `--set` overrides plus
`train.seed=SEED`; `run` calls `python -m dmpose train` in a subprocess for each (arm, seed) whose JSON
(`docs/results/ARM_sSEED.json`) does not exist yet, so the study can be spread over several sittings and any
cell re-run by deleting its JSON. `--set KEY=VALUE` / `--epochs N` are passed to every run (a smoke run; they
are recorded in the JSON as `extra_overrides`, and the report marks such runs). The step budget is the base
config's (8 epochs x 32 steps = 256 steps) for every arm; `--epochs` changes it for all arms alike.

Not part of CI (tests/test_study.py runs a tiny smoke run of it).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BASE_CONFIG = REPO / "dmpose" / "configs" / "study" / "base.yaml"
RESULTS = REPO / "docs" / "results"
FIGURES = REPO / "docs"
PANEL_CROPS = 4  # validation crops kept in the JSON for the compactness panel (seed 0 runs)
SCHEMA = 1


@dataclass(frozen=True)
class Arm:
    name: str
    item: int  # the study item (1-6) it belongs to
    overrides: tuple[str, ...]
    measures: str
    budget: str = "base budget (256 steps)"
    same_as: tuple[str, ...] = field(default=())  # other study cells this arm stands for (no run of its own)


_T0 = ("loss.dm.tol=0",)
ARMS: dict[str, Arm] = {a.name: a for a in [
    # 1. DM vs MSE, each loss with its own decode, and the crossed pairs
    Arm("mse_official_argmax", 1, ("loss.name=mse", "loss.mse.flavour=official"),
        "MSE baseline as in the HRNet code (Gaussian at the rounded pixel), argmax + quarter-pixel decode",
        "base budget; about as long as dm_default (seed 0: 157 s vs 152 s)"),
    Arm("mse_unbiased_argmax", 1, ("loss.name=mse", "loss.mse.flavour=unbiased"),
        "MSE with the Gaussian at the sub-pixel dot (no target quantisation), argmax decode",
        "base budget; about as long as dm_default"),
    Arm("mse_unbiased_2x2", 1, ("loss.name=mse", "loss.mse.flavour=unbiased", "loss.decode=2x2"),
        "crossed pair: unbiased MSE model read by the DM 2x2 decode (removing quantisation without DM)",
        "base budget; about as long as dm_default"),
    Arm("dm_default", 1, (),
        "DM at the study's base options (the library defaults when the study was run: softplus beta 1 supplier "
        "map, pinned in the base config; eps 1, tol 1e-5, 1000 iterations at most, "
        "sub-pixel demanders, exact gradient), 2x2 decode", same_as=("dm_eps1", "dm_subpixel")),
    Arm("dm_default_argmax", 1, ("loss.decode=argmax",),
        "crossed pair: the DM model (default options) read by the argmax decode"),
    # 2. supplier maps
    Arm("dm_relu", 2, ("loss.dm.suppliers=relu",), "the paper's supplier map relu(H): AP, dead joints, compactness"),
    Arm("dm_softplus", 2, ("loss.dm.suppliers=softplus", "loss.dm.supplier_beta=1.0"),
        "softplus(H): the base config's supplier map, spelled out (docs/dm-training.md#supplier-maps)"),
    Arm("dm_softplus_b4", 2, ("loss.dm.suppliers=softplus", "loss.dm.supplier_beta=4.0"),
        "softplus(4H)/4, a sharper map (docs/dm-training.md#supplier-maps)"),
    Arm("dm_softplus_b8", 2, ("loss.dm.suppliers=softplus", "loss.dm.supplier_beta=8.0"),
        "softplus(8H)/8, the library default: a given contrast of the normalised map from an 8x smaller range of H"),
    Arm("dm_softplus_b16", 2, ("loss.dm.suppliers=softplus", "loss.dm.supplier_beta=16.0"),
        "softplus(16H)/16, nearer relu"),
    # 3. sub-pixel vs naive demanders at two heatmap resolutions (32x24 and 16x12... here 12x16: 64x48 input)
    Arm("dm_naive", 3, ("loss.dm.demander_mode=naive",),
        "one demander at the rounded dot instead of four bilinear ones (Table 4), 32x24 heatmaps; "
        "compare with dm_default"),
    Arm("dm_subpixel_coarse", 3, ("model.input_wh=[48,64]",),
        "sub-pixel demanders at the coarser resolution: 64x48 input, 16x12 heatmaps (W 12, H 16)",
        "base budget; faster (a quarter of the pixels)"),
    Arm("dm_naive_coarse", 3, ("model.input_wh=[48,64]", "loss.dm.demander_mode=naive"),
        "naive demanders at 16x12 heatmaps; the sub-pixel gain should be larger than at 32x24",
        "base budget; faster (a quarter of the pixels)"),
    # 4. solver settings (Table 5): fixed iterations, gradient, eps
    Arm("dm_iters5", 4, (*_T0, "loss.dm.max_iters=5"), "exactly 5 Sinkhorn updates (tol 0)"),
    Arm("dm_iters20", 4, (*_T0, "loss.dm.max_iters=20"), "exactly 20 Sinkhorn updates (tol 0)",
        "base budget; slightly slower than dm_default (the default tolerance stops after <= ~12)"),
    Arm("dm_iters100", 4, (*_T0, "loss.dm.max_iters=100"), "exactly 100 Sinkhorn updates (tol 0)",
        "base budget; estimated 1.3-1.5x dm_default's wall (measure)"),
    Arm("dm_iters1000", 4, (*_T0, "loss.dm.max_iters=1000"), "exactly 1000 Sinkhorn updates (tol 0), the paper's",
        "base budget; estimated 3-5x dm_default's wall (~1.5 s more per step at 32x24 on 1 thread; measure)"),
    Arm("dm_envelope", 4, ("loss.dm.grad=envelope",), "envelope gradient instead of the exact implicit one",
        "base budget; slightly faster than dm_default"),
    Arm("dm_eps0.25", 4, ("loss.dm.eps=0.25",), "entropic weight 0.25 (the loss's optimum is unbiased)",
        "base budget; the solver may need more updates to reach the tolerance at small eps (measure)"),
    Arm("dm_eps0.5", 4, ("loss.dm.eps=0.5",), "entropic weight 0.5"),
    Arm("dm_eps2", 4, ("loss.dm.eps=2.0",), "entropic weight 2 (eps 1 is dm_default)"),
]}
# Item 5 (loss vs localisation error per epoch) and item 6 (compactness) are measured on every run:
# val_loss / val_loc_error_hm per epoch and val_compactness_2px; their plots use CURVE_ARMS.
CURVE_ARMS = ("mse_official_argmax", "dm_default")
ITEMS = {1: "DM vs the MSE baseline (both flavours) and the crossed decodes",
         2: "Supplier maps",
         3: "Sub-pixel vs naive demanders at two heatmap resolutions (Table 4)",
         4: "Solver settings: fixed iterations, gradient, entropic weight (Table 5)",
         5: "Loss and localisation error per epoch (Section 4): rank correlation",
         6: "Compactness of the decoded map (Fig. 3)"}


# ---- configs --------------------------------------------------------------------------------------

def resolve(arm: Arm, seed: int, extra: list[str] | None = None):
    """The TrainConfig of (arm, seed) with the extra overrides: the base config validated by the trainer's loader."""
    from dmpose.train import load_config

    return load_config(BASE_CONFIG, [*arm.overrides, f"train.seed={seed}", *(extra or [])])


def resolved_dict(arm: Arm, seed: int, extra: list[str] | None = None) -> dict:
    from dmpose.train.config import config_to_yaml

    return yaml.safe_load(config_to_yaml(resolve(arm, seed, extra)))


def result_path(results: Path, arm: str, seed: int) -> Path:
    return results / f"{arm}_s{seed}.json"


def extra_overrides(args) -> list[str]:
    extra = list(args.set or [])
    if getattr(args, "epochs", None):
        extra.append(f"train.epochs={args.epochs}")
    return extra


# ---- running --------------------------------------------------------------------------------------

def _num(v: str) -> Any:
    if v == "":
        return None
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def read_metrics_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _git(*cmd: str) -> str | None:
    try:
        r = subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=10)
        return r.stdout.strip() if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions(env: dict) -> dict[str, Any]:
    import torch

    import dmpose

    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"dmpose": env.get("dmpose", dmpose.__version__), "torch": env.get("torch", torch.__version__),
            "python": env.get("python", platform.python_version()), "numpy": np.__version__,
            "git_commit": env.get("git_commit") or _git("rev-parse", "HEAD"),
            "git_dirty": bool(status) if status is not None else None, "platform": env.get("platform"),
            "device": env.get("device"), "device_name": env.get("device_name"),
            "torch_threads": env.get("torch_threads"), "workers": env.get("workers"), "cpu_count": os.cpu_count()}


def panel(run_dir: Path, cfg, crops: int = PANEL_CROPS) -> dict[str, Any] | None:
    """The final weights' decoded maps on the first `crops` GT-box validation crops, small enough for the JSON:
    per crop the grey image at heatmap resolution, the max over joints of the normalised decoded maps, and the
    labelled joints' predictions and dots (heatmap px)."""
    import torch
    from torch.utils.data import Subset

    from dmpose.codec import build_codec
    from dmpose.models.checkpoint import load_model
    from dmpose.train.datasets import build_datasets
    from dmpose.train.validate import heatmap_pass

    ckpt = run_dir / "last.safetensors"
    if not ckpt.is_file() or crops <= 0:
        return None
    torch.set_num_threads(1)
    model = load_model(ckpt)
    spec = model.spec or cfg.pose_spec()
    _, val = build_datasets(cfg, spec)
    sub = Subset(val.gt_dataset, list(range(min(crops, len(val.gt_dataset)))))
    metrics, fig = heatmap_pass(model, sub, build_codec(spec), cfg.loss.dm, batch_size=crops, crops=crops)
    mean = np.asarray(spec.normalisation.mean, np.float32)[:, None, None]
    std = np.asarray(spec.normalisation.std, np.float32)[:, None, None]
    w, h = spec.heatmap_wh
    out = []
    for img, maps, pred, gt, wts in zip(fig["images"], fig["heatmaps"], fig["pred"], fig["gt"], fig["weights"]):
        grey = ((img * std + mean).clip(0, 1).mean(0) * 255)
        s = spec.output_stride
        grey = grey[: h * s, : w * s].reshape(h, s, w, s).mean((1, 3))
        lab = wts > 0
        m = (maps[lab] if lab.any() else maps).max(0).astype(np.float64)  # float64: short decimal reprs
        out.append({"image": np.round(grey).astype(int).tolist(), "map": np.round(m, 4).tolist(),
                    "pred": np.round(pred[lab].astype(np.float64), 3).tolist(),
                    "gt": np.round(gt[lab].astype(np.float64), 3).tolist()})
    return {"heatmap_wh": [w, h], "decode": spec.decode, "supplier_map": spec.codec.supplier_map,
            "metrics": metrics, "crops": out}


def run_one(arm: Arm, seed: int, results: Path, extra: list[str], keep: Path | None, quiet: bool,
            panel_seeds: tuple[int, ...]) -> Path:
    from dmpose.atomic import atomic_write_bytes

    cfg = resolve(arm, seed, extra)  # fails here, before any training, on a bad arm or --set
    sets = [*arm.overrides, f"train.seed={seed}", *extra]
    run_dir = Path(tempfile.mkdtemp(prefix=f"study-{arm.name}_s{seed}-")) if keep is None else keep / f"{arm.name}_s{seed}"
    if run_dir.exists() and any(run_dir.iterdir()):
        shutil.rmtree(run_dir)
    cmd = [sys.executable, "-m", "dmpose", "train", str(BASE_CONFIG.relative_to(REPO))]
    for s in sets:
        cmd += ["--set", s]
    cmd += ["--out", str(run_dir)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    log_path = run_dir.parent / f".{run_dir.name}.log" if keep is None else run_dir.with_suffix(".log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            if not quiet:
                sys.stdout.write(line)
        rc = proc.wait()
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()
    if rc != 0:
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"{arm.name} seed {seed}: the trainer exited with {rc} (log {log_path}):\n{tail}")
    epochs = read_metrics_csv(run_dir / "metrics.csv")
    env_json = json.loads((run_dir / "env.json").read_text())
    best = json.loads((run_dir / "best.json").read_text()) if (run_dir / "best.json").is_file() else None
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    record = {
        "schema": SCHEMA, "arm": arm.name, "item": arm.item, "seed": seed, "measures": arm.measures,
        "overrides": list(arm.overrides), "extra_overrides": extra, "base_config": str(BASE_CONFIG.relative_to(REPO)),
        "command": " ".join(["python", "-m", "dmpose", "train", str(BASE_CONFIG.relative_to(REPO)),
                             *(f"--set {s}" for s in sets)]),
        "study_command": f"python benchmarks/study.py run {arm.name} --seeds {seed}"
                         + "".join(f" --set {s}" for s in extra),
        "config": config, "plan": env_json.get("plan"), "epochs": epochs, "final": epochs[-1] if epochs else None,
        "best": best, "wall_s": round(wall, 2),
        "train_s": round(sum((r.get("epoch_time_s") or 0) + (r.get("val_time_s") or 0) for r in epochs), 2),
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "versions": versions(env_json), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if seed in panel_seeds:
        record["panel"] = panel(run_dir, cfg)
    path = result_path(results, arm.name, seed)
    atomic_write_bytes(path, (dump_record(record) + "\n").encode())
    if keep is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        log_path.unlink(missing_ok=True)
    return path


def dump_record(record: dict) -> str:
    """The record as indented JSON (one metric a line, readable diffs), the panel's arrays on one line."""
    body = json.dumps({k: v for k, v in record.items() if k != "panel"}, indent=1, allow_nan=True)
    if "panel" not in record:
        return body
    return body[:-2] + ',\n "panel": ' + json.dumps(record["panel"], separators=(",", ":"), allow_nan=True) + "\n}"


def select_arms(names: list[str], item: int | None) -> list[Arm]:
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        import difflib

        hints = [f"{n} (did you mean {', '.join(difflib.get_close_matches(n, list(ARMS), n=2)) or '?'})"
                 for n in unknown]
        raise SystemExit(f"unknown arm(s): {'; '.join(hints)}; `python benchmarks/study.py list` shows them")
    arms = [ARMS[n] for n in names]
    if item is not None:
        arms += [a for a in ARMS.values() if a.item == item and a not in arms]
    if not arms:
        raise SystemExit("no arm given (names, or --item N, or --all)")
    return arms


def cmd_run(args) -> int:
    results = Path(args.results)
    arms = list(ARMS.values()) if args.all else select_arms(args.arms, args.item)
    extra = extra_overrides(args)
    keep = Path(args.keep_runs) if args.keep_runs else None
    failed = []
    for arm in arms:
        for seed in args.seeds:
            path = result_path(results, arm.name, seed)
            if path.exists():
                print(f"skip {arm.name} seed {seed}: {path} exists (delete it to re-run)")
                continue
            print(f"run {arm.name} seed {seed} ...", flush=True)
            try:
                out = run_one(arm, seed, results, extra, keep, args.quiet, tuple(args.panel_seeds))
            except RuntimeError as e:
                print(e, file=sys.stderr)
                failed.append(f"{arm.name}_s{seed}")
                continue
            rec = json.loads(out.read_text())
            f = rec["final"] or {}
            print(f"wrote {out}: {rec['wall_s']:.0f} s wall, AP {f.get('AP')}, loc error {f.get('val_loc_error_hm')}",
                  flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


# ---- listing --------------------------------------------------------------------------------------

def load_results(results: Path) -> list[dict]:
    out = []
    for p in sorted(results.glob("*_s*.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"warning: {p}: unreadable ({e}); ignored", file=sys.stderr)
            continue
        if isinstance(rec, dict) and "arm" in rec and "seed" in rec:
            rec["_path"] = str(p)
            out.append(rec)
    return out


def is_stale(rec: dict) -> bool | None:
    """Whether the arm would now resolve to another config than the one the stored run used (e.g. a changed
    library default or base config); None for an arm no longer in the registry."""
    arm = ARMS.get(rec["arm"])
    if arm is None:
        return None
    try:
        now = resolved_dict(arm, rec["seed"], rec.get("extra_overrides"))
    except Exception:  # an override that no longer validates
        return True
    return _read_by_run(now) != _read_by_run(_with_new_keys(rec["config"], now))


@functools.lru_cache(maxsize=1)
def _schema_defaults() -> dict:
    """The trainer config's defaults as a resolved dict (read once per process)."""
    from dmpose.train.config import TrainConfig, config_to_yaml

    return yaml.safe_load(config_to_yaml(TrainConfig()))


def _with_new_keys(stored: dict, now: dict, defaults: dict | None = None) -> dict:
    """`stored` with the keys the schema gained since it was written, at their schema defaults (a key added
    later cannot have been set by the stored run, which ran with the behaviour its default keeps): a new
    key makes a run stale only where the arm sets it to something else."""
    if defaults is None:
        defaults = _schema_defaults()
    out = dict(stored)
    for k, v in now.items():
        if k not in stored and isinstance(defaults, dict) and k in defaults:
            out[k] = defaults[k]
        elif isinstance(v, dict) and isinstance(stored.get(k), dict):
            out[k] = _with_new_keys(stored[k], v, defaults.get(k) if isinstance(defaults, dict) else None)
    return out


def _read_by_run(cfg: dict) -> dict:
    """The config without the section its loss never reads: a DM run does not read `loss.mse` (an MSE run
    does read `loss.dm`: its validation reports the DM loss value)."""
    loss = cfg.get("loss", {})
    if loss.get("name") == "dm":
        return {**cfg, "loss": {k: v for k, v in loss.items() if k != "mse"}}
    return cfg


def identical_arms() -> dict[str, list[str]]:
    """Arms that resolve to the same config today (seed 0): e.g. dm_default and the supplier-map arm that names
    the library default. Their runs measure the same thing twice."""
    seen: dict[str, list[str]] = {}
    for a in ARMS.values():
        seen.setdefault(json.dumps(resolved_dict(a, 0), sort_keys=True), []).append(a.name)
    return {n: [m for m in group if m != n] for group in seen.values() if len(group) > 1 for n in group}


def cmd_list(args) -> int:
    results = Path(args.results)
    recs = load_results(results)
    same = identical_arms()
    by_arm: dict[str, list[dict]] = {}
    for r in recs:
        by_arm.setdefault(r["arm"], []).append(r)
    for item, title in ITEMS.items():
        arms = [a for a in ARMS.values() if a.item == item]
        print(f"\n{item}. {title}")
        if not arms:
            print("   (measured on every run: " + ("val_loss vs val_loc_error_hm per epoch; plots of "
                  + ", ".join(CURVE_ARMS) if item == 5 else "val_compactness_2px; panel of " + ", ".join(CURVE_ARMS))
                  + ")")
        for a in arms:
            have = sorted(by_arm.get(a.name, []), key=lambda r: r["seed"])
            marks = []
            for r in have:
                stale = is_stale(r)
                marks.append(f"s{r['seed']}" + ("!stale" if stale else "") + ("*" if r.get("extra_overrides") else ""))
            alias = f" (also {', '.join(a.same_as)})" if a.same_as else ""
            if a.name in same:
                alias += f" [today the same config as {', '.join(same[a.name])}]"
            print(f"   {a.name:<22} {' '.join(a.overrides) or '(base config)'}{alias}")
            print(f"   {'':<22} results: {' '.join(marks) or '-'}   budget: {a.budget}")
    unknown = sorted({r["arm"] for r in recs} - set(ARMS))
    if unknown:
        print(f"\nresults of arms not in the registry: {', '.join(unknown)}")
    print("\n* = run with extra overrides (--set/--epochs); !stale = the arm now resolves to another config than "
          "the stored run's (a changed default or base config): delete the JSON to re-run it")
    return 0


# ---- report ---------------------------------------------------------------------------------------

def spearman(a, b) -> float:
    """Spearman's rank correlation (ties get mean ranks); nan with fewer than 3 finite pairs or no variation."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


def _series(rec: dict, key: str) -> list[float]:
    return [r.get(key) if isinstance(r.get(key), (int, float)) else float("nan")
            for r in rec["epochs"] if r.get("val_loc_error_hm") is not None]


def run_values(rec: dict) -> dict[str, float]:
    f = rec.get("final") or {}
    best = rec.get("best") or {}

    def g(k):
        v = f.get(k)
        return float(v) if isinstance(v, (int, float)) else float("nan")

    err = _series(rec, "val_loc_error_hm")
    return {"AP": g("AP"), "AP_best": float(best["value"]) if best.get("value") is not None else float("nan"),
            "err": g("val_loc_error_hm"), "median": g("val_median_loc_error_hm"), "compact": g("val_compactness_2px"),
            "dead": g("val_dead_share"), "rho_val": spearman(_series(rec, "val_loss"), err),
            "rho_train": spearman(_series(rec, "train_loss"), err), "steps": g("step"), "wall": float(rec["wall_s"])}


def fmt(values: list[float], digits: int) -> str:
    v = np.asarray([x for x in values if math.isfinite(x)], float)
    if not len(v):
        return "–"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


COLUMNS = [("AP", "AP (final)", 3), ("AP_best", "AP (best epoch)", 3), ("err", "loc. error mean (hm px)", 2),
           ("median", "loc. error median (hm px)", 2), ("compact", "compactness 2 px", 3),
           ("dead", "dead share", 3), ("rho_val", "ρ(val loss, error)", 2), ("wall", "wall (s)", 0)]


def tables(recs: list[dict]) -> str:
    by_arm: dict[str, list[dict]] = {}
    for r in recs:
        by_arm.setdefault(r["arm"], []).append(r)
    lines = ["# Study results (generated)", "",
             "Generated by `python benchmarks/study.py report` from the JSONs in `docs/results/` only; do not edit.",
             "Every cell: mean ± sample std over the seeds shown (n). Final-epoch values on the validation split: AP "
             "on the detection boxes with the flip test; localisation error, compactness (share of the normalised "
             "decoded map's mass within 2 heatmap px of the prediction) and dead share (labelled joints whose raw "
             "heatmap has no positive value) on the GT boxes without flip; ρ = Spearman rank correlation over the "
             "epochs of one run between the val loss (the model's own loss) and the mean localisation error; wall = "
             "the trainer subprocess's wall time. Localisation errors are in heatmap px of each arm's own "
             "resolution (x 4 for input px; the coarse arms' px are twice as large as the others').", ""]
    extra = sorted({r["arm"] + f"_s{r['seed']}" for r in recs if r.get("extra_overrides")})
    if extra:
        lines += [f"**Runs with extra overrides (not the study budget): {', '.join(extra)}.**", ""]
    header = "| arm | n | steps | " + " | ".join(c[1] for c in COLUMNS) + " |"
    sep = "|---|---|---|" + "---|" * len(COLUMNS)
    shown = set()
    for item, title in ITEMS.items():
        arms = [a.name for a in ARMS.values() if a.item == item] if item < 5 else list(CURVE_ARMS)
        if item == 5:
            lines += [f"## {item}. {title}", "", "| arm | n | ρ(val loss, error) | ρ(train loss, error) |",
                      "|---|---|---|---|"]
            for name in sorted(by_arm, key=lambda n: (n not in CURVE_ARMS, n)):
                vals = [run_values(r) for r in by_arm[name]]
                lines.append(f"| {name} | {len(vals)} | {fmt([v['rho_val'] for v in vals], 2)} | "
                             f"{fmt([v['rho_train'] for v in vals], 2)} |")
            lines += ["", "Plot: `docs/study_curves.png` (seed 0 of " + ", ".join(CURVE_ARMS) + ").", ""]
            continue
        if item == 6:
            lines += [f"## {item}. {title}", "", "Compactness is a column of every table above; panel: "
                      "`docs/study_compactness.png` (" + ", ".join(CURVE_ARMS) + ", seed 0, the same crops).", ""]
            continue
        lines += [f"## {item}. {title}", "", header, sep]
        for name in arms:
            runs = sorted(by_arm.get(name, []), key=lambda r: r["seed"])
            shown.add(name)
            if not runs:
                lines.append(f"| {name} | 0 | | pending |" + " |" * (len(COLUMNS) - 1))
                continue
            vals = [run_values(r) for r in runs]
            steps = sorted({int(v["steps"]) for v in vals if math.isfinite(v["steps"])})
            seeds = ",".join(str(r["seed"]) for r in runs)
            lines.append(f"| {name} | {len(runs)} ({seeds}) | {'/'.join(map(str, steps))} | "
                         + " | ".join(fmt([v[k] for v in vals], d) for k, _, d in COLUMNS) + " |")
        lines.append("")
    others = sorted(set(by_arm) - shown)
    if others:
        lines += ["## Other results (arms not in the registry)", "", header, sep]
        for name in others:
            vals = [run_values(r) for r in by_arm[name]]
            lines.append(f"| {name} | {len(vals)} | | " + " | ".join(fmt([v[k] for v in vals], d) for k, _, d in COLUMNS)
                         + " |")
        lines.append("")
    return "\n".join(lines)


def _pick(recs: list[dict], arm: str) -> dict | None:
    runs = sorted((r for r in recs if r["arm"] == arm), key=lambda r: r["seed"])
    return runs[0] if runs else None


def plot_curves(recs: list[dict], arms: tuple[str, ...], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picked = [(a, _pick(recs, a)) for a in arms]
    picked = [(a, r) for a, r in picked if r is not None]
    if not picked:
        return None
    fig, axes = plt.subplots(1, len(picked), figsize=(5.5 * len(picked), 4), squeeze=False)
    for ax, (arm, rec) in zip(axes[0], picked):
        rows = [r for r in rec["epochs"] if r.get("val_loc_error_hm") is not None]
        ep = [r["epoch"] for r in rows]
        loss, err = _series(rec, "val_loss"), _series(rec, "val_loc_error_hm")
        ax.plot(ep, loss, "o-", color="tab:blue", label="val loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("val loss (own loss)", color="tab:blue")
        ax2 = ax.twinx()
        ax2.plot(ep, err, "s--", color="tab:red", label="val loc. error")
        ax2.set_ylabel("val localisation error (hm px)", color="tab:red")
        ax.set_title(f"{arm} (seed {rec['seed']}): Spearman ρ = {spearman(loss, err):.2f}", fontsize=9)
    fig.suptitle("Loss and localisation error per epoch (issue 15, item 5); generated from docs/results/",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    _savefig(fig, path)
    plt.close(fig)
    return path


def plot_panel(recs: list[dict], arms: tuple[str, ...], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picked = [(a, r) for a in arms if (r := _pick([x for x in recs if x.get("panel")], a)) is not None]
    if not picked:
        return None
    n = max(len(r["panel"]["crops"]) for _, r in picked)
    fig, axes = plt.subplots(len(picked), n, figsize=(2.2 * n, 2.8 * len(picked)), squeeze=False)
    for row, (arm, rec) in enumerate(picked):
        p = rec["panel"]
        for col in range(n):
            ax = axes[row][col]
            ax.axis("off")
            if col >= len(p["crops"]):
                continue
            c = p["crops"][col]
            ax.imshow(np.asarray(c["image"]), cmap="gray", vmin=0, vmax=255)
            m = np.asarray(c["map"])
            ax.imshow(m, cmap="magma", alpha=0.65, vmin=0, vmax=max(float(m.max()), 1e-9))
            gt, pred = np.asarray(c["gt"]).reshape(-1, 2), np.asarray(c["pred"]).reshape(-1, 2)
            ax.scatter(gt[:, 0], gt[:, 1], s=8, c="lime", marker="o", linewidths=0)
            ax.scatter(pred[:, 0], pred[:, 1], s=12, c="cyan", marker="x", linewidths=0.8)
            if col == 0:
                ax.set_title(f"{arm} s{rec['seed']}: compactness "
                             f"{p['metrics'].get('val_compactness_2px', float('nan')):.2f}", fontsize=7, loc="left")
    fig.suptitle("Decoded maps (max over joints, normalised), same validation crops; green: GT, cyan: prediction",
                 fontsize=8)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)
    return path


def _savefig(fig, path: Path) -> None:
    from dmpose.atomic import atomic_output

    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def cmd_report(args) -> int:
    from dmpose.atomic import atomic_write_bytes

    results = Path(args.results)
    recs = load_results(results)
    out = Path(args.tables) if args.tables else results / "tables.md"
    atomic_write_bytes(out, (tables(recs) + "\n").encode())
    print(f"wrote {out} ({len(recs)} runs)")
    figs = Path(args.figures)
    arms = tuple(args.curve_arms)
    for p in (plot_curves(recs, arms, figs / "study_curves.png"), plot_panel(recs, arms, figs / "study_compactness.png")):
        if p is not None:
            print(f"wrote {p}")
    return 0


# ---- CLI ------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run (arm, seed) cells whose JSON does not exist")
    r.add_argument("arms", nargs="*", help="arm names (see `list`)")
    r.add_argument("--item", type=int, choices=sorted({a.item for a in ARMS.values()}), help="also every arm of item N")
    r.add_argument("--all", action="store_true", help="every arm")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="extra override for every run (smoke runs)")
    r.add_argument("--epochs", type=int, help="train.epochs for every run (32 steps each at the base config)")
    r.add_argument("--results", default=str(RESULTS))
    r.add_argument("--keep-runs", metavar="DIR", help="keep the run folders under DIR (default: a temporary folder)")
    r.add_argument("--panel-seeds", type=int, nargs="*", default=[0],
                   help="seeds whose JSON keeps the compactness panel (default 0)")
    r.add_argument("--quiet", action="store_true", help="do not echo the trainer's output")
    r.set_defaults(func=cmd_run)
    li = sub.add_parser("list", help="the arms and which results exist")
    li.add_argument("--results", default=str(RESULTS))
    li.set_defaults(func=cmd_list)
    rep = sub.add_parser("report", help="tables (markdown) and plots (PNG) from the JSONs only")
    rep.add_argument("--results", default=str(RESULTS))
    rep.add_argument("--tables", help="default: RESULTS/tables.md")
    rep.add_argument("--figures", default=str(FIGURES), help="folder of study_curves.png / study_compactness.png")
    rep.add_argument("--curve-arms", nargs="+", default=list(CURVE_ARMS))
    rep.set_defaults(func=cmd_report)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
