"""The pose spec: every fact a pose model carries, defined and validated once.

A `PoseSpec` says what a checkpoint's network is and how to use it: the architecture, the keypoint
set (names, flip pairs as indices, skeleton, OKS sigmas, half-body split), the input and heatmap sizes
(always (W, H), the order is in the name), the output stride, the image normalisation and the codec
(which fixes the decode rule and the map the decode reads). Transforms, evaluation, export, convert,
the trainer and the predictor take their facts from it; nothing else decides sizes, decode or joints.

Convention: pixel centres sit at integer coordinates in every image space (input crop and heatmap);
the heatmap's outer edges are the crop's outer edges, so `input_wh == heatmap_wh * output_stride`.

The spec is written to checkpoint metadata as JSON under the key ``spec`` and validated on read;
`PoseSpec.from_legacy_meta` rebuilds one from the field-per-key layout written before the spec
existed (``input_size``/``heatmap_size`` as [H, W], ``keypoint_names``, ``flip_pairs``, ``decode``).

`DMLossOptions` is the one validated set of distribution-matching loss options, used by `dm_loss`,
`DMLoss`, training configs and the checkpoint's loss field.
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dmpose.constants import GRAD_MODES, LOSS_BACKENDS

__all__ = [
    "DECODE_RULES",
    "SUPPLIER_MAPS",
    "KeypointSpec",
    "Normalisation",
    "CodecSpec",
    "PoseSpec",
    "DMLossOptions",
    "SpecError",
    "format_validation_error",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

DECODE_RULES = ("2x2", "argmax")
#: The map the DM loss normalises into suppliers, and so the map the decode must read (see
#: `dmpose.suppliers`): "relu" is the paper's relu(H), "softplus" never dies; "raw" is H itself (MSE models).
SUPPLIER_MAPS = ("relu", "softplus", "raw")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class SpecError(ValueError):
    """A spec (or loss-options) field is invalid; the message names the source and the field."""


def format_validation_error(err: ValidationError, source: str, prefix: str = "") -> str:
    """One line per problem: `source: field a.b: message (got value)`."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        got = e.get("input")
        shown = repr(got) if not isinstance(got, dict) else "{...}"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "value_error":  # our own validators name the field in the message
            lines.append(f"{source}: {f'field {loc}: ' if loc else ''}{msg}")
        else:
            lines.append(f"{source}: field {loc or '<root>'}: {msg} (got {shown[:80]})")
    return "\n".join(lines)


class KeypointSpec(BaseModel):
    """A keypoint set by index: joint names in the dataset's order, pairs as joint indices."""

    model_config = _FROZEN

    name: str = Field(min_length=1)
    names: tuple[str, ...] = Field(min_length=1)
    flip_pairs: tuple[tuple[int, int], ...] = ()
    skeleton: tuple[tuple[int, int], ...] = ()
    sigmas: tuple[float, ...] | None = None
    upper_body: tuple[int, ...] = ()

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    @model_validator(mode="after")
    def _check(self) -> KeypointSpec:
        k = len(self.names)
        if len(set(self.names)) != k:
            raise ValueError(f"names has duplicates: {sorted({n for n in self.names if self.names.count(n) > 1})}")
        for field in ("flip_pairs", "skeleton"):
            for a, b in getattr(self, field):
                if not (0 <= a < k and 0 <= b < k) or a == b:
                    raise ValueError(f"{field} entry {[a, b]} must be two different joint indices in [0, {k})")
        seen = [i for p in self.flip_pairs for i in p]
        if len(seen) != len(set(seen)):
            raise ValueError("flip_pairs: a joint appears in more than one pair")
        if self.sigmas is not None:
            if len(self.sigmas) != k:
                raise ValueError(f"sigmas must list {k} values (one per joint), got {len(self.sigmas)}")
            if not all(math.isfinite(s) and s > 0 for s in self.sigmas):
                raise ValueError("sigmas must be finite and > 0")
        if not all(0 <= i < k for i in self.upper_body):
            raise ValueError(f"upper_body indices must lie in [0, {k})")
        return self

    @property
    def flip_index(self) -> tuple[int, ...]:
        """The one flip permutation p: flipped[..., j, :] = original[..., p[j], :] (left <-> right)."""
        from dmpose.data.keypoints import flip_permutation

        return flip_permutation(self.flip_pairs, self.num_keypoints)

    @classmethod
    def from_keypoint_set(cls, ks: Any) -> KeypointSpec:
        """From a `dmpose.data.keypoints.KeypointSet` (the YAML files are the only source of sets)."""
        return cls(name=ks.name, names=ks.names, flip_pairs=ks.flip_pairs, skeleton=ks.skeleton,
                   sigmas=ks.sigmas, upper_body=ks.upper_body)

    @classmethod
    def builtin(cls, name: str) -> KeypointSpec:
        """A built-in set ("coco17", "mpii16") or a keypoint YAML file, by `load_keypoint_set`."""
        from dmpose.data.keypoints import load_keypoint_set

        return cls.from_keypoint_set(load_keypoint_set(name))

    def to_keypoint_set(self) -> Any:
        from dmpose.data.keypoints import KeypointSet

        return KeypointSet(self.name, self.names, self.flip_pairs, self.sigmas, self.skeleton, self.upper_body)


class Normalisation(BaseModel):
    """Input normalisation: x = (pixel / 255 - mean) / std per channel, channels in `channel_order`
    (the order of the network's input channels; images are converted to it before normalising)."""

    model_config = _FROZEN

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: Literal["RGB", "BGR"] = "RGB"

    @field_validator("mean", "std")
    @classmethod
    def _finite(cls, v: tuple[float, ...], info) -> tuple[float, ...]:
        if not all(math.isfinite(x) for x in v):
            raise ValueError(f"{info.field_name} must be finite")
        if info.field_name == "std" and not all(x > 0 for x in v):
            raise ValueError("std must be > 0")
        return v


class CodecSpec(BaseModel):
    """Targets and decoding. name "dm": the dot itself is the target (DM loss), decode "2x2" by default;
    "gaussian": Gaussian heatmaps (MSE), sigma and flavour ("official" peak at the rounded pixel, as in
    the HRNet code; "unbiased" at the sub-pixel dot), decode "argmax" by default.

    `supplier_map` names the map the loss was trained on and so the one the decode reads ("relu", the
    paper's, or "softplus" with `supplier_beta` for DM — `dmpose.suppliers`; "raw" for MSE, whose
    heatmaps are read as they are).
    `joint_threshold` is the rescoring threshold on the decode's confidence (None: the decode's default).
    """

    model_config = _FROZEN

    name: Literal["dm", "gaussian"] = "dm"
    decode: Literal["2x2", "argmax"] | None = None
    supplier_map: Literal["relu", "softplus", "raw"] | None = None
    supplier_beta: float = Field(default=1.0, gt=0.0, allow_inf_nan=False)
    sigma: float | None = None
    flavour: Literal["official", "unbiased"] | None = None
    joint_threshold: float | None = Field(default=None, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _defaults(self) -> CodecSpec:
        # Fill the name-dependent defaults so that a spec always states its decode rule and map.
        set_ = object.__setattr__
        if self.name == "dm":
            if self.sigma is not None or self.flavour is not None:
                raise ValueError("sigma and flavour belong to the gaussian codec, not dm")
            if self.decode is None:
                set_(self, "decode", "2x2")
            if self.supplier_map is None:
                set_(self, "supplier_map", "relu")
        else:
            if self.sigma is None:
                set_(self, "sigma", 2.0)
            if not (math.isfinite(self.sigma) and self.sigma > 0):
                raise ValueError(f"sigma must be finite and > 0, got {self.sigma}")
            if self.flavour is None:
                set_(self, "flavour", "official")
            if self.decode is None:
                set_(self, "decode", "argmax")
            if self.supplier_map is None:
                set_(self, "supplier_map", "raw")
        return self


class PoseSpec(BaseModel):
    """What a pose model is and how to feed and read it (module docstring)."""

    model_config = _FROZEN

    arch: str = Field(min_length=1)
    keypoints: KeypointSpec
    input_wh: tuple[int, int]
    heatmap_wh: tuple[int, int] | None = None
    output_stride: int = Field(default=4, ge=1)
    normalisation: Normalisation = Normalisation()
    codec: CodecSpec = CodecSpec()

    @property
    def num_joints(self) -> int:
        return self.keypoints.num_keypoints

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.input_wh[1], self.input_wh[0]

    @property
    def heatmap_hw(self) -> tuple[int, int]:
        return self.heatmap_wh[1], self.heatmap_wh[0]

    @property
    def decode(self) -> str:
        return self.codec.decode

    @model_validator(mode="after")
    def _sizes(self) -> PoseSpec:
        w, h = self.input_wh
        s = self.output_stride
        if w < 8 or h < 8:
            raise ValueError(f"input_wh must be at least 8x8 pixels, got {self.input_wh}")
        if w % s or h % s:
            raise ValueError(f"input_wh {self.input_wh} must be divisible by output_stride {s}")
        expected = (w // s, h // s)
        if self.heatmap_wh is None:
            object.__setattr__(self, "heatmap_wh", expected)
        elif tuple(self.heatmap_wh) != expected:
            raise ValueError(f"heatmap_wh {self.heatmap_wh} != input_wh / output_stride = {expected}")
        return self

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, arch: str, keypoints: str | KeypointSpec = "coco17", input_wh=(192, 256), *,
              output_stride: int = 4, codec: CodecSpec | dict | None = None,
              normalisation: Normalisation | dict | None = None) -> PoseSpec:
        """Convenience constructor; `keypoints` is a built-in set name, a YAML path or a KeypointSpec."""
        kps = keypoints if isinstance(keypoints, KeypointSpec) else KeypointSpec.builtin(str(keypoints))
        return cls.validated(dict(arch=arch, keypoints=kps, input_wh=tuple(input_wh), output_stride=output_stride,
                                  codec=codec if codec is not None else CodecSpec(),
                                  normalisation=normalisation if normalisation is not None else Normalisation()))

    @classmethod
    def validated(cls, data: dict, source: str = "spec") -> PoseSpec:
        """`PoseSpec(**data)` with errors as one `SpecError` naming `source` and each bad field."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise SpecError(format_validation_error(e, source)) from None

    def replace(self, **changes: Any) -> PoseSpec:
        """A copy with fields changed, validated again (heatmap_wh is re-derived unless given)."""
        data = self.model_dump()
        if "input_wh" in changes or "output_stride" in changes:
            data["heatmap_wh"] = None
        data.update({k: (v.model_dump() if isinstance(v, BaseModel) else v) for k, v in changes.items()})
        return self.validated(data)

    # ---- checkpoint metadata ------------------------------------------------------------------
    META_KEY: ClassVar[str] = "spec"

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, source: str = "spec") -> PoseSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"{source}: field spec is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise SpecError(f"{source}: field spec must be a JSON object, got {type(data).__name__}")
        return cls.validated(data, source)

    @classmethod
    def from_legacy_meta(cls, meta: dict, source: str = "checkpoint") -> PoseSpec:
        """A spec from the field-per-key metadata of checkpoints written before the spec existed.

        input_size/heatmap_size were [H, W]; a missing keypoint list means COCO-17 when num_joints is 17
        and MPII-16 when it is 16 (the only sets such files were written with); the decode rule comes from
        `decode`, else from the loss name (dm -> 2x2, else argmax); a missing input size is COCO's 256x192.
        """
        k = meta.get("num_joints")
        names = meta.get("keypoint_names")
        if names is None:
            builtin = {17: "coco17", 16: "mpii16"}.get(k)
            if builtin is None:
                raise SpecError(f"{source}: field keypoint_names is missing and {k} joints match no built-in set")
            kps = KeypointSpec.builtin(builtin)
        else:
            try:
                base = KeypointSpec.builtin({17: "coco17", 16: "mpii16"}.get(len(names), ""))
            except (FileNotFoundError, ValueError):
                base = None
            same = base is not None and tuple(base.names) == tuple(names)
            kps = KeypointSpec.model_validate(dict(
                name=base.name if same else "custom", names=tuple(names),
                flip_pairs=tuple(map(tuple, meta.get("flip_pairs") or ())),
                skeleton=tuple(map(tuple, meta.get("skeleton") or ())),
                sigmas=base.sigmas if same else None, upper_body=base.upper_body if same else ()))
        size = meta.get("input_size") or [256, 192]
        loss = meta.get("loss")
        loss_name = loss.get("name") if isinstance(loss, dict) else loss
        decode = meta.get("decode") or ("2x2" if loss_name == "dm" else "argmax")
        codec = CodecSpec(name="dm") if decode == "2x2" else CodecSpec(name="gaussian", decode="argmax")
        hm = meta.get("heatmap_size")
        stride = size[0] // hm[0] if hm else 4
        return cls.validated(dict(arch=meta.get("arch"), keypoints=kps, input_wh=(size[1], size[0]),
                                  output_stride=stride, codec=codec), source)


_LOSS_CHOICES = {
    "demander_mode": ("subpixel", "naive"),
    "suppliers": ("relu", "softplus"),
    "cost": ("l2",),
    "grad": GRAD_MODES,
    "backend": LOSS_BACKENDS,
    "reduction": ("mean", "sum", "none"),
    "nonfinite": ("raise", "mask"),
}


class DMLossOptions(BaseModel):
    """The distribution-matching loss options, validated once (see `dmpose.loss.dm_loss` for meaning).

    `cost` is reserved: only "l2" (Euclidean distance in heatmap pixels) exists. `nonfinite`: "raise"
    (a NaN/Inf heatmap is a ValueError naming its (batch, joint)) or "mask" (such joints are left out
    and counted in the loss's stats).
    """

    model_config = _FROZEN

    eps: float = 1.0
    max_iters: int = 1000
    tol: float = 1e-5
    demander_mode: Literal["subpixel", "naive"] = "subpixel"
    suppliers: Literal["relu", "softplus"] = "softplus"  # relu (the paper's) dies from scratch: docs/training.md
    # beta 8: the same contrast of the normalised map from an 8x smaller range of H, measured to localise better
    # than 1 and 4 at equal steps (docs/dm-training.md, fourth session); the default was 1 before
    supplier_beta: float = Field(default=8.0, gt=0.0, allow_inf_nan=False)
    cost: Literal["l2"] = "l2"
    grad: Literal["exact", "envelope"] = "exact"
    backend: Literal["auto", "torch", "triton", "cpu"] = "auto"
    reduction: Literal["mean", "sum", "none"] = "mean"
    nonfinite: Literal["raise", "mask"] = "raise"

    # Messages name the field and the value (the wording dm_loss always had).
    @field_validator("eps", "tol", mode="before")
    @classmethod
    def _positive_number(cls, v: Any, info) -> float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if info.field_name == "eps" and not (ok and v > 0):
            raise ValueError(f"eps must be a finite number > 0, got {v!r}")
        if info.field_name == "tol" and not (ok and v >= 0):
            raise ValueError(f"tol must be a finite number >= 0, got {v!r}")
        return float(v)

    @field_validator("max_iters", mode="before")
    @classmethod
    def _iters(cls, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"max_iters must be an integer >= 1, got {v!r}")
        return v

    @field_validator(*_LOSS_CHOICES, mode="before")
    @classmethod
    def _choice(cls, v: Any, info) -> str:
        choices = _LOSS_CHOICES[info.field_name]
        if v not in choices:
            raise ValueError(f"{info.field_name} must be one of {choices}, got {v!r}")
        return v

    @classmethod
    def validated(cls, data: dict | None = None, source: str = "dm_loss", **kwargs) -> DMLossOptions:
        try:
            return cls.model_validate({**(data or {}), **kwargs})
        except ValidationError as e:
            raise SpecError(format_validation_error(e, source)) from None
