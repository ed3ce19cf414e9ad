"""Top-down inference helpers: the flip test and batched heatmap prediction (decode to image pixels is the codec's).

Flip test. The crop is mirrored along W, the model runs on it, and its heatmaps are mirrored back with the
left/right joints swapped. With dmpose's geometry the crop's outer pixel edges (-0.5 ... W_in-0.5) map onto
the heatmap's (-0.5 ... W_hm-0.5), pixel centres at integers, so mirroring the crop (x -> W_in-1-x) is
exactly mirroring the heatmap (x -> W_hm-1-x): the flipped-back heatmap lines up with the direct one and no
one-pixel "shift heatmap" correction is applied (that hack compensates a half-pixel bias we do not have).

Averaging. For DM-trained models (decode "2x2") the heatmaps are defined only up to a positive scale, so
the two *normalised distributions* relu(H) / sum(relu(H)) are averaged; for MSE-trained models (decode
"argmax") the raw heatmaps are averaged, as the official HRNet code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from dmpose.data.keypoints import flip_permutation
from dmpose.decode import decode_2x2, decode_argmax
from dmpose.loss import check_heatmaps

__all__ = ["DECODERS", "average_flip", "flip_back", "normalise_heatmaps", "predict_heatmaps"]

# Decode rule name (as stored in checkpoints) -> decoder returning (coords (B,K,2) heatmap px, conf (B,K)).
DECODERS: dict[str, Callable[[Tensor], tuple[Tensor, Tensor]]] = {"2x2": decode_2x2, "argmax": decode_argmax}


def _check_decode(decode: str) -> None:
    if decode not in DECODERS:
        raise ValueError(f"unknown decode rule {decode!r}; expected one of {sorted(DECODERS)}")


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


def normalise_heatmaps(heatmaps: Tensor) -> Tensor:
    """relu(H) / sum(relu(H)) per (B, K) map, in float32; a map with no positive mass becomes all zeros."""
    r = heatmaps.float().clamp_min(0)
    total = r.sum(dim=(-2, -1), keepdim=True)
    return torch.where(total > 0, r / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(r))


def average_flip(heatmaps: Tensor, flipped_back: Tensor, decode: str) -> Tensor:
    """Combine the direct heatmaps with the flipped crop's heatmaps *after* `flip_back`.

    decode "2x2" (DM): mean of the normalised distributions; "argmax" (MSE): mean of the raw heatmaps.
    """
    _check_decode(decode)
    if heatmaps.shape != flipped_back.shape:
        raise ValueError(f"average_flip: shapes differ, {tuple(heatmaps.shape)} vs {tuple(flipped_back.shape)}")
    if decode == "2x2":
        return 0.5 * (normalise_heatmaps(heatmaps) + normalise_heatmaps(flipped_back))
    return 0.5 * (heatmaps.float() + flipped_back.float())


@torch.no_grad()
def predict_heatmaps(
    model: Callable[[Tensor], Tensor],
    crops: Tensor,
    decode: str,
    flip_pairs: Sequence[tuple[int, int]] | None = None,
    amp: bool = True,
) -> Tensor:
    """Heatmaps (B, K, H, W) float32 for a batch of input crops (B, 3, H_in, W_in), with the flip test when
    `flip_pairs` is given. Runs under float16 autocast on CUDA when `amp`."""
    _check_decode(decode)
    use_amp = amp and crops.is_cuda
    with torch.autocast(device_type=crops.device.type, dtype=torch.float16, enabled=use_amp):
        heatmaps = model(crops).float()
        if flip_pairs is None:
            return heatmaps
        flipped = model(crops.flip(-1)).float()
    return average_flip(heatmaps, flip_back(flipped, flip_pairs), decode)
