"""Pose networks (HRNet, HRFormer, SimpleBaseline), their registry and the checkpoint format.

All networks map an image batch (B, 3, H, W) to heatmaps (B, K, H/4, W/4). The heatmap covers the
same image region as the input: heatmap pixel centres sit at integer coordinates and the heatmap's
outer edges (-0.5 ... W_hm - 0.5) correspond to the input's outer edges (-0.5 ... W_in - 0.5).
"""

from dmpose.models import hrformer, hrnet, simple_baseline  # noqa: F401  (registers the architectures)
from dmpose.models.checkpoint import (
    load_model,
    load_pose_model,
    read_checkpoint_meta,
    read_checkpoint_spec,
    save_checkpoint,
)
from dmpose.models.registry import build_from_spec, build_model, list_models, register_model

__all__ = ["build_model", "build_from_spec", "list_models", "register_model", "save_checkpoint", "load_model",
           "load_pose_model", "read_checkpoint_meta", "read_checkpoint_spec"]
