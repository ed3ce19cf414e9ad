"""Every Triton kernel compiles ahead of time for sm_90 (no GPU needed): see tests/kernels/compile_checks.py.

Runs in a subprocess without TRITON_INTERPRET (compiled and interpreted kernels cannot share a process).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INNER = REPO / "tests" / "kernels" / "compile_checks.py"


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-rs", "-p", "no:cacheprovider", str(INNER)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, f"compile checks failed:\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
    if " passed" not in proc.stdout:
        reasons = re.findall(r"SKIPPED \[\d+\] [^:]+:\d+: (.*)", proc.stdout)
        pytest.skip("; ".join(reasons) or "compile checks were skipped")
