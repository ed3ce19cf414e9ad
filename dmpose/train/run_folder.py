"""The run folder: runs/NAME (auto-incremented: NAME, NAME-2, NAME-3, ..., picked atomically) or an explicit --out.

A training claims its folder first (`claim_run_folder`): it holds an exclusive lock on it for the whole run (a
second training on the same folder is refused at once), and a new training refuses a folder that holds another
run unless told to overwrite it (`--overwrite`); `--resume` continues the run that is there.

config.yaml (resolved), env.json, metrics.csv (one row per epoch), metrics.jsonl (one row per logged
step), last.safetensors / best.safetensors (+ best.json), last.state.pt (resume state), optional
epoch_NNN.safetensors, curves.png, val_epochNNN.jpg. Every file is written atomically (dmpose.atomic):
the whole file is rewritten into a temporary file and renamed, so a crash never leaves a torn file — except
metrics.jsonl, which is appended one line per logged step (rewritten atomically once per process); a crash
can tear only its last line, which resuming drops.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import cv2
import matplotlib
import numpy as np

from dmpose.atomic import atomic_output, atomic_write_bytes

__all__ = ["RunFolder", "RunFolderError", "RunFolderLock", "claim_run_folder", "new_run_dir", "latest_run_dir",
           "run_files", "RUN_FILES"]

RUN_FILES = ("config.yaml", "env.json", "metrics.csv", "metrics.jsonl", "last.safetensors", "best.safetensors",
             "best.json", "last.state.pt", "curves.png")


def new_run_dir(out_root: Path, name: str) -> Path:
    """out_root/name, or out_root/name-N with the next free N, created here (mkdir without exist_ok), so that two
    trainings started at once never pick the same folder."""
    out_root = Path(out_root).expanduser()
    out_root.mkdir(parents=True, exist_ok=True)
    candidate = out_root / name
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            taken = [int(m.group(1)) for p in out_root.glob(f"{name}-*")
                     if (m := re.fullmatch(re.escape(name) + r"-(\d+)", p.name))]
            candidate = out_root / f"{name}-{max(taken, default=1) + 1}"


def latest_run_dir(out_root: Path, name: str) -> Path | None:
    """The most recently updated run of `name` that holds a resume state."""
    out_root = Path(out_root).expanduser()
    runs = [p for p in [out_root / name, *out_root.glob(f"{name}-*")] if (p / "last.state.pt").is_file()]
    return max(runs, key=lambda p: (p / "last.state.pt").stat().st_mtime, default=None)


class RunFolderError(ValueError):
    """A run folder cannot be used: it holds another run, or another training is writing it."""


#: What a run writes besides RUN_FILES (patterns): the files `claim_run_folder(..., overwrite=True)` removes.
RUN_PATTERNS = ("val_epoch*.jpg", "epoch_*.safetensors", "last_ema.safetensors", "config_changes.jsonl")
LOCK_FILE = ".lock"


def run_files(path: Path) -> list[Path]:
    """The files of a dmpose run in `path` (RUN_FILES and RUN_PATTERNS)."""
    found = [path / n for n in RUN_FILES if (path / n).is_file()]
    return found + sorted(p for pattern in RUN_PATTERNS for p in path.glob(pattern) if p.is_file())


class RunFolderLock:
    """An exclusive lock on a run folder (fcntl.flock on RUN/.lock, which records the holder's pid), held by the
    process that writes the run; released by `release` (or when the process ends, whatever the way)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> RunFolderLock:
        lock = self.path / LOCK_FILE
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunFolderError(f"run folder {self.path} is in use by another training (pid {holder}); wait for it, "
                                 "or train into another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def claim_run_folder(path: Path, *, resume: bool, overwrite: bool = False) -> RunFolderLock:
    """Make `path` this training's run folder and lock it (`RunFolderLock`). A new training refuses a folder that
    holds another run's files, unless `overwrite` (then those files are removed first; other files stay); a
    resumed one needs the folder. Nothing is written or removed before the lock is held."""
    path = Path(path).expanduser()
    if resume and not path.is_dir():
        raise RunFolderError(f"--resume: run folder {path} does not exist")
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"run folder {path} exists and is not a folder")
    path.mkdir(parents=True, exist_ok=True)
    lock = RunFolderLock(path).acquire()
    if not resume:
        existing = run_files(path)
        if existing and not overwrite:
            lock.release()
            names = ", ".join(p.name for p in existing[:4]) + (", ..." if len(existing) > 4 else "")
            raise RunFolderError(f"run folder {path} already holds a run ({names}): resume it with --resume, train "
                                 "into another --out, or pass --overwrite to replace it")
        for p in existing:
            p.unlink()
    return lock


def _json_default(o: Any):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.steps: list[dict[str, Any]] = []
        self.epochs: list[dict[str, Any]] = []
        self._steps_on_disk = False  # metrics.jsonl holds self.steps (then log_step appends)

    def file(self, name: str) -> Path:
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        return atomic_write_bytes(self.file(name), text.encode())

    def write_json(self, name: str, obj: Any) -> Path:
        return self.write_text(name, json.dumps(obj, indent=2, default=_json_default) + "\n")

    # ---- metrics ------------------------------------------------------------------------------
    def load_metrics(self, upto_step: int, upto_epoch: int) -> None:
        """On resume: keep the rows the resumed state had written (later rows came after the state)."""
        jl = self.file("metrics.jsonl")
        if jl.is_file():
            rows = []
            lines = jl.read_text().splitlines()
            for n, line in enumerate(lines):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    if n == len(lines) - 1:  # torn by a crash while appending: that step is after the state
                        break
                    raise ValueError(f"{jl}: line {n + 1} is not JSON") from None
            self.steps = [r for r in rows if r["step"] <= upto_step]
        mc = self.file("metrics.csv")
        if mc.is_file():
            with open(mc, newline="") as f:
                rows = list(csv.DictReader(f))
            self.epochs = [{k: _num(v) for k, v in r.items()} for r in rows if int(r["epoch"]) <= upto_epoch]

    def append_jsonl(self, name: str, row: dict[str, Any]) -> None:
        """One JSON line appended to `name` (a log that only grows, e.g. config_changes.jsonl)."""
        with open(self.file(name), "a") as f:
            f.write(json.dumps(row, default=_json_default) + "\n")

    def log_step(self, row: dict[str, Any]) -> None:
        """One line per logged step. The first call of a process rewrites the file atomically with the rows
        kept so far (on resume: the resumed state's), later calls append one line each, so a run's writes
        stay linear in its length; a crash can tear only the last line, which `load_metrics` drops."""
        self.steps.append(row)
        if not self._steps_on_disk:
            self.write_text("metrics.jsonl", "".join(json.dumps(r, default=_json_default) + "\n" for r in self.steps))
            self._steps_on_disk = True
        else:
            with open(self.file("metrics.jsonl"), "a") as f:
                f.write(json.dumps(row, default=_json_default) + "\n")

    def log_epoch(self, row: dict[str, Any]) -> None:
        self.epochs.append(row)
        keys: list[str] = []
        for r in self.epochs:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        for r in self.epochs:
            w.writerow({k: r.get(k, "") for k in keys})
        self.write_text("metrics.csv", buf.getvalue())

    # ---- figures ------------------------------------------------------------------------------
    def plot_curves(self, main_metric: str, boxes: str = "") -> Path:
        """curves.png: per epoch (loss, lr, `main_metric` on `boxes`, GT-box localisation error) and per logged
        step (loss and the DM diagnostics)."""
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        ep = self.epochs
        st = self.steps
        fig, axes = plt.subplots(2, 4, figsize=(16, 7))
        x = [r["epoch"] for r in ep]

        def panel(ax, xs, rows, keys, title, log=False):
            for k in keys:
                pts = [(a, r[k]) for a, r in zip(xs, rows) if isinstance(r.get(k), (int, float))]
                if pts:
                    ax.plot(*zip(*pts), marker="." if len(pts) < 50 else None, label=k)
            ax.set_title(title, fontsize=9)
            if log and any(ax.get_lines()):
                ax.set_yscale("log")
            if len(keys) > 1 and ax.get_lines():
                ax.legend(fontsize=7)
            ax.tick_params(labelsize=7)
            ax.locator_params(nbins=5)

        panel(axes[0, 0], x, ep, ["train_loss"], "train loss per epoch (val DM loss: right axis)")
        twin = axes[0, 0].twinx()
        pts = [(a, r["val_dm_loss"]) for a, r in zip(x, ep) if isinstance(r.get("val_dm_loss"), (int, float))]
        if pts:
            twin.plot(*zip(*pts), color="tab:orange", marker=".")
            twin.tick_params(labelsize=7)
        panel(axes[0, 1], x, ep, ["lr"], "learning rate")
        panel(axes[0, 2], x, ep, [main_metric], f"validation {main_metric}" + (f", {boxes}" if boxes else ""))
        panel(axes[0, 3], x, ep, ["val_loc_error_hm"], "val localisation error (heatmap px, GT boxes)")
        s = [r["step"] for r in st]
        panel(axes[1, 0], s, st, ["loss"], "train loss per logged step")
        panel(axes[1, 1], s, st, ["dead_share", "mass_2px"], "dead heatmaps / mass within 2 px")
        panel(axes[1, 2], s, st, ["median_error_hm"], "median localisation error (heatmap px)")
        panel(axes[1, 3], s, st, ["grad_norm_heatmaps", "grad_norm_final_bias", "final_bias_mean"],
              "gradients and final-layer bias")
        fig.text(0.5, 0.5, "per epoch (top), per logged step (bottom)", ha="center", fontsize=8)
        fig.subplots_adjust(left=0.05, right=0.99, bottom=0.08, top=0.95, wspace=0.25, hspace=0.35)
        with atomic_output(self.file("curves.png")) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
        plt.close(fig)
        return self.file("curves.png")

    def write_val_crops(self, epoch: int, crops: np.ndarray, heatmaps: np.ndarray, pred_in: np.ndarray,
                        gt_in: np.ndarray, weights: np.ndarray, label: str) -> Path:
        """crops (N, H, W, 3) uint8 RGB; heatmaps (N, K, h, w) the decoded map (normalised); pred_in/gt_in
        (N, K, 2) input px. Each tile: the crop with GT (green) and predictions (red), beside the max over
        joints of the heatmap, upsampled."""
        tiles = []
        for n in range(len(crops)):
            img = np.ascontiguousarray(crops[n][:, :, ::-1])  # BGR for cv2
            h, w = img.shape[:2]
            hm = heatmaps[n].max(axis=0)
            hm = hm / hm.max() if hm.max() > 0 else hm
            hm = cv2.applyColorMap((cv2.resize(hm, (w, h), interpolation=cv2.INTER_NEAREST) * 255).astype(np.uint8),
                                   cv2.COLORMAP_JET)
            over = cv2.addWeighted(img, 0.5, hm, 0.5, 0)
            for k in range(gt_in.shape[1]):
                if weights[n, k] > 0:
                    cv2.circle(img, tuple(int(round(v)) for v in gt_in[n, k]), 2, (0, 255, 0), -1)
                if np.all(np.isfinite(pred_in[n, k])):
                    cv2.drawMarker(img, tuple(int(round(v)) for v in pred_in[n, k]), (0, 0, 255),
                                   cv2.MARKER_CROSS, 5, 1)
            tiles.append(np.concatenate([img, over], axis=1))
        grid = np.concatenate(tiles, axis=0) if tiles else np.zeros((8, 8, 3), np.uint8)
        cols = 4 if len(tiles) >= 4 else max(len(tiles), 1)
        if len(tiles) >= cols and len(tiles) % cols == 0:
            rows = [np.concatenate(tiles[i:i + cols], axis=1) for i in range(0, len(tiles), cols)]
            grid = np.concatenate(rows, axis=0)
        cv2.putText(grid, f"epoch {epoch} {label}", (2, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255), 1)
        ok, data = cv2.imencode(".jpg", grid, [cv2.IMWRITE_JPEG_QUALITY, 90])
        return atomic_write_bytes(self.file(f"val_epoch{epoch:03d}.jpg"), data.tobytes())


def _num(v: str):
    if v == "":
        return None
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return v
