"""Export a dmpose checkpoint: to ONNX (dynamic batch axis, optionally with the decode in the graph)
or re-written as a dmpose `.safetensors` checkpoint.

ONNX graphs: input `image` (B, 3, H, W) float32, normalised as the spec says (`spec.normalisation`).
Outputs `heatmaps` (B, K, H/stride, W/stride), and with the decode also `coords` (B, K, 2) and
`confidence` (B, K): the spec's decode rule (`spec.codec.decode`: `dmpose.decode_2x2` for DM models,
`dmpose.decode_argmax` for MSE-trained or imported ones) traced into the graph (ask onnxruntime for
just the outputs you need).
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

from dmpose.atomic import atomic_output
from dmpose.decode import decode_2x2, decode_argmax
from dmpose.models.checkpoint import load_model, model_meta, save_checkpoint
from dmpose.spec import DECODE_RULES

__all__ = ["DecodedPoseModel", "export_onnx", "export_checkpoint"]

logger = logging.getLogger(__name__)

DEFAULT_INPUT_WH = (192, 256)  # COCO's, for a model without a spec or an input size


class DecodedPoseModel(nn.Module):
    """A pose network followed by a decode ("2x2" or "argmax"): (heatmaps, coords, confidence)."""

    def __init__(self, model: nn.Module, decode: str = "2x2"):
        super().__init__()
        if decode not in DECODE_RULES:
            raise ValueError(f"unknown decode rule {decode!r}; expected one of {DECODE_RULES}")
        self.model, self.decode = model, decode

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        heatmaps = self.model(image)
        if self.decode == "2x2":
            coords, confidence = decode_2x2(heatmaps, backend="torch")
        else:
            coords, confidence = decode_argmax(heatmaps)
        return heatmaps, coords, confidence


def _facts(model: nn.Module) -> tuple[tuple[int, int] | None, str]:
    """(input_wh, decode rule) of a model: its spec's, else its old metadata's (decode default 2x2)."""
    from dmpose.spec import PoseSpec

    spec = getattr(model, "spec", None)
    if isinstance(spec, PoseSpec):
        return spec.input_wh, spec.decode
    meta = model_meta(model)
    hw = meta.get("input_size")
    return (None if hw is None else (int(hw[1]), int(hw[0]))), meta.get("decode") or "2x2"


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    with_decode: bool = False,
    input_wh: tuple[int, int] | None = None,
    opset: int | None = None,
    decode: str | None = None,
) -> Path:
    """Write `model` as ONNX with a dynamic batch axis (needs the `onnx` extra: onnx, onnxscript).

    `input_wh` (width, height) defaults to the model's spec (`model.spec.input_wh`), else 192x256;
    spatial sizes are fixed in the graph. `with_decode` adds the decode of the spec's rule (`decode`
    overrides it). The file is written to a temporary name, then renamed.
    """
    try:
        import onnxscript  # noqa: F401  (the torch exporter needs it)
    except ImportError as e:
        raise ImportError("ONNX export needs the onnx extra: pip install 'dmpose[onnx]'") from e
    path = Path(path)
    meta = model_meta(model)
    spec_wh, rule = _facts(model)
    w, h = input_wh or spec_wh or DEFAULT_INPUT_WH
    rule = decode or rule
    module = (DecodedPoseModel(model, rule) if with_decode else model).eval()
    outputs = ["heatmaps", "coords", "confidence"] if with_decode else ["heatmaps"]
    example = torch.zeros(1, 3, h, w, device=next(model.parameters()).device)
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
    logger.info("exported %s (%s%s) to %s with input %dx%d (W x H)", meta["arch"], ", ".join(outputs),
                f", decode {rule}" if with_decode else "", path, w, h)
    return path


def export_checkpoint(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    fmt: str = "safetensors",
    with_decode: bool = False,
    input_wh: tuple[int, int] | None = None,
) -> Path:
    """Export the dmpose checkpoint `ckpt` to `out` as `safetensors` (re-written) or `onnx`."""
    if fmt not in ("safetensors", "onnx"):
        raise ValueError(f"export format must be 'safetensors' or 'onnx', got {fmt!r}")
    model = load_model(ckpt)
    if fmt == "onnx":
        return export_onnx(model, out, with_decode=with_decode, input_wh=input_wh)
    if with_decode:
        raise ValueError("--with-decode applies to ONNX export only")
    return save_checkpoint(model, out)
