"""Typed training events. The loop reports through callbacks `callback(event)`; the CLI renders them
(rich lives in dmpose/cli only). A callback may raise KeyboardInterrupt to stop a run the way Ctrl-C does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunStart", "StepEnd", "ValidationEnd", "EpochEnd", "RunEnd", "Message", "Callback"]


@dataclass
class RunStart:
    run_dir: Path
    plan: dict[str, Any]  # epochs, steps_per_epoch, total_steps, start_step, effective batch, lr, threads, ...


@dataclass
class StepEnd:
    epoch: int
    step: int  # optimiser steps done in the whole run
    total_steps: int
    loss: float  # this step's (mean over its micro-batches)
    smoothed_loss: float
    lr: float
    images_per_second: float
    data_wait: float  # share of the wall time spent waiting for batches, since the epoch began
    eta_s: float
    skipped: int  # non-finite steps so far
    logged: dict[str, Any] | None = None  # the metrics.jsonl row when this step was logged


@dataclass
class ValidationEnd:
    epoch: int
    boxes: str
    metrics: dict[str, Any]  # AP... or PCKh, plus loc_error_hm, val_dm_loss
    main_metric: str
    is_best: bool
    best: dict[str, Any] = field(default_factory=dict)


@dataclass
class EpochEnd:
    epoch: int
    row: dict[str, Any]  # the metrics.csv row


@dataclass
class RunEnd:
    run_dir: Path
    status: str  # "finished", "interrupted"
    best: dict[str, Any]
    steps: int
    wall_s: float
    last_metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Message:
    text: str
    level: str = "info"


Callback = Callable[[Any], None]
