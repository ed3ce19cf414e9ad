"""Triton kernels (GPU, or the CPU under ``TRITON_INTERPRET=1``) with the same signatures as the torch code.

Nothing here imports triton at module level: ``import dmpose`` works without a GPU and without triton.
The kernel modules (``dmpose.kernels.sinkhorn``, ``dmpose.kernels.decode``) import triton and define
``@triton.jit`` functions, so import them only after :func:`triton_status` says yes. Triton reads
``TRITON_INTERPRET`` when those decorators run, i.e. when the kernel modules are first imported.
"""

from __future__ import annotations

import importlib.util
import logging
import sys

import torch

from dmpose.constants import BACKENDS, LOSS_BACKENDS, triton_interpret
from dmpose.kernels.cpu import cpu_kernel_status

__all__ = ["triton_status", "select_backend", "select_loss_backend", "KERNEL_MODULES"]

logger = logging.getLogger(__name__)
_WARNED: set[str] = set()
KERNEL_MODULES = ("dmpose.kernels.sinkhorn", "dmpose.kernels.decode")


_interpret_env = triton_interpret


def triton_status(device: torch.device | str) -> tuple[bool, str]:
    """Whether the Triton kernels can run on tensors living on ``device``, and why not.

    True for CUDA devices when triton is importable, and for the CPU when ``TRITON_INTERPRET=1`` is set
    (Triton's interpreter) and the kernel modules were not already imported without it.
    """
    dev = torch.device(device)
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    if dev.type == "cuda":
        if any(getattr(sys.modules.get(m), "INTERPRETED", False) for m in KERNEL_MODULES):
            return False, "dmpose's Triton kernels were imported with TRITON_INTERPRET=1 (interpreter only)"
        return True, "triton on CUDA"
    if dev.type == "cpu":
        if not _interpret_env():
            return False, "Triton runs on CPU tensors only under the interpreter: set TRITON_INTERPRET=1"
        for name in KERNEL_MODULES:
            module = sys.modules.get(name)
            if module is not None and not module.INTERPRETED:
                return False, (f"{name} was imported before TRITON_INTERPRET=1 was set; the variable must be "
                               "set before dmpose's kernel modules are imported")
        return True, "triton interpreter on the CPU (TRITON_INTERPRET=1)"
    return False, f"no Triton backend for device type {dev.type!r}"


def select_backend(backend: str, device: torch.device | str) -> str:
    """Resolve ``backend="auto"|"torch"|"triton"`` for tensors on ``device`` to ``"torch"`` or ``"triton"``.

    auto: Triton for CUDA tensors, torch otherwise (a CUDA machine without triton, e.g. Windows, gets
    torch with a logged warning, once per reason). Asking for "triton" where
    it cannot run raises ``ValueError`` with the reason; there is never a silent fallback.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    dev = torch.device(device)
    ok, reason = triton_status(dev)
    if backend == "triton":
        if not ok:
            raise ValueError(f"backend='triton' cannot run on device {dev}: {reason}")
        return "triton"
    if dev.type == "cuda":
        if ok:
            return "triton"
        if reason not in _WARNED:
            _WARNED.add(reason)
            logger.warning("backend='auto': Triton cannot run on %s (%s); using the torch path", dev, reason)
    return "torch"


def select_loss_backend(backend: str, device: torch.device | str) -> str:
    """Resolve a loss's ``backend`` (`LOSS_BACKENDS`) for tensors on ``device`` to "torch", "triton" or "cpu".

    As `select_backend`, plus "cpu": the compiled C kernel for CPU tensors (`dmpose.kernels.cpu`, compiled on
    first use). auto picks it on the CPU where it compiles, else torch (the reason logged once); asking for
    "cpu" where it cannot run raises ``ValueError`` with the reason.
    """
    if backend not in LOSS_BACKENDS:
        raise ValueError(f"backend must be one of {LOSS_BACKENDS}, got {backend!r}")
    dev = torch.device(device)
    if backend in ("auto", "cpu") and dev.type == "cpu":
        ok, reason = cpu_kernel_status()
        if ok:
            return "cpu"
        if backend == "cpu":
            raise ValueError(f"backend='cpu' cannot run: {reason}")
        if reason not in _WARNED:
            _WARNED.add(reason)
            logger.warning("backend='auto': the compiled CPU kernel is not available (%s); using the torch path",
                           reason)
        return "torch"
    if backend == "cpu":
        raise ValueError(f"backend='cpu' takes CPU tensors, got tensors on {dev}")
    return select_backend(backend, dev)
