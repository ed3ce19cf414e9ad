"""`PersonDetector`: the people in an image, from torchvision's FCOS COCO weights run by `dmpose.detect.fcos`.

Coordinates. dmpose puts pixel centres at integer coordinates (pixel (i, j) covers [j-0.5, j+0.5) x
[i-0.5, i+0.5)); torchvision's boxes are in edge coordinates, where pixel j covers [j, j+1). A torchvision box
[x1, y1, x2, y2] is therefore [x1 - 0.5, y1 - 0.5, x2 - x1, y2 - y1] as dmpose's [x, y, w, h]: the whole image,
[0, 0, W, H] for torchvision, is [-0.5, -0.5, W, H] (`dmpose.predict.boxes.full_frame_box`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmpose.detect.fcos import (
    FCOS,
    FCOS_COCO_BOX_AP,
    FCOS_COCO_WEIGHTS_URL,
    PERSON_LABEL,
    FCOSConfig,
    fcos_resnet50_fpn,
)
from dmpose.detect.nms import select_boxes
from dmpose.models.convert import read_foreign_state_dict
from dmpose.weights import is_published, resolve_checkpoint

__all__ = ["DEFAULT_DET_THR", "DEFAULT_NMS_THR", "PersonDetector", "load_person_detector", "read_state_dict"]

_DEFAULT: Any = object()  # detect's "the detector's own setting"

#: Person boxes below this score are dropped (dmpose predict --det-thr).
DEFAULT_DET_THR = 0.5
#: IoU above which the lower-scored of two person boxes is dropped (MMPose's top-down demo default, --nms-thr).
DEFAULT_NMS_THR = 0.3


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a .pth/.pt (torch.load with weights_only=True: tensors only, no code) or .safetensors
    file, read by `dmpose convert`'s reader (a training checkpoint's state_dict / model entry is unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detector weights not found: {path}")
    if path.suffix not in (".pth", ".pt", ".safetensors"):
        raise ValueError(f"{path}: detector weights must be a .pth, .pt or .safetensors file")
    return read_foreign_state_dict(path)


def _check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """ValueError naming the missing, unexpected and mis-shaped keys (BatchNorm's num_batches_tracked is ignored)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {given[k]} (expected {expected[k]})" for k in expected if k in given and given[k] != expected[k]]
    problems = []
    for what, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
        if names:
            problems.append(f"{len(names)} {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    if problems:
        raise ValueError(f"{where} is not torchvision's fcos_resnet50_fpn state dict: {'; '.join(problems)}")


class PersonDetector:
    """People in RGB images: FCOS ResNet-50-FPN (torchvision's COCO weights, box AP 39.2 on val2017), the person
    label only.

    Args:
        state_dict: torchvision's `fcos_resnet50_fpn` state dict (91 COCO labels), e.g. the published
            fcos_resnet50_fpn_coco-99b0c9b7.pth; loaded strictly (ValueError naming the keys that do not fit).
        device: "cpu", "cuda", ...; default cuda when available.
        det_thr, nms_thr, max_people: `detect`'s defaults.
        config: the network's evaluation settings (torchvision's by default: resize to 800 / 1333, ...); a
            smaller size trades accuracy for speed.
    """

    box_ap = FCOS_COCO_BOX_AP
    weights_url = FCOS_COCO_WEIGHTS_URL

    def __init__(self, state_dict: Mapping[str, torch.Tensor], device: str | None = None,
                 det_thr: float = DEFAULT_DET_THR, nms_thr: float | None = DEFAULT_NMS_THR,
                 max_people: int | None = None, config: FCOSConfig = FCOSConfig(), source: str = "state dict"):
        model = fcos_resnet50_fpn(config=config)
        _check_state_dict(model, state_dict, source)
        model.load_state_dict(dict(state_dict), strict=True)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model: FCOS = model.eval().to(self.device)
        self.det_thr, self.nms_thr, self.max_people, self.source = det_thr, nms_thr, max_people, source

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs: Any) -> PersonDetector:
        """From a .pth (read with weights_only=True) or .safetensors file of the state dict."""
        return cls(read_state_dict(path), source=str(path), **kwargs)

    def __repr__(self) -> str:
        return (f"PersonDetector({self.source}, det_thr={self.det_thr}, nms_thr={self.nms_thr}, "
                f"max_people={self.max_people}, device={self.device})")

    @torch.no_grad()
    def detect(self, image: np.ndarray, det_thr: float = _DEFAULT, nms_thr: float | None = _DEFAULT,
               max_people: int | None = _DEFAULT) -> np.ndarray:
        """The people in an RGB uint8 (H, W, 3) image: (N, 5) float64 rows [x, y, w, h, score], dmpose's
        coordinates (module docstring: x = x_torchvision - 0.5), highest score first.

        FCOS's own postprocess runs first (torchvision's: score > 0.2, NMS per label at 0.6, 100 detections); of
        its person boxes those with score >= det_thr are kept, then NMS at IoU nms_thr (None: no further NMS), then
        the max_people best (None: all). Arguments left out take the detector's defaults."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError("detect: the image must be an RGB uint8 numpy array (H, W, 3), got "
                             + (f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray)
                                else type(image).__name__))
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"detect: the image is empty ({image.shape})")
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1).float() / 255.0
        det = self.model([x])[0]
        person = det.labels == PERSON_LABEL
        b = det.boxes[person].double().cpu().numpy()
        scores = det.scores[person].double().cpu().numpy()
        boxes = np.concatenate([b[:, :2] - 0.5, b[:, 2:] - b[:, :2]], 1)
        real = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)  # clipping can flatten a box at the image's edge
        boxes, scores = boxes[real], scores[real]
        chosen = select_boxes(boxes, scores, self.det_thr if det_thr is _DEFAULT else det_thr,
                              self.nms_thr if nms_thr is _DEFAULT else nms_thr,
                              self.max_people if max_people is _DEFAULT else max_people)
        return np.concatenate([boxes[chosen.keep], scores[chosen.keep, None]], 1)


def load_person_detector(source: str | os.PathLike | PersonDetector, **kwargs: Any) -> PersonDetector:
    """The one way dmpose gets a person detector: `source` is a PersonDetector (returned as is) or a weights file
    (.pth / .safetensors of torchvision's fcos_resnet50_fpn state dict), a published name (`dmpose weights list
    --kind detector`) or an http(s) URL (both fetched once into the cache); kwargs go to `PersonDetector` (device,
    det_thr, nms_thr, max_people)."""
    if isinstance(source, PersonDetector):
        return source
    path = Path(source)
    if is_published(source):
        path = resolve_checkpoint(str(source), what="detector", kind="detector")  # fetched once into the cache
    if not path.is_file():
        raise FileNotFoundError(f"detector weights not found: {path} (a .pth or .safetensors file of torchvision's "
                                f"fcos_resnet50_fpn COCO weights, {FCOS_COCO_WEIGHTS_URL})")
    return PersonDetector.from_file(path, **kwargs)
