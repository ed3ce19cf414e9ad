"""The default job's runs side by side: mean +- std over seeds of each loss, from run folders only.

For each run folder (`dmpose train configs/synthetic.yaml --out DIR [--set ...]`): the final AP (detections,
flip test; metrics.csv), the wall time of the epochs (metrics.csv) and, re-measured from `last.safetensors`
with the trainer's own `heatmap_pass` on the GT boxes of the val split (no flip) so that every run is
decoded by today's rule: mean / median localisation error (heatmap px), compactness (share of the decoded
map's mass within 2 px of the prediction), dead share.

  python experiments/default_job_summary.py /tmp/dj/dm_s0 /tmp/dj/dm_s1 ... [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch


def run_summary(run: Path) -> dict:
    from dmpose.models.checkpoint import load_model
    from dmpose.train.config import load_config
    from dmpose.train.loop import build_datasets
    from dmpose.train.validate import heatmap_pass

    cfg = load_config(run / "config.yaml")
    spec = cfg.pose_spec()
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    last = rows[-1]
    _, val = build_datasets(cfg, spec)
    model = load_model(run / "last.safetensors").eval()
    with torch.no_grad():
        extra, _ = heatmap_pass(model, val.gt_dataset, spec.codec, cfg.loss.dm, 64)
    wall = sum(float(r["epoch_time_s"]) + float(r.get("val_time_s") or 0) for r in rows)
    return {"run": str(run), "loss": cfg.loss.name, "seed": cfg.train.seed, "steps": int(last["step"]),
            "AP": float(last["AP"]), "AP50": float(last.get("AP50") or "nan"), "wall_s": wall,
            "AP_per_val": [float(r["AP"]) for r in rows if r.get("AP")], **extra}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    res = [run_summary(r) for r in a.runs]
    keys = ["AP", "AP50", "val_loc_error_hm", "val_median_loc_error_hm", "val_compactness_2px", "val_dead_share",
            "wall_s"]
    print("| loss | seeds | steps | " + " | ".join(keys) + " |")
    print("|" + "---|" * (len(keys) + 3))
    for loss in sorted({r["loss"] for r in res}):
        rs = [r for r in res if r["loss"] == loss]
        cells = []
        for k in keys:
            v = np.array([r[k] for r in rs], float)
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}")
        print(f"| {loss} | {','.join(str(r['seed']) for r in rs)} | {rs[0]['steps']} | " + " | ".join(cells) + " |")
    for r in res:
        print(r["run"], {k: round(r[k], 4) for k in keys}, "AP per validation", [round(x, 4) for x in r["AP_per_val"]])
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
