"""Drawing predictions (OpenCV): the pose overlay and the heatmap panels (the paper's Fig. 3 picture).

Images are BGR uint8 (H, W, 3), as OpenCV reads and writes them, unless `rgb=True` is passed; the
functions return new arrays and never modify their input.

Joint colours encode confidence: `confidence_colour(score)` runs from red (score 0) through yellow to
green (score 1). Joints below `kpt_thr` are not drawn, nor limbs touching them. Limbs come from the
keypoint set's skeleton (any joint count); with no skeleton, joints only. Coordinates: pixel centres at
integer coordinates, so a keypoint (x, y) is drawn on pixel (round(y), round(x)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

__all__ = ["BOX_COLOUR", "LIMB_COLOUR", "confidence_colour", "draw_heatmaps", "draw_pose"]

BOX_COLOUR = (255, 128, 0)  # BGR: a blue that no confidence colour uses
LIMB_COLOUR = (255, 255, 255)


def confidence_colour(score: float) -> tuple[int, int, int]:
    """BGR colour of a joint with confidence `score` (clipped to [0, 1]): red -> yellow -> green."""
    s = float(np.clip(score, 0.0, 1.0)) if np.isfinite(score) else 0.0
    red = 255 if s <= 0.5 else int(round(255 * (1.0 - s) * 2))
    green = 255 if s >= 0.5 else int(round(255 * s * 2))
    return (0, green, red)


def _field(person: Any, name: str, alt: str | None = None):
    if isinstance(person, dict):
        return person.get(name, person.get(alt) if alt else None)
    return getattr(person, name, getattr(person, alt, None) if alt else None)


def _scale_for(image: np.ndarray) -> int:
    return max(1, int(round(max(image.shape[:2]) / 400)))


def draw_pose(image: np.ndarray, people: Sequence[Any], keypoint_spec: Any = None, kpt_thr: float = 0.3,
              rgb: bool = False, radius: int | None = None, thickness: int | None = None) -> np.ndarray:
    """The image with each person's box, box score, skeleton and joints drawn.

    people: `dmpose.predict.Person` objects or dicts with bbox, bbox_score, keypoints, scores (or
    keypoint_scores). keypoint_spec: a `KeypointSpec` (for the skeleton) or None.
    kpt_thr: joints scoring below it are hidden. rgb: the image (and the result) are RGB."""
    canvas = np.ascontiguousarray(np.array(image, dtype=np.uint8, copy=True))
    if canvas.ndim == 2:
        canvas = cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)
    elif rgb:
        canvas = np.ascontiguousarray(canvas[:, :, ::-1])
    k = _scale_for(canvas)
    radius = radius if radius is not None else 2 + k
    thickness = thickness if thickness is not None else k
    skeleton = tuple(getattr(keypoint_spec, "skeleton", ()) or ())
    for person in people:
        kp = np.asarray(_field(person, "keypoints"), np.float64).reshape(-1, 2)
        scores = np.asarray(_field(person, "scores", "keypoint_scores"), np.float64).reshape(-1)
        bbox = _field(person, "bbox")
        if bbox is not None:
            x, y, w, h = (float(v) for v in bbox)
            p1, p2 = (int(round(x)), int(round(y))), (int(round(x + w)), int(round(y + h)))
            cv2.rectangle(canvas, p1, p2, BOX_COLOUR, thickness, cv2.LINE_AA)
            bscore = _field(person, "bbox_score")
            if bscore is not None:
                cv2.putText(canvas, f"{float(bscore):.2f}", (p1[0] + 2, max(p1[1] - 4, 10 * k)),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.4 * k, BOX_COLOUR, max(1, k // 2), cv2.LINE_AA)
        shown = np.isfinite(kp).all(1) & (scores >= kpt_thr)
        pts = [(int(round(px)), int(round(py))) if ok else None for (px, py), ok in zip(kp, shown)]
        for a, b in skeleton:
            if a < len(pts) and b < len(pts) and pts[a] is not None and pts[b] is not None:
                cv2.line(canvas, pts[a], pts[b], LIMB_COLOUR, thickness, cv2.LINE_AA)
        # joints on top, the most confident last so that it is the one seen where joints overlap
        for j in np.argsort(scores, kind="stable"):
            if pts[j] is not None:
                cv2.circle(canvas, pts[j], radius, confidence_colour(scores[j]), -1, cv2.LINE_8)
    return canvas[:, :, ::-1].copy() if rgb else canvas


def _colourise(heatmap: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """A (h, w) map -> (H, W, 3) BGR jet picture, scaled to its own max, resized edge-aligned."""
    hm = np.nan_to_num(np.asarray(heatmap, np.float32)).clip(min=0)
    peak = float(hm.max())
    norm = hm / peak if peak > 0 else hm
    big = cv2.resize(norm, size_wh, interpolation=cv2.INTER_LINEAR)  # OpenCV resizes edge-aligned
    return cv2.applyColorMap((big * 255).clip(0, 255).astype(np.uint8), cv2.COLORMAP_JET)


def draw_heatmaps(crop: np.ndarray, heatmaps: np.ndarray, names: Sequence[str] | None = None, rgb: bool = False,
                  alpha: float = 0.55, columns: int | None = None) -> np.ndarray:
    """A grid of panels: the crop blended with each joint's heatmap (labelled with its name), and a last
    panel with all joints (the per-pixel maximum of the maps, each scaled to its own peak).

    crop: (H, W, 3) BGR uint8 (RGB with rgb=True) input crop; heatmaps: (K, h, w), the map the decode
    reads (any positive scale); the result is BGR (RGB with rgb=True)."""
    base = np.asarray(crop, np.uint8)
    if rgb:
        base = base[:, :, ::-1]
    hms = np.asarray(heatmaps, np.float32)
    if hms.ndim != 3:
        raise ValueError(f"heatmaps must be (K, h, w), got shape {hms.shape}")
    kj = hms.shape[0]
    names = list(names) if names is not None else [str(j) for j in range(kj)]
    if len(names) != kj:
        raise ValueError(f"{len(names)} names for {kj} heatmaps")
    h, w = base.shape[:2]
    panels = []
    for j in range(kj):
        panels.append((cv2.addWeighted(base, 1 - alpha, _colourise(hms[j], (w, h)), alpha, 0), names[j]))
    peaks = hms.reshape(kj, -1).max(1).clip(min=1e-12)[:, None, None]
    panels.append((cv2.addWeighted(base, 1 - alpha, _colourise((hms.clip(min=0) / peaks).max(0), (w, h)),
                                   alpha, 0), "all joints"))
    cols = columns or int(np.ceil(np.sqrt(len(panels))))
    rows = int(np.ceil(len(panels) / cols))
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    fs = max(0.3, min(w, h) / 300)
    for n, (panel, label) in enumerate(panels):
        panel = panel.copy()
        cv2.putText(panel, label, (3, int(12 * fs / 0.4)), cv2.FONT_HERSHEY_SIMPLEX, fs, (255, 255, 255), 1,
                    cv2.LINE_AA)
        r, c = divmod(n, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = panel
    return grid[:, :, ::-1].copy() if rgb else grid
