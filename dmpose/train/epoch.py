"""One training epoch: `train_one_epoch(ctx, state, loader)`.

Per optimiser step: `train.accum_steps` micro-batches (forward under autocast, the criterion in fp32, backward;
DDP synchronises only the last), then the optimiser step (`dmpose.train.step.OptimiserStep`: skip-and-restore
on non-finite steps, ranks agreeing). Every `train.log_every`-th step (and the run's first) is logged to
metrics.jsonl with the diagnostics of `dmpose.train.validate.step_diagnostics` and each loss term's share of the
heatmap gradient (`dmpose.train.criterion.gradient_shares`). A Ctrl-C stops at the next data wait
(`InterruptGuard.safe`). Progress goes out as `StepEnd` events; nothing here prints.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from dmpose.codec import HeatmapCodec
from dmpose.spec import PoseSpec
from dmpose.train.config import TrainConfig
from dmpose.train.criterion import Criterion, gradient_shares
from dmpose.train.events import StepEnd
from dmpose.train.interrupt import InterruptGuard
from dmpose.train.run_folder import RunFolder
from dmpose.train.state import TrainState, rng_state
from dmpose.train.step import OptimiserStep
from dmpose.train.validate import step_diagnostics

__all__ = ["EpochContext", "EpochStats", "train_one_epoch", "DEAD_WARN_SHARE"]

DEAD_WARN_SHARE = 0.25  # warn when this share of a logged batch's labelled heatmaps has no positive pixel


@dataclass
class EpochContext:
    """What every epoch of a run uses (built once by the loop)."""

    cfg: TrainConfig
    spec: PoseSpec
    codec: HeatmapCodec
    device: torch.device
    world: int
    model: nn.Module  # the network as trained (DDP-wrapped under DDP): its no_sync
    forward: Callable[[torch.Tensor], torch.Tensor]  # model, or torch.compile(model)
    criterion: Criterion
    optimiser: OptimiserStep
    guard: InterruptGuard
    folder: RunFolder | None
    emit: Callable[[Any], None]
    log: Callable[..., None]
    loader_generator: torch.Generator
    final_layer: nn.Module | None
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    steps_per_epoch: int
    total_steps: int
    warned_dead: int = 0  # the last epoch whose dead-heatmap warning was given


@dataclass
class EpochStats:
    """This process's images, data-wait time and wall time of the epoch (for its metrics.csv row)."""

    images: int
    wait_s: float
    elapsed_s: float


def train_one_epoch(ctx: EpochContext, state: TrainState, loader: DataLoader) -> EpochStats:
    """Train the rest of epoch `state.epoch` (from `state.step_in_epoch`), updating `state` after every step."""
    cfg, accum = ctx.cfg, ctx.cfg.train.accum_steps
    first_step_in_epoch = state.step_in_epoch
    t_epoch, wait, seen = time.perf_counter(), 0.0, 0
    loss_sum = 0.0
    bad_heatmaps = False  # a micro-batch of this optimiser step had non-finite heatmaps
    it = iter(loader)
    for micro in range((ctx.steps_per_epoch - state.step_in_epoch) * accum):
        t0 = time.perf_counter()
        with ctx.guard.safe():
            batch = next(it)
        wait += time.perf_counter() - t0
        last = (micro + 1) % accum == 0
        # logged: every log_every-th step, and the run's first (its gradient shares are reported)
        log_now = last and ((state.step + 1) % cfg.train.log_every == 0 or state.step == 0)
        x = batch["image"].to(ctx.device, non_blocking=True).to(memory_format=ctx.memory_format)
        if micro % accum == 0:
            ctx.optimiser.remember_buffers()
        with torch.autocast(ctx.device.type, dtype=ctx.amp_dtype or torch.float32, enabled=ctx.amp_dtype is not None):
            hm = ctx.forward(x)
        hm = hm.float()
        grad_hm: list[torch.Tensor] = []
        shares: dict[str, float] = {}
        # one sum (0.08 ms; the element-wise test 2.8 ms per step here) settles the finite case; a sum that
        # overflows on finite values falls through to the exact test
        if bool(torch.isfinite(hm.sum())) or bool(torch.isfinite(hm).all()):
            terms = ctx.criterion.terms(hm, batch, state.step / max(ctx.total_steps, 1))
            loss = ctx.criterion.total(terms, hm)
            if log_now and hm.requires_grad:
                shares = gradient_shares(terms, hm)  # before the hook below, which would see these too
        else:  # a NaN loss with zero gradients: the step is skipped and counted (DDP still all-reduces)
            bad_heatmaps = True
            loss = hm.nan_to_num(0.0, 0.0, 0.0).sum() * 0.0 + float("nan")
        if log_now and hm.requires_grad:
            hm.register_hook(grad_hm.append)  # the gradient reaching the heatmaps
        sync = contextlib.nullcontext() if (last or ctx.world == 1) else ctx.model.no_sync()
        with sync:
            ctx.optimiser.scaler.scale(loss / accum).backward()
        loss_sum += float(loss.detach())
        seen += len(x)
        if not last:
            continue
        check = ctx.optimiser.check(loss_sum / accum)
        diag = {}
        if log_now and not bad_heatmaps:
            scaler = ctx.optimiser.scaler
            # the hook saw d(scale x loss / accum) / dH: report d loss / dH
            g_hm = grad_hm[0] * (accum / scaler.get_scale() if scaler.is_enabled() else accum) if grad_hm else None
            diag = {**step_diagnostics(hm, batch, ctx.codec, g_hm, ctx.final_layer), **shares}
        lr = ctx.optimiser.apply(check, bad_heatmaps, state, ctx.log)
        bad_heatmaps = False
        state.step += 1
        state.step_in_epoch += 1
        state.rng = rng_state(ctx.loader_generator)
        shown = check.loss if math.isfinite(check.loss) else float("nan")
        if math.isfinite(check.loss):
            state.smoothed_loss = check.loss if state.smoothed_loss is None else 0.9 * state.smoothed_loss + 0.1 * shown
        state.epoch_losses.append(shown)
        el = time.perf_counter() - t_epoch
        ips = seen * ctx.world / max(el, 1e-9)
        eta = (ctx.total_steps - state.step) * el / max(state.step_in_epoch - first_step_in_epoch, 1)
        row = None
        if log_now:
            row = {"step": state.step, "epoch": state.epoch + 1, "loss": shown, "lr": lr, "images_per_second": ips,
                   "data_wait": wait / max(el, 1e-9), "grad_norm": check.grad_norm, "skipped": state.skipped, **diag}
            _log_row(ctx, state, row, shares)
        loss_sum = 0.0
        ctx.emit(StepEnd(state.epoch + 1, state.step, ctx.total_steps, shown,
                         state.smoothed_loss if state.smoothed_loss is not None else float("nan"), lr, ips,
                         wait / max(el, 1e-9), eta, state.skipped, row))
    return EpochStats(seen, wait, time.perf_counter() - t_epoch)


def _log_row(ctx: EpochContext, state: TrainState, row: dict[str, Any], shares: dict[str, float]) -> None:
    """A logged step: its metrics.jsonl row, the run's first gradient shares, and the dead-heatmap warning."""
    if ctx.folder is not None:
        ctx.folder.log_step(row)
    if state.step == 1 and shares:
        ctx.log("gradient shares at step 1 (||d term / dH|| over their sum): " + ", ".join(
            f"{k.removeprefix('grad_share_')} {v:.3f}" for k, v in shares.items() if k.startswith("grad_share_")))
    # only relu maps die: a softplus map of an all-negative H is still a live distribution
    if (ctx.spec.codec.supplier_map == "relu" and row.get("dead_share", 0.0) >= DEAD_WARN_SHARE
            and ctx.warned_dead < state.epoch + 1):
        ctx.warned_dead = state.epoch + 1  # once per epoch: the failure is reported, never hidden
        ctx.log(f"step {state.step}: {row['dead_share']:.0%} of the labelled heatmaps have no positive pixel "
                "(suppliers 'relu'); their loss falls back to softmax(H). The paper's relu form dies this way from "
                "scratch: see docs/training.md (loss.dm.suppliers: softplus avoids it)", "warning")
