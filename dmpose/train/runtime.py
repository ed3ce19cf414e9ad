"""The machine a run trains on: process group, device, CPU threads and data-loader workers, process-wide CPU
tuning, mixed precision, seeding, and the environment record written to the run folder's env.json.

Nothing here changes what is computed, only where and how fast; each choice is logged by the loop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dmpose.kernels import select_loss_backend
from dmpose.kernels.cpu import cpu_kernel_status
from dmpose.train.config import TrainConfig
from dmpose.version import __version__

__all__ = ["distributed", "check_device", "select_device", "choose_threads_workers", "tune_cpu_process",
           "keep_freed_memory", "cpu_has_native_bf16", "autocast_dtype", "denormals_flushed", "seed_all",
           "loss_backend_note", "environment"]


def distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank): the process group of torchrun or `train.processes` (joined here when the
    environment names one), else (0, 1, 0)."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def check_device(text: str, what: str = "device") -> torch.device:
    """A device this machine has, or a ValueError in one line: which device was asked for (`what` names the option),
    what this torch build has, and how to get CUDA."""
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"{what} {text!r} is not a device: expected cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if torch.version.cuda is None:
            raise ValueError(f"{what} {text!r}: this torch build ({torch.__version__}) is CPU-only; install a CUDA "
                             "build of torch (pytorch.org's install selector gives the pip command) or use cpu")
        if not torch.cuda.is_available():
            raise ValueError(f"{what} {text!r}: torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable "
                             "GPU on this machine; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{what} {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"{what} {text!r}: MPS is not available on this machine; use cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{what} {text!r}: dmpose runs on cpu, cuda or mps, not {dev.type}")
    return dev


def select_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    """train.device (a bare "cuda" is this rank's GPU), else this rank's GPU when there is one, else the CPU."""
    if cfg.train.device is not None:
        dev = check_device(cfg.train.device, "train.device")
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
    torch threads left alone. Returns (threads, workers, the reason, for the log)."""
    cores = max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) // world)
    if device.type == "cpu":
        workers = (max(1, cores // 4) if cores >= 2 else 0) if cfg.train.workers == "auto" else cfg.train.workers
        threads = max(1, cores // 2) if cfg.train.threads == "auto" else cfg.train.threads
        if cfg.train.threads == "auto" and workers > 0:
            threads = max(1, cores - workers)
    else:
        workers = min(8, max(1, cores - 1)) if cfg.train.workers == "auto" else cfg.train.workers
        threads = torch.get_num_threads() if cfg.train.threads == "auto" else cfg.train.threads
    why = (f"{cores} core(s) per process, device {device.type}: {threads} torch thread(s), {workers} "
           f"data-loader worker(s) ({'auto' if cfg.train.threads == 'auto' else 'set'} threads, "
           f"{'auto' if cfg.train.workers == 'auto' else 'set'} workers)")
    return threads, workers, why


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


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
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


def denormals_flushed() -> bool:
    """Whether the CPU flushes denormal floats to zero now (torch has a setter, no getter)."""
    return float(torch.tensor([1e-39], dtype=torch.float32) * 0.5) == 0.0


def seed_all(seed: int) -> None:
    """Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loss_backend_note(cfg: TrainConfig, device: torch.device) -> str | None:
    """Which backend the DM loss (and its cross-entropy term) runs on for this config and device, and why (None
    for the MSE loss): e.g. "cpu (compiled C kernel dm_cpu-....so)" or "torch (no C compiler found ...)"."""
    if cfg.loss.name != "dm":
        return None
    chosen = select_loss_backend(cfg.loss.dm.backend, device)
    if device.type == "cpu" and cfg.loss.dm.backend in ("auto", "cpu"):
        return f"{chosen} ({cpu_kernel_status()[1]})"
    return f"{chosen} (loss.dm.backend: {cfg.loss.dm.backend})"


def git_commit() -> str | None:
    """The commit of the dmpose source tree, when it is a git checkout."""
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                           text=True, timeout=5)
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(cfg: TrainConfig, device: torch.device, world: int, threads: int, workers: int,
                amp_dtype: torch.dtype | None, why: str) -> dict[str, Any]:
    """The environment record (env.json): versions, commit, device, parallelism, precision, threads."""
    try:
        import triton  # optional: Linux (and a GPU) only

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"dmpose": __version__, "git_commit": git_commit(), "torch": torch.__version__,
            "triton": triton_version, "cuda": torch.version.cuda, "python": platform.python_version(),
            "platform": platform.platform(), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
            "world_size": world, "batch_per_device": cfg.train.batch_size, "accum_steps": cfg.train.accum_steps,
            "seed": cfg.train.seed, "deterministic": cfg.train.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "amp": str(amp_dtype) if amp_dtype else "off",
            "torch_threads": threads, "workers": workers, "threads_workers_choice": why}
