"""An exported ONNX pose model run through onnxruntime, with the contract of a dmpose network: called on
normalised crops (B, 3, H_in, W_in) it returns the heatmaps (B, K, h, w) as a torch tensor, and `spec` is the
PoseSpec `dmpose export` wrote into the file's metadata, so `dmpose predict --ckpt model.onnx` and `dmpose eval
--ckpt model.onnx` run it exactly as they run a checkpoint (the flip test calls it twice; the codec decodes in
torch).

The file's metadata (ONNX `metadata_props`, written by `dmpose.models.export.export_onnx`):

  dmpose_format   "dmpose-onnx/1"
  dmpose_spec     the PoseSpec JSON (arch, keypoint names, flip pairs, skeleton, OKS sigmas, input and heatmap
                  sizes, normalisation, the codec: decode rule and supplier map)
  dmpose_outputs  the graph's outputs, comma-separated (heatmaps[, coords, confidence])
  dmpose_coords   "heatmap" or "image": the pixel space of `coords` (image: the graph takes the crops' centre and
                  size in image pixels as inputs `center` and `size`)

Needs the onnx extra (onnxruntime). Pixel centres sit at integer coordinates in every space, (x, y) last.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dmpose.spec import PoseSpec, SpecError

__all__ = ["ONNX_FORMAT", "OnnxPoseModel", "is_onnx", "read_onnx_spec"]

ONNX_FORMAT = "dmpose-onnx/1"


def is_onnx(path: str | os.PathLike) -> bool:
    """Whether `path` names an ONNX file (by its suffix)."""
    return Path(path).suffix.lower() == ".onnx"


def _session(path: Path):
    try:
        import onnxruntime as ort  # the onnx extra
    except ImportError as e:
        raise ImportError(f"{path}: running an ONNX model needs the onnx extra: pip install 'dmpose[onnx]'") from e
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001  onnxruntime raises its own types for corrupt or foreign files
        raise ValueError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e).splitlines()[0][:160]})") \
            from None


def read_onnx_spec(path: str | os.PathLike, session=None) -> tuple[PoseSpec, dict[str, str]]:
    """The PoseSpec and the dmpose metadata of an exported ONNX file; a file dmpose did not export (or one exported
    before the metadata existed) -> SpecError naming the file and what is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    meta = dict((session or _session(path)).get_modelmeta().custom_metadata_map)
    if meta.get("dmpose_format") != ONNX_FORMAT or "dmpose_spec" not in meta:
        raise SpecError(f"{path}: field dmpose_spec is missing from the ONNX metadata: not exported by this dmpose "
                        "(re-export it with `dmpose export --format onnx`)")
    return PoseSpec.from_json(meta["dmpose_spec"], source=f"{path}: dmpose_spec"), meta


class OnnxPoseModel:
    """`OnnxPoseModel(path)(crops)` -> heatmaps (module docstring). `spec`, `arch`, `num_joints` as a network's."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        self.session = _session(self.path)
        self.spec, self.meta = read_onnx_spec(self.path, self.session)
        self.arch, self.num_joints = self.spec.arch, self.spec.num_joints
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.image_coords = self.meta.get("dmpose_coords") == "image"

    def __repr__(self) -> str:
        spec = self.spec
        return f"OnnxPoseModel({self.path}, {spec.arch}, {spec.keypoints.name}, input_wh={spec.input_wh})"

    def __call__(self, crops: Tensor) -> Tensor:
        x = crops.detach().to("cpu", torch.float32).contiguous().numpy()
        feeds = {"image": x}
        if self.image_coords:  # the heatmaps do not depend on these inputs: any valid boxes will do
            feeds["center"] = np.zeros((len(x), 2), np.float32)
            feeds["size"] = np.ones((len(x), 2), np.float32)
        (heatmaps,) = self.session.run(["heatmaps"], feeds)
        return torch.from_numpy(heatmaps).to(crops.device)
