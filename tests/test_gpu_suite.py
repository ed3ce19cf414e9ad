"""benchmarks/gpu_suite.sh and its Python stages parse and take their no-GPU path (fast; no GPU needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_suite_scripts_parse():
    for script in ("benchmarks/gpu_suite.sh", "benchmarks/gpu_wheels.sh"):
        subprocess.run(["bash", "-n", script], cwd=REPO, check=True)


def test_python_stages_dry_run_exit_0():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    code = ("import runpy, sys\nsys.path.insert(0, 'benchmarks')\n"
            "for s, a in [('benchmarks/bench_loss_triton.py', ['--dry-run', '--problems', '544,2176']),\n"
            "             ('benchmarks/gpu_correctness.py', ['--dry-run']),\n"
            "             ('benchmarks/bench_train_gpu.py', ['--dry-run'])]:\n"
            "    sys.argv = [s, *a]\n"
            "    try:\n"
            "        runpy.run_path(s, run_name='__main__')\n"
            "    except SystemExit as e:\n"
            "        assert not e.code, (s, e.code)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("skipped (dry run)") == 3, out.stdout
