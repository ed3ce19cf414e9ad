"""Top-down inference helpers: the flip test and batched heatmap prediction (decode to image pixels is the codec's).

Flip test. The crop is mirrored along W, the model runs on it, and its heatmaps are mirrored back with the
left/right joints swapped. With dmpose's geometry the crop's outer pixel edges (-0.5 ... W_in-0.5) map onto
the heatmap's (-0.5 ... W_hm-0.5), pixel centres at integers, so mirroring the crop (x -> W_in-1-x) is
exactly mirroring the heatmap (x -> W_hm-1-x): the flipped-back heatmap lines up with the direct one and no
one-pixel "shift heatmap" correction is applied (that hack compensates a half-pixel bias we do not have).

Averaging. For DM-trained models (decode "2x2") the heatmaps are defined only up to a positive scale, so
the two *normalised distributions* of the supplier map, phi(H) / sum phi(H) (`dmpose.suppliers`), are
averaged; for MSE-trained models (decode
"argmax") the raw heatmaps are averaged, as the official HRNet code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from dmpose.data.keypoints import flip_permutation
from dmpose.decode import decode_2x2, decode_argmax
from dmpose.loss import check_heatmaps
from dmpose.suppliers import decoded_map

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


def normalise_heatmaps(heatmaps: Tensor, supplier_map: str = "relu", beta: float = 1.0) -> Tensor:
    """phi(H) / sum phi(H) per (B, K) map in float32 (`dmpose.suppliers.decoded_map`); a map with no
    positive mass is read as softmax(H), the DM loss's own rule for it."""
    return decoded_map(heatmaps, supplier_map, beta)


def average_flip(heatmaps: Tensor, flipped_back: Tensor, decode: str, supplier_map: str | None = None,
                 beta: float = 1.0) -> Tensor:
    """Combine the direct heatmaps with the flipped crop's heatmaps *after* `flip_back`.

    decode "2x2" (DM): mean of the decoded distributions of the supplier map (default relu, the paper's;
    `dmpose.suppliers`); "argmax" (MSE), or supplier_map "raw": mean of the raw heatmaps.
    """
    _check_decode(decode)
    if heatmaps.shape != flipped_back.shape:
        raise ValueError(f"average_flip: shapes differ, {tuple(heatmaps.shape)} vs {tuple(flipped_back.shape)}")
    if decode == "2x2" and supplier_map != "raw":
        m = supplier_map or "relu"
        return 0.5 * (normalise_heatmaps(heatmaps, m, beta) + normalise_heatmaps(flipped_back, m, beta))
    return 0.5 * (heatmaps.float() + flipped_back.float())


@torch.no_grad()
def predict_heatmaps(
    model: Callable[[Tensor], Tensor],
    crops: Tensor,
    decode: str,
    flip_pairs: Sequence[tuple[int, int]] | None = None,
    amp: bool = True,
    supplier_map: str | None = None,
    beta: float = 1.0,
) -> Tensor:
    """Heatmaps (B, K, H, W) float32 for a batch of input crops (B, 3, H_in, W_in), with the flip test when
    `flip_pairs` is given (averaged as `average_flip` with `supplier_map`/`beta`: pass the spec's codec's;
    `TopDownPredictor.heatmaps` runs its crops through here). Runs under float16 autocast on CUDA when `amp`."""
    _check_decode(decode)
    use_amp = amp and crops.is_cuda
    with torch.autocast(device_type=crops.device.type, dtype=torch.float16, enabled=use_amp):
        heatmaps = model(crops).float()
        if flip_pairs is None:
            return heatmaps
        flipped = model(crops.flip(-1)).float()
    return average_flip(heatmaps, flip_back(flipped, flip_pairs), decode, supplier_map, beta)
