"""Top-down sample preparation: augmentation (HRNet recipe) and one affine per sample.

For each person the augmentation draws a centre, size, rotation and flip; `dmpose.geometry.crop_affine`
then builds the image -> input affine (used to warp the crop) and the image -> heatmap affine for the
same box (used for the keypoints). Both map the box's outer edges onto the outer pixel edges of their
space, pixel centres at integer coordinates (pixel (i, j) covers [j-0.5, j+0.5) x [i-0.5, i+0.5)).

The HRNet recipe, with its defaults for COCO:
  half-body (prob 0.3, needs > 8 labelled joints): box around the upper or lower body joints (each with
    probability 1/2 when it has > 2 labelled joints), fixed to the aspect ratio, x1.5;
  scale: size x clip(1 + N(0,1) * 0.35, 0.65, 1.35);
  rotation (prob 0.6): clip(N(0,1) * 45, -90, 90) degrees;
  horizontal flip (prob 0.5): mirrored in the affine, left/right joints swapped.
Beyond it, off by default (HRNet has none): box shift (prob shift_prob): the centre moves by
  U(-1, 1) * shift_factor * size on each axis, as MMPose's RandomBBoxTransform (0.16, prob 0.3 there) —
  training on the jitter of a detector's boxes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from dmpose.codec import HeatmapCodec, build_codec, keypoint_weights
from dmpose.data.image import warp_affine
from dmpose.geometry import apply_affine, crop_affine, fix_aspect_ratio
from dmpose.keypoints import KeypointSpec

__all__ = ["AugmentConfig", "TopDownTransform", "IMAGENET_MEAN", "IMAGENET_STD"]

from dmpose.spec import IMAGENET_MEAN, IMAGENET_STD, PoseSpec


@dataclass
class AugmentConfig:
    """Training augmentation parameters (HRNet COCO defaults). Set a probability to 0 to disable a step."""

    scale_factor: float = 0.35
    rotation_factor: float = 45.0
    rotation_prob: float = 0.6
    flip_prob: float = 0.5
    half_body_prob: float = 0.3
    half_body_min_joints: int = 8
    half_body_padding: float = 1.5
    shift_factor: float = 0.0
    shift_prob: float = 0.0

    # read by pydantic when a config schema embeds this dataclass (dmpose.train.config): unknown keys are errors
    __pydantic_config__ = {"extra": "forbid"}

    def __post_init__(self):
        for name in ("rotation_prob", "flip_prob", "half_body_prob", "shift_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"augment.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.scale_factor < 1.0:
            raise ValueError(f"augment.scale_factor must be in [0, 1), got {self.scale_factor}")
        if not 0.0 <= self.shift_factor <= 1.0:
            raise ValueError(f"augment.shift_factor must be in [0, 1], got {self.shift_factor}")
        if self.rotation_factor < 0 or self.half_body_padding <= 0:
            raise ValueError("augment.rotation_factor must be >= 0 and augment.half_body_padding > 0")

    @classmethod
    def from_dict(cls, data: dict | None) -> AugmentConfig:
        data = dict(data or {})
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown augment option(s) {sorted(unknown)}; "
                             f"allowed: {sorted(cls.__dataclass_fields__)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Draw:
    center: np.ndarray
    size: np.ndarray
    rotation: float = 0.0
    flip: bool = False
    half_body: bool = False


def _half_body(keypoints, visible, ks: KeypointSpec, cfg: AugmentConfig, aspect: float, rng) -> tuple | None:
    labelled = visible > 0
    upper = [i for i in ks.upper_body if labelled[i]]
    lower = [i for i in ks.lower_body if labelled[i]]
    selected = upper if (rng.random() < 0.5 and len(upper) > 2) else (lower if len(lower) > 2 else upper)
    if len(selected) < 2:
        return None
    pts = keypoints[selected]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    size = fix_aspect_ratio(hi - lo, aspect) * cfg.half_body_padding
    if not np.all(size > 0):
        return None
    return pts.mean(axis=0), size


class TopDownTransform:
    """Turns (image, person box, keypoints) into a training/eval sample.

    Args:
        input_wh: (W, H) of the network input; heatmap_wh: (W, H) of its output.
        codec: the spec's codec (`dmpose.codec.build_codec`; its heatmap_wh must be heatmap_wh), or None: crop only
            (evaluation and prediction; the sample's target is empty).
        keypoints: the KeypointSpec (flip pairs and the half-body split).
        augment: AugmentConfig for training, None for evaluation (no randomness).
        padding: box padding used by `box_to_center_scale` callers (kept here so datasets read one value).

    Randomness: `rng_for(index)` is each sample's generator. When `augment_seed` is set (the trainer sets
    (train seed, epoch) every epoch) it is fixed by (augment_seed, index), so a sample's augmentation is the
    same with any number of data-loader workers and after a resume; otherwise it is drawn from torch's
    generator (torch.manual_seed and the DataLoader's worker seeding fix it).
    """

    def __init__(self, input_wh, heatmap_wh, codec: HeatmapCodec | None, keypoints: KeypointSpec,
                 augment: AugmentConfig | None = None, padding: float = 1.25,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, channel_order: str = "RGB"):
        self.input_wh = tuple(int(v) for v in input_wh)
        self.heatmap_wh = tuple(int(v) for v in heatmap_wh)
        if codec is not None and tuple(codec.heatmap_wh) != self.heatmap_wh:
            raise ValueError(f"codec heatmap_wh {codec.heatmap_wh} != heatmap_wh {self.heatmap_wh}")
        self.codec = codec
        self.keypoints = keypoints
        self.augment = augment
        self.padding = float(padding)
        self.augment_seed: tuple[int, ...] | None = None
        if channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, got {channel_order!r}")
        self.channels = (0, 1, 2) if channel_order == "RGB" else (2, 1, 0)  # network channel -> RGB channel
        self.aspect_ratio = self.input_wh[0] / self.input_wh[1]
        # normalised = pixel * scale + offset, per channel (pixel in 0..255)
        self.scale = (1.0 / (np.asarray(std, dtype=np.float64) * 255.0)).astype(np.float32)
        self.offset = (-np.asarray(mean, dtype=np.float64) / np.asarray(std, dtype=np.float64)).astype(np.float32)

    def rng_for(self, index: int) -> np.random.Generator | None:
        """The augmentation generator of sample `index` (None without augmentation; see the class doc)."""
        if self.augment is None:
            return None
        if self.augment_seed is not None:
            return np.random.default_rng([*self.augment_seed, int(index)])
        return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))

    @classmethod
    def from_spec(cls, spec: PoseSpec, *, encode_targets: bool = False, augment: AugmentConfig | None = None,
                  padding: float = 1.25) -> TopDownTransform:
        """The transform a model's spec implies: its input and heatmap sizes, keypoint set and
        normalisation; the spec's codec encodes targets only when `encode_targets` (training)."""
        codec = build_codec(spec) if encode_targets else None
        n = spec.normalisation
        return cls(spec.input_wh, spec.heatmap_wh, codec, spec.keypoints, augment=augment,
                   padding=padding, mean=n.mean, std=n.std, channel_order=n.channel_order)

    def draw(self, center, size, keypoints, visible, rng: np.random.Generator | None) -> _Draw:
        """The random centre/size/rotation/flip for one sample (identity when augment is None)."""
        d = _Draw(np.asarray(center, np.float64), np.asarray(size, np.float64))
        cfg = self.augment
        if cfg is None or rng is None:
            return d
        if (cfg.half_body_prob > 0 and self.keypoints.upper_body
                and int((visible > 0).sum()) > cfg.half_body_min_joints and rng.random() < cfg.half_body_prob):
            hb = _half_body(keypoints, visible, self.keypoints, cfg, self.aspect_ratio, rng)
            if hb is not None:
                d.center, d.size = hb
                d.half_body = True
        sf, rf = cfg.scale_factor, cfg.rotation_factor
        d.size = d.size * float(np.clip(rng.standard_normal() * sf + 1, 1 - sf, 1 + sf))
        if rng.random() < cfg.rotation_prob:
            d.rotation = float(np.clip(rng.standard_normal() * rf, -2 * rf, 2 * rf))
        d.flip = bool(rng.random() < cfg.flip_prob)
        # drawn only when enabled, so that configs without it keep their random stream
        if cfg.shift_prob > 0 and cfg.shift_factor > 0 and rng.random() < cfg.shift_prob:
            d.center = d.center + rng.uniform(-1.0, 1.0, 2) * cfg.shift_factor * d.size
        return d

    def __call__(self, image: np.ndarray, center, size, keypoints, visible,
                 rng: np.random.Generator | None = None, meta: dict | None = None) -> dict:
        """image: RGB uint8 (H, W, 3); centre (x, y) and size (w, h) in image pixels; keypoints (K, 2) image
        pixels and visible (K,) COCO flags. Returns the sample dict (see dmpose.data.coco)."""
        keypoints = np.asarray(keypoints, dtype=np.float64)
        visible = np.asarray(visible)
        d = self.draw(center, size, keypoints, visible, rng)
        m_in = crop_affine(d.center, d.size, d.rotation, self.input_wh, flip=d.flip)
        m_hm = crop_affine(d.center, d.size, d.rotation, self.heatmap_wh, flip=d.flip)
        crop = warp_affine(image, m_in, self.input_wh)
        kp_hm = apply_affine(keypoints, m_hm)
        vis = visible
        if d.flip:
            perm = self.keypoints.flip_index
            kp_hm, vis = kp_hm[perm], vis[perm]
        # cropping alone when there is no codec (evaluation, prediction): no targets are encoded
        target = self.codec.encode(kp_hm, vis) if self.codec is not None else {}
        weights = keypoint_weights(kp_hm, vis, self.heatmap_wh)
        img = np.empty((3, self.input_wh[1], self.input_wh[0]), np.float32)
        for ch in range(3):  # channel-first normalisation without float temporaries of the whole crop
            np.multiply(crop[:, :, self.channels[ch]], self.scale[ch], out=img[ch])
            img[ch] += self.offset[ch]
        sample_meta = dict(meta or {})
        sample_meta.update(
            center=d.center.copy(), size=d.size.copy(), rotation=d.rotation, flipped=d.flip,
            half_body=d.half_body, affine_input=m_in, affine_heatmap=m_hm,
        )
        return {
            "image": torch.from_numpy(img),
            "keypoints_hm": torch.from_numpy(np.where(weights[:, None] > 0, kp_hm, 0.0).astype(np.float32)),
            "weights": torch.from_numpy(weights),
            "target": {k: torch.from_numpy(v) for k, v in target.items()},
            "meta": sample_meta,
        }
