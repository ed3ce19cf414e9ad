"""Top-down inference helpers: the flip test and batched heatmap prediction (decoding is the codec's).

Flip test. The crop is mirrored along W, the model runs on it, and its heatmaps are mirrored back with the
left/right joints swapped. With dmpose's geometry the crop's outer pixel edges (-0.5 ... W_in-0.5) map onto
the heatmap's (-0.5 ... W_hm-0.5), pixel centres at integers, so mirroring the crop (x -> W_in-1-x) is
exactly mirroring the heatmap (x -> W_hm-1-x): the flipped-back heatmap lines up with the direct one and no
one-pixel "shift heatmap" correction is applied (that hack compensates a half-pixel bias we do not have).

Averaging is the codec's (`dmpose.codec.HeatmapCodec.average_flip`): of the maps it reads, so DM models average
the normalised distributions phi(H) / sum phi(H) of their supplier map (their heatmaps are defined only up
to the map's normalisation), MSE models their raw heatmaps, as the official HRNet code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from dmpose.codec import HeatmapCodec
from dmpose.heatmaps import check_heatmaps
from dmpose.keypoints import flip_permutation

__all__ = ["flip_back", "predict_heatmaps"]


def flip_back(heatmaps: Tensor, flip_pairs: Sequence[tuple[int, int]]) -> Tensor:
    """Mirror (B, K, H, W) heatmaps along W and swap each (left, right) joint pair.

    A keypoint at heatmap (x, y) of joint `left` ends up at (W-1-x, y) in channel `right`, and vice versa.
    """
    _, k, _, _ = check_heatmaps(heatmaps, "flip_back: heatmaps")
    try:
        perm = flip_permutation(flip_pairs, k)
    except ValueError as e:
        raise ValueError(f"flip_back: {e}") from None
    return heatmaps.flip(-1)[:, list(perm)]


@torch.no_grad()
def predict_heatmaps(
    model: Callable[[Tensor], Tensor],
    crops: Tensor,
    codec: HeatmapCodec,
    flip_pairs: Sequence[tuple[int, int]] | None = None,
    amp: bool = True,
) -> Tensor:
    """The maps the codec decodes, (B, K, H, W) float32, for a batch of input crops (B, 3, H_in, W_in): the
    codec's `read` of the model's heatmaps, averaged with the mirrored crops' (flipped back) when `flip_pairs`
    is given. Runs under float16 autocast on CUDA when `amp`."""
    use_amp = amp and crops.is_cuda
    with torch.autocast(device_type=crops.device.type, dtype=torch.float16, enabled=use_amp):
        heatmaps = model(crops).float()
        flipped = model(crops.flip(-1)).float() if flip_pairs is not None else None
    if flipped is None:
        return codec.read(heatmaps)
    return codec.average_flip(codec.read(heatmaps), codec.read(flip_back(flipped, flip_pairs)))
