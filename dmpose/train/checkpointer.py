"""The run's checkpoints: best/last/epoch weights as dmpose checkpoints (the spec, the loss and the config in
their metadata) and the resume state, each written atomically into the run folder (timm's CheckpointSaver, with
the resume state of `dmpose.train.state`).

  best.safetensors (+ best.json)   the weights of the best validation (EMA weights when train.ema is on)
  last.safetensors                 the raw weights at the last save (last_ema.safetensors: the EMA's)
  epoch_NNN.safetensors            every train.checkpoint_every epochs
  last.state.pt                    the resume state: weights, optimiser, scheduler, scaler, `TrainState`, RNGs

Under DDP every rank calls `save_resume` (each rank's RNG state is gathered); only rank 0 writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dmpose.models.checkpoint import save_checkpoint
from dmpose.spec import PoseSpec
from dmpose.train.config import TrainConfig, config_to_yaml
from dmpose.train.optim import ModelEMA
from dmpose.train.run_folder import RunFolder
from dmpose.train.state import TrainState, load_state, save_state, set_rng_state

__all__ = ["Checkpointer", "STATE_FILE"]

STATE_FILE = "last.state.pt"


class Checkpointer:
    """Writes a run's checkpoints into `folder` (None on ranks > 0 and in a dry run: nothing is written)."""

    def __init__(self, folder: RunFolder | None, cfg: TrainConfig, spec: PoseSpec, world: int) -> None:
        self.folder, self.spec, self.world = folder, spec, world
        self.config_yaml = config_to_yaml(cfg)
        options = cfg.loss.dm.model_dump() if cfg.loss.name == "dm" else {"sigma": spec.codec.sigma,
                                                                            "flavour": spec.codec.flavour}
        terms = {k: getattr(cfg.loss, k) for k in ("dm_weight", "aux_ce", "aux_mse")} if cfg.loss.name == "dm" else {}
        self.loss_meta = {"name": cfg.loss.name, **options, **terms}

    def save_model(self, module: nn.Module, name: str, extra: dict[str, Any]) -> None:
        """`name` in the run folder: the weights, the spec, the loss, the config and `extra` (epoch, step...)."""
        if self.folder is None:
            return
        meta = {"loss": self.loss_meta, "config": self.config_yaml, **extra}
        save_checkpoint(module, self.folder.file(name), spec=self.spec, meta=meta)

    def save_best(self, module: nn.Module, best: dict[str, Any]) -> None:
        """best.safetensors and best.json for a new best validation (`best`: metric, value, epoch, ...)."""
        if self.folder is None:
            return
        self.save_model(module, "best.safetensors", {"epoch": best["epoch"], best["metric"]: best["value"]})
        self.folder.write_json("best.json", best)

    def save_resume(self, state: TrainState, raw: nn.Module, ema: ModelEMA | None, opt: torch.optim.Optimizer,
                    sched: Any, scaler: torch.amp.GradScaler) -> None:
        """last.safetensors (and last_ema) and the resume state of `state` (every rank must call it under DDP)."""
        rngs = state.rng
        if self.world > 1:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, rngs)
            rngs = gathered
        if self.folder is None:
            return
        where = {"epoch": state.epoch, "step": state.step}
        self.save_model(raw, "last.safetensors", where)
        if ema is not None:
            self.save_model(ema.module, "last_ema.safetensors", where)
        save_state(self.folder.file(STATE_FILE), {
            "model": raw.state_dict(), "ema": ema.state_dict() if ema else None, "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), **state.to_dict(), "rng": rngs,
            "config": self.config_yaml})

    @staticmethod
    def resume(path: str | Path, rank: int, device: torch.device, raw: nn.Module, ema: ModelEMA | None,
               opt: torch.optim.Optimizer, sched: Any, scaler: torch.amp.GradScaler,
               loader_generator: torch.Generator) -> tuple[TrainState, Path, str | None]:
        """Load a resume state (a last.state.pt, or a run folder holding one) into the run's objects and this
        rank's RNGs; returns the state, the file read and the config YAML the run was saved with."""
        path = Path(path)
        path = path / STATE_FILE if path.is_dir() else path
        st = load_state(path, map_location=device)
        raw.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        # the lr of the next step from this run's schedule (the same value unless train.epochs was extended: then
        # the longer run's, dmpose.train.resume), not the lr the optimiser state was saved with
        for group, base, fn in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base * fn(sched.last_epoch)
        scaler.load_state_dict(st["scaler"])
        if ema is not None and st.get("ema") is not None:
            ema.load_state_dict(st["ema"])
        set_rng_state(st["rng"][rank] if isinstance(st["rng"], list) else st["rng"], loader_generator)
        state = TrainState(best=st["best"], epoch=st["epoch"], step=st["step"], step_in_epoch=st["step_in_epoch"],
                           skipped=st["skipped"], epoch_losses=list(st.get("epoch_losses", [])))
        return state, path, st.get("config")
