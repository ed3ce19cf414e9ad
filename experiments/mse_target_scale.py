"""Experiment (docs/dm-training.md, fourth session), a control for the dynamic-range reading: the MSE baseline
with its Gaussian targets multiplied by A (peak A instead of 1). If the normalised-map losses are slow because
the network must build a large contrast in H (several nats between the joint and the background) at Adam's
fixed step, MSE asked for a contrast of A should slow down the same way.

    DMPOSE_MSE_AMPLITUDE=8 python experiments/mse_target_scale.py dmpose/configs/study/base.yaml \\
        --set loss.name=mse --set loss.mse.flavour=official --out DIR

(any `dmpose train` arguments work; the validation decode is the MSE's argmax, which a scale does not change.)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dmpose.codec import GaussianCodec  # noqa: E402

AMPLITUDE = float(os.environ.get("DMPOSE_MSE_AMPLITUDE", "8"))
_encode = GaussianCodec.encode


def scaled_encode(self, keypoints_hm, visible):
    out = _encode(self, keypoints_hm, visible)
    return {**out, "heatmaps": out["heatmaps"] * AMPLITUDE}


if __name__ == "__main__":
    GaussianCodec.encode = scaled_encode
    from dmpose.cli import app

    app(args=["train", *sys.argv[1:]])
