"""TensorBoard logging (`logging.tensorboard: true`): a training callback that writes the run's metrics as scalars
to RUN/tensorboard, with the tensorboard extra installed (`pip install 'dmpose[tensorboard]'`).

It is one of the trainer's callbacks (dmpose.train.events), like the command line's display: W&B, MLflow or any
other logger is the same shape, `callback(event)`, passed to `train(cfg, callbacks=[...])`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dmpose.train.events import EpochEnd, RunEnd, StepEnd

__all__ = ["TensorBoardCallback"]


class TensorBoardCallback:
    """Logged steps as `train/<key>` at their step, epochs as `epoch/<key>` and validations as `val/<key>` at the
    epoch's last step; the writer is closed when the run ends."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter  # the optional tensorboard extra
        except ImportError as e:
            raise ImportError("logging.tensorboard needs the tensorboard extra: pip install 'dmpose[tensorboard]'") \
                from e
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def _scalars(self, prefix: str, row: dict[str, Any], step: int) -> None:
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                    and key not in ("step", "epoch"):
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def __call__(self, event) -> None:
        if isinstance(event, StepEnd) and event.logged is not None:
            self._scalars("train", event.logged, event.step)
        elif isinstance(event, EpochEnd):
            step = int(event.row.get("step", event.epoch))
            val = {k: v for k, v in event.row.items() if k in ("AP", "PCKh@0.5") or k.startswith(("AP", "AR", "val_"))}
            self._scalars("epoch", {k: v for k, v in event.row.items() if k not in val}, step)
            self._scalars("val", val, step)
            self.writer.flush()
        elif isinstance(event, RunEnd):
            self.writer.close()
