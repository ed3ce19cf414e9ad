"""The trainer: `dmpose train CONFIG.yaml` (dmpose.cli.train) on top of `train(cfg)`.

config.py (schema, loading, overrides), loop.py (the loop), optim.py (optimiser, schedule, EMA),
state.py (resume state), run_folder.py (the run folder), validate.py (validation, DDP gathering),
events.py (typed progress events). Nothing here imports rich or typer.
"""

from dmpose.train.config import ConfigError, TrainConfig, load_config
from dmpose.train.loop import TrainingError, TrainResult, train

__all__ = ["TrainConfig", "ConfigError", "load_config", "train", "TrainResult", "TrainingError"]
