"""dmpose's cache folder: $DMPOSE_CACHE, by default $XDG_CACHE_HOME/dmpose (~/.cache/dmpose). It holds the
generated synthetic datasets (`dmpose.data.synthetic`) and the compiled CPU kernel (`dmpose.kernels.cpu`)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """$DMPOSE_CACHE, else $XDG_CACHE_HOME/dmpose, else ~/.cache/dmpose (not created here)."""
    cache = os.environ.get("DMPOSE_CACHE")
    if cache:
        return Path(cache)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dmpose"
