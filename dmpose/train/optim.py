"""Optimiser, learning-rate schedule (epochs or steps, warm-up, step/cosine/linear) and the weight EMA."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["build_optimizer", "lr_factor", "build_scheduler", "ModelEMA", "effective_lr"]


def effective_lr(optim_cfg, total_batch: int) -> float:
    """The configured lr, scaled linearly by total_batch / ref_batch when ref_batch is set."""
    if optim_cfg.ref_batch is None:
        return optim_cfg.lr
    return optim_cfg.lr * total_batch / optim_cfg.ref_batch


def build_optimizer(model: nn.Module, optim_cfg, lr: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if any(s in name for s in optim_cfg.no_decay) else decay).append(p)
    groups = [{"params": decay, "weight_decay": optim_cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    cls = torch.optim.Adam if optim_cfg.name == "adam" else torch.optim.AdamW
    # fused: one kernel over all parameters (hrnet_tiny's 122 tensors: 12.4 -> 2.6 ms per CPU step)
    return cls(groups, lr=lr, betas=tuple(optim_cfg.betas), fused=optim_cfg.fused)


def lr_factor(step: int, sched, steps_per_epoch: int, total_steps: int, base_lr: float) -> float:
    """Multiplier of the base lr after `step` optimiser steps (a pure function: resumable, reproducible)."""
    unit = steps_per_epoch if sched.unit == "epoch" else 1
    warm = sched.warmup * (steps_per_epoch if (sched.warmup_unit or sched.unit) == "epoch" else 1)
    if warm > 0 and step < warm:
        return sched.warmup_start + (1 - sched.warmup_start) * step / warm
    if sched.name == "constant":
        return 1.0
    if sched.name == "step":
        # epoch milestones count completed epochs, as torch's MultiStepLR stepped per epoch
        done = step // unit
        return sched.gamma ** sum(1 for m in sched.milestones if done >= m)
    span = max(total_steps - warm, 1)
    t = min(max(step - warm, 0) / span, 1.0)
    floor = sched.min_lr / base_lr
    if sched.name == "linear":
        return floor + (1 - floor) * (1 - t)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def build_scheduler(opt, sched, steps_per_epoch: int, total_steps: int, base_lr: float):
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, sched, steps_per_epoch, total_steps, base_lr))


class ModelEMA:
    """Exponential moving average of the model's state: floating-point parameters and buffers (BN running
    statistics) are averaged, integer buffers copied. The decay is warmed up as timm's and YOLOv5's,
    min(decay, (1 + t) / (10 + t)) at optimiser step t, so the average forgets the initial weights (without it,
    decay 0.995 left 19% of them in at step 330 and the EMA's AP was 0 where the raw weights' was 0.17).
    `module` is a full model in eval mode."""

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay

    def decay_at(self, step: int) -> float:
        """The decay used by the update after optimiser step `step` (0-based)."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold in `model`'s state after optimiser step `step` (0-based: the trainer's step count before it
        increments, so a resumed run continues the same sequence of decays)."""
        d = self.decay_at(step)
        src = model.state_dict()
        for k, v in self.module.state_dict().items():
            s = src[k].detach()
            if v.dtype.is_floating_point:
                v.lerp_(s.to(v.dtype), 1 - d)
            else:
                v.copy_(s)

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state):
        self.module.load_state_dict(state)
