"""Solver and kernel constants, and the one read of ``TRITON_INTERPRET``: defined here once, imported by
the torch solver (`dmpose.sinkhorn`), the Triton kernels (`dmpose.kernels`), the loss options
(`dmpose.spec.DMLossOptions`) and the compile report. Importing this module imports neither torch nor triton.
"""

from __future__ import annotations

import os
from typing import Literal, get_args

__all__ = ["Backend", "LossBackend", "GradMode", "BACKENDS", "LOSS_BACKENDS", "DEFAULT_BLOCK", "DEFAULT_WARPS",
           "GRAD_MODES", "HEATMAP_DTYPE_NAMES", "MAX_BLOCK", "SHIFTED_MIN_EPS", "triton_interpret"]

#: Below this eps the row-shifted kernel (entries >= exp(-sqrt(2)/eps)) may underflow in fp32: the torch
#: solver's ``method="auto"`` and the Triton kernel switch to the log domain there.
SHIFTED_MIN_EPS = 0.05
#: Gradient modes of the DM loss and of both solvers.
GradMode = Literal["exact", "envelope"]
#: Kernel backends (decode): "auto" (Triton for CUDA tensors, torch otherwise), "torch", "triton".
Backend = Literal["auto", "torch", "triton"]
#: The losses' backends add "cpu", the compiled C kernel for CPU tensors (`dmpose.kernels.cpu`), which "auto"
#: picks on the CPU where it compiles.
LossBackend = Literal[Backend, "cpu"]
GRAD_MODES: tuple[str, ...] = get_args(GradMode)
BACKENDS: tuple[str, ...] = get_args(Backend)
LOSS_BACKENDS: tuple[str, ...] = get_args(LossBackend)
#: The heatmap dtypes the Triton kernels take (names of torch dtypes; float64 goes to the torch path).
HEATMAP_DTYPE_NAMES = ("float16", "bfloat16", "float32")
#: The most pixels per streamed Triton block (4096 spills on sm_90).
MAX_BLOCK = 1024
#: Default Triton launch: 512 pixels per block, 8 warps (2 pixels per thread): 76-80 registers on sm_90,
#: 3 programs per SM. 1024/8 needs 105-128 registers (2 per SM). See benchmarks/bench_loss_triton.py --configs.
DEFAULT_BLOCK = 512
DEFAULT_WARPS = 8


def triton_interpret() -> bool:
    """Whether ``TRITON_INTERPRET=1`` is set now (Triton reads it when ``@triton.jit`` decorators run)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
