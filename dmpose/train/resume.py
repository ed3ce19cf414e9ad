"""What a resume may change: a resumed run is the same run, so every key that shaped it so far must stay as it was;
only the keys in `SAFE_ON_RESUME` may change, and `train.epochs` only upwards from the epochs already trained.

The learning-rate schedule after `train.epochs` is extended is the schedule of the longer run: from the resume
step on, the lr at step s is the one a run configured with the new length from the start would use at s (the
schedule is a pure function of the step and the total, `dmpose.train.optim.lr_factor`). Allowed changes are
recorded in the run folder's config_changes.jsonl with the step at which they took effect.
"""

from __future__ import annotations

from typing import Any

import yaml

from dmpose.train.config import ConfigError, TrainConfig, config_to_yaml

__all__ = ["SAFE_ON_RESUME", "config_changes", "check_resume"]

#: Keys that do not shape the run so far: how it is logged, validated, drawn, checkpointed, where it runs and with
#: how many threads/workers (which never change a run: dmpose.train.datasets), and how long it trains.
SAFE_ON_RESUME = ("name", "out_root", "train.epochs", "train.log_every", "train.workers", "train.threads",
                  "train.curves", "train.checkpoint_every", "train.device", "train.max_bad_steps", "val.every",
                  "val.crops", "val.batch_size", "data.cache_images")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_changes(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every leaf key whose value differs (keys only one side has included)."""
    a, b = _flat(old), _flat(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_resume(cfg: TrainConfig, state_config: str | None, epochs_done: int, source: str) -> list[tuple]:
    """The changes `cfg` makes to the run saved in the resume state `source` (its config YAML `state_config`),
    after checking them: a ConfigError names every key that may not change, and a train.epochs below the epochs
    already trained."""
    if not state_config:
        return []
    old = yaml.safe_load(state_config)
    new = yaml.safe_load(config_to_yaml(cfg))
    changes = config_changes(old, new)
    refused = [c for c in changes if c[0] not in SAFE_ON_RESUME]
    if refused:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in refused[:8])
        raise ConfigError(f"{source}: a resume continues the same run, and these keys shaped it so far: {shown}. "
                          f"Start a new run for them (without --resume); a resume may change only "
                          f"{', '.join(SAFE_ON_RESUME)}")
    if cfg.train.epochs < epochs_done:
        raise ConfigError(f"{source}: train.epochs {cfg.train.epochs} is below the {epochs_done} epochs already "
                          "trained (a resume may extend a run, not shorten it)")
    return changes
