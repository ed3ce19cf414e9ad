"""The one benchmark harness: a header saying where and how a run was made, and markdown tables.

Every script in benchmarks/ prints `header()` first (device, torch / triton / dmpose versions, CPU threads,
load average, the command line) and its results with `markdown_table` (or `Table`), so the numbers in
RESULTS.md can be pasted as they are and always say what produced them.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

__all__ = ["Table", "device_name", "header", "interleaved_medians", "markdown_table", "versions"]


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    import torch

    import dmpose

    return {"python": platform.python_version(), "torch": torch.__version__, "triton": _version("triton"),
            "dmpose": dmpose.__version__}


def device_name(device: str | None = None) -> str:
    """`cuda:0 (NVIDIA H200, 132 SMs)` or `cpu (model name, N cores)`."""
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        return f"{dev} ({props.name}, {props.multi_processor_count} SMs)"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu ({cpu}, {os.cpu_count()} cores)"


def interleaved_medians(steps: dict[Any, Callable[[], None]], repeats: int) -> dict[Any, float]:
    """Median seconds of each named step over `repeats` runs, the steps interleaved (one of each in turn, so
    that a change in the machine's load falls on all alike); the first round only warms allocators and caches.
    A step must finish its own work (synchronise a GPU) before it returns."""
    import statistics
    import time

    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(repeats + 1):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            if i:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def header(title: str, device: str | None = None, **settings: Any) -> str:
    """The run's header as markdown: title, device, versions, threads, load, settings and the command."""
    import torch

    v = versions()
    lines = [f"## {title}", "",
             f"- device: {device_name(device)}",
             "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
             f"- threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}",
             f"- load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"]
    if settings:
        lines.append("- settings: " + ", ".join(f"{k}={val}" for k, val in settings.items()))
    lines += [f"- command: `{shlex.join(['python', *sys.argv])}`", ""]
    return "\n".join(lines)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None,
                   title: str | None = None) -> str:
    """A markdown table; `align` is one character per column, "l" or "r" (default: first left, rest right)."""
    align = align or "l" + "r" * (len(columns) - 1)
    marks = {"l": "---", "r": "---:"}
    out = [f"### {title}", ""] if title else []
    out.append("| " + " | ".join(str(c) for c in columns) + " |")
    out.append("|" + "|".join(marks[a] for a in align) + "|")
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


class Table:
    """Rows collected as they are measured, printed once as a markdown table."""

    def __init__(self, *columns: str, title: str | None = None, align: str | None = None):
        self.columns, self.title, self.align, self.rows = columns, title, align, []

    def add_row(self, *cells: Any) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"row has {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(cells)

    def __str__(self) -> str:
        return markdown_table(self.columns, self.rows, self.align, self.title)

    def print(self) -> None:
        print(self, flush=True)


def skipped_without_cuda(dry_run: bool, stage: str, plan: dict, json_path: str | None) -> bool:
    """For the GPU scripts: True (after saying why, and writing {"skipped", "plan"} to `json_path`) when this
    is a dry run or there is no CUDA device; False when the GPU stage should run."""
    import json

    import torch

    if not dry_run and torch.cuda.is_available():
        return False
    reason = "dry run" if dry_run else "no CUDA device"
    if not torch.cuda.is_available():
        print(f"no CUDA device: GPU stages skipped ({stage})")
    print(f"skipped ({reason}); plan: {plan}")
    if json_path:
        Path(json_path).write_text(json.dumps({"skipped": reason, "plan": plan}))
    return True
