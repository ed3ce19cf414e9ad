"""The training loop: `train(cfg)` builds the data, the network and the optimiser from a `TrainConfig`, trains,
validates and writes the run folder. `_train` reads top to bottom in one sitting, in the style of nanoGPT's
train.py and the PyTorch ImageNet example; each piece it calls has a room of its own:

  runtime.py       process group, device, threads/workers, CPU tuning, mixed precision, seeding, env.json
  datasets.py      the training set, the validation data and each epoch's loader (layouts: dmpose.data.layouts)
  network.py       the network, initialised from model.pretrained, prepared for the device and DDP
  criterion.py     the loss built once from the config, as weighted terms (and their gradient shares)
  optim.py         optimiser, schedule, EMA
  step.py          one optimiser step: skip-and-restore on non-finite steps, ranks agreeing
  epoch.py         train_one_epoch
  validate.py      validation (the same predictor and evaluators as `dmpose eval`) and heatmap metrics
  checkpointer.py  best/last/epoch checkpoints and the resume state; state.py: TrainState
  run_folder.py    config.yaml, metrics.csv/jsonl, curves.png, validation crops

Progress goes out as typed events (events.py) to the callbacks; nothing here prints.

Resume: the state is written at the end of every epoch and when the run is interrupted (Ctrl-C or SIGTERM,
handled by dmpose.train.interrupt so that it stops at a safe point, or a KeyboardInterrupt from a callback), with the
RNG states and the epoch's step losses of the last completed step. Resuming re-creates the epoch's sampler
order (seed + epoch) and skips the samples already used, so a resumed run is bit for bit the uninterrupted one
on the CPU, mid-epoch included (docs/training.md).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Subset

from dmpose.codec import build_codec
from dmpose.eval.predictor import TopDownPredictor
from dmpose.eval.runner import predict_dataset
from dmpose.train.checkpointer import STATE_FILE, Checkpointer
from dmpose.train.config import ConfigError, TrainConfig, check_paths, config_to_yaml
from dmpose.train.criterion import Criterion
from dmpose.train.datasets import build_datasets, epoch_loader
from dmpose.train.epoch import EpochContext, train_one_epoch
from dmpose.train.events import EpochEnd, Message, RunEnd, RunStart, ValidationEnd
from dmpose.train.interrupt import InterruptGuard
from dmpose.train.network import build_network, final_layer, prepare_network, sync_batch_norm
from dmpose.train.optim import ModelEMA, build_optimizer, build_scheduler, effective_lr
from dmpose.train.processes import run_local_processes
from dmpose.train.resume import check_resume
from dmpose.train.run_folder import RunFolder, claim_run_folder, new_run_dir
from dmpose.train.runtime import (
    autocast_dtype,
    choose_threads_workers,
    denormals_flushed,
    distributed,
    environment,
    loss_backend_note,
    seed_all,
    select_device,
    tune_cpu_process,
)
from dmpose.train.state import TrainState, load_state, rng_state
from dmpose.train.step import OptimiserStep, TrainingError
from dmpose.train.tensorboard import TensorBoardCallback
from dmpose.train.validate import ValData, validate_epoch

__all__ = ["train", "TrainingError", "TrainResult"]

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path | None
    status: str  # finished, interrupted, dry-run
    steps: int
    epochs_done: int
    best: dict[str, Any]
    last_metrics: dict[str, Any]
    plan: dict[str, Any]


def train(cfg: TrainConfig, run_dir: str | Path | None = None, resume: str | Path | None = None,
          callbacks: Iterable = (), dry_run: bool = False, overwrite: bool = False) -> TrainResult:
    """Train `cfg`. run_dir: the run folder (default: OUT_ROOT/NAME, auto-incremented); resume: a last.state.pt
    (or a run folder holding one), whose config may change only as `dmpose.train.resume` allows; overwrite:
    replace the run in run_dir (a new training refuses a folder that holds one). The folder is locked for the
    run. The process-wide denormal flushing the CPU step is tuned with is put back as it was when this returns."""
    flushed = denormals_flushed()
    callbacks = list(callbacks)
    lock = None
    try:
        if not dry_run and int(os.environ.get("RANK", "0")) == 0:
            if run_dir is None:
                run_dir = (Path(resume) if Path(resume).is_dir() else Path(resume).parent) if resume is not None \
                    else new_run_dir(cfg.out_root, cfg.name)
            lock = claim_run_folder(Path(run_dir), resume=resume is not None, overwrite=overwrite)
        if resume is not None:  # refuse a changed config before any work, on every rank alike
            st = load_state(_state_file(resume))
            check_resume(cfg, st.get("config"), st["epoch"], str(_state_file(resume)))
        cfg, local = _local_processes(cfg, callbacks, dry_run)
        if local:
            return run_local_processes(_train, cfg, run_dir, resume, callbacks, TrainingError, dry_run)
        return _train(cfg, run_dir, resume, callbacks, dry_run)
    finally:
        if lock is not None:
            lock.release()
        torch.set_flush_denormal(flushed)


def _state_file(resume: str | Path) -> Path:
    path = Path(resume)
    return path / STATE_FILE if path.is_dir() else path


def _local_processes(cfg: TrainConfig, callbacks: Iterable, dry_run: bool) -> tuple[TrainConfig, bool]:
    """`train.processes` (dmpose.train.processes): whether to start local ranks, and the config to train. A GPU run
    trains in one process with processes x batch_size images per step; a dry run starts the ranks the run would
    (its plan is the run's, and each rank takes its one step)."""
    n = cfg.train.processes
    if n == 1:
        return cfg, False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"train.processes: {n} starts its own local processes, but this process is already one "
                          f"of {os.environ['WORLD_SIZE']} ranks (torchrun): set --set train.processes=1")
    note, device = None, select_device(cfg, 0)
    if device.type != "cpu":
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(
            update={"processes": 1, "batch_size": n * cfg.train.batch_size})})
        note = (f"train.processes: {n} runs on the CPU; on {device} one process trains with "
                f"{cfg.train.batch_size} images per step (the same effective batch; several GPUs: torchrun)")
    if note:
        for cb in callbacks:
            cb(Message(note, "info"))
    return cfg, note is None


def _train(cfg: TrainConfig, run_dir, resume, callbacks: Iterable, dry_run: bool) -> TrainResult:
    """One rank's training (every rank of a DDP run calls it; rank 0 reports and writes the run folder)."""
    callbacks = list(callbacks)
    rank, world, local_rank = distributed()
    main = rank == 0

    def emit(event) -> None:
        if main:
            for cb in callbacks:
                cb(event)

    def log(text: str, level: str = "info") -> None:
        emit(Message(text, level))

    def say(text: str) -> None:
        """A warning every rank gives: rank 0 through the callbacks, the others through logging (stderr)."""
        if main:
            log(text, "warning")
        else:
            logger.warning("training process %d of %d: %s", rank, world, text)

    # ---- the machine ------------------------------------------------------------------------------
    check_paths(cfg)
    spec = cfg.pose_spec()
    codec = build_codec(spec)
    device = select_device(cfg, local_rank)
    threads, workers, why = choose_threads_workers(cfg, device, world)
    torch.set_num_threads(threads)
    if device.type == "cpu":
        why = f"{why}; {tune_cpu_process()}"
    log(f"threads/workers: {why}")
    loss_backend = loss_backend_note(cfg, device)
    if loss_backend:
        log(f"DM loss backend: {loss_backend}")
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    seed_all(cfg.train.seed)  # the same initial weights on every rank

    # ---- data ---------------------------------------------------------------------------------------
    train_ds, val = build_datasets(cfg, spec)  # a COCO file whose category names other keypoints is refused there
    if val.kind == "coco" and spec.keypoints.sigmas is None:  # up front, not at the first validation
        raise ValueError(f"keypoint set '{spec.keypoints.name}' (model.keypoints) has no OKS sigmas: validating "
                         "COCO-format data with OKS AP needs one per keypoint (add 'sigmas: [...]' to its YAML)")
    if workers > 0 and hasattr(train_ds, "warm_cache"):
        cached = train_ds.warm_cache()  # before the workers fork: they share it
        if cached:
            log(f"{cached} decoded training images cached in memory")
    bs, accum = cfg.train.batch_size, cfg.train.accum_steps
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.train.seed,
                                 drop_last=True)
    steps_per_epoch = len(sampler) // bs // accum
    if steps_per_epoch < 1:
        raise ValueError(f"{len(train_ds)} training samples give no full step of {bs} x {accum} x {world} images "
                         "(lower train.batch_size or train.accum_steps)")
    total_steps = cfg.train.epochs * steps_per_epoch
    total_batch = bs * accum * world
    lr = effective_lr(cfg.optim, total_batch)
    loader_gen = torch.Generator()

    # ---- network, optimiser, precision ------------------------------------------------------------------
    raw = sync_batch_norm(build_network(cfg, spec, log), cfg, device, world)
    fmt = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    raw = raw.to(device).to(memory_format=fmt)  # the network itself: checkpoints, EMA and validation use it
    opt = build_optimizer(raw, cfg.optim, lr)
    sched = build_scheduler(opt, cfg.schedule, steps_per_epoch, total_steps, lr)
    amp_dtype, use_scaler = autocast_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    ema = ModelEMA(raw, cfg.train.ema) if cfg.train.ema else None
    seed_all(cfg.train.seed + rank)  # augmentation streams differ per rank
    model, forward = prepare_network(raw, cfg, device, world)
    main_metric = "PCKh@0.5" if val.kind == "mpii" else "AP"

    # ---- where the run is ---------------------------------------------------------------------------
    state = TrainState(best={"metric": main_metric, "value": None, "epoch": None, "weights": "ema" if ema else "raw",
                             "boxes": val.boxes})
    changes: list[tuple] = []
    if resume is not None:
        state, path, saved_config = Checkpointer.resume(resume, rank, device, raw, ema, opt, sched, scaler,
                                                        loader_gen)
        changes = check_resume(cfg, saved_config, state.epoch, str(path))
        log(f"resumed from {path}: epoch {state.epoch}, step {state.step}"
            + (f" (+{state.step_in_epoch} in the epoch)" if state.step_in_epoch else "")
            + "".join(f"; {k}: {a!r} -> {b!r}" for k, a, b in changes))
    plan = {"epochs": cfg.train.epochs, "start_epoch": state.epoch, "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps, "start_step": state.step, "train_samples": len(train_ds),
            "val_samples": len(val.dataset), "val_boxes": val.boxes, "batch_per_device": bs, "accum_steps": accum,
            "world_size": world, "effective_batch": total_batch, "lr": lr, "base_lr": cfg.optim.lr,
            "ref_batch": cfg.optim.ref_batch, "loss": cfg.loss.name, "decode": spec.decode,
            "device": str(device), "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype else "off",
            "threads": threads, "workers": workers, "arch": spec.arch, "input_wh": list(spec.input_wh),
            "heatmap_wh": list(spec.heatmap_wh), "ema": cfg.train.ema, "main_metric": main_metric}
    folder = None
    if main and not dry_run:
        folder = RunFolder(Path(run_dir) if run_dir is not None else Path(cfg.out_root) / cfg.name)
        folder.write_text("config.yaml", config_to_yaml(cfg))
        folder.write_json("env.json", {**environment(cfg, device, world, threads, workers, amp_dtype, why),
                                       "loss_backend": loss_backend, "plan": plan})
        if resume is not None:
            folder.load_metrics(state.step, state.epoch)
            for key, old, new in changes:
                folder.append_jsonl("config_changes.jsonl", {"step": state.step, "epoch": state.epoch, "key": key,
                                                             "old": old, "new": new})
    if folder is not None and cfg.logging.tensorboard:
        callbacks.append(TensorBoardCallback(folder.file("tensorboard")))
    emit(RunStart(folder.path if folder else None, plan))
    checkpoints = Checkpointer(folder, cfg, spec, world)
    state.rng = rng_state(loader_gen)
    criterion = Criterion(cfg, device)
    if dry_run:
        return _dry_run(cfg, forward, raw, opt, criterion, train_ds, val, spec, device, amp_dtype, plan, log)

    # ---- epochs -------------------------------------------------------------------------------------
    status, last_metrics = "finished", {}
    t_run = time.perf_counter()
    raw.train()
    # Ctrl-C stops at a safe point (dmpose.train.interrupt); under DDP every rank at the same step
    with InterruptGuard(coordinated=world > 1) as guard:
        ctx = EpochContext(cfg, spec, codec, device, world, model, forward, criterion,
                           OptimiserStep(cfg, raw, opt, sched, scaler, ema, guard, world), guard, folder, emit, log,
                           loader_gen, final_layer(raw, spec.num_joints), amp_dtype, fmt, steps_per_epoch,
                           total_steps)
        try:
            while state.epoch < cfg.train.epochs:
                if not state.step_in_epoch:
                    state.epoch_losses = []
                loader = epoch_loader(train_ds, sampler, cfg, state.epoch, state.step_in_epoch * bs * accum, workers,
                                      device, loader_gen)
                stats = train_one_epoch(ctx, state, loader)
                done = state.epoch + 1
                row = _epoch_row(state, opt, stats, world, folder, done)
                if done % cfg.val.every == 0 or done == cfg.train.epochs:
                    t_val = time.perf_counter()
                    with guard.safe():
                        metrics = validate_epoch(ema.module if ema is not None else raw, spec, codec, val, cfg, rank,
                                                 world, folder, done)
                        raw.train()
                    if main:
                        value = metrics.get(main_metric)
                        is_best = value is not None and (state.best["value"] is None or value > state.best["value"])
                        if is_best:
                            state.best.update(value=value, epoch=done)
                            checkpoints.save_best(ema.module if ema else raw, state.best)
                        row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
                        row["val_boxes"] = val.boxes  # what AP/PCKh was measured on (val_* heatmap metrics: GT boxes)
                        row["val_time_s"] = time.perf_counter() - t_val
                        last_metrics = metrics
                        emit(ValidationEnd(done, val.boxes, metrics, main_metric, is_best, dict(state.best)))
                    if world > 1:
                        obj = [state.best]
                        dist.broadcast_object_list(obj, src=0)
                        state.best = obj[0]
                if folder is not None:
                    folder.log_epoch(row)
                    if cfg.train.checkpoint_every and done % cfg.train.checkpoint_every == 0:
                        checkpoints.save_model(ema.module if ema else raw, f"epoch_{done:03d}.safetensors",
                                               {"epoch": done})
                state.rng = rng_state(loader_gen)  # after validation, whose loaders draw from the torch RNG
                state.epoch, state.step_in_epoch = done, 0
                checkpoints.save_resume(state, raw, ema, opt, sched, scaler)
                if folder is not None and cfg.train.curves and ("val_time_s" in row or done == cfg.train.epochs):
                    with guard.safe():
                        folder.plot_curves(main_metric, val.boxes)  # at each validation and at the end (~1 s each)
                emit(EpochEnd(state.epoch, row))
                guard.check()
        except KeyboardInterrupt:
            status = "interrupted"
            if guard.forced:
                say(f"stopped at once (a second {guard.signal_name}) during step {state.step + 1}: nothing saved; "
                    "the run folder keeps the state of the last completed epoch, if any (resume with --resume)")
            else:
                checkpoints.save_resume(state, raw, ema, opt, sched, scaler)
                if folder is not None and cfg.train.curves:
                    folder.plot_curves(main_metric, val.boxes)
                say(f"interrupted by {guard.signal_name}: saved the state of step {state.step} (resume with --resume)")
    if world > 1 and status == "finished":  # not after an error: a rank that failed must not be waited for
        dist.barrier()
    wall = time.perf_counter() - t_run
    emit(RunEnd(folder.path if folder else None, status, dict(state.best), state.step, wall, last_metrics))
    return TrainResult(folder.path if folder else None, status, state.step, state.epoch, state.best, last_metrics,
                       plan)


def _epoch_row(state: TrainState, opt: torch.optim.Optimizer, stats, world: int, folder: RunFolder | None,
               done: int) -> dict[str, Any]:
    """The metrics.csv row of epoch `done` (validation metrics are added by the loop): the mean step loss, the
    lr, throughput, data wait, time, skipped steps and each loss term's mean gradient share over its logged
    steps."""
    losses = [v for v in state.epoch_losses if math.isfinite(v)]
    el = stats.elapsed_s
    row = {"epoch": done, "step": state.step, "train_loss": float(np.mean(losses)) if losses else float("nan"),
           "lr": opt.param_groups[0]["lr"], "images_per_second": stats.images * world / max(el, 1e-9),
           "data_wait": stats.wait_s / max(el, 1e-9), "epoch_time_s": el, "skipped": state.skipped}
    if folder is not None:
        logged = [r for r in folder.steps if r.get("epoch") == done]
        for key in sorted({k for r in logged for k in r if k.startswith("grad_share_")}):
            vals = [r[key] for r in logged if isinstance(r.get(key), float) and math.isfinite(r[key])]
            row[key] = float(np.mean(vals)) if vals else float("nan")
    return row


def _dry_run(cfg, fwd, raw, opt, criterion: Criterion, train_ds, val: ValData, spec, device, amp_dtype, plan, log):
    """One training step and one validation batch, then the plan; nothing is written."""
    batch = next(iter(DataLoader(train_ds, batch_size=min(cfg.train.batch_size, len(train_ds)), shuffle=False)))
    raw.train()
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        hm = fwd(batch["image"].to(device))
    if hm.shape[1] != spec.num_joints or tuple(hm.shape[-2:]) != spec.heatmap_hw:
        raise ValueError(f"model output {tuple(hm.shape[1:])} does not match the spec's {spec.num_joints} joints "
                         f"at {spec.heatmap_hw} (H, W)")
    loss = criterion(hm.float(), batch)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sub = Subset(val.dataset, range(min(len(val.dataset), cfg.val.batch_size)))
    sub.transform = val.dataset.transform
    predict_dataset(TopDownPredictor(raw, spec, flip=cfg.val.flip), sub, batch_size=cfg.val.batch_size)
    log(f"dry run: one training step (loss {float(loss.detach()):.4g}) and one validation batch of {len(sub)} "
        "crops passed")
    return TrainResult(None, "dry-run", 0, 0, {}, {"dry_run_loss": float(loss.detach())}, plan)
