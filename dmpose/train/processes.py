"""Data parallel over local CPU processes (`train.processes: N`): one command, N DDP ranks on one machine.

On a CPU a small model's step gains little from a second torch thread (intra-op parallelism over small
convolutions: 1.12x over a whole run of the default job on 2 cores) but nearly 2x from a second process that
runs its own half of the batch (benchmarks/RESULTS.md, tenth session). So `dmpose train` can start the ranks
itself instead of needing `torchrun`: this process is rank 0 (it logs, draws the progress and writes the run
folder), ranks 1..N-1 are spawned children, all joined over gloo on 127.0.0.1 as under torchrun
(`train.batch_size` is per process; the effective batch is N x batch_size). Each rank's torch threads and
data-loader workers come from its share of the cores (`choose_threads_workers`).

Not on a GPU: a CUDA run with `processes: N` trains in one process with N x batch_size images per step (the same
effective batch and steps; several GPUs are torchrun's). Under torchrun (WORLD_SIZE set) N > 1 is refused.
A rank that fails ends the run: the others' next collective sees its connection close, and rank 0 raises a
TrainingError naming the rank and its error.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing as mp
import os
import socket
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import torch.distributed as dist

__all__ = ["LOCAL_TIMEOUT_S", "free_port", "local_process_env", "run_local_processes"]

# The gloo timeout of a local run: how long a rank waits for the others at a collective (the longest gap between
# two is a validation's or a checkpoint's work on rank 0). A rank that dies closes its connections, which ends the
# wait at once; this bounds the rest (a rank that hangs).
LOCAL_TIMEOUT_S = 600


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a local process group's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_process_env(rank: int, world: int, port: int) -> Iterator[None]:
    """torchrun's variables for `rank` of `world` on 127.0.0.1:`port`, put back as they were on exit."""
    values = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world), "RANK": str(rank),
              "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world)}
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _init_group() -> None:
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=LOCAL_TIMEOUT_S))


def _child(train_fn: Callable, cfg: Any, run_dir: Any, resume: Any, rank: int, world: int, port: int,
           errors: Any) -> None:
    """A spawned rank: the same training, no callbacks; its error goes back to rank 0 through `errors`."""
    try:
        with local_process_env(rank, world, port):
            _init_group()
            try:
                train_fn(cfg, run_dir, resume, (), False)
            finally:
                dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001  reported to rank 0, then the exit code says it failed
        errors.put((rank, f"{type(e).__name__}: {e}", traceback.format_exc()))
        raise SystemExit(1) from None


def run_local_processes(train_fn: Callable, cfg: Any, run_dir: Any, resume: Any, callbacks: Any,
                        error_type: type[Exception]) -> Any:
    """`train_fn(cfg, run_dir, resume, callbacks, False)` as rank 0 of `cfg.train.processes` local ranks (this
    process) while spawned children run ranks 1..N-1; returns rank 0's result. A failed rank raises
    `error_type` naming it (its traceback in the message's last lines)."""
    world = cfg.train.processes
    port = free_port()
    ctx = mp.get_context("spawn")  # not fork: the parent's OpenMP pool and torch state do not survive a fork
    errors = ctx.Queue()
    children = [ctx.Process(target=_child, args=(train_fn, cfg, run_dir, resume, r, world, port, errors),
                            name=f"dmpose-rank{r}") for r in range(1, world)]
    for p in children:
        p.start()
    failure: BaseException | None = None
    try:
        with local_process_env(0, world, port):
            _init_group()
            try:
                result = train_fn(cfg, run_dir, resume, callbacks, False)
            finally:
                dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001  re-raised below, after the children are accounted for
        failure = e
    for p in children:
        p.join(timeout=None if failure is None else 30)
        if p.is_alive():
            p.terminate()
            p.join()
    reports = []
    while not errors.empty():
        reports.append(errors.get())
    if reports:
        rank, message, tb = sorted(reports)[0]
        raise error_type(f"training process {rank} of {world} (train.processes) failed: {message}\n"
                         f"{tb.rstrip()}") from failure
    if failure is not None:
        raise failure
    bad = [(p.name, p.exitcode) for p in children if p.exitcode != 0]
    if bad:
        raise error_type(f"training process(es) {bad} of {world} (train.processes) ended with a non-zero exit code")
    return result
