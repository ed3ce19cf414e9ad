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
TrainingError naming the first failing rank and its error (`run_local_processes`).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import multiprocessing as mp
import os
import signal
import socket
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import torch.distributed as dist

__all__ = ["LOCAL_TIMEOUT_S", "free_port", "local_process_env", "run_local_processes"]

logger = logging.getLogger(__name__)

# The gloo timeout of a local run: how long a rank waits for the others at a collective (the longest gap between
# two is a validation's or a checkpoint's work on rank 0). A rank that dies closes its connections, which ends the
# wait at once; this bounds the rest (a rank that hangs).
LOCAL_TIMEOUT_S = 600
# How long the other ranks get to end after rank 0 failed before they are killed (they hold nothing to save:
# only rank 0 writes the run folder).
CHILD_GRACE_S = 5


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
           errors: Any, dry_run: bool = False) -> None:
    """A spawned rank: the same training, no callbacks; its error goes back to rank 0 through `errors`."""
    try:
        with local_process_env(rank, world, port):
            _init_group()
            try:
                train_fn(cfg, run_dir, resume, (), dry_run)
            finally:
                dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001  reported to rank 0, then the exit code says it failed
        errors.put((rank, _is_collective_error(e), f"{type(e).__name__}: {e}", traceback.format_exc()))
        raise SystemExit(1) from None


def _is_collective_error(e: BaseException) -> bool:
    """Whether `e` is a collective that failed because another rank went away (a consequence, not a cause)."""
    return isinstance(e, dist.DistError) or "Connection closed by peer" in str(e) or "Connection reset" in str(e)


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def run_local_processes(train_fn: Callable, cfg: Any, run_dir: Any, resume: Any, callbacks: Any,
                        error_type: type[Exception], dry_run: bool = False) -> Any:
    """`train_fn(cfg, run_dir, resume, callbacks, dry_run)` as rank 0 of `cfg.train.processes` local ranks (this
    process) while spawned children run ranks 1..N-1; returns rank 0's result.

    Any rank's error ends every rank within seconds (a rank that stops closes its connections, and the others'
    next collective fails), and one error is raised: the first cause, as `error_type` naming its rank ("training
    process R of N (train.processes) failed: ..."); the other ranks' consequent collective errors are dropped
    (their tracebacks go to the debug log). A child killed by a signal is named with the signal."""
    world = cfg.train.processes
    port = free_port()
    ctx = mp.get_context("spawn")  # not fork: the parent's OpenMP pool and torch state do not survive a fork
    errors = ctx.Queue()
    children = [ctx.Process(target=_child, args=(train_fn, cfg, run_dir, resume, r, world, port, errors, dry_run),
                            name=f"dmpose-rank{r}") for r in range(1, world)]
    for p in children:
        p.start()
    failure: BaseException | None = None
    try:
        with local_process_env(0, world, port):
            _init_group()
            try:
                result = train_fn(cfg, run_dir, resume, callbacks, dry_run)
            finally:
                dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001  re-raised below, after the children are accounted for
        failure = e
    for p in children:  # after a failure of rank 0 the others wait in a collective that can never complete
        p.join(timeout=None if failure is None else CHILD_GRACE_S)
        if p.is_alive():
            p.kill()  # not SIGTERM: a rank handles that as a request to stop at its next safe point
            p.join()
    reports = []
    while not errors.empty():
        reports.append(errors.get())
    for rank, _, message, tb in reports:
        logger.debug("training process %d of %d: %s\n%s", rank, world, message, tb)
    if isinstance(failure, KeyboardInterrupt):
        raise failure
    if failure is not None and not _is_collective_error(failure):  # rank 0 failed first, on its own
        raise error_type(f"training process 0 of {world} (train.processes) failed: {type(failure).__name__}: "
                         f"{failure}") from failure
    causes = sorted(r for r in reports if not r[1])
    if causes:
        rank, _, message, _ = causes[0]
        raise error_type(f"training process {rank} of {world} (train.processes) failed: {message}") from failure
    killed = [p for p in children if p.exitcode not in (0, 1)]
    if killed:
        p = killed[0]
        raise error_type(f"training process {children.index(p) + 1} of {world} (train.processes) ended: "
                         f"{_exit_reason(p.exitcode)}") from failure
    if failure is not None:
        raise error_type(f"training process 0 of {world} (train.processes) failed: {type(failure).__name__}: "
                         f"{failure}") from failure
    if reports:
        rank, _, message, _ = sorted(reports)[0]
        raise error_type(f"training process {rank} of {world} (train.processes) failed: {message}")
    return result
