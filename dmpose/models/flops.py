"""Compute per image, counted from the model itself on the meta device (no memory, no compute).

The pose papers call multiply-accumulates "FLOPs"; so does dmpose (`GFLOPs` = 1e9 MACs). Two
conventions:

- `attention=False` (the default, what the HRNet / SimpleBaseline / HRFormer tables count with
  fvcore-style layer hooks): every Conv2d / ConvTranspose2d / Linear;
- `attention=True`: plus the two matrix products of each window attention (q k^T and attn v:
  2 * windows * N^2 * C MACs for N tokens per window, padding included).

BN, LayerNorm, activations, softmax, additions and resampling are never counted.
"""

from __future__ import annotations

import torch
from torch import nn

from dmpose.models.hrformer import WindowAttention
from dmpose.models.registry import build_model

__all__ = ["count_macs", "count_params"]


def count_params(name: str, num_joints: int = 17, **kwargs) -> int:
    """Parameters of the registered architecture `name` (built on the meta device)."""
    return sum(p.numel() for p in build_model(name, num_joints=num_joints, device="meta", **kwargs).parameters())


def count_macs(model: nn.Module | str, input_size: tuple[int, int] = (256, 192), num_joints: int = 17,
               attention: bool = False) -> int:
    """MACs of one forward pass on one (3, H, W) image; `model` is a module or a registered name
    (built on the meta device; a module is run as given, so pass a meta-device one to stay free)."""
    if isinstance(model, str):
        model = build_model(model, num_joints=num_joints, device="meta")
    total = 0

    def hook(module: nn.Module, inputs, output) -> None:
        nonlocal total
        if isinstance(module, nn.ConvTranspose2d):  # every input element meets every kernel tap
            kh, kw = module.kernel_size
            total += inputs[0][0].numel() * (module.out_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output[0].numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            total += output[0].numel() * module.in_features
        elif isinstance(module, WindowAttention):
            _, h, w, c = inputs[0].shape
            s = module.window
            windows = -(-h // s) * -(-w // s)
            total += 2 * windows * (s * s) ** 2 * c

    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear) + ((WindowAttention,) if attention else ())
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    training = model.training
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model.eval()(torch.empty(1, 3, *input_size, device=device))
    finally:
        model.train(training)
        for h in handles:
            h.remove()
    return total
