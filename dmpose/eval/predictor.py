"""The top-down predictor: a model and its PoseSpec -> image-pixel keypoints and scores for a batch of crops.

For a batch of normalised input crops (B, 3, H_in, W_in) (built as the spec says: `spec.input_wh`,
`spec.normalisation`) and their image -> heatmap affines (B, 2, 3):

1. the model runs on the crops (float16 autocast on CUDA when `amp`) and, with the flip test, on the
   mirrored crops; the mirrored heatmaps are flipped back with the spec's flip pairs; the spec's codec
   (`dmpose.codec.build_codec`) reads each (the normalised distribution phi(H) / sum phi(H) of the supplier
   map the DM loss was trained on; the raw heatmaps of an MSE model) and averages the two; no one-pixel shift
   (see dmpose.eval.inference);
2. the codec decodes the read maps by the spec's decode rule ("2x2" or "argmax") into heatmap pixels plus
   a confidence;
3. the inverse of each image -> heatmap affine maps them to image pixels (`HeatmapCodec.to_image`).

The caller's model mode is left as it was (the predictor switches to eval mode inside a context that
restores every module's flag). Coordinates: pixel centres at integer coordinates in every space.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from dmpose.codec import build_codec
from dmpose.eval.inference import predict_heatmaps
from dmpose.spec import PoseSpec

__all__ = ["TopDownOutput", "TopDownPredictor", "eval_mode", "model_device"]


@dataclass
class TopDownOutput:
    """keypoints (B, K, 2) float64 image pixels (x, y); scores (B, K) float32 (the decoder's confidence);
    heatmaps (B, K, h, w) float32, the map that was decoded (flip-averaged when the flip test ran)."""

    keypoints: Tensor
    scores: Tensor
    heatmaps: Tensor

    def __len__(self) -> int:
        return len(self.keypoints)


def model_device(model: object) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without any)."""
    if isinstance(model, nn.Module):
        for t in (*model.parameters(), *model.buffers()):
            return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: object) -> Iterator[None]:
    """Run in eval mode and restore each submodule's training flag afterwards (also on error)."""
    if not isinstance(model, nn.Module):
        yield
        return
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


class TopDownPredictor:
    """Model + spec -> image-pixel keypoints and scores for crops (module docstring).

    model: the network (or any callable (B, 3, H_in, W_in) -> (B, K, h, w)); spec: its PoseSpec (decode
    rule, supplier map, flip permutation and heatmap size come from here); flip: run the flip test;
    device: where the crops go (default: the model's device); amp: float16 autocast on CUDA.
    """

    def __init__(self, model: object, spec: PoseSpec, flip: bool = True, device: str | torch.device | None = None,
                 *, amp: bool = True) -> None:
        if not isinstance(spec, PoseSpec):
            raise TypeError(f"spec must be a dmpose.spec.PoseSpec, got {type(spec).__name__}")
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        k = getattr(model, "num_joints", None)
        if isinstance(k, int) and k != spec.num_joints:
            raise ValueError(f"the model has {k} joints but the spec's keypoint set "
                             f"'{spec.keypoints.name}' has {spec.num_joints}")
        self.model, self.spec, self.flip, self.amp = model, spec, bool(flip), bool(amp)
        self.device = torch.device(device) if device is not None else model_device(model)
        self.codec = build_codec(spec)

    def __repr__(self) -> str:
        return (f"TopDownPredictor({self.spec.arch}, {self.spec.keypoints.name}, input_wh={self.spec.input_wh}, "
                f"decode={self.spec.decode}, flip={self.flip})")

    def _check_output(self, heatmaps: Tensor, b: int) -> None:
        expected = (b, self.spec.num_joints, *self.spec.heatmap_hw)
        if tuple(heatmaps.shape) != expected:
            raise ValueError(f"the model's heatmaps are {tuple(heatmaps.shape)} (B, K, H, W) but the spec says "
                             f"{expected} (heatmap_wh={self.spec.heatmap_wh}): the checkpoint's spec "
                             "(heatmap_size) does not describe this model")

    @torch.no_grad()
    def heatmaps(self, images: Tensor) -> Tensor:
        """The maps (B, K, h, w) float32 the decode reads (the codec's, flip-averaged with the flip test), for
        normalised crops."""
        if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be a (B, 3, H, W) tensor, got {getattr(images, 'shape', type(images))}")
        w_in, h_in = self.spec.input_wh
        if tuple(images.shape[-2:]) != (h_in, w_in):
            raise ValueError(f"images are {tuple(images.shape[-2:])} (H, W) but the spec's input_wh is "
                             f"{self.spec.input_wh} (W, H)")
        images = images.to(self.device, non_blocking=True)
        with eval_mode(self.model):
            maps = predict_heatmaps(self.model, images, self.codec,
                                    self.spec.keypoints.flip_pairs if self.flip else None, self.amp)
        self._check_output(maps, len(images))
        return maps

    def predict(self, images: Tensor, affines_hm: Tensor | np.ndarray) -> TopDownOutput:
        """Keypoints in image pixels (B, K, 2) float64, scores (B, K), and the decoded heatmaps."""
        m = affines_hm.detach().cpu().double().numpy() if isinstance(affines_hm, Tensor) else np.asarray(affines_hm,
                                                                                                        np.float64)
        if m.shape != (len(images), 2, 3):
            raise ValueError(f"affines_hm must be (B, 2, 3) = {(len(images), 2, 3)}, got {m.shape}")
        hm = self.heatmaps(images)
        coords_hm, conf = self.codec.decode_maps(hm)
        keypoints = torch.from_numpy(self.codec.to_image(coords_hm, m))
        return TopDownOutput(keypoints, conf.float().cpu(), hm)
