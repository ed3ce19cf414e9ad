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

__all__ = ["ImageCache", "exif_orientation", "read_image", "read_photo", "warp_affine"]

cv2.setNumThreads(1)


def exif_orientation(data: bytes | np.ndarray) -> int:
    """The EXIF Orientation tag (1..8) of JPEG bytes, 1 when there is none (or the file is not a JPEG)."""
    b = bytes(data[:65536])
    if b[:2] != b"\xff\xd8":
        return 1
    i = 2
    while i + 4 <= len(b) and b[i] == 0xFF:
        marker, size = b[i + 1], int.from_bytes(b[i + 2:i + 4], "big")
        if marker == 0xE1 and b[i + 4:i + 10] == b"Exif\x00\x00":
            tiff = b[i + 10:i + 2 + size]
            order = "little" if tiff[:2] == b"II" else "big"
            ifd = int.from_bytes(tiff[4:8], order)
            n = int.from_bytes(tiff[ifd:ifd + 2], order)
            for k in range(n):
                entry = tiff[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
                if len(entry) == 12 and int.from_bytes(entry[:2], order) == 0x0112:
                    value = int.from_bytes(entry[8:10], order)
                    return value if 1 <= value <= 8 else 1
            return 1
        if marker in (0xDA, 0xD9):  # image data starts: no EXIF before it
            return 1
        i += 2 + size
    return 1


def _file_bytes(path: Path) -> np.ndarray:
    try:
        return np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except OSError as exc:
        raise OSError(f"cannot read image file {path}: {exc}") from exc


def _decode(data: np.ndarray, flags: int, path: Path) -> np.ndarray:
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise ValueError(f"corrupt or unsupported image file: {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path: str | Path, expected_wh: tuple[int, int] | None = None) -> np.ndarray:
    """Read a dataset image as RGB uint8 (H, W, 3) in the pixel frame its annotations use: the stored pixels, EXIF
    orientation ignored (COCO's convention); if those do not have the annotated size `expected_wh` (W, H) but the
    EXIF-rotated ones do, those. Missing file -> FileNotFoundError; undecodable, or neither frame has the
    annotated size -> ValueError naming the file and the sizes."""
    path = Path(path)
    data = _file_bytes(path)
    image = _decode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION, path)
    if expected_wh is None or (image.shape[1], image.shape[0]) == tuple(expected_wh):
        return image
    if exif_orientation(data) != 1:
        rotated = _decode(data, cv2.IMREAD_COLOR, path)
        if (rotated.shape[1], rotated.shape[0]) == tuple(expected_wh):
            return rotated
    raise ValueError(f"image {path} is {image.shape[1]}x{image.shape[0]} (W x H) but its annotation says "
                     f"{expected_wh[0]}x{expected_wh[1]}: the keypoints would land on other pixels")


def read_photo(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a user's photo as RGB uint8 (H, W, 3) as it is meant to be seen: EXIF orientation applied (as image
    viewers do); returns the image and the EXIF orientation that was applied (1: none)."""
    path = Path(path)
    data = _file_bytes(path)
    return _decode(data, cv2.IMREAD_COLOR, path), exif_orientation(data)


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

    def read(self, file_name: str, expected_wh: tuple[int, int] | None = None) -> np.ndarray:
        """The image (`read_image`, in the frame of its annotated size `expected_wh` when given)."""
        if self._images is None:
            return read_image(self.folder / file_name, expected_wh)
        image = self._images.get(file_name)
        if image is None:
            image = self._images[file_name] = read_image(self.folder / file_name, expected_wh)
        return image

    def warm(self, file_names, sizes: dict[str, tuple[int, int]] | None = None) -> int:
        """Decode these images now (a no-op when disabled); returns how many are cached. `sizes`: the annotated
        (W, H) by file name."""
        if self._images is None:
            return 0
        for name in file_names:
            self.read(name, (sizes or {}).get(name))
        return len(self._images)
