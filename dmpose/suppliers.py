"""Supplier maps: the non-negative map phi(H) whose normalisation is what the DM loss transports, and so
the map every decode of a DM model reads (the one owner of that rule).

  relu      phi(H) = relu(H), the paper's form; scale-invariant, and a map with no positive pixel is "dead"
  softplus  phi(H) = softplus(beta H) / beta, positive everywhere, so it never dies (docs/training.md)
  raw       the heatmap as it is (MSE-trained models; only a name for the decode, not a loss option)

One rule for dead maps, everywhere: a map whose phi has no positive mass is read as softmax(H) over its
pixels, exactly as the loss's fallback suppliers (`dmpose.sinkhorn`), so the loss, the flip-test
averaging, the decoders' input, ONNX export with the decode and predict see the same distribution.
Maps are (..., H, W); pixel centres at integer coordinates, (x, y) last wherever coordinates appear.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dmpose.heatmaps import compute_dtype, normalise_mass
from dmpose.spec import DECODED_MAPS, SUPPLIER_MAPS

__all__ = ["supplier_map", "supplier_map_derivative", "decoded_map",
           "log_supplier_distribution", "log_softplus", "log_softplus_derivative", "require_log_map"]



def _check(name: str, beta: float | None, allowed=SUPPLIER_MAPS) -> None:
    if name not in allowed:
        raise ValueError(f"supplier map must be one of {allowed}, got {name!r}")
    if name == "softplus" and (isinstance(beta, bool) or not (isinstance(beta, (int, float)) and math.isfinite(beta)
                                                              and beta > 0)):
        raise ValueError(f"supplier_beta must be a finite number > 0 for the softplus map, got {beta!r}")


def supplier_map(heatmaps: Tensor, name: str, beta: float | None = None) -> Tensor:
    """phi(H) elementwise: relu(H), or softplus(beta H) / beta (-> relu as beta -> inf; exp(beta H) / beta
    far below zero, underflowing to 0 in fp32 below beta H = -87)."""
    _check(name, beta)
    if name == "relu":
        return heatmaps.clamp_min(0)
    return torch.nn.functional.softplus(heatmaps * beta) / beta


def supplier_map_derivative(heatmaps: Tensor, name: str, beta: float | None = None) -> Tensor:
    """d phi / d H elementwise: [H > 0] for relu, sigmoid(beta H) for softplus."""
    _check(name, beta)
    if name == "relu":
        return (heatmaps > 0).to(heatmaps.dtype)
    return torch.sigmoid(heatmaps * beta)


def decoded_map(heatmaps: Tensor, name: str, beta: float | None = None) -> Tensor:
    """The distribution a DM model's decode reads: phi(H) / sum phi(H) per (..., H, W) map in float32,
    softmax(H) where phi(H) has no positive mass (the loss's rule); "raw" returns H as float32 unchanged.

    Traceable (no data-dependent Python branches), so ONNX export with the decode uses it as it is.
    """
    _check(name, beta, DECODED_MAPS)
    h = heatmaps.float()
    if name == "raw":
        return h
    return normalise_mass(supplier_map(h, name, beta).flatten(-2), h.flatten(-2))[0].reshape(h.shape)


def require_log_map(name: str) -> None:
    """The supplier maps whose log is finite everywhere: softplus only (a relu map's log is -inf on every
    non-positive pixel)."""
    if name != "softplus":
        raise ValueError(f"the log of the supplier distribution needs softplus suppliers, got {name!r} (a relu map "
                         "has log -inf on every non-positive pixel)")


_LINEAR_BELOW = -15.0  # log softplus(x) = x to fp32 rounding below this, where softplus itself may underflow


def log_softplus(x: Tensor) -> tuple[Tensor, Tensor]:
    """(log softplus(x), softplus(x)) without underflow: log softplus(x) = x to rounding below x = -15, where
    softplus itself may underflow in fp32. log phi(H) = log_softplus(beta H) - log beta for softplus maps."""
    sp = torch.nn.functional.softplus(x)
    return torch.where(x < _LINEAR_BELOW, x, sp.clamp_min(1e-30).log()), sp


def log_softplus_derivative(x: Tensor, sp: Tensor) -> Tensor:
    """d log_softplus(x) / dx = sigmoid(x) / softplus(x) (1 where `log_softplus` is x); sp = softplus(x)."""
    return torch.where(x < _LINEAR_BELOW, torch.ones_like(x), torch.sigmoid(x) / sp.clamp_min(1e-30))


def log_supplier_distribution(heatmaps: Tensor, name: str, beta: float) -> Tensor:
    """log(phi(H) / sum phi(H)) over each (..., H, W) map, flattened to (..., H*W), in float32 (float64 for
    float64 input), without underflow (`log_softplus`). Only softplus (`require_log_map`)."""
    require_log_map(name)
    x = heatmaps.to(compute_dtype(heatmaps)).flatten(-2) * beta
    log_phi = log_softplus(x)[0] - math.log(beta)
    return log_phi - torch.logsumexp(log_phi, dim=-1, keepdim=True)
