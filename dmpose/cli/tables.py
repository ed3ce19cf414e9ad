"""The rich tables the commands print: COCO AP in the paper's columns, MPII PCKh in the paper's Table 3."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from rich.markup import escape
from rich.table import Table

from dmpose.eval.coco import PAPER_COLUMNS
from dmpose.eval.mpii import PCKH_COLUMNS, PCKhResult

__all__ = ["coco_metrics_table", "pckh_table"]


def _plain(text: str | None) -> str | None:
    return None if text is None else escape(text)


def coco_metrics_table(metrics: Mapping[str, float], title: str | None = None) -> Table:
    """A rich Table with the paper's columns (AP, AP50, AP75, APM, APL, AR) on COCO's own 0-1 scale (as training,
    best.json and the results files report them); '-' for -1. `title` is plain text (not rich markup)."""
    table = Table(title=_plain(title))
    for name in PAPER_COLUMNS:
        table.add_column(name, justify="right")
    table.add_row(*("-" if metrics[name] < 0 else f"{metrics[name]:.3f}" for name in PAPER_COLUMNS))
    return table


def pckh_table(results: Sequence[PCKhResult], title: str | None = None) -> Table:
    """A rich Table: one row per threshold ("PCKh@0.5", ...), the paper's columns Head ... Mean. `title` is
    plain text (not rich markup)."""
    table = Table(title=_plain(title))
    table.add_column("Metric")
    for name in PCKH_COLUMNS:
        table.add_column(name, justify="right")
    for r in results:
        table.add_row(f"PCKh@{r.threshold:g}", *("-" if math.isnan(v) else f"{v:.1f}" for v in r.columns.values()))
    return table
