"""One optimiser step, with the failure handling no anchor trainer has: a step whose loss, heatmaps or gradient
is not finite is skipped and counted (the model, batch-norm statistics included, left as it was), and a run of
`train.max_bad_steps` such steps in a row stops the run, naming the step. Under DDP the ranks agree on every
step's outcome (and on a Ctrl-C: `InterruptGuard.agree`) by one all-reduce, so they skip and stop together.

Use: `remember_buffers()` before each optimiser step's first micro-batch; after the backward passes,
`check(step_loss)` (unscale, clip, agree), then `apply(check, ...)` (step or skip, schedule, zero the grads).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dmpose.train.config import TrainConfig
from dmpose.train.interrupt import InterruptGuard
from dmpose.train.optim import ModelEMA
from dmpose.train.state import TrainState

__all__ = ["OptimiserStep", "StepCheck", "TrainingError"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a run of non-finite steps); the message names the step."""


@dataclass
class StepCheck:
    """What `OptimiserStep.check` found: the step's loss (the global batch's mean under DDP; nan if not finite),
    whether every rank's loss and gradient were finite, and the gradient norm before clipping."""

    loss: float
    loss_ok: bool
    grad_ok: bool
    grad_norm: float


class OptimiserStep:
    def __init__(self, cfg: TrainConfig, raw: nn.Module, opt: torch.optim.Optimizer, sched: Any,
                 scaler: torch.amp.GradScaler, ema: ModelEMA | None, guard: InterruptGuard, world: int) -> None:
        self.raw, self.opt, self.sched, self.scaler, self.ema, self.guard = raw, opt, sched, scaler, ema, guard
        self.world = world
        self.grad_clip = cfg.optim.grad_clip
        self.max_bad_steps = cfg.train.max_bad_steps
        self.bad_in_row = 0
        # a skipped step must leave the model as it was: its forward pass has already moved the batch-norm
        # running statistics (NaN ones, when the heatmaps were not finite), so they are put back
        self.buffers = list(raw.buffers())
        self.buffers_before = [b.clone() for b in self.buffers]

    def remember_buffers(self) -> None:
        """Snapshot the buffers (batch-norm statistics) before the step's first forward pass."""
        if self.buffers:
            torch._foreach_copy_(self.buffers_before, self.buffers)

    def check(self, step_loss: float) -> StepCheck:
        """Unscale and clip the gradients, and agree across ranks on the step's outcome and on a Ctrl-C."""
        self.scaler.unscale_(self.opt)
        gnorm = torch.nn.utils.clip_grad_norm_(self.raw.parameters(), self.grad_clip or float("inf"))
        # the third flag carries the signal that asked this rank to stop, negated (MIN: the largest of any rank)
        flags = torch.tensor([math.isfinite(step_loss), bool(torch.isfinite(gnorm)),
                              -self.guard.signum if self.guard.requested else 0], dtype=torch.float32)
        if self.world > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MIN)
            self.guard.agree(int(-flags[2]))  # a Ctrl-C or SIGTERM on any rank: all stop at the next data wait
            mean_loss = torch.tensor([step_loss], dtype=torch.float64)
            dist.all_reduce(mean_loss)  # the logged loss is the global batch's, as in one process
            step_loss = float(mean_loss) / self.world
        return StepCheck(step_loss, bool(flags[0]), bool(flags[1]), float(gnorm))

    def apply(self, check: StepCheck, bad_heatmaps: bool, state: TrainState, log) -> float:
        """Step (or skip, counting it in `state.skipped`), update the scaler, zero the grads and advance the
        schedule (a skipped step still advances it: steps are counted). Returns the lr the step used."""
        if check.loss_ok and (check.grad_ok or self.scaler.is_enabled()):
            self.scaler.step(self.opt)  # the fp16 scaler itself skips a step with inf/NaN gradients
            self.bad_in_row = 0
            if self.ema is not None:
                self.ema.update(self.raw, state.step)
        else:
            state.skipped += 1
            self.bad_in_row += 1
            if self.buffers:
                torch._foreach_copy_(self.buffers, self.buffers_before)
            what = "heatmaps" if bad_heatmaps else "loss" if not check.loss_ok else "gradient"
            log(f"step {state.step + 1}: non-finite {what}; step skipped ({state.skipped} so far)", "warning")
            if self.bad_in_row >= self.max_bad_steps:
                raise TrainingError(f"{self.bad_in_row} non-finite steps in a row, the last at step {state.step + 1} "
                                    f"(epoch {state.epoch + 1}): training stopped (lower optim.lr, set "
                                    "optim.grad_clip, or train.amp=off)")
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        lr = self.opt.param_groups[0]["lr"]
        with warnings.catch_warnings():  # a skipped step still advances the schedule (steps are counted)
            warnings.simplefilter("ignore", UserWarning)
            self.sched.step()
        return lr
