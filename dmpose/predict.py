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

Without boxes an image (or video frame) is one person filling the frame: the box is the whole image,
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

import cv2
import numpy as np
import torch

from dmpose.data.image import warp_affine
from dmpose.geometry import box_to_center_scale
from dmpose.spec import PoseSpec

__all__ = [
    "BOX_PADDING",
    "Person",
    "Predictor",
    "VideoFrame",
    "build_crops",
    "full_frame_box",
    "load_image",
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


# ---- images ------------------------------------------------------------------------------------------

def load_image(image: Any, rgb: bool = False) -> np.ndarray:
    """Any accepted image -> RGB uint8 (H, W, 3) (a new array or a view; never modified).

    Paths: missing -> FileNotFoundError, unreadable/corrupt -> ValueError, both naming the file.
    numpy: BGR (H, W, 3) unless `rgb`, grey (H, W) or (H, W, 1), BGRA/RGBA (H, W, 4); uint8, or float in
    [0, 1]. PIL images are converted to RGB."""
    if isinstance(image, (str, os.PathLike)):
        from dmpose.data.image import read_image

        return read_image(image)
    if type(image).__module__.startswith("PIL."):
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"an image must be a path, a numpy array or a PIL image, got {type(image).__name__}")
    arr = image
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"a numpy image must be uint8 (0..255) or float (0..1), got {arr.dtype}")
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"a numpy image must be (H, W), (H, W, 3) or (H, W, 4), got shape {arr.shape}")
    arr = arr[:, :, :3]
    return np.ascontiguousarray(arr if rgb else arr[:, :, ::-1])


def full_frame_box(width: int, height: int) -> np.ndarray:
    """The box of a whole image, [-0.5, -0.5, W, H]: its edges are the image's outer pixel edges."""
    return np.array([-0.5, -0.5, float(width), float(height)])


def _as_boxes(boxes: Any, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """None -> the full frame; else (N, 4) [x, y, w, h] or (N, 5) with a score (default 1.0)."""
    if boxes is None:
        return full_frame_box(width, height)[None], np.ones(1)
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4)), np.zeros(0)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] not in (4, 5):
        raise ValueError(f"boxes must be (N, 4) [x, y, w, h] or (N, 5) with a score, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr[:, 2:4] <= 0):
        bad = int(np.flatnonzero(~np.isfinite(arr).all(1) | (arr[:, 2:4] <= 0).any(1))[0])
        raise ValueError(f"box {bad} {arr[bad].tolist()} must be finite with w, h > 0")
    scores = arr[:, 4] if arr.shape[1] == 5 else np.ones(len(arr))
    return arr[:, :4].copy(), scores.copy()


def build_crops(image_rgb: np.ndarray, boxes_xywh: np.ndarray, spec: PoseSpec, padding: float = BOX_PADDING,
                transform: Any = None, keep_crops: bool = False):
    """The network inputs for `boxes_xywh` (N, 4) in an RGB image, made exactly as evaluation makes them:
    the box's centre and size by `box_to_center_scale` (the spec's aspect ratio, `padding`), then the
    evaluation transform (`TopDownTransform.from_spec(spec)`: the crop_affine warp, the spec's channel
    order and normalisation, no target encoding).

    Returns (inputs (N, 3, H_in, W_in) float32 tensor, affines_input (N, 2, 3), affines_heatmap (N, 2, 3),
    crops (N, H_in, W_in, 3) RGB uint8 when `keep_crops`, else None)."""
    from dmpose.data.transforms import TopDownTransform

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
    from dmpose.models.checkpoint import read_checkpoint_meta, read_checkpoint_spec
    from dmpose.spec import SpecError

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
        ckpt: a dmpose checkpoint (.safetensors) whose metadata holds the pose spec.
        device: "cpu", "cuda", "cuda:1", ...; default cuda when available.
        flip: the flip test (as evaluation).
        batch_size: crops per forward pass.
    """

    def __init__(self, ckpt: str | os.PathLike, device: str | None = None, flip: bool = True, batch_size: int = 32):
        from dmpose.models import load_model

        self.ckpt = Path(ckpt)
        if not self.ckpt.is_file():
            raise FileNotFoundError(f"checkpoint not found: {self.ckpt}")
        spec = read_checkpoint_spec_for_predict(self.ckpt)
        device = _default_device(device)
        model = load_model(self.ckpt, map_location=device)
        if getattr(model, "num_joints", spec.num_joints) != spec.num_joints:
            raise ValueError(f"{self.ckpt}: the network has {model.num_joints} joints but the keypoint set "
                             f"'{spec.keypoints.name}' has {spec.num_joints}")
        self._setup(model, spec, flip, device, batch_size)

    @classmethod
    def from_model(cls, model, spec: PoseSpec, device: str | None = None, flip: bool = True,
                   batch_size: int = 32) -> Predictor:
        """A predictor around a model already in memory (any callable with the model contract)."""
        self = cls.__new__(cls)
        self.ckpt = None
        from dmpose.eval.predictor import model_device

        self._setup(model, spec, flip, device if device is not None else str(model_device(model)), batch_size)
        return self

    def _setup(self, model, spec: PoseSpec, flip: bool, device, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(model, torch.nn.Module):
            model.eval()
        self.model, self.spec, self.flip, self.device, self.batch_size = model, spec, flip, device, batch_size
        from dmpose.data.transforms import TopDownTransform
        from dmpose.eval.predictor import TopDownPredictor

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
        """The people in one image. boxes: None (one person filling the frame), or (N, 4) [x, y, w, h] /
        (N, 5) with a score, image px."""
        return self.predict_batch([image], None if boxes is None else [boxes], rgb=rgb, heatmaps=heatmaps)[0]

    def predict_batch(self, images: Sequence[Any], boxes: Sequence[Any] | None = None, rgb: bool = False,
                      heatmaps: bool = False) -> list[list[Person]]:
        """`predict` over several images, the crops of all of them batched together; boxes: one entry per
        image (None entries: the full frame)."""
        images = list(images)
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"boxes must have one entry per image: {len(boxes)} for {len(images)} images")
        inputs, raw, a_hm, bxs, scs, owner = [], [], [], [], [], []
        for i, image in enumerate(images):
            rgb_image = load_image(image, rgb=rgb)
            h, w = rgb_image.shape[:2]
            b, s = _as_boxes(None if boxes is None else boxes[i], w, h)
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
                      heatmaps: bool = False) -> Iterator[VideoFrame]:
        """Yield a `VideoFrame` for every `stride`-th frame of a video file (OpenCV). `boxes` apply to
        every frame (None: one person filling the frame). A file OpenCV cannot open -> ValueError."""
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        for index, time_s, frame in iter_video(path, stride):
            people = self.predict(frame, boxes, rgb=False, heatmaps=heatmaps)
            yield VideoFrame(index, time_s, people, frame)


VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def open_video(path: str | os.PathLike) -> tuple[cv2.VideoCapture, float, tuple[int, int]]:
    """(capture, fps, (W, H)); a missing file or one OpenCV cannot decode -> an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file not found: {path}")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise ValueError(f"corrupt or unsupported video file: {path}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    return cap, float(fps if fps > 0 else 25.0), size


def iter_video(path: str | os.PathLike, stride: int = 1) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame index, time s, BGR frame) for every `stride`-th frame; a video with no decodable frame ->
    ValueError naming the file."""
    cap, fps, _ = open_video(path)
    try:
        index = 0
        read_any = False
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            read_any = True
            if index % stride == 0:
                yield index, index / fps, frame
            index += 1
        if not read_any:
            raise ValueError(f"corrupt or unsupported video file (no frame could be decoded): {path}")
    finally:
        cap.release()


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS



# ---- inputs and boxes files (the command line's, usable from Python) --------------------------------------

_GLOB_CHARS = set("*?[")


def collect_inputs(specs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image and video files from files, folders (their image and video files, sorted, not recursive) and
    globs. Returns (paths in order, without repeats; problems as (input, message)). A named file is taken
    whatever its extension (a corrupt one fails when it is read); folders and globs keep known
    extensions."""
    import glob

    known = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    found: list[Path] = []
    problems: list[tuple[str, str]] = []
    for spec in specs:
        text = str(spec)
        p = Path(text)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in known)
            if not files:
                problems.append((text, f"folder {p} holds no image or video files"))
            found += files
        elif p.is_file():
            found.append(p)
        elif _GLOB_CHARS & set(text):
            files = sorted(Path(f) for f in glob.glob(text) if Path(f).is_file() and Path(f).suffix.lower() in known)
            if not files:
                problems.append((text, f"no image or video file matches {text}"))
            found += files
        else:
            problems.append((text, f"input not found: {p}"))
    seen, unique = set(), []
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, problems


@dataclass
class BoxEntry:
    """Boxes for one input: (N, 4) [x, y, w, h], (N,) scores, and the COCO image id when the file gave one."""

    boxes: np.ndarray
    scores: np.ndarray
    image_id: int | None = None


def coco_id_from_name(path: str | os.PathLike) -> int | None:
    """The COCO image id of a file named by COCO's convention (digits only, e.g. 000000000785.jpg)."""
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else None


def _check_box(values: Any, where: str, with_score: bool) -> tuple[list[float], float]:
    try:
        v = [float(x) for x in values]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: a box must be numbers [x, y, w, h{', score' if with_score else ''}], "
                         f"got {values!r}") from None
    if len(v) not in ((4, 5) if with_score else (4,)):
        raise ValueError(f"{where}: a box must be [x, y, w, h{', score' if with_score else ''}], got {values!r}")
    if not all(np.isfinite(v)) or v[2] <= 0 or v[3] <= 0:
        raise ValueError(f"{where}: box {values!r} must be finite with w, h > 0")
    return v[:4], (v[4] if len(v) == 5 else 1.0)


def load_boxes_file(path: str | os.PathLike, inputs: Sequence[Path]) -> dict[Path, BoxEntry]:
    """Person boxes for `inputs` from a json file, in either format:

    - COCO detection results: a list of {image_id, bbox [x, y, w, h], score, category_id (1 = person;
      others are skipped)}; `image_id` matches an input named by COCO's id convention
      (000000000785.jpg is id 785); an entry may instead give `file_name`.
    - a map {"file name or path": [[x, y, w, h, score], ...]} (score optional); a key matches an input
      by its path (as given or resolved) or by its file name.

    Every entry must match exactly one input (else ValueError naming the entry). Inputs the file does not
    mention get no entry (no people)."""
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"boxes file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"boxes file {path} is not valid JSON: {e}") from None
    by_name: dict[str, list[Path]] = {}
    by_path: dict[str, Path] = {}
    by_id: dict[int, list[Path]] = {}
    for p in inputs:
        by_name.setdefault(p.name, []).append(p)
        by_path[str(p)] = p
        by_path[str(p.resolve())] = p
        cid = coco_id_from_name(p)
        if cid is not None:
            by_id.setdefault(cid, []).append(p)

    def match_key(key: str, where: str) -> Path:
        if key in by_path:
            return by_path[key]
        resolved = str(Path(key).resolve())
        if resolved in by_path:
            return by_path[resolved]
        hits = by_name.get(Path(key).name, []) if Path(key).name == key else []
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ValueError(f"{where}: {key!r} matches {len(hits)} inputs ({', '.join(map(str, hits))}); "
                             "give the path instead")
        raise ValueError(f"{where}: {key!r} names no input among the {len(inputs)} given")

    out: dict[Path, BoxEntry] = {}
    lists: dict[Path, tuple[list, list, int | None]] = {}
    if isinstance(data, list):
        for i, det in enumerate(data):
            where = f"boxes file {path}: entry {i}"
            if not isinstance(det, dict) or "bbox" not in det or not ("image_id" in det or "file_name" in det):
                raise ValueError(f"{where}: a COCO detection needs bbox and image_id (or file_name), got {det!r:.120}")
            if det.get("category_id", 1) != 1:
                continue
            box, _ = _check_box(det["bbox"], where, with_score=False)
            try:
                score = float(det.get("score", 1.0))
            except (TypeError, ValueError):
                raise ValueError(f"{where}: score must be a number, got {det.get('score')!r}") from None
            image_id = None
            if "file_name" in det:
                target = match_key(str(det["file_name"]), where)
                image_id = int(det["image_id"]) if "image_id" in det else None
            else:
                try:
                    image_id = int(det["image_id"])
                except (TypeError, ValueError):
                    raise ValueError(f"{where}: image_id must be an integer, got {det['image_id']!r}") from None
                hits = by_id.get(image_id, [])
                if len(hits) != 1:
                    raise ValueError(f"{where}: image_id {image_id} matches "
                                     f"{'no input' if not hits else f'{len(hits)} inputs'} (COCO id convention: "
                                     f"{image_id:012d}.jpg)")
                target = hits[0]
            b, s, _ = lists.setdefault(target, ([], [], image_id))
            b.append(box)
            s.append(score)
    elif isinstance(data, dict):
        for key, boxes in data.items():
            where = f"boxes file {path}: entry {key!r}"
            target = match_key(str(key), where)
            if not isinstance(boxes, list):
                raise ValueError(f"{where}: must be a list of [x, y, w, h, score] boxes, got {boxes!r:.80}")
            b, s, _ = lists.setdefault(target, ([], [], None))
            for n, values in enumerate(boxes):
                box, score = _check_box(values, f"{where} box {n}", with_score=True)
                b.append(box)
                s.append(score)
    else:
        raise ValueError(f"boxes file {path}: expected a list of COCO detections or a {{file: boxes}} map, "
                         f"got {type(data).__name__}")
    for target, (b, s, image_id) in lists.items():
        out[target] = BoxEntry(np.asarray(b, np.float64).reshape(-1, 4), np.asarray(s, np.float64), image_id)
    return out
