"""The run folder: runs/NAME (auto-incremented: NAME, NAME-2, NAME-3, ..., picked atomically) or an explicit --out.

A training claims its folder first (`claim_run_folder`): it holds an exclusive lock on it for the whole run (a
second training on the same folder is refused at once), and a new training refuses a folder that holds another
run unless told to overwrite it (`--overwrite`); `--resume` continues the run that is there.

config.yaml (resolved), env.json, metrics.csv (one row per epoch), metrics.jsonl (one row per logged
step), last.safetensors / best.safetensors (+ best.json), last.state.pt (resume state), optional
epoch_NNN.safetensors, curves.png (by epoch), diagnostics.png (by step),
val_epochNNN.jpg. Every file is written atomically (dmpose.atomic):
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import matplotlib
import numpy as np

from dmpose.atomic import atomic_output, atomic_write_bytes

__all__ = ["RunFolder", "RunFolderError", "RunFolderLock", "claim_run_folder", "new_run_dir", "latest_run_dir",
           "run_files", "RUN_FILES"]

RUN_FILES = ("config.yaml", "env.json", "metrics.csv", "metrics.jsonl", "last.safetensors", "best.safetensors",
             "best.json", "last.state.pt", "curves.png", "diagnostics.png")


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
        """curves.png, what a user reads, by epoch: the training loss (and the validation's own loss), the
        learning rate, `main_metric` on `boxes`, and the localisation error and compactness on GT boxes; and
        diagnostics.png, the research diagnostics by optimiser step (dead maps, mass near the dot, median error,
        gradient norms, each loss term's share of the heatmap gradient). Returns curves.png's path."""
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt  # after choosing the backend

        ep, st = self.epochs, self.steps
        x = [r["epoch"] for r in ep]
        fig, axes = plt.subplots(2, 3, figsize=(13, 7))
        _panel(axes[0, 0], x, ep, {"train_loss": "training loss",
                                   "val_loss": "validation loss (DM; MSE for MSE models)"},
               "loss", "loss (the model's training loss)", log=True)
        _panel(axes[0, 1], x, ep, {main_metric: main_metric}, main_metric,
               f"validation {main_metric}" + (f"\n{boxes}" if boxes else ""))
        _panel(axes[0, 2], x, ep, {"lr": "learning rate"}, "lr", "learning rate")
        _panel(axes[1, 0], x, ep, {"val_loc_error_hm": "mean", "val_median_loc_error_hm": "median"},
               "error (heatmap px)", "localisation error on GT boxes (decode vs dot)")
        _panel(axes[1, 1], x, ep, {"val_compactness_2px": "mass within 2 px of the prediction"}, "share",
               "compactness of the decoded map (GT boxes)")
        _panel(axes[1, 2], x, ep, {"images_per_second": "images / s"}, "images / s", "training throughput")
        for ax in axes.flat:
            ax.set_xlabel("epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
        fig.tight_layout()
        with atomic_output(self.file("curves.png")) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
        plt.close(fig)

        s = [r["step"] for r in st]
        fig, axes = plt.subplots(2, 3, figsize=(13, 7))
        shares = {k: k.removeprefix("grad_share_") for k in sorted({k for r in st for k in r}) if k.startswith(
            "grad_share_")}
        _panel(axes[0, 0], s, st, {"loss": "loss"}, "loss", "training loss per logged step", log=True)
        _panel(axes[0, 1], s, st, {"dead_share": "no positive pixel", "mass_2px": "mass within 2 px of the dot"},
               "share of labelled joints / of the mass", "dead maps and mass near the dot")
        _panel(axes[0, 2], s, st, {"median_error_hm": "median"}, "error (heatmap px)",
               "localisation error of the training batch")
        _panel(axes[1, 0], s, st, {"grad_norm_heatmaps": "at the heatmaps", "grad_norm_final_bias": "final-layer bias"},
               "gradient norm", "gradient norms", log=True)
        _panel(axes[1, 1], s, st, shares, "share", "each loss term's share of the heatmap gradient")
        _panel(axes[1, 2], s, st, {"final_bias_mean": "mean"}, "bias", "final-layer bias")
        for ax in axes.flat:
            ax.set_xlabel("optimiser step")
        fig.tight_layout()
        with atomic_output(self.file("diagnostics.png")) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
        plt.close(fig)
        return self.file("curves.png")

    def write_val_crops(self, epoch: int, crops: np.ndarray, heatmaps: np.ndarray, pred_in: np.ndarray,
                        gt_in: np.ndarray, weights: np.ndarray, label: str,
                        skeleton: Sequence[tuple[int, int]] = ()) -> Path:
        """val_epochNNN.jpg: up to 4 validation crops, each enlarged to at least 384 px high, with the ground truth
        (green) and the prediction (red) drawn as skeletons, beside the decoded map (the max over joints), and a
        legend. crops (N, H, W, 3) uint8 RGB; heatmaps (N, K, h, w) the decoded map (normalised); pred_in / gt_in
        (N, K, 2) input px; weights (N, K) (GT joints with weight 0 are not drawn)."""
        tiles = []
        for n in range(min(len(crops), VAL_CROPS_SHOWN)):
            img = np.ascontiguousarray(crops[n][:, :, ::-1])  # BGR for cv2
            h, w = img.shape[:2]
            scale = max(1, -(-VAL_CROP_HEIGHT // h))
            big = cv2.resize(img, (w * scale, h * scale), interpolation=cv2.INTER_CUBIC)
            hm = heatmaps[n].max(axis=0)
            hm = hm / hm.max() if hm.max() > 0 else hm
            hm = cv2.applyColorMap((cv2.resize(hm, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST) * 255)
                                   .astype(np.uint8), cv2.COLORMAP_JET)
            over = cv2.addWeighted(big, 0.5, hm, 0.5, 0)

            def at(p: np.ndarray, scale: int = scale) -> tuple[int, int]:  # input px -> the tile's (centres at ints)
                return int(round((p[0] + 0.5) * scale - 0.5)), int(round((p[1] + 0.5) * scale - 0.5))

            shown_gt = weights[n] > 0
            shown_pred = np.isfinite(pred_in[n]).all(-1)
            for pts, ok, colour in ((gt_in[n], shown_gt, (0, 200, 0)), (pred_in[n], shown_pred, (0, 0, 255))):
                for a, b in skeleton:
                    if ok[a] and ok[b]:
                        cv2.line(big, at(pts[a]), at(pts[b]), colour, 2, cv2.LINE_AA)
                for k in np.flatnonzero(ok):
                    cv2.circle(big, at(pts[k]), 4, colour, -1, cv2.LINE_AA)
            tiles.append(np.concatenate([big, over], axis=1))
        if not tiles:
            tiles = [np.zeros((VAL_CROP_HEIGHT, VAL_CROP_HEIGHT, 3), np.uint8)]
        height = max(t.shape[0] for t in tiles)
        tiles = [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0))) for t in tiles]
        cols = 2 if len(tiles) > 2 else len(tiles)
        rows = [np.concatenate(tiles[i:i + cols] + [np.zeros_like(tiles[0])] * (cols - len(tiles[i:i + cols])), axis=1)
                for i in range(0, len(tiles), cols)]
        grid = np.concatenate(rows, axis=0)
        legend = np.full((36, grid.shape[1], 3), 255, np.uint8)
        font = cv2.FONT_HERSHEY_SIMPLEX
        entries = ((f"epoch {epoch}, {label}:", 8, (0, 0, 0), 1), ("ground truth", 260, (0, 200, 0), 2),
                   ("prediction", 420, (0, 0, 255), 2), ("right: decoded map", 560, (0, 0, 0), 1))
        for text, x, colour, thick in entries:
            cv2.putText(legend, text, (x, 24), font, 0.6, colour, thick, cv2.LINE_AA)
        ok, data = cv2.imencode(".jpg", np.concatenate([legend, grid], axis=0), [cv2.IMWRITE_JPEG_QUALITY, 90])
        return atomic_write_bytes(self.file(f"val_epoch{epoch:03d}.jpg"), data.tobytes())


#: The validation picture: this many crops, each enlarged to at least this height.
VAL_CROPS_SHOWN = 4
VAL_CROP_HEIGHT = 384


def _panel(ax, xs, rows, keys: dict[str, str], ylabel: str, title: str, log: bool = False) -> None:
    """One labelled plot of `keys` (name -> legend label) over `xs`; missing values are skipped."""
    for k, label in keys.items():
        pts = [(a, r[k]) for a, r in zip(xs, rows) if isinstance(r.get(k), (int, float)) and np.isfinite(r[k])]
        if pts:
            ax.plot(*zip(*pts), marker="." if len(pts) < 50 else None, label=label)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=8)
    if log and ax.get_lines() and all(min(line.get_ydata()) > 0 for line in ax.get_lines()):
        ax.set_yscale("log")
    if len(keys) > 1 and ax.get_lines():
        ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)


def _num(v: str):
    if v == "":
        return None
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return v
