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

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from dmpose.atomic import atomic_output, check_not_input
from dmpose.codec import HeatmapCodec, codec_for
from dmpose.models.checkpoint import load_model, model_meta, save_checkpoint
from dmpose.models.onnx_model import ONNX_FORMAT
from dmpose.spec import PoseSpec, legacy_codec

__all__ = ["DecodedPoseModel", "export_onnx", "export_checkpoint"]

logger = logging.getLogger(__name__)


class DecodedPoseModel(nn.Module):
    """A pose network followed by its codec's decode: (heatmaps, coords, confidence). The decode reads the map the
    codec reads (`HeatmapCodec.read`: a DM model's supplier distribution, an MSE model's raw heatmaps), as the
    predictor does, with the torch decoders (traceable).

    With `image_coords`, forward(image, center, size) also takes each crop's box centre (B, 2) and size (B, 2) in
    image pixels (as `dmpose.geometry.box_to_center_scale` gives them; an unrotated crop) and returns the
    coordinates in image pixels: x = cx + (x_hm - (W_hm - 1) / 2) * w / W_hm, the inverse of `crop_affine`."""

    def __init__(self, model: nn.Module, codec: HeatmapCodec, image_coords: bool = False):
        super().__init__()
        self.model, self.codec, self.image_coords = model, codec, image_coords
        w, h = codec.heatmap_wh
        self.register_buffer("hm_wh", torch.tensor([float(w), float(h)]), persistent=False)

    def forward(self, image: Tensor, center: Tensor | None = None, size: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        heatmaps = self.model(image)
        options = {"backend": "torch"} if self.codec.decode_rule == "2x2" else {}
        coords, confidence = self.codec.decode(heatmaps, **options)
        if self.image_coords:
            coords = center[:, None, :] + (coords - (self.hm_wh - 1) / 2) * (size[:, None, :] / self.hm_wh)
        return heatmaps, coords, confidence


def _export_facts(model: nn.Module, decode: str | None, input_wh) -> tuple[HeatmapCodec, tuple[int, int]]:
    """(the codec the export decodes with, the input (W, H)): the model's spec (`load_model` and `build_model` set
    it; `decode` overrides its rule), else, for a file that names no keypoint set, its loss/decode fields
    (default decode 2x2) and input_size (default COCO's 192x256)."""
    spec = getattr(model, "spec", None)
    if isinstance(spec, PoseSpec):
        codec, wh = spec.codec.with_decode(decode), tuple(input_wh or spec.input_wh)
    else:
        meta = model_meta(model)
        hw = meta.get("input_size")
        wh = tuple(input_wh or ((int(hw[1]), int(hw[0])) if hw else (192, 256)))
        codec = legacy_codec(meta.get("loss"), meta.get("decode") or "2x2").with_decode(decode)
    stride = int(getattr(model, "output_stride", 4))
    return codec_for(codec, (max(wh[0] // stride, 2), max(wh[1] // stride, 2))), wh


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    with_decode: bool = False,
    input_wh: tuple[int, int] | None = None,
    opset: int | None = None,
    decode: str | None = None,
    image_coords: bool = False,
) -> Path:
    """Write `model` as ONNX with a dynamic batch axis (needs the `onnx` extra: onnx, onnxscript), its spec in the
    file's metadata (`dmpose.models.onnx_model`: `dmpose predict` and `dmpose eval` run the file).

    `input_wh` (width, height) defaults to the model's spec (`model.spec.input_wh`), else 192x256; spatial sizes
    are fixed in the graph. `with_decode` adds the decode of the spec's rule (`decode` overrides it): outputs
    coords and confidence; `image_coords` (with the decode) adds the inputs `center` and `size` (B, 2), the crops'
    box in image pixels, and returns coords in image pixels. The file is written to a temporary name, then
    renamed. The exporter's notes about torchvision operators (dmpose uses none) and a deprecation inside torch's
    pytree are silenced: they concern torch itself, not the model.
    """
    try:
        import onnx  # the onnx extra (the metadata)
        import onnxscript  # noqa: F401  (the torch exporter needs it)
    except ImportError as e:
        raise ImportError("ONNX export needs the onnx extra: pip install 'dmpose[onnx]'") from e
    if image_coords and not with_decode:
        raise ValueError("image_coords needs with_decode (the coordinates come from the decode)")
    path = Path(path)
    meta = model_meta(model)
    codec, (w, h) = _export_facts(model, decode, input_wh)
    rule = codec.decode_rule
    module = (DecodedPoseModel(model, codec, image_coords) if with_decode else model).eval()
    outputs = ["heatmaps", "coords", "confidence"] if with_decode else ["heatmaps"]
    example = _check_input_size(model, (h, w), meta["arch"])
    batch = torch.export.Dim("batch", min=1)
    inputs, names, dynamic = (example,), ["image"], ({0: batch},)
    if image_coords:
        inputs += (torch.zeros(1, 2), torch.ones(1, 2))
        names += ["center", "size"]
        dynamic += ({0: batch}, {0: batch})
    spec = getattr(model, "spec", None)
    metadata = {"dmpose_format": ONNX_FORMAT, "dmpose_outputs": ",".join(outputs),
                "dmpose_coords": "image" if image_coords else "heatmap"}
    if isinstance(spec, PoseSpec):
        metadata["dmpose_spec"] = spec.replace(input_wh=(w, h), codec=codec.spec).to_json()
    with atomic_output(path) as tmp, _quiet_exporter():
        kwargs = {"opset_version": opset} if opset is not None else {}
        torch.onnx.export(module, inputs, str(tmp), input_names=names, output_names=outputs,
                          dynamic_shapes=dynamic, dynamo=True, external_data=False, verbose=False, **kwargs)
        graph = onnx.load(str(tmp))
        for key, value in metadata.items():
            graph.metadata_props.add(key=key, value=value)
        onnx.save(graph, str(tmp))
    logger.info("exported %s (%s%s) to %s with input %dx%d (W x H)", meta["arch"], ", ".join(outputs),
                f", decode {rule}" if with_decode else "", path, w, h)
    return path


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch's ONNX exporter logs a warning per torchvision operator it cannot register when torchvision is absent,
    and torch's pytree emits a FutureWarning of its own: neither concerns a dmpose model."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        registration.setLevel(level)


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
    input_wh: tuple[int, int] | None = None,
    image_coords: bool = False,
) -> Path:
    """Export the dmpose checkpoint `ckpt` to `out` as `safetensors` (re-written) or `onnx` (`export_onnx`).
    `out` may not be `ckpt` itself (same path, symlink or hard link): ValueError naming both."""
    if fmt not in ("safetensors", "onnx"):
        raise ValueError(f"export format must be 'safetensors' or 'onnx', got {fmt!r}")
    check_not_input(out, [ckpt])
    model = load_model(ckpt)
    if fmt == "onnx":
        return export_onnx(model, out, with_decode=with_decode, input_wh=input_wh, image_coords=image_coords)
    if with_decode:
        raise ValueError("with_decode applies to ONNX export only")
    return save_checkpoint(model, out)
