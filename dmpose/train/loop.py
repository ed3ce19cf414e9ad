"""The training loop: `train(cfg)` builds data, model and optimiser from a `TrainConfig`, trains, validates
and writes the run folder. One function to read top to bottom, in the style of nanoGPT's train.py and the
PyTorch ImageNet example; the pieces it calls live in config.py, optim.py, state.py, run_folder.py and
validate.py. Progress goes out as typed events (events.py) to the callbacks; nothing here prints.

Resume: the state is written at the end of every epoch and when the run is interrupted (Ctrl-C, handled
by dmpose.train.interrupt so that it stops at a safe point, or a KeyboardInterrupt from a callback), with the
RNG states and the epoch's step losses of the last completed step. Resuming re-creates the
epoch's sampler order (seed + epoch) and skips the samples already used, so with `train.workers: 0` a
resumed run is bit for bit the uninterrupted one on the CPU, mid-epoch included (docs/training.md).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import subprocess
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

import dmpose
from dmpose.train.config import ConfigError, TrainConfig, check_paths, config_to_yaml
from dmpose.train.criterion import Criterion, gradient_shares
from dmpose.train.events import EpochEnd, Message, RunEnd, RunStart, StepEnd, ValidationEnd
from dmpose.train.interrupt import InterruptGuard
from dmpose.train.optim import ModelEMA, build_optimizer, build_scheduler, effective_lr
from dmpose.train.run_folder import RunFolder
from dmpose.train.state import load_state, rng_state, save_state, set_rng_state
from dmpose.train.validate import ValData, heatmap_pass, validate

__all__ = ["train", "TrainingError", "TrainResult", "build_datasets", "loss_fn"]


DEAD_WARN_SHARE = 0.25  # warn when this share of a logged batch's labelled heatmaps has no positive pixel


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a run of non-finite steps); the message names the step."""


@dataclass
class TrainResult:
    run_dir: Path | None
    status: str  # finished, interrupted, dry-run
    steps: int
    epochs_done: int
    best: dict[str, Any]
    last_metrics: dict[str, Any]
    plan: dict[str, Any]


# ---- pieces -----------------------------------------------------------------------------------------

def loss_fn(cfg: TrainConfig, heatmaps: torch.Tensor, batch: dict, device, progress: float = 0.0) -> torch.Tensor:
    """The training loss of `cfg` on one batch (`Criterion`, built here for one call; the loop builds it once)."""
    return Criterion(cfg, device)(heatmaps, batch, progress)


def _distributed() -> tuple[int, int, int]:
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend)
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def _device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.train.device is not None:
        dev = torch.device(cfg.train.device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", local_rank)
        return dev
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def choose_threads_workers(cfg: TrainConfig, device: torch.device, world: int) -> tuple[int, int, str]:
    """CPU: data-loader workers and torch threads share the cores, and a loss step was measured 10-25x
    slower with 2 torch threads while a worker was busy (and 2x slower with another process on the second
    core); so on the CPU one worker per four cores (at least one from 2 cores up) and the other cores' worth
    of torch threads: 1 thread + 1 worker on a 2-core machine, where the worker hides the augmentation
    (benchmarks/RESULTS.md). With `train.workers: 0` one thread per two cores. GPU: workers for the data,
    torch threads left alone."""
    cores = max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) // world)
    why = []
    if device.type == "cpu":
        workers = (max(1, cores // 4) if cores >= 2 else 0) if cfg.train.workers == "auto" else cfg.train.workers
        threads = max(1, cores // 2) if cfg.train.threads == "auto" else cfg.train.threads
        if cfg.train.threads == "auto" and workers > 0:
            threads = max(1, cores - workers)
    else:
        workers = min(8, max(1, cores - 1)) if cfg.train.workers == "auto" else cfg.train.workers
        threads = torch.get_num_threads() if cfg.train.threads == "auto" else cfg.train.threads
    why.append(f"{cores} core(s) per process, device {device.type}: {threads} torch thread(s), {workers} "
               f"data-loader worker(s) ({'auto' if cfg.train.threads == 'auto' else 'set'} threads, "
               f"{'auto' if cfg.train.workers == 'auto' else 'set'} workers)")
    return threads, workers, "; ".join(why)


def tune_cpu_process() -> str:
    """Process-wide CPU settings that the training step was measured faster with (benchmarks/RESULTS.md):
    denormal floats flushed to zero (a trained model's backward makes them, and every operation on them is
    slow on x86), and glibc's allocator told to keep freed memory (`keep_freed_memory`). Returns what was
    set, for the log."""
    done = ["denormals flushed to zero" if torch.set_flush_denormal(True) else "denormal flushing unsupported"]
    if keep_freed_memory():
        done.append("malloc keeps freed memory")
    return "; ".join(done)


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """glibc only (False elsewhere): serve blocks up to 32 MiB from the heap and keep up to 1 GiB of freed
    heap, so that a step's large activations reuse the last step's pages instead of fresh mmap pages whose
    first touch faults: by default about 6.7k page faults (26 MB) and 10-13 ms of system time per step of the
    default job (hrnet_tiny, batch 32, DM + CE), measured by the process's fault count and system time over
    18 steps (its wall time on this VM varies more than that)."""
    import ctypes
    import ctypes.util

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(libc.mallopt(m_mmap_threshold, mmap_threshold)) and bool(libc.mallopt(m_trim_threshold,
                                                                                   trim_threshold))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (AVX512-BF16 or AMX), where oneDNN's bf16
    convolutions are faster than fp32 (measured 1.6x for hrnet_tiny's step, 2.2x with channels_last); without
    it oneDNN has no fast bf16 path (not measured here), so auto stays fp32 there."""
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def _amp(cfg: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a grad scaler). auto: bf16 on a GPU that supports it (fp16 with the
    scaler otherwise), bf16 on a CPU with native bf16, fp32 on other CPUs."""
    mode = cfg.train.amp
    if mode == "auto" and device.type == "cpu":
        mode = "bf16" if cpu_has_native_bf16() else "off"
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None, False
    if mode == "auto":
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return (torch.bfloat16, False) if mode == "bf16" else (torch.float16, True)


def build_datasets(cfg: TrainConfig, spec) -> tuple[Any, ValData]:
    """The training dataset (augmented) and the validation data (boxes, GT, evaluator inputs)."""
    from dmpose.data.coco import DEFAULT_DETECTION_FILE, CocoKeypoints, coco_paths
    from dmpose.data.mpii import MpiiKeypoints, load_mpii_gt
    from dmpose.data.synthetic import ensure_synthetic
    from dmpose.data.transforms import TopDownTransform
    from dmpose.eval.evaluate import GT_BOXES_LABEL

    d = cfg.data
    t_train = TopDownTransform.from_spec(spec, encode_targets=True, augment=d.augment, padding=d.padding)
    t_val = TopDownTransform.from_spec(spec, padding=d.padding)
    root = d.root
    if d.dataset == "synthetic":
        root = ensure_synthetic(root, d.synthetic.n_train, d.synthetic.n_val, d.synthetic.seed)
    if d.dataset == "mpii":
        root = Path(root) if root is not None else None
        ann = d.train_ann or root / "annot" / f"{d.train_split}.json"
        train_ds = MpiiKeypoints(ann, d.train_images or root / "images", t_train, subset=d.subset,
                                 cache_images=d.cache_images)
        vann = d.val_ann or root / "annot" / f"{d.val_split}.json"
        val_ds = MpiiKeypoints(vann, d.val_images or root / "images", t_val, cache_images=d.cache_images)
        gt = load_mpii_gt(d.mpii_gt or root / "annot" / f"gt_{d.val_split}.mat")
        if d.val_subset is not None:  # the first N persons: the evaluator's ground-truth rows are 0..N-1
            val_ds.records = val_ds.records[: d.val_subset]
            gt = {k: v[: d.val_subset] for k, v in gt.items()}
        return train_ds, ValData(val_ds, val_ds, "mpii", "annotated person boxes", gt)
    ann, images = coco_paths(root, d.train_split) if root is not None else (None, None)
    train_ds = CocoKeypoints(d.train_ann or ann, d.train_images or images, t_train, subset=d.subset,
                             cache_images=d.cache_images)
    vann, vimages = coco_paths(root, d.val_split) if root is not None else (None, None)
    vann, vimages = d.val_ann or vann, d.val_images or vimages
    gt_ds = CocoKeypoints(vann, vimages, t_val, subset=d.val_subset, cache_images=d.cache_images)
    if cfg.val.boxes == "gt":
        val_ds, label = gt_ds, GT_BOXES_LABEL
    else:
        det = d.detections or (Path(root) / DEFAULT_DETECTION_FILE if root is not None else None)
        if det is None or not Path(det).is_file():
            raise FileNotFoundError(f"data.detections: detection file not found: {det} (set data.detections, "
                                    "or val.boxes=gt to validate on the annotated boxes)")
        val_ds = CocoKeypoints(vann, vimages, t_val, detections=det, subset=d.val_subset,
                               cache_images=d.cache_images)
        label = f"detections ({Path(det).name})"
    return train_ds, ValData(val_ds, gt_ds, "coco", label, _coco_gt(vann, set(gt_ds.images)))


def _coco_gt(ann_file: Path, image_ids: set[int]):
    """pycocotools COCO of the validated images only (a subset must not count the others as missed)."""
    import contextlib as cl
    import io
    import json

    from pycocotools.coco import COCO

    data = json.loads(Path(ann_file).read_text())
    data["images"] = [im for im in data["images"] if int(im["id"]) in image_ids]
    data["annotations"] = [a for a in data.get("annotations", []) if int(a["image_id"]) in image_ids]
    coco = COCO()
    coco.dataset = data
    with cl.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def build_model(cfg: TrainConfig, spec, log) -> nn.Module:
    from dmpose.models import build_model as build

    model = build(spec.arch, num_joints=spec.num_joints)
    if cfg.model.pretrained is not None:
        from dmpose.models.convert import convert_state_dict, read_foreign_state_dict

        loaded, report = convert_state_dict(read_foreign_state_dict(cfg.model.pretrained), spec.arch,
                                            num_joints=spec.num_joints, partial=True)
        model.load_state_dict(loaded.state_dict())
        log(f"initialised from {cfg.model.pretrained} ({report})")
    else:
        log("no model.pretrained: training from scratch")
    return model


def _final_layer(model: nn.Module, k: int) -> nn.Module | None:
    layer = getattr(model, "final_layer", None)
    if isinstance(layer, nn.Conv2d):
        return layer
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == k]
    return convs[-1] if convs else None


class _SkipSampler(Sampler):
    """The first `skip` indices of `base` left out (mid-epoch resume)."""

    def __init__(self, base: Sampler, skip: int):
        self.base, self.skip = base, skip

    def __iter__(self):
        it = iter(self.base)
        for _ in range(self.skip):
            next(it, None)
        return it

    def __len__(self) -> int:
        return max(len(self.base) - self.skip, 0)


@torch.no_grad()
def step_diagnostics(hm: torch.Tensor, batch: dict, codec, grad_hm: torch.Tensor | None,
                     final: nn.Module | None) -> dict[str, float]:
    """The DM-training issue's per-step diagnostics on this batch: share of labelled joints whose raw
    heatmap has no positive value, share of the decoded map's mass within 2 px of the dot, median
    localisation error (heatmap px), gradient norm reaching the heatmaps, final layer bias mean/grad norm.
    The decoded map is the one the spec's codec reads (`dmpose.suppliers.decoded_map`; relu-normalised
    for the mass share of an MSE model's raw map)."""
    from dmpose.eval.inference import DECODERS
    from dmpose.train.validate import decoded_and_normalised

    hm = hm.detach().float()
    kp = batch["keypoints_hm"].to(hm.device)
    lab = batch["weights"].to(hm.device) > 0
    out: dict[str, float] = {}
    n = int(lab.sum())
    if n:
        out["dead_share"] = float((hm.amax(dim=(-2, -1)) <= 0)[lab].float().mean())
        src, p = decoded_and_normalised(hm, codec)
        h, w = hm.shape[-2:]
        ys = torch.arange(h, device=hm.device, dtype=torch.float32).view(1, 1, h, 1)
        xs = torch.arange(w, device=hm.device, dtype=torch.float32).view(1, 1, 1, w)
        near = ((xs - kp[..., 0, None, None]) ** 2 + (ys - kp[..., 1, None, None]) ** 2) <= 4.0
        out["mass_2px"] = float((p * near).sum(dim=(-2, -1))[lab].mean())
        coords, _ = DECODERS[codec.decode](src)
        out["median_error_hm"] = float(torch.linalg.vector_norm(coords - kp, dim=-1)[lab].median())
    if grad_hm is not None:
        out["grad_norm_heatmaps"] = float(grad_hm.float().norm())
    if final is not None and final.bias is not None:
        out["final_bias_mean"] = float(final.bias.mean())
        if final.bias.grad is not None:
            out["grad_norm_final_bias"] = float(final.bias.grad.norm())
    return out


def loss_backend_note(cfg: TrainConfig, device: torch.device) -> str | None:
    """Which backend the DM loss (and its cross-entropy term) runs on for this config and device, and why (None
    for the MSE loss): e.g. "cpu (compiled C kernel dm_cpu-....so)" or "torch (no C compiler found ...)"."""
    if cfg.loss.name != "dm":
        return None
    from dmpose.kernels import select_loss_backend

    chosen = select_loss_backend(cfg.loss.dm.backend, device)
    if device.type == "cpu" and cfg.loss.dm.backend in ("auto", "cpu"):
        from dmpose.kernels.cpu import cpu_kernel_status

        return f"{chosen} ({cpu_kernel_status()[1]})"
    return f"{chosen} (loss.dm.backend: {cfg.loss.dm.backend})"


def _git_commit() -> str | None:
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(dmpose.__file__).parent, capture_output=True,
                           text=True, timeout=5)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _env(cfg, device, world, threads, workers, amp_dtype, why) -> dict[str, Any]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"dmpose": dmpose.__version__, "git_commit": _git_commit(), "torch": torch.__version__,
            "triton": triton_version, "cuda": torch.version.cuda, "python": platform.python_version(),
            "platform": platform.platform(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "world_size": world, "batch_per_device": cfg.train.batch_size, "accum_steps": cfg.train.accum_steps,
            "seed": cfg.train.seed, "deterministic": cfg.train.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "amp": str(amp_dtype) if amp_dtype else "off",
            "torch_threads": threads, "workers": workers, "threads_workers_choice": why}


# ---- the loop ---------------------------------------------------------------------------------------

def denormals_flushed() -> bool:
    """Whether the CPU flushes denormal floats to zero now (torch has a setter, no getter)."""
    return float(torch.tensor([1e-39], dtype=torch.float32) * 0.5) == 0.0


def train(cfg: TrainConfig, run_dir: str | Path | None = None, resume: str | Path | None = None,
          callbacks: Iterable = (), dry_run: bool = False) -> TrainResult:
    """Train `cfg`. run_dir: the run folder (created); resume: a last.state.pt (or a run folder holding one).
    The process-wide denormal flushing the CPU step is tuned with is put back as it was when this returns."""
    flushed = denormals_flushed()
    callbacks = list(callbacks)
    try:
        cfg, local = _local_processes(cfg, callbacks, dry_run)
        if local:
            from dmpose.train.processes import run_local_processes

            return run_local_processes(_train, cfg, run_dir, resume, callbacks, TrainingError)
        return _train(cfg, run_dir, resume, callbacks, dry_run)
    finally:
        torch.set_flush_denormal(flushed)


def _local_processes(cfg: TrainConfig, callbacks: Iterable, dry_run: bool) -> tuple[TrainConfig, bool]:
    """`train.processes` (dmpose.train.processes): whether to start local ranks, and the config to train. A
    dry run, or a GPU run, trains in one process (a GPU one with processes x batch_size images per step)."""
    n = cfg.train.processes
    if n == 1:
        return cfg, False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"train.processes: {n} starts its own local processes, but this process is already one "
                          f"of {os.environ['WORLD_SIZE']} ranks (torchrun): set --set train.processes=1")
    note, device = None, _device(cfg, 0)
    if device.type != "cpu":
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(
            update={"processes": 1, "batch_size": n * cfg.train.batch_size})})
        note = (f"train.processes: {n} runs on the CPU; on {device} one process trains with "
                f"{cfg.train.batch_size} images per step (the same effective batch; several GPUs: torchrun)")
    elif dry_run:
        note = f"dry run in one process (training starts train.processes = {n})"
    if note:
        for cb in callbacks:
            cb(Message(note, "info"))
    return cfg, note is None


def _train(cfg: TrainConfig, run_dir, resume, callbacks: Iterable, dry_run: bool) -> TrainResult:
    callbacks = list(callbacks)
    rank, world, local_rank = _distributed()
    main = rank == 0

    def emit(event) -> None:
        if main:
            for cb in callbacks:
                cb(event)

    def log(text: str, level: str = "info") -> None:
        emit(Message(text, level))

    check_paths(cfg)
    spec = cfg.pose_spec()
    device = _device(cfg, local_rank)
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
    import random

    def seed_all(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    seed_all(cfg.train.seed)  # the same initial weights on every rank

    # data
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

    # model, optimiser, AMP
    model = build_model(cfg, spec, log)
    if cfg.model.sync_bn and world > 1:
        if device.type == "cpu":  # torch's SyncBatchNorm is GPU-only
            from dmpose.train.syncbn import convert_cpu_sync_bn

            model = convert_cpu_sync_bn(model)
        else:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    fmt = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    raw = model  # the network itself: checkpoints, EMA and validation use it
    opt = build_optimizer(raw, cfg.optim, lr)
    sched = build_scheduler(opt, cfg.schedule, steps_per_epoch, total_steps, lr)
    amp_dtype, use_scaler = _amp(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    ema = ModelEMA(raw, cfg.train.ema) if cfg.train.ema else None
    seed_all(cfg.train.seed + rank)  # augmentation streams differ per rank
    if world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    fwd = torch.compile(model) if cfg.model.compile else model
    final = _final_layer(raw, spec.num_joints)
    # a skipped step must leave the model as it was: its forward pass has already moved the batch-norm
    # running statistics (NaN ones, when the heatmaps were not finite), so they are put back
    buffers = list(raw.buffers())
    buffers_before = [b.clone() for b in buffers]
    main_metric = "PCKh@0.5" if val.kind == "mpii" else "AP"
    criterion = Criterion(cfg, device)

    # state
    epoch, step, step_in_epoch = 0, 0, 0
    best: dict[str, Any] = {"metric": main_metric, "value": None, "epoch": None,
                            "weights": "ema" if ema else "raw", "boxes": val.boxes}
    skipped = 0
    resumed_losses: list[float] = []  # the losses of the resumed epoch's steps done before the state was saved
    if resume is not None:
        path = Path(resume)
        path = path / "last.state.pt" if path.is_dir() else path
        st = load_state(path, map_location=device)
        raw.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        scaler.load_state_dict(st["scaler"])
        if ema is not None and st.get("ema") is not None:
            ema.load_state_dict(st["ema"])
        epoch, step, step_in_epoch = st["epoch"], st["step"], st["step_in_epoch"]
        best, skipped = st["best"], st["skipped"]
        resumed_losses = list(st.get("epoch_losses", []))
        set_rng_state(st["rng"][rank] if isinstance(st["rng"], list) else st["rng"], loader_gen)
        log(f"resumed from {path}: epoch {epoch}, step {step}" + (f" (+{step_in_epoch} in the epoch)"
                                                                   if step_in_epoch else ""))
    plan = {"epochs": cfg.train.epochs, "start_epoch": epoch, "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps, "start_step": step, "train_samples": len(train_ds),
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
        folder.write_json("env.json", {**_env(cfg, device, world, threads, workers, amp_dtype, why),
                                       "loss_backend": loss_backend, "plan": plan})
        if resume is not None:
            folder.load_metrics(step, epoch)
    emit(RunStart(folder.path if folder else None, plan))

    config_yaml = config_to_yaml(cfg)

    def save_model(module: nn.Module, name: str, extra: dict) -> None:
        from dmpose.models import save_checkpoint

        meta = {"loss": {"name": cfg.loss.name, **(cfg.loss.dm.model_dump() if cfg.loss.name == "dm"
                                                   else {"sigma": spec.codec.sigma, "flavour": spec.codec.flavour})},
                "config": config_yaml, **extra}
        save_checkpoint(module, folder.file(name), spec=spec, meta=meta)

    last_rng = [rng_state(loader_gen)]

    def save_resume(ep: int, in_epoch: int) -> None:
        rngs = last_rng[0]
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, rngs)
            rngs = gathered
        if not main or folder is None:
            return
        save_model(raw, "last.safetensors", {"epoch": ep, "step": step})
        if ema is not None:
            save_model(ema.module, "last_ema.safetensors", {"epoch": ep, "step": step})
        save_state(folder.file("last.state.pt"), {
            "model": raw.state_dict(), "ema": ema.state_dict() if ema else None, "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "epoch": ep, "step": step,
            "step_in_epoch": in_epoch, "epoch_losses": list(epoch_losses) if in_epoch else [], "best": best,
            "skipped": skipped, "rng": rngs, "config": config_yaml})

    def run_validation(ep: int) -> dict[str, Any]:
        module = ema.module if ema is not None else raw
        module.eval()
        metrics, _ = validate(module, spec, val, cfg.val.flip, cfg.val.batch_size, cfg.val.oks_threshold, rank, world)
        extra, fig = heatmap_pass(module, val.gt_dataset, spec.codec, cfg.loss.dm, cfg.val.batch_size,
                                  cfg.val.crops if main and folder else 0) if main else ({}, {})
        raw.train()
        metrics.update(extra)
        if main and folder is not None and cfg.val.crops and len(fig.get("images", ())):
            mean = np.asarray(spec.normalisation.mean, np.float32)[:, None, None]
            std = np.asarray(spec.normalisation.std, np.float32)[:, None, None]
            imgs = np.clip((fig["images"] * std + mean) * 255, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
            s = spec.output_stride
            to_in = lambda p: (p + 0.5) * s - 0.5  # noqa: E731  heatmap px -> input px (pixel centres at integers)
            folder.write_val_crops(ep, imgs, fig["heatmaps"], to_in(fig["pred"]), to_in(fig["gt"]), fig["weights"],
                                   "GT boxes")
        return metrics

    if dry_run:
        return _dry_run(cfg, fwd, raw, opt, train_ds, val, spec, device, amp_dtype, plan, log)

    # ---- epochs -----------------------------------------------------------------------------------
    status, last_metrics = "finished", {}
    smoothed = None
    t_run = time.perf_counter()
    bad_in_row = 0
    warned_dead = 0  # the last epoch whose dead-heatmap warning was given
    raw.train()
    epoch_losses: list[float] = []  # the logged loss of each step of the epoch so far (metrics.csv train_loss)
    # Ctrl-C stops at a safe point (dmpose.train.interrupt); under DDP every rank at the same step
    guard = InterruptGuard(coordinated=world > 1).__enter__()
    try:
        while epoch < cfg.train.epochs:
            sampler.set_epoch(epoch)
            train_ds.transform.augment_seed = (cfg.train.seed, epoch)  # the same crops with any workers
            loader_gen.manual_seed(cfg.train.seed * 1_000_003 + epoch)
            skip = step_in_epoch * bs * accum
            loader = DataLoader(train_ds, batch_size=bs, sampler=_SkipSampler(sampler, skip) if skip else sampler,
                                num_workers=workers, pin_memory=device.type == "cuda", drop_last=True,
                                generator=loader_gen, persistent_workers=False)
            t_epoch, wait, seen = time.perf_counter(), 0.0, 0
            loss_sum = 0.0
            epoch_losses = resumed_losses if step_in_epoch else []
            bad_heatmaps = False  # a micro-batch of this optimiser step had non-finite heatmaps
            micro_target = (steps_per_epoch - step_in_epoch) * accum
            it = iter(loader)
            for micro in range(micro_target):
                t0 = time.perf_counter()
                with guard.safe():
                    batch = next(it)
                wait += time.perf_counter() - t0
                last = (micro + 1) % accum == 0
                # logged: every log_every-th step, and the run's first (its gradient shares are reported)
                log_now = last and ((step + 1) % cfg.train.log_every == 0 or step == 0)
                x = batch["image"].to(device, non_blocking=True).to(memory_format=fmt)
                if micro % accum == 0 and buffers:
                    torch._foreach_copy_(buffers_before, buffers)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    hm = fwd(x)
                hm = hm.float()
                grad_hm: list[torch.Tensor] = []
                shares: dict[str, float] = {}
                # one sum (0.08 ms; the element-wise test 2.8 ms per step here) settles the finite case; a sum
                # that overflows on finite values falls through to the exact test
                if bool(torch.isfinite(hm.sum())) or bool(torch.isfinite(hm).all()):
                    terms = criterion.terms(hm, batch, step / max(total_steps, 1))
                    loss = criterion.total(terms, hm)
                    if log_now and hm.requires_grad:
                        shares = gradient_shares(terms, hm)  # before the hook below, which would see these too
                else:  # a NaN loss with zero gradients: the step is skipped and counted (DDP still all-reduces)
                    bad_heatmaps = True
                    loss = hm.nan_to_num(0.0, 0.0, 0.0).sum() * 0.0 + float("nan")
                if log_now and hm.requires_grad:
                    hm.register_hook(grad_hm.append)  # the gradient reaching the heatmaps
                sync = contextlib.nullcontext() if (last or world == 1) else model.no_sync()
                with sync:
                    scaler.scale(loss / accum).backward()
                loss_sum += float(loss.detach())
                seen += len(x)
                if not last:
                    continue
                # one optimiser step
                scaler.unscale_(opt)
                gnorm = torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.optim.grad_clip or float("inf"))
                step_loss = loss_sum / accum
                flags = torch.tensor([math.isfinite(step_loss), bool(torch.isfinite(gnorm)), not guard.requested],
                                     dtype=torch.float32)
                if world > 1:
                    dist.all_reduce(flags, op=dist.ReduceOp.MIN)
                    guard.agree(not bool(flags[2]))  # a Ctrl-C on any rank: all stop at the next data wait
                    mean_loss = torch.tensor([step_loss], dtype=torch.float64)
                    dist.all_reduce(mean_loss)  # the logged loss is the global batch's, as in one process
                    step_loss = float(mean_loss) / world
                loss_ok, grad_ok = bool(flags[0]), bool(flags[1])
                # the hook saw d(scale x loss / accum) / dH: report d loss / dH
                g_hm = grad_hm[0] * (accum / scaler.get_scale() if use_scaler else accum) if grad_hm else None
                diag = {**step_diagnostics(hm, batch, spec.codec, g_hm, final), **shares} \
                    if log_now and not bad_heatmaps else {}
                if loss_ok and (grad_ok or use_scaler):
                    scaler.step(opt)  # the fp16 scaler itself skips a step with inf/NaN gradients
                    bad_in_row = 0
                    if ema is not None:
                        ema.update(raw, step)
                else:
                    skipped += 1
                    bad_in_row += 1
                    if buffers:
                        torch._foreach_copy_(buffers, buffers_before)
                    what = "heatmaps" if bad_heatmaps else "loss" if not loss_ok else "gradient"
                    log(f"step {step + 1}: non-finite {what}; step skipped ({skipped} so far)", "warning")
                    if bad_in_row >= cfg.train.max_bad_steps:
                        raise TrainingError(f"{bad_in_row} non-finite steps in a row, the last at step {step + 1} "
                                            f"(epoch {epoch + 1}): training stopped (lower optim.lr, set "
                                            "optim.grad_clip, or train.amp=off)")
                scaler.update()
                opt.zero_grad(set_to_none=True)
                bad_heatmaps = False
                cur_lr = opt.param_groups[0]["lr"]
                with warnings.catch_warnings():  # a skipped step still advances the schedule (steps are counted)
                    warnings.simplefilter("ignore", UserWarning)
                    sched.step()
                step += 1
                step_in_epoch += 1
                last_rng[0] = rng_state(loader_gen)
                if not math.isfinite(step_loss):
                    step_loss_shown = float("nan")
                else:
                    step_loss_shown = step_loss
                    smoothed = step_loss if smoothed is None else 0.9 * smoothed + 0.1 * step_loss
                epoch_losses.append(step_loss_shown)
                el = time.perf_counter() - t_epoch
                ips = seen * world / max(el, 1e-9)
                steps_left = total_steps - step
                eta = steps_left * el / max(step_in_epoch - (skip // (bs * accum)), 1)
                row = None
                if log_now:
                    row = {"step": step, "epoch": epoch + 1, "loss": step_loss_shown, "lr": cur_lr,
                           "images_per_second": ips, "data_wait": wait / max(el, 1e-9), "grad_norm": float(gnorm),
                           "skipped": skipped, **diag}
                    if folder is not None:
                        folder.log_step(row)
                    if step == 1 and shares:
                        log("gradient shares at step 1 (||d term / dH|| over their sum): " + ", ".join(
                            f"{k.removeprefix('grad_share_')} {v:.3f}" for k, v in shares.items()
                            if k.startswith("grad_share_")))
                    # only relu maps die: a softplus map of an all-negative H is still a live distribution
                    if (spec.codec.supplier_map == "relu" and diag.get("dead_share", 0.0) >= DEAD_WARN_SHARE
                            and warned_dead < epoch + 1):
                        warned_dead = epoch + 1  # once per epoch: the failure is reported, never hidden
                        log(f"step {step}: {diag['dead_share']:.0%} of the labelled heatmaps have no positive "
                            f"pixel (suppliers 'relu'); their loss falls back to softmax(H). "
                            "The paper's relu form dies this way from scratch: see docs/training.md "
                            "(loss.dm.suppliers: softplus avoids it)", "warning")
                loss_sum = 0.0
                emit(StepEnd(epoch + 1, step, total_steps, step_loss_shown, smoothed if smoothed is not None
                             else float("nan"), cur_lr, ips, wait / max(el, 1e-9), eta, skipped, row))
            # end of epoch (`epoch` counts completed epochs: it moves on once this one's validation is done, so
            # a state saved during the validation resumes into it)
            el = time.perf_counter() - t_epoch
            losses = [v for v in epoch_losses if math.isfinite(v)]
            done = epoch + 1
            row = {"epoch": done, "step": step, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                   "lr": opt.param_groups[0]["lr"], "images_per_second": seen * world / max(el, 1e-9),
                   "data_wait": wait / max(el, 1e-9), "epoch_time_s": el, "skipped": skipped}
            if folder is not None:  # the epoch's mean gradient share of each loss term (its logged steps)
                logged = [r for r in folder.steps if r.get("epoch") == done]
                for key in sorted({k for r in logged for k in r if k.startswith("grad_share_")}):
                    vals = [r[key] for r in logged if isinstance(r.get(key), float) and math.isfinite(r[key])]
                    row[key] = float(np.mean(vals)) if vals else float("nan")
            if done % cfg.val.every == 0 or done == cfg.train.epochs:
                t_val = time.perf_counter()
                with guard.safe():
                    metrics = run_validation(done)
                if main:
                    value = metrics.get(main_metric)
                    is_best = value is not None and (best["value"] is None or value > best["value"])
                    if is_best:
                        best.update(value=value, epoch=done)
                        save_model(ema.module if ema else raw, "best.safetensors",
                                   {"epoch": done, main_metric: value})
                        folder.write_json("best.json", best)
                    row.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
                    row["val_boxes"] = val.boxes  # what AP/PCKh was measured on (the val_* heatmap metrics: GT boxes)
                    row["val_time_s"] = time.perf_counter() - t_val
                    last_metrics = metrics
                    emit(ValidationEnd(done, val.boxes, metrics, main_metric, is_best, dict(best)))
                if world > 1:
                    obj = [best]
                    dist.broadcast_object_list(obj, src=0)
                    best = obj[0]
            if main and folder is not None:
                folder.log_epoch(row)
                if cfg.train.checkpoint_every and done % cfg.train.checkpoint_every == 0:
                    save_model(ema.module if ema else raw, f"epoch_{done:03d}.safetensors", {"epoch": done})
            last_rng[0] = rng_state(loader_gen)  # after validation, whose loaders draw from the torch RNG
            epoch, step_in_epoch = done, 0
            save_resume(epoch, 0)
            if main and folder is not None and cfg.train.curves and ("val_time_s" in row or epoch == cfg.train.epochs):
                with guard.safe():
                    folder.plot_curves(main_metric, val.boxes)  # at each validation and at the end (~1 s a figure)
            emit(EpochEnd(epoch, row))
            guard.check()
    except KeyboardInterrupt:
        status = "interrupted"
        if guard.forced:
            log(f"stopped at once (a second Ctrl-C) during step {step + 1}: nothing saved; the run folder keeps "
                "the state of the last completed epoch, if any (resume with --resume)", "warning")
        else:
            save_resume(epoch, step_in_epoch)
            if main and folder is not None and cfg.train.curves:
                folder.plot_curves(main_metric, val.boxes)
            log(f"interrupted: saved the state of step {step} (resume with --resume)", "warning")
    finally:
        guard.__exit__(None, None, None)
        if world > 1 and status != "interrupted":
            dist.barrier()
    wall = time.perf_counter() - t_run
    emit(RunEnd(folder.path if folder else None, status, dict(best), step, wall, last_metrics))
    return TrainResult(folder.path if folder else None, status, step, epoch, best, last_metrics, plan)


def _dry_run(cfg, fwd, raw, opt, train_ds, val: ValData, spec, device, amp_dtype, plan, log):
    """One training step and one validation batch, then the plan; nothing is written."""
    from torch.utils.data import Subset

    from dmpose.eval.predictor import TopDownPredictor
    from dmpose.eval.runner import predict_dataset

    batch = next(iter(DataLoader(train_ds, batch_size=min(cfg.train.batch_size, len(train_ds)), shuffle=False)))
    raw.train()
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        hm = fwd(batch["image"].to(device))
    if hm.shape[1] != spec.num_joints or tuple(hm.shape[-2:]) != spec.heatmap_hw:
        raise ValueError(f"model output {tuple(hm.shape[1:])} does not match the spec's {spec.num_joints} joints "
                         f"at {spec.heatmap_hw} (H, W)")
    loss = loss_fn(cfg, hm.float(), batch, device)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sub = Subset(val.dataset, range(min(len(val.dataset), cfg.val.batch_size)))
    sub.transform = val.dataset.transform
    predict_dataset(TopDownPredictor(raw, spec, flip=cfg.val.flip), sub, batch_size=cfg.val.batch_size)
    log(f"dry run: one training step (loss {float(loss.detach()):.4g}) and one validation batch of {len(sub)} "
        "crops passed")
    return TrainResult(None, "dry-run", 0, 0, {}, {"dry_run_loss": float(loss.detach())}, plan)
