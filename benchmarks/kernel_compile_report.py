"""Compile every dmpose Triton kernel ahead of time for an NVIDIA target (no GPU needed) and print
registers per thread and spills as a markdown table (the "Kernel compile" section of RESULTS.md).

    python benchmarks/kernel_compile_report.py [--arch 90]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness import header

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description="AOT-compile dmpose's Triton kernels and report registers/spills")
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for sm_90 (H100/H200)")
    args = parser.parse_args()
    os.environ.pop("TRITON_INTERPRET", None)
    import triton

    from dmpose.kernels.compile_report import compile_all, markdown_table

    print(header("Kernel compile (ahead of time)", "cpu", target=f"sm_{args.arch}"))
    builds = compile_all(arch=args.arch, full=True)
    print(f"triton {triton.__version__}, target sm_{args.arch} (GPUTarget('cuda', {args.arch}, 32)); "
          f"registers and spills from triton's own ptxas -v log, stack/shared from cuobjdump --dump-resource-usage\n")
    print(markdown_table(builds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
