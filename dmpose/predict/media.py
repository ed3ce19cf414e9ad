"""Media in and out for prediction: images (`load_image`), videos (`open_video`, `video_info`,
`iter_video`, `is_video`, and `AnnotatedVideoWriter` for the annotated copy) and the command line's
inputs (`collect_inputs`: files, folders, globs).

Images are numpy arrays (H, W, 3) uint8; video frames, read or written, are BGR, as OpenCV has them.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from dmpose.atomic import atomic_output
from dmpose.data.image import read_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_CODEC",
    "VIDEO_PIXEL_FORMAT",
    "VIDEO_EXTENSIONS",
    "AnnotatedVideoWriter",
    "CameraSource",
    "camera",
    "collect_inputs",
    "is_video",
    "iter_video",
    "load_image",
    "open_video",
    "video_codec",
    "video_info",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
#: The annotated videos' codec: H.264 (libx264 from PyAV's FFmpeg) in an .mp4 container with the index at the front
#: (+faststart) and 4:2:0 pixels, which browsers play; the one place that chooses it.
VIDEO_CODEC = "h264"
VIDEO_PIXEL_FORMAT = "yuv420p"


class CameraSource(type(Path())):
    """A camera as an input: `dmpose predict 0` reads camera 0 (OpenCV's device index), named camera0 for its
    outputs. It is a video whose frames come until the camera stops (or --max-frames)."""

    @property
    def camera_index(self) -> int:
        return int(self.name.removeprefix("camera"))


def camera(index: int) -> CameraSource:
    return CameraSource(f"camera{int(index)}")


def open_video(path: str | os.PathLike) -> tuple[cv2.VideoCapture, float, tuple[int, int]]:
    """(capture, fps, (W, H)) of a video file or a camera (`CameraSource`); a missing file, one OpenCV cannot
    decode or a camera that does not open -> an error naming it."""
    if isinstance(path, CameraSource):
        cap = cv2.VideoCapture(path.camera_index)
        if not cap.isOpened():
            cap.release()
            raise ValueError(f"camera {path.camera_index} cannot be opened (no such device, or it is in use)")
    else:
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


def video_info(path: str | os.PathLike) -> tuple[float, tuple[int, int]]:
    """(fps, (W, H)) of a video file; errors as `open_video`."""
    cap, fps, size = open_video(path)
    cap.release()
    return fps, size


def iter_video(path: str | os.PathLike, stride: int = 1, lost: list[int] | None = None,
               max_frames: int | None = None) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame index, time s, BGR frame) for every `stride`-th frame (of the first `max_frames` when given). Frames
    the container counts but OpenCV cannot decode are skipped and their indices appended to `lost` (the caller
    reports them); a video with no decodable frame -> ValueError naming the file. A camera's frames come until it
    stops."""
    cap, fps, _ = open_video(path)
    count = 0 if isinstance(path, CameraSource) else int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    try:
        index = 0
        read_any = False
        while max_frames is None or index < max_frames:
            ok, frame = cap.read()
            if not ok:
                if index >= count:  # the end (or an unknown length: read until the first failure)
                    break
                if lost is not None:
                    lost.append(index)
                index += 1
                continue
            read_any = True
            if index % stride == 0:
                yield index, index / fps, frame
            index += 1
        if not read_any:
            raise ValueError(f"corrupt or unsupported video file (no frame could be decoded): {path}")
    finally:
        cap.release()


def is_video(path: str | os.PathLike) -> bool:
    return isinstance(path, CameraSource) or Path(path).suffix.lower() in VIDEO_EXTENSIONS


class AnnotatedVideoWriter:
    """An H.264 .mp4 video (`VIDEO_CODEC`, through PyAV) written frame by frame, atomically:

        with AnnotatedVideoWriter(path, fps) as video:
            video.write(frame)  # BGR uint8 (H, W, 3); every frame the size of the first

    The file appears under `path` only when the block ends without an error and at least one frame was
    written; on any error nothing is left, neither under `path` nor as a temporary file. Frames of odd width or
    height are padded by one black pixel (4:2:0 video needs even sizes)."""

    def __init__(self, path: str | os.PathLike, fps: float):
        self.path, self.fps = Path(path), float(fps)
        self.frames = 0
        self._container = None
        self._stream = None
        self._size: tuple[int, int] | None = None
        self._file: Path | None = None
        self._session = None

    def __enter__(self) -> AnnotatedVideoWriter:
        self._session = self._open()
        return self._session.__enter__()

    def __exit__(self, *exc) -> bool | None:
        return self._session.__exit__(*exc)

    @contextmanager
    def _open(self) -> Iterator[AnnotatedVideoWriter]:
        with atomic_output(self.path) as tmp:
            file = self._file = tmp.with_suffix(".mp4")
            try:
                yield self
                self._finish()
                if not self.frames:
                    raise ValueError(f"no frame to write to {self.path}")
                file.replace(tmp)  # atomic_output then renames it onto self.path
            finally:
                self._close()
                self._file = None
                file.unlink(missing_ok=True)

    def write(self, frame: np.ndarray) -> None:
        """Append a BGR uint8 (H, W, 3) frame."""
        if self._file is None:
            raise RuntimeError("AnnotatedVideoWriter.write outside its `with` block")
        size = (frame.shape[1], frame.shape[0])
        if self._container is None:
            self._container = av.open(str(self._file), "w", format="mp4", options={"movflags": "+faststart"})
            self._stream = self._container.add_stream(VIDEO_CODEC, rate=Fraction(self.fps).limit_denominator(1001))
            self._stream.width, self._stream.height = size[0] + size[0] % 2, size[1] + size[1] % 2
            self._stream.pix_fmt = VIDEO_PIXEL_FORMAT
            self._size = size
        elif size != self._size:
            raise ValueError(f"video {self.path}: frame {self.frames} is {size[0]}x{size[1]}, "
                             f"the first was {self._size[0]}x{self._size[1]}")
        if size[0] % 2 or size[1] % 2:
            frame = np.pad(frame, ((0, size[1] % 2), (0, size[0] % 2), (0, 0)))
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")
        for packet in self._stream.encode(picture):
            self._container.mux(packet)
        self.frames += 1

    def _finish(self) -> None:
        if self._stream is not None:
            for packet in self._stream.encode():  # flush the encoder
                self._container.mux(packet)
        self._close()

    def _close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = self._stream = None


def video_codec(path: str | os.PathLike) -> tuple[str, float]:
    """(codec name, frame rate) of a video file's first video stream (PyAV), e.g. ("h264", 10.0)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.codec_context.name, float(stream.average_rate or 0)


def load_image(image: Any, rgb: bool = False) -> np.ndarray:
    """Any accepted image -> RGB uint8 (H, W, 3) (a new array or a view; never modified).

    Paths: missing -> FileNotFoundError, unreadable/corrupt -> ValueError, both naming the file.
    numpy: BGR (H, W, 3) unless `rgb`, grey (H, W) or (H, W, 1), BGRA/RGBA (H, W, 4); uint8, or float in
    [0, 1]. PIL images are converted to RGB."""
    if isinstance(image, (str, os.PathLike)):
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


_GLOB_CHARS = set("*?[")


_GLOB_CHARS = set("*?[")


def collect_inputs(specs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image and video files from files, folders (their image and video files, sorted, not recursive) and
    globs, and cameras from their indices (`0`: `CameraSource`, unless a file of that name exists). Returns
    (paths in order, without repeats; problems as (input, message)). A named file is taken whatever its
    extension (a corrupt one fails when it is read); folders and globs keep known extensions."""
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
        elif text.isdigit():  # not a file of that name: a camera index
            found.append(camera(int(text)))
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
