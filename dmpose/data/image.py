"""Image reading and affine warping (OpenCV).

OpenCV was chosen by `benchmarks/bench_data.py`: its JPEG decode and warpAffine give the most crops per
second per core (see benchmarks/RESULTS.md). OpenCV's warpAffine uses the dmpose convention (pixel
centres at integer coordinates, pixel (i, j) covers [j-0.5, j+0.5) x [i-0.5, i+0.5)), so the image ->
output matrices from dmpose.geometry are passed to it unchanged.

OpenCV runs single-threaded here: parallelism comes from DataLoader worker processes.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

__all__ = ["ImageCache", "read_image", "warp_affine"]

cv2.setNumThreads(1)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3). Missing file -> FileNotFoundError; undecodable -> ValueError."""
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except OSError as exc:
        raise OSError(f"cannot read image file {path}: {exc}") from exc
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError(f"corrupt or unsupported image file: {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def warp_affine(image: np.ndarray, affine: np.ndarray, out_size_wh) -> np.ndarray:
    """Warp `image` with the image -> output 2x3 `affine` into an (H_out, W_out, C) array (bilinear, black border)."""
    w, h = (int(v) for v in out_size_wh)
    return cv2.warpAffine(
        image, np.asarray(affine, dtype=np.float64), (w, h), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )


class ImageCache:
    """Decoded images of one folder kept in memory by file name (`enabled`; else every read decodes).
    Filled before data-loader workers fork (`warm`), so that they share it instead of each decoding its own.
    Callers must not modify the arrays returned."""

    def __init__(self, folder: str | Path, enabled: bool):
        self.folder = Path(folder)
        self._images: dict[str, np.ndarray] | None = {} if enabled else None

    def read(self, file_name: str) -> np.ndarray:
        if self._images is None:
            return read_image(self.folder / file_name)
        image = self._images.get(file_name)
        if image is None:
            image = self._images[file_name] = read_image(self.folder / file_name)
        return image

    def warm(self, file_names) -> int:
        """Decode these images now (a no-op when disabled); returns how many are cached."""
        if self._images is None:
            return 0
        for name in file_names:
            self.read(name)
        return len(self._images)
