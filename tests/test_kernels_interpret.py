"""The Triton kernels against the float64 reference, run in separate processes.

Triton reads TRITON_INTERPRET when the ``@triton.jit`` decorators run, i.e. when dmpose's kernel
modules are imported; the rest of the suite imports dmpose without it. So the checks in
tests/kernels/interpret_checks.py run in a subprocess with TRITON_INTERPRET=1 (CPU tensors), and,
when a GPU is present, once more natively on CUDA.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
INNER = REPO / "tests" / "kernels" / "interpret_checks.py"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def run_inner_pytest(path: Path, interpret: bool) -> subprocess.CompletedProcess:
    """``python -m pytest path`` in a fresh process, with TRITON_INTERPRET set to 1 or removed."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-W", "ignore::RuntimeWarning",
           str(path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, f"inner run failed:\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
    assert " passed" in proc.stdout, f"inner run passed nothing:\n{proc.stdout[-4000:]}"
    return proc


def test_kernels_under_the_interpreter_on_cpu():
    run_inner_pytest(INNER, interpret=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: native kernel run skipped")
def test_kernels_natively_on_cuda():
    run_inner_pytest(INNER, interpret=False)
