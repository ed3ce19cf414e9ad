"""A synthetic COCO-keypoints dataset: human-like figures on cluttered backgrounds, in the exact COCO layout.

    OUT/train2017/*.jpg, OUT/val2017/*.jpg,
    OUT/annotations/person_keypoints_{train,val}2017.json,
    OUT/person_detection_results/COCO_val2017_detections_AP_H_56_person.json

so every COCO code path (pycocotools' COCOeval included) runs on it unchanged.

Each figure has the 17 COCO joints on a random articulated skeleton: limb lengths (with foreshortening),
torso lean, arm and leg angles, elbow/knee bends, scale and position, facing the camera or away.
Limbs are shaded capsules; the person's LEFT limbs are warm (red..yellow), the RIGHT limbs cool
(cyan..blue), so left and right are distinguishable even for figures seen from the back.

Annotations follow COCO: keypoints (x, y, v) with pixel centres at integer coordinates (pixel (i, j)
covers [j-0.5, j+0.5) x [i-0.5, i+0.5)); v=2 where the joint's own body part is the visible surface at
its pixel, v=1 where something else covers it (kept 70% of the time, else unlabelled v=0 with x=y=0),
v=0 outside the image. The face points of a figure seen from the back are occluded. `area` is the
pixel count of the person's visible silhouette, `bbox` its bounding box (pixel edges), `segmentation`
its RLE. Figures fully hidden or outside the image are not annotated.

Difficulty is fixed by `SynthConfig`'s defaults (documented there), not tuned per run: images 256..320
px a side, 1..4 people (some cut by the border), 12..30 background shapes including limb-like sticks,
occluding blocks in 35% of the images, uniform pixel noise of std 6.

Deterministic for a seed: image i of a split draws from its own generator seeded (seed, split, i).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from dmpose.atomic import atomic_folder, output_error
from dmpose.cache import cache_root
from dmpose.data.layouts import DEFAULT_DETECTION_FILE as DETECTION_FILE
from dmpose.keypoints import load_keypoint_set

__all__ = ["SynthConfig", "generate_synthetic_coco", "ensure_synthetic", "default_synthetic_root",
           "synthetic_cache_key", "render_image", "DETECTION_FILE"]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
_MARKER = ".complete.json"

# COCO-17 joint indices, by name from the keypoint YAML (the one definition of the set)
_COCO_INDEX = {name: i for i, name in enumerate(load_keypoint_set("coco17").names)}
NOSE, L_EYE, R_EYE, L_EAR, R_EAR, L_SHO, R_SHO, L_ELB, R_ELB, L_WRI, R_WRI, L_HIP, R_HIP, L_KNE, R_KNE, L_ANK, R_ANK = (
    _COCO_INDEX[f"{side}{part}"] for side, part in [("", "nose")] + [
        (s, p) for p in ("eye", "ear", "shoulder", "elbow", "wrist", "hip", "knee", "ankle")
        for s in ("left_", "right_")])
# body parts (for self-occlusion): which parts each joint lies on
TORSO, HEAD, L_UARM, L_FARM, R_UARM, R_FARM, L_THIGH, L_SHIN, R_THIGH, R_SHIN = range(10)
_JOINT_PARTS = {
    NOSE: {HEAD}, L_EYE: {HEAD}, R_EYE: {HEAD}, L_EAR: {HEAD}, R_EAR: {HEAD},
    L_SHO: {TORSO, L_UARM}, R_SHO: {TORSO, R_UARM}, L_ELB: {L_UARM, L_FARM}, R_ELB: {R_UARM, R_FARM},
    L_WRI: {L_FARM}, R_WRI: {R_FARM}, L_HIP: {TORSO, L_THIGH}, R_HIP: {TORSO, R_THIGH},
    L_KNE: {L_THIGH, L_SHIN}, R_KNE: {R_THIGH, R_SHIN}, L_ANK: {L_SHIN}, R_ANK: {R_SHIN},
}
_PARTS_PER_PERSON = 16  # owner id = 1 + person * _PARTS_PER_PERSON + part; 0 = background/clutter


@dataclass(frozen=True)
class SynthConfig:
    """The generator's fixed difficulty (defaults are the documented dataset; change only deliberately)."""

    image_size: tuple[int, int] = (256, 320)  # min, max side in px (width and height drawn separately)
    people_weights: tuple[float, ...] = (0.35, 0.3, 0.2, 0.15)  # P(1), P(2), P(3), P(4) people
    person_height: tuple[float, float] = (0.35, 0.85)  # of the image height
    center_margin: float = 0.08  # person centres range over [-margin, 1 + margin] of the image: border cuts
    back_view_prob: float = 0.25  # figure seen from the back (face points occluded)
    clutter_shapes: tuple[int, int] = (12, 30)
    stick_fraction: float = 0.3  # fraction of clutter shapes that are limb-like shaded sticks
    occluder_prob: float = 0.35  # images with 1-2 occluding blocks drawn over the people
    occluded_labelled_prob: float = 0.7  # an occluded joint keeps its label (v=1), else v=0
    noise_sigma: float = 6.0
    jpeg_quality: int = 90
    # detections (val): box jitter, scores, misses, false positives
    det_jitter: float = 0.08
    det_miss_prob: float = 0.05
    det_false_positives: tuple[int, int] = (0, 3)


def _rot(v: np.ndarray, deg: float) -> np.ndarray:
    t = math.radians(deg)
    c, s = math.cos(t), math.sin(t)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _hsv_colour(rng, hue_range, sat=(0.5, 0.9), val=(0.55, 0.95)) -> np.ndarray:
    h = rng.uniform(*hue_range) % 360.0
    s, v = rng.uniform(*sat), rng.uniform(*val)
    c = v * s
    x = c * (1 - abs((h / 60.0) % 2 - 1))
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h // 60) % 6]
    return (np.array(rgb) + (v - c)) * 255.0


def _capsule(canvas, owner, a, b, radius, colour, owner_id, shade=True):
    """Paint a shaded capsule (segment a-b, radius) onto canvas (H, W, 3) float32 and owner (H, W) int32."""
    h, w = owner.shape
    x0 = max(int(math.floor(min(a[0], b[0]) - radius)), 0)
    x1 = min(int(math.ceil(max(a[0], b[0]) + radius)) + 1, w)
    y0 = max(int(math.floor(min(a[1], b[1]) - radius)), 0)
    y1 = min(int(math.ceil(max(a[1], b[1]) + radius)) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return
    xx = np.arange(x0, x1, dtype=np.float32)[None, :]
    yy = np.arange(y0, y1, dtype=np.float32)[:, None]
    ab = np.asarray(b, np.float32) - np.asarray(a, np.float32)
    denom = float(ab @ ab)
    t = np.float32(0) if denom == 0 else np.clip(((xx - a[0]) * ab[0] + (yy - a[1]) * ab[1]) / denom, 0, 1)
    dx, dy = xx - (a[0] + t * ab[0]), yy - (a[1] + t * ab[1])
    d2 = (dx * dx + dy * dy) / (radius * radius)
    inside = d2 < 1.0
    region = canvas[y0:y1, x0:x1]
    if shade:
        region[inside] = (0.5 + 0.5 * np.sqrt(1.0 - d2[inside]))[:, None] * colour.astype(np.float32)
    else:
        region[inside] = colour
    owner[y0:y1, x0:x1][inside] = owner_id


def _block(canvas, owner, rng, center, half, colour, owner_id, ellipse):
    """A solid rectangle or rotated ellipse (OpenCV drawing) on canvas and owner."""
    c = (int(round(center[0])), int(round(center[1])))
    axes = (max(int(round(half[0])), 1), max(int(round(half[1])), 1))
    col = tuple(float(v) for v in colour)
    if ellipse:
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(canvas, c, axes, angle, 0, 360, col, -1)
        cv2.ellipse(owner, c, axes, angle, 0, 360, owner_id, -1)
    else:
        p0, p1 = (c[0] - axes[0], c[1] - axes[1]), (c[0] + axes[0], c[1] + axes[1])
        cv2.rectangle(canvas, p0, p1, col, -1)
        cv2.rectangle(owner, p0, p1, owner_id, -1)


def _sample_skeleton(rng, height: float, center: np.ndarray, back_view: bool) -> tuple[np.ndarray, dict]:
    """17 joints (float64, image px) and drawing parameters for one figure of standing height `height`."""
    jitter = lambda: rng.uniform(0.9, 1.1)  # noqa: E731
    fore = lambda: rng.uniform(0.65, 1.0)  # noqa: E731  (foreshortening)
    torso_len, head_len = 0.30 * height * jitter(), 0.11 * height * jitter()
    sho_w, hip_w = 0.10 * height * jitter(), 0.065 * height * jitter()
    uarm, farm = 0.17 * height * jitter(), 0.15 * height * jitter()
    thigh, shin = 0.24 * height * jitter(), 0.23 * height * jitter()
    lean = float(np.clip(rng.normal(0, 15), -45, 45))
    up = np.array([math.sin(math.radians(lean)), -math.cos(math.radians(lean))])
    right = np.array([-up[1], up[0]])  # image-right when upright
    face = -1.0 if back_view else 1.0  # +1: facing the camera, the person's left is on image right
    pelvis = center - up * (0.5 * torso_len - 0.05 * height)
    neck = pelvis + up * torso_len
    j = np.zeros((17, 2))
    j[L_SHO], j[R_SHO] = neck + face * sho_w * right, neck - face * sho_w * right
    j[L_HIP], j[R_HIP] = pelvis + face * hip_w * right, pelvis - face * hip_w * right
    head = neck + up * head_len
    yaw = rng.uniform(-1, 1)  # head turn: shifts the face points sideways
    hr = 0.065 * height
    j[NOSE] = head - up * 0.1 * hr + right * yaw * 0.5 * hr
    j[L_EYE] = head + up * 0.25 * hr + right * (face * 0.4 + yaw * 0.45) * hr
    j[R_EYE] = head + up * 0.25 * hr + right * (-face * 0.4 + yaw * 0.45) * hr
    j[L_EAR] = head + right * (face * 0.9 + yaw * 0.2) * hr
    j[R_EAR] = head + right * (-face * 0.9 + yaw * 0.2) * hr
    down = -up
    for side, (sho, elb, wri, hip, kne, ank) in (
        (1.0, (L_SHO, L_ELB, L_WRI, L_HIP, L_KNE, L_ANK)),
        (-1.0, (R_SHO, R_ELB, R_WRI, R_HIP, R_KNE, R_ANK)),
    ):
        out = side * face  # +1: outward is image-right for this side
        # rotating `down` by -deg turns it toward image-right (y down), so outward = -out * angle
        arm_dir = _rot(down, -out * rng.uniform(-25, 165))
        j[elb] = j[sho] + arm_dir * uarm * fore()
        j[wri] = j[elb] + _rot(arm_dir, rng.choice([-1, 1]) * rng.uniform(0, 150)) * farm * fore()
        leg_dir = _rot(down, -out * (rng.uniform(-12, 40) if rng.random() > 0.1 else rng.uniform(40, 95)))
        j[kne] = j[hip] + leg_dir * thigh * fore()
        j[ank] = j[kne] + _rot(leg_dir, rng.choice([-1, 1]) * rng.uniform(0, 100)) * shin * fore()
    params = {"head": head, "head_r": hr, "neck": neck, "pelvis": pelvis, "height": height}
    return j, params


def _draw_person(canvas, owner, rng, joints, p, person_index: int, back_view: bool):
    h_ = p["height"]
    base = 1 + person_index * _PARTS_PER_PERSON
    shirt = _hsv_colour(rng, (0, 360), sat=(0.0, 0.5), val=(0.35, 0.9))
    skin = _hsv_colour(rng, (15, 35), sat=(0.25, 0.6), val=(0.45, 0.95))
    warm = lambda: _hsv_colour(rng, (-10, 55))  # noqa: E731  left side
    cool = lambda: _hsv_colour(rng, (175, 250))  # noqa: E731  right side
    left_arm, left_leg, right_arm, right_leg = warm(), warm() * 0.8, cool(), cool() * 0.8
    r_arm, r_leg = 0.032 * h_, 0.045 * h_

    def arm(sho, elb, wri, colour, up_part, fore_part):
        _capsule(canvas, owner, joints[sho], joints[elb], r_arm, colour, base + up_part)
        _capsule(canvas, owner, joints[elb], joints[wri], r_arm * 0.85, colour, base + fore_part)
        _capsule(canvas, owner, joints[wri], joints[wri], r_arm * 1.2, skin, base + fore_part)  # hand

    def leg(hip, kne, ank, colour, thigh_part, shin_part):
        _capsule(canvas, owner, joints[hip], joints[kne], r_leg, colour, base + thigh_part)
        _capsule(canvas, owner, joints[kne], joints[ank], r_leg * 0.85, colour, base + shin_part)

    def torso():
        tr = 0.05 * h_
        for a, b in ((L_SHO, R_SHO), (L_HIP, R_HIP), (L_SHO, L_HIP), (R_SHO, R_HIP)):
            _capsule(canvas, owner, joints[a], joints[b], tr, shirt, base + TORSO)
        mid_top, mid_bot = (joints[L_SHO] + joints[R_SHO]) / 2, (joints[L_HIP] + joints[R_HIP]) / 2
        width = 0.5 * (np.linalg.norm(joints[L_SHO] - joints[R_SHO]) + np.linalg.norm(joints[L_HIP] - joints[R_HIP]))
        _capsule(canvas, owner, mid_top, mid_bot, max(0.5 * width, tr), shirt, base + TORSO)

    left = (lambda: arm(L_SHO, L_ELB, L_WRI, left_arm, L_UARM, L_FARM), lambda: leg(L_HIP, L_KNE, L_ANK, left_leg, L_THIGH, L_SHIN))
    right = (lambda: arm(R_SHO, R_ELB, R_WRI, right_arm, R_UARM, R_FARM), lambda: leg(R_HIP, R_KNE, R_ANK, right_leg, R_THIGH, R_SHIN))
    far, near = (left, right) if rng.random() < 0.5 else (right, left)
    far[1](), far[0]()
    torso()
    near[1](), near[0]()
    # head: neck stub, head disc, eyes (front view only)
    _capsule(canvas, owner, p["neck"], p["head"], 0.35 * p["head_r"], skin, base + HEAD)
    hair = _hsv_colour(rng, (10, 40), sat=(0.3, 0.8), val=(0.1, 0.45))
    _capsule(canvas, owner, p["head"], p["head"], p["head_r"], hair if back_view else skin, base + HEAD)
    if not back_view:
        eye_r = max(0.12 * p["head_r"], 1.0)
        for e, col in ((L_EYE, np.array([200.0, 40, 20])), (R_EYE, np.array([20.0, 60, 200]))):
            _capsule(canvas, owner, joints[e], joints[e], eye_r, col, base + HEAD, shade=False)
        _capsule(canvas, owner, joints[NOSE], joints[NOSE], eye_r * 0.8, skin * 0.6, base + HEAD, shade=False)


def render_image(rng: np.random.Generator, cfg: SynthConfig = SynthConfig()) -> tuple[np.ndarray, list[dict]]:
    """One image (H, W, 3) uint8 RGB and its people: [{keypoints (17, 3), area, bbox, mask}] (unfiltered)."""
    w, h = (int(rng.integers(cfg.image_size[0], cfg.image_size[1] + 1)) for _ in range(2))
    # background: a gradient between two colours, then clutter
    top, bottom = _hsv_colour(rng, (0, 360), sat=(0, 0.6)), _hsv_colour(rng, (0, 360), sat=(0, 0.6))
    ramp = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    canvas = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (h, w, 3)).astype(np.float32).copy()
    owner = np.zeros((h, w), np.int32)
    for _ in range(int(rng.integers(*cfg.clutter_shapes, endpoint=True))):
        colour = _hsv_colour(rng, (0, 360), sat=(0, 1), val=(0.2, 1))
        c = rng.uniform([0, 0], [w, h])
        if rng.random() < cfg.stick_fraction:
            b = c + rng.normal(0, 0.15 * h, 2)
            _capsule(canvas, owner, c, b, rng.uniform(2, 0.04 * h), colour, 0)
        else:
            _block(canvas, owner, rng, c, rng.uniform(4, 0.18 * min(w, h), 2), colour, 0, rng.random() < 0.5)
    n_people = int(rng.choice(len(cfg.people_weights), p=np.asarray(cfg.people_weights) / sum(cfg.people_weights))) + 1
    people = []
    for i in range(n_people):
        height = rng.uniform(*cfg.person_height) * h
        m = cfg.center_margin
        center = rng.uniform([-m * w, -m * h], [(1 + m) * w, (1 + m) * h])
        back_view = bool(rng.random() < cfg.back_view_prob)
        joints, params = _sample_skeleton(rng, height, center, back_view)
        _draw_person(canvas, owner, rng, joints, params, i, back_view)
        people.append((joints, back_view))
    if rng.random() < cfg.occluder_prob:
        for _ in range(int(rng.integers(1, 3))):
            target = people[int(rng.integers(len(people)))][0]
            c = target[int(rng.integers(17))] + rng.normal(0, 10, 2)
            _block(canvas, owner, rng, c, rng.uniform(0.04 * h, 0.12 * h, 2), _hsv_colour(rng, (0, 360)), 0,
                   rng.random() < 0.5)
    # uniform pixel noise with standard deviation noise_sigma (uniform: much cheaper to draw than normal)
    amplitude = np.float32(cfg.noise_sigma * math.sqrt(3.0))
    canvas += (rng.random(canvas.shape, dtype=np.float32) * 2 - 1) * amplitude
    image = np.clip(canvas, 0, 255).astype(np.uint8)

    out = []
    for i, (joints, back_view) in enumerate(people):
        base = 1 + i * _PARTS_PER_PERSON
        mask = (owner >= base) & (owner < base + _PARTS_PER_PERSON)
        kps = np.zeros((17, 3))
        for k in range(17):
            x, y = joints[k]
            if not (-0.5 <= x < w - 0.5 and -0.5 <= y < h - 0.5):
                continue  # outside the image: v=0
            part = owner[int(math.floor(y + 0.5)), int(math.floor(x + 0.5))] - base
            visible = part in _JOINT_PARTS[k] and not (back_view and k in (NOSE, L_EYE, R_EYE))
            if visible:
                kps[k] = (x, y, 2)
            elif rng.random() < cfg.occluded_labelled_prob:
                kps[k] = (x, y, 1)
        out.append({"keypoints": kps, "mask": mask})
    return image, out


def _annotation(person: dict, ann_id: int, image_id: int) -> dict | None:
    mask = person["mask"]
    area = int(mask.sum())
    if area == 0:
        return None
    ys, xs = np.nonzero(mask)
    bbox = [float(xs.min()) - 0.5, float(ys.min()) - 0.5, float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    kps = person["keypoints"]
    flat = [round(float(v), 2) for v in np.column_stack([kps[:, :2], kps[:, 2]]).reshape(-1)]
    return {
        "id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "area": area, "bbox": bbox,
        "num_keypoints": int((kps[:, 2] > 0).sum()), "keypoints": flat,
        "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
    }


def _detections(rng, anns: list[dict], image: dict, cfg: SynthConfig) -> list[dict]:
    dets = []
    w, h = image["width"], image["height"]
    for a in anns:
        if rng.random() < cfg.det_miss_prob:
            continue
        x, y, bw, bh = a["bbox"]
        j = cfg.det_jitter
        cx, cy = x + bw / 2 + rng.normal(0, j) * bw, y + bh / 2 + rng.normal(0, j) * bh
        bw, bh = bw * math.exp(rng.normal(0, j)), bh * math.exp(rng.normal(0, j))
        score = float(np.clip(rng.beta(8, 1.5), 0.3, 1.0))
        dets.append({"image_id": image["id"], "category_id": 1, "score": round(score, 5),
                     "bbox": [round(float(v), 2) for v in (cx - bw / 2, cy - bh / 2, bw, bh)]})
    for _ in range(int(rng.integers(*cfg.det_false_positives, endpoint=True))):
        bw, bh = rng.uniform(0.1, 0.5) * w, rng.uniform(0.2, 0.8) * h
        x, y = rng.uniform(-0.1 * w, w - 0.5 * bw), rng.uniform(-0.1 * h, h - 0.5 * bh)
        dets.append({"image_id": image["id"], "category_id": 1, "score": round(float(rng.uniform(0.02, 0.5)), 5),
                     "bbox": [round(float(v), 2) for v in (x, y, bw, bh)]})
    return dets


def _categories() -> list[dict]:
    ks = load_keypoint_set("coco17")
    return [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(ks.names),
             "skeleton": [[a + 1, b + 1] for a, b in ks.skeleton]}]


def _write_split(out: Path, split: str, n: int, seed: int, split_code: int, cfg: SynthConfig) -> dict:
    (out / split).mkdir(parents=True, exist_ok=True)
    images, annotations, detections = [], [], []
    first_id = 1 if split_code == 0 else 1_000_001
    for i in range(n):
        rng = np.random.default_rng([seed, split_code, i])
        image, people = render_image(rng, cfg)
        image_id = first_id + i
        name = f"{image_id:012d}.jpg"
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {name}")
        (out / split / name).write_bytes(buf.tobytes())
        info = {"id": image_id, "file_name": name, "width": image.shape[1], "height": image.shape[0], "license": 0}
        images.append(info)
        anns = []
        for person in people:
            a = _annotation(person, len(annotations) + len(anns) + 1, image_id)
            if a is not None:
                anns.append(a)
        annotations += anns
        if split_code == 1:
            detections += _detections(rng, anns, info, cfg)
    doc = {
        "info": {"description": "dmpose synthetic COCO-format person keypoints", "version": str(GENERATOR_VERSION),
                 "seed": seed},
        "licenses": [{"id": 0, "name": "generated by dmpose (no third-party content)", "url": ""}],
        "images": images, "annotations": annotations, "categories": _categories(),
    }
    (out / "annotations").mkdir(exist_ok=True)
    (out / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(doc))
    if split_code == 1:
        det_path = out / DETECTION_FILE
        det_path.parent.mkdir(parents=True, exist_ok=True)
        det_path.write_text(json.dumps(detections))
    return {"images": len(images), "persons": len(annotations), "detections": len(detections)}


def _generate_into(out: Path, n_train: int, n_val: int, seed: int, cfg: SynthConfig) -> dict:
    start = time.perf_counter()
    stats = {"train2017": _write_split(out, "train2017", n_train, seed, 0, cfg),
             "val2017": _write_split(out, "val2017", n_val, seed, 1, cfg)}
    logger.info("synthetic COCO written to %s in %.1f s: %s", out, time.perf_counter() - start, stats)
    return stats


def _check_counts(n_train: int, n_val: int) -> None:
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in (n_train, n_val)):
        raise ValueError(f"image counts must be integers >= 0, got train={n_train!r}, val={n_val!r}")


def generate_synthetic_coco(out: str | Path, n_train: int, n_val: int, seed: int = 0,
                            cfg: SynthConfig = SynthConfig()) -> dict:
    """Write the synthetic dataset into `out` (must be absent or an empty folder). Returns counts.

    The dataset is built in a hidden temporary sibling of `out` and renamed onto `out` when complete
    (`dmpose.atomic.atomic_folder`): an interrupted or failed run (a full disk) leaves `out` as it was,
    and nothing that blocks a rerun.
    """
    out = Path(out)
    _check_counts(n_train, n_val)
    with atomic_folder(out) as tmp:
        stats = _generate_into(tmp, n_train, n_val, seed, cfg)
    return stats


def default_synthetic_root() -> Path:
    """The cache folder of the default synthetic datasets: $DMPOSE_CACHE/synthetic-coco, where DMPOSE_CACHE
    defaults to $XDG_CACHE_HOME/dmpose (~/.cache/dmpose). Each dataset lives in its own subfolder
    (see `ensure_synthetic`)."""
    return cache_root() / "synthetic-coco"


def synthetic_cache_key(n_train: int, n_val: int, seed: int, cfg: SynthConfig = SynthConfig()) -> str:
    """The subfolder name of one cached dataset: its counts, seed, generator version and a hash of the
    generator's configuration, e.g. 'train1000-val100-seed0-v1-3f2a9c1e'."""
    wanted = _cache_settings(n_train, n_val, seed, cfg)
    digest = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:8]
    return f"train{n_train}-val{n_val}-seed{seed}-v{GENERATOR_VERSION}-{digest}"


def _cache_settings(n_train: int, n_val: int, seed: int, cfg: SynthConfig) -> dict:
    return json.loads(json.dumps({"n_train": n_train, "n_val": n_val, "seed": seed, "version": GENERATOR_VERSION,
                                  "config": asdict(cfg)}))


def _is_complete(folder: Path, wanted: dict) -> bool:
    try:
        return json.loads((folder / _MARKER).read_text()) == wanted
    except (OSError, ValueError):
        return False


def ensure_synthetic(cache: str | Path | None = None, n_train: int = 1000, n_val: int = 100, seed: int = 0) -> Path:
    """The synthetic dataset of these counts and seed, generated once into the cache folder `cache`
    (default: `default_synthetic_root()`) and reused; returns its folder, `cache/<synthetic_cache_key>`.

    Each setting has its own subfolder, so datasets of other counts (made by another command) are other
    caches and are never touched. The cache only ever removes what it wrote itself: a dataset is
    generated in a hidden temporary sibling that is renamed into place with its `.complete.json` marker
    already inside. Concurrent calls are safe: each builds its own temporary folder, the first rename
    wins, the others see the complete dataset and drop their copy. A folder under the dataset's name
    that dmpose did not complete (no matching marker) is left alone and reported (ValueError).
    """
    _check_counts(n_train, n_val)
    cache = default_synthetic_root() if cache is None else Path(cache)
    cfg = SynthConfig()
    wanted = _cache_settings(n_train, n_val, seed, cfg)
    root = cache / synthetic_cache_key(n_train, n_val, seed, cfg)
    if _is_complete(root, wanted):
        return root
    if root.exists():
        raise ValueError(f"{root} exists but is not a complete dmpose synthetic dataset (no matching {_MARKER}); "
                         "dmpose does not remove what it did not write: move it away, or pass another cache folder")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=cache))
    except OSError as exc:
        raise output_error(cache, exc) from None
    try:
        _generate_into(tmp, n_train, n_val, seed, cfg)
        (tmp / _MARKER).write_text(json.dumps(wanted))
        try:
            os.rename(tmp, root)  # fails if root appeared meanwhile (and is not empty)
        except OSError:
            if _is_complete(root, wanted):  # another process finished first: use its copy
                return root
            raise
    except OSError as exc:
        if exc.filename is not None and not str(exc.filename).startswith(str(cache)):
            raise
        raise output_error(root, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only our own temporary folder (gone after the rename)
    return root
