"""Where a run is (`TrainState`) and the resume state (`last.state.pt`): everything needed to continue exactly.

The file holds raw weights, EMA weights (when on), optimiser, scheduler, AMP scaler, epoch, step, step within
the epoch, best metric and epoch, and every RNG state (python, numpy, torch CPU, CUDA, the data-loader
generator), stored as tensors and plain Python values only, so that `torch.load(path, weights_only=True)`
reads it.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmpose.atomic import atomic_write_bytes

__all__ = ["TrainState", "rng_state", "set_rng_state", "save_state", "load_state", "STATE_VERSION"]

STATE_VERSION = 1


@dataclass
class TrainState:
    """The run's position and bookkeeping, saved with the weights in the resume state.

    epoch: epochs completed (it moves on once an epoch's validation is done, so a state saved during the
    validation resumes into it); step: optimiser steps done in the run; step_in_epoch: of them, in the current
    epoch; best: {"metric", "value", "epoch", "weights", "boxes"}; skipped: non-finite steps so far;
    epoch_losses: the logged loss of each step of the current epoch (metrics.csv train_loss); rng: the RNG
    states after the last completed step (what a resume restores); smoothed_loss: the progress line's average.
    """

    best: dict[str, Any]
    epoch: int = 0
    step: int = 0
    step_in_epoch: int = 0
    skipped: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    rng: dict[str, Any] | None = None
    smoothed_loss: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields the resume state stores (besides weights, optimiser and RNG states)."""
        return {"epoch": self.epoch, "step": self.step, "step_in_epoch": self.step_in_epoch,
                "epoch_losses": list(self.epoch_losses) if self.step_in_epoch else [], "best": self.best,
                "skipped": self.skipped}


def rng_state(loader_generator: torch.Generator | None = None) -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if loader_generator is not None:
        state["loader"] = loader_generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], loader_generator: torch.Generator | None = None) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["mt"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if loader_generator is not None and "loader" in state:
        loader_generator.set_state(state["loader"])


def save_state(path: str | Path, state: dict[str, Any]) -> Path:
    buf = io.BytesIO()
    torch.save({"version": STATE_VERSION, **state}, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume state not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001  truncated, random or zero-byte files, refused pickles: one message
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a readable resume state ({type(e).__name__}: {first}); it was not written by "
                         "a finished save (resume from another run folder, or start again without --resume)") from None
    if not isinstance(state, dict) or not {"model", "epoch", "step", "rng"} <= set(state):
        raise ValueError(f"{path}: not a dmpose resume state (missing fields)")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: resume state version {state.get('version')!r}, this dmpose reads {STATE_VERSION}")
    return state
