"""Table of experiments/results/*.json (one row per run; seeds of an arm grouped as mean ± std)."""

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

rows = defaultdict(list)
for f in sorted((Path(__file__).parent / "results").glob("*.json")):
    r = json.loads(f.read_text())
    arm = re.sub(r"_s\d+$", "", r["name"])
    v = r["final_val"]
    ap = r.get("ap", {})
    rows[arm].append(dict(err=v["err"], mass2=v["mass2"], dead=v["dead"], ap_gt=ap.get("AP_gt", np.nan),
                          ap_det=ap.get("AP_det", np.nan), ms=r["ms_per_step"], steps=r["args"]["steps"],
                          dead_max=max(d["dead"] for d in r["log"]), bias=r["log"][-1]["bias"]))


def fmt(vals, p=3):
    vals = np.asarray(vals, float)
    return f"{vals.mean():.{p}f}" if len(vals) == 1 else f"{vals.mean():.{p}f} ± {vals.std(ddof=1):.{p}f}"


print("| arm | seeds | steps | ms/step | val median err (px) | val mass within 2 px | val dead | max train dead | final bias | AP GT boxes | AP detections |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for arm, rs in rows.items():
    c = lambda k: [r[k] for r in rs]
    print(f"| {arm} | {len(rs)} | {rs[0]['steps']} | {fmt(c('ms'), 0)} | {fmt(c('err'), 2)} | {fmt(c('mass2'))} | "
          f"{fmt(c('dead'), 2)} | {fmt(c('dead_max'), 2)} | {fmt(c('bias'), 4)} | {fmt(c('ap_gt'))} | {fmt(c('ap_det'))} |")
