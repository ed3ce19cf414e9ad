"""Export a dmpose checkpoint: to ONNX (dynamic batch axis, optionally with the 2x2 decode in the
graph) or re-written as a dmpose `.safetensors` checkpoint.

ONNX graphs: input `image` (B, 3, H, W) float32, normalised as in training. Outputs `heatmaps`
(B, K, H/4, W/4), and with the decode also `coords` (B, K, 2) and `confidence` (B, K):
`dmpose.decode_2x2` traced into the graph (ask onnxruntime for just the outputs you need).
`coords` are (x, y) in heatmap pixels (pixel centres at integer coordinates; the heatmap's outer
edges -0.5 ... W_hm - 0.5 are the input crop's outer edges -0.5 ... W_in - 0.5), so a crop
coordinate is x_in = (x + 0.5) * W_in / W_hm - 0.5, never x * stride.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from dmpose.atomic import atomic_output, check_not_input
from dmpose.decode import decode_2x2
from dmpose.models.checkpoint import load_model, model_meta, save_checkpoint

__all__ = ["DecodedPoseModel", "export_onnx", "export_checkpoint"]

logger = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = (256, 192)  # (height, width)


class DecodedPoseModel(nn.Module):
    """A pose network followed by the 2x2 distribution-matching decode: (heatmaps, coords, confidence)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        heatmaps = self.model(image)
        coords, confidence = decode_2x2(heatmaps)
        return heatmaps, coords, confidence


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    with_decode: bool = False,
    input_size: tuple[int, int] | None = None,
    opset: int | None = None,
) -> Path:
    """Write `model` as ONNX with a dynamic batch axis (needs the `onnx` extra: onnx, onnxscript).

    `input_size` (height, width) defaults to the checkpoint's `input_size`, else 256x192; spatial
    sizes are fixed in the graph. The file is written to a temporary name, then renamed.
    """
    try:
        import onnxscript  # noqa: F401  (the torch exporter needs it)
    except ImportError as e:
        raise ImportError("ONNX export needs the onnx extra: pip install 'dmpose[onnx]'") from e
    path = Path(path)
    meta = model_meta(model)
    h, w = input_size or meta.get("input_size") or DEFAULT_INPUT_SIZE
    module = (DecodedPoseModel(model) if with_decode else model).eval()
    outputs = ["heatmaps", "coords", "confidence"] if with_decode else ["heatmaps"]
    example = _check_input_size(model, (h, w), meta["arch"])
    batch = torch.export.Dim("batch", min=1)

    with atomic_output(path) as tmp:
        kwargs = {"opset_version": opset} if opset is not None else {}
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            input_names=["image"],
            output_names=outputs,
            dynamic_shapes=({0: batch},),
            dynamo=True,
            external_data=False,
            verbose=False,
            **kwargs,
        )
    logger.info("exported %s (%s) to %s with input %dx%d", meta["arch"], ", ".join(outputs), path, h, w)
    return path


def _check_input_size(model: nn.Module, size, arch: str) -> Tensor:
    """The example input for an export at `size` (height, width), after checking that the network runs on it
    and gives heatmaps of exactly size / output stride (ValueError naming the size otherwise)."""
    stride = int(getattr(model, "output_stride", 4))
    ok = (isinstance(size, (list, tuple)) and len(size) == 2
          and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size))
    if not ok or size[0] % stride or size[1] % stride:
        raise ValueError(f"input size {size!r} is invalid: need HEIGHTxWIDTH, positive integers divisible by the "
                         f"output stride {stride} (e.g. 256x192)")
    h, w = size
    example = torch.zeros(1, 3, h, w, device=next(model.parameters()).device)
    try:
        with torch.no_grad():
            got = tuple(model.eval()(example).shape[-2:])
    except RuntimeError as exc:
        raise ValueError(f"input size {h}x{w} is too small for {arch}: {str(exc).splitlines()[0]}") from None
    if got != (h // stride, w // stride):
        raise ValueError(f"input size {h}x{w} does not fit {arch}: its heatmaps come out {got[0]}x{got[1]}, not "
                         f"{h // stride}x{w // stride} (input size / {stride}); use a multiple of 32, e.g. 256x192")
    return example


def export_checkpoint(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    fmt: str = "safetensors",
    with_decode: bool = False,
    input_size: tuple[int, int] | None = None,
) -> Path:
    """Export the dmpose checkpoint `ckpt` to `out` as `safetensors` (re-written) or `onnx`.
    `out` may not be `ckpt` itself (same path, symlink or hard link): ValueError naming both."""
    if fmt not in ("safetensors", "onnx"):
        raise ValueError(f"export format must be 'safetensors' or 'onnx', got {fmt!r}")
    check_not_input(out, [ckpt])
    model = load_model(ckpt)
    if fmt == "onnx":
        return export_onnx(model, out, with_decode=with_decode, input_size=input_size)
    if with_decode:
        raise ValueError("--with-decode applies to ONNX export only")
    return save_checkpoint(model, out)
