"""Top-down prediction on images, folders and videos: `Predictor` (the library side of `dmpose predict`).

A `Predictor` loads a checkpoint once and reads everything it needs from the checkpoint's `PoseSpec`
(keypoint set, input and heatmap sizes, normalisation, codec: decode rule and the map it reads). For each
person box:

1. the box [x, y, w, h] becomes a centre and a size with the spec's aspect ratio and padding 1.25
   (`dmpose.geometry.box_to_center_scale`, as evaluation does), and evaluation's transform
   (`TopDownTransform.from_spec`) crops it with `crop_affine` and normalises it as the spec says
   (channel order, mean, std); it also gives the image -> heatmap affine of the same box;
2. the shared top-down predictor (`dmpose.eval.predictor.TopDownPredictor`: model, flip test, the
   spec's decode reading the spec's supplier map, inverse heatmap affine) returns keypoints in image
   pixels and the decoder's confidence. Evaluation runs the same two pieces, so prediction and
   evaluation cannot diverge.

Without boxes the predictor's person detector finds the people (`detector`: a `dmpose.detect.PersonDetector`);
without a detector either an image (or video frame) is one person filling the frame: the box is the whole image,
[-0.5, -0.5, W, H] (its outer edges are the image's outer pixel edges), padded like any other box.

Coordinates: pixel centres at integer coordinates (pixel (i, j) covers [j-0.5, j+0.5) x [i-0.5, i+0.5)),
x right, y down; a keypoint may lie outside the image where the padded crop does.

Images: paths (read with OpenCV), numpy arrays (BGR as OpenCV gives them; `rgb=True` for RGB; grey
(H, W) and BGRA are accepted) and, when Pillow is installed, PIL images (always RGB).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmpose.data.image import warp_affine
from dmpose.data.transforms import TopDownTransform
from dmpose.detect import load_person_detector
from dmpose.eval.predictor import TopDownPredictor, model_device
from dmpose.geometry import box_to_center_scale
from dmpose.models import load_model, read_checkpoint_meta, read_checkpoint_spec
from dmpose.models.onnx_model import OnnxPoseModel, is_onnx
from dmpose.predict.boxes import as_box_array
from dmpose.predict.media import iter_video, load_image
from dmpose.spec import PoseSpec, SpecError
from dmpose.weights import is_published, resolve_checkpoint

__all__ = [
    "BOX_PADDING",
    "Person",
    "Predictor",
    "VideoFrame",
    "build_crops",
    "read_checkpoint_spec_for_predict",
]

#: Box padding, as evaluation (`TopDownTransform.padding`) and the official HRNet code.
BOX_PADDING = 1.25


@dataclass
class Person:
    """One person: bbox [x, y, w, h] image px (COCO's convention, as the input box), bbox_score,
    keypoints (K, 2) image px, scores (K,) the decoder's confidence. With heatmaps requested, `crop`
    (H_in, W_in, 3) RGB uint8 and `heatmaps` (K, H_hm, W_hm) float32, the decoded map."""

    bbox: np.ndarray
    bbox_score: float
    keypoints: np.ndarray
    scores: np.ndarray
    crop: np.ndarray | None = field(default=None, repr=False)
    heatmaps: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"bbox": [float(v) for v in self.bbox], "bbox_score": float(self.bbox_score),
                "keypoints": [[float(x), float(y)] for x, y in self.keypoints],
                "keypoint_scores": [float(s) for s in self.scores]}


@dataclass
class VideoFrame:
    """A video frame's result: index (0-based), time in seconds, the people, and the frame (BGR uint8)."""

    index: int
    time_s: float
    people: list[Person]
    frame: np.ndarray = field(repr=False)


def build_crops(image_rgb: np.ndarray, boxes_xywh: np.ndarray, spec: PoseSpec, padding: float = BOX_PADDING,
                transform: Any = None, keep_crops: bool = False):
    """The network inputs for `boxes_xywh` (N, 4) in an RGB image, made exactly as evaluation makes them:
    the box's centre and size by `box_to_center_scale` (the spec's aspect ratio, `padding`), then the
    evaluation transform (`TopDownTransform.from_spec(spec)`: the crop_affine warp, the spec's channel
    order and normalisation, no target encoding).

    Returns (inputs (N, 3, H_in, W_in) float32 tensor, affines_input (N, 2, 3), affines_heatmap (N, 2, 3),
    crops (N, H_in, W_in, 3) RGB uint8 when `keep_crops`, else None)."""
    t = transform if transform is not None else TopDownTransform.from_spec(spec, padding=padding)
    n = len(boxes_xywh)
    w_in, h_in = spec.input_wh
    centres, sizes = box_to_center_scale(np.asarray(boxes_xywh, np.float64).reshape(n, 4), t.aspect_ratio, t.padding)
    k = spec.num_joints
    inputs = torch.zeros((n, 3, h_in, w_in))
    a_in, a_hm = np.zeros((n, 2, 3)), np.zeros((n, 2, 3))
    crops = np.zeros((n, h_in, w_in, 3), np.uint8) if keep_crops else None
    for i in range(n):
        sample = t(image_rgb, centres[i], sizes[i], np.zeros((k, 2)), np.zeros(k))
        inputs[i] = sample["image"]
        a_in[i], a_hm[i] = sample["meta"]["affine_input"], sample["meta"]["affine_heatmap"]
        if keep_crops:
            crops[i] = warp_affine(image_rgb, a_in[i], spec.input_wh)
    return inputs, a_in, a_hm, crops


# ---- the checkpoint's spec ------------------------------------------------------------------------------

def read_checkpoint_spec_for_predict(path: str | os.PathLike) -> PoseSpec:
    """The checkpoint's PoseSpec (`read_checkpoint_spec`: the stored spec, validated, else one rebuilt from
    the old field-per-key metadata). For an old file predict wants the input size and the decode rule
    stated, not defaulted: a missing one raises SpecError naming the field."""
    path = Path(path)
    meta = read_checkpoint_meta(path)
    if PoseSpec.META_KEY not in meta:
        if not meta.get("input_size"):
            raise SpecError(f"{path}: field input_size is missing (the [height, width] of the input crop); "
                            "predict needs it: re-save the checkpoint with a spec, or convert with `dmpose convert`")
        if not meta.get("decode") and not meta.get("loss"):
            raise SpecError(f"{path}: field decode is missing (nor is there a loss to infer it from); predict "
                            "needs the decode rule (2x2 for DM-trained models, argmax for MSE-trained ones)")
    return read_checkpoint_spec(path)


def _numpy(value, dtype) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype)


def _default_device(device) -> str:
    if device is not None:
        return str(device)
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---- the predictor -------------------------------------------------------------------------------------

class Predictor:
    """Load a checkpoint once; predict people in images, batches of images and videos.

    Args:
        ckpt: a dmpose checkpoint (.safetensors) whose metadata holds the pose spec, an ONNX file exported by
            `dmpose export` (run by onnxruntime on the CPU), or a published model's name or URL (fetched once into
            the cache: `dmpose.weights`).
        device: "cpu", "cuda", "cuda:1", ...; default cuda when available.
        flip: the flip test (as evaluation).
        batch_size: crops per forward pass.
        detector: finds the people in an image given without boxes (anything with `detect(rgb_image) -> (N, 5)
            [x, y, w, h, score]`, e.g. `dmpose.detect.PersonDetector`, or what `load_person_detector` takes: a
            published name, a URL, a file); None: such an image is one person filling the frame.
    """

    def __init__(self, ckpt: str | os.PathLike, device: str | None = None, flip: bool = True, batch_size: int = 32,
                 detector: Any = None):
        self.ckpt = Path(ckpt)
        if is_published(ckpt):
            self.ckpt = resolve_checkpoint(str(ckpt), what="Predictor ckpt")  # published: fetched once
        if not self.ckpt.is_file():
            raise FileNotFoundError(f"checkpoint not found: {self.ckpt}")
        device = _default_device(device)
        if is_onnx(self.ckpt):  # an exported model: onnxruntime on the CPU, its spec from the file's metadata
            model = OnnxPoseModel(self.ckpt)
            spec, device = model.spec, "cpu"
        else:
            spec = read_checkpoint_spec_for_predict(self.ckpt)
            model = load_model(self.ckpt, map_location=device)
        if getattr(model, "num_joints", spec.num_joints) != spec.num_joints:
            raise ValueError(f"{self.ckpt}: the network has {model.num_joints} joints but the keypoint set "
                             f"'{spec.keypoints.name}' has {spec.num_joints}")
        self._setup(model, spec, flip, device, batch_size, detector)

    @classmethod
    def from_model(cls, model, spec: PoseSpec, device: str | None = None, flip: bool = True,
                   batch_size: int = 32, detector: Any = None) -> Predictor:
        """A predictor around a model already in memory (any callable with the model contract)."""
        self = cls.__new__(cls)
        self.ckpt = None
        self._setup(model, spec, flip, device if device is not None else str(model_device(model)), batch_size,
                    detector)
        return self

    def _setup(self, model, spec: PoseSpec, flip: bool, device, batch_size: int, detector: Any) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(model, torch.nn.Module):
            model.eval()
        self.model, self.spec, self.flip, self.device, self.batch_size = model, spec, flip, device, batch_size
        self.detector = detector if detector is None or hasattr(detector, "detect") else \
            load_person_detector(detector, device=device)
        self._transform = TopDownTransform.from_spec(spec, padding=BOX_PADDING)
        self._topdown = TopDownPredictor(model, spec, flip=flip, device=device)

    @property
    def keypoint_spec(self):
        return self.spec.keypoints

    @property
    def keypoint_names(self) -> tuple[str, ...]:
        return self.spec.keypoints.names

    # ---- prediction
    def predict(self, image: Any, boxes: Any = None, rgb: bool = False, heatmaps: bool = False) -> list[Person]:
        """The people in one image. boxes: None (the detector's boxes; without a detector one person filling the
        frame), or (N, 4) [x, y, w, h] / (N, 5) with a score, image px."""
        return self.predict_batch([image], None if boxes is None else [boxes], rgb=rgb, heatmaps=heatmaps)[0]

    def predict_batch(self, images: Sequence[Any], boxes: Sequence[Any] | None = None, rgb: bool = False,
                      heatmaps: bool = False) -> list[list[Person]]:
        """`predict` over several images, the crops of all of them batched together; boxes: one entry per
        image (None entries: the detector's boxes, or the full frame without a detector)."""
        images = list(images)
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"boxes must have one entry per image: {len(boxes)} for {len(images)} images")
        inputs, raw, a_hm, bxs, scs, owner = [], [], [], [], [], []
        for i, image in enumerate(images):
            rgb_image = load_image(image, rgb=rgb)
            h, w = rgb_image.shape[:2]
            given = None if boxes is None else boxes[i]
            if given is None and self.detector is not None:
                given = self.detector.detect(rgb_image)
            b, s = as_box_array(given, w, h)
            x, _, ahm, crops = build_crops(rgb_image, b, self.spec, transform=self._transform, keep_crops=heatmaps)
            inputs.append(x)
            raw.append(crops)
            a_hm.append(ahm)
            bxs.append(b)
            scs.append(s)
            owner += [i] * len(b)
        results: list[list[Person]] = [[] for _ in images]
        if not owner:
            return results
        inputs_all, a_hm_all = torch.cat(inputs), np.concatenate(a_hm)
        crops_all = np.concatenate(raw) if heatmaps else None
        boxes_all, scores_all = np.concatenate(bxs), np.concatenate(scs)
        for start in range(0, len(owner), self.batch_size):
            sl = slice(start, start + self.batch_size)
            out = self._topdown.predict(inputs_all[sl], a_hm_all[sl])
            kp = _numpy(out.keypoints, np.float64)
            conf = _numpy(out.scores, np.float32)
            hm = _numpy(out.heatmaps, np.float32) if heatmaps else None
            for j in range(len(kp)):
                n = start + j
                results[owner[n]].append(Person(
                    boxes_all[n], float(scores_all[n]), kp[j], conf[j],
                    crop=crops_all[n] if heatmaps else None, heatmaps=hm[j] if heatmaps else None))
        return results

    def predict_video(self, path: str | os.PathLike, stride: int = 1, boxes: Any = None,
                      heatmaps: bool = False, lost: list[int] | None = None,
                      max_frames: int | None = None) -> Iterator[VideoFrame]:
        """Yield a `VideoFrame` for every `stride`-th frame of a video file (OpenCV). `boxes` apply to
        every frame (None: the detector's boxes in each frame, or one person filling the frame). A file OpenCV
        cannot open -> ValueError; frames that
        cannot be decoded are appended to `lost` (`iter_video`)."""
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        for index, time_s, frame in iter_video(path, stride, lost, max_frames):
            people = self.predict(frame, boxes, rgb=False, heatmaps=heatmaps)
            yield VideoFrame(index, time_s, people, frame)
