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
from typing import Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from dmpose.constants import GradMode, LossBackend
from dmpose.keypoints import KeypointSpec

__all__ = [
    "DecodeRule",
    "SupplierMap",
    "DecodedMap",
    "DECODE_RULES",
    "SUPPLIER_MAPS",
    "DECODED_MAPS",
    "JOINT_THRESHOLDS",
    "KeypointSpec",
    "Normalisation",
    "CodecSpec",
    "PoseSpec",
    "DMLossOptions",
    "SpecError",
    "legacy_codec",
    "format_validation_error",
    "describe_error",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

# Every choice is listed once, here, as the Literal type of the field that holds it; the tuples derive from them.
#: Decode rules: "2x2" (the DM decode, `dmpose.decode.decode_2x2`), "argmax" (HRNet's, `decode_argmax`).
DecodeRule = Literal["2x2", "argmax"]
#: The map the DM loss normalises into suppliers (`dmpose.suppliers`): "relu" is the paper's relu(H), "softplus"
#: (softplus(beta H) / beta) never dies.
SupplierMap = Literal["relu", "softplus"]
#: The map a decode reads: a supplier map (normalised), or "raw", H itself (MSE models).
DecodedMap = Literal[SupplierMap, "raw"]
DemanderMode = Literal["subpixel", "naive"]
Reduction = Literal["mean", "sum", "none"]
NonFinite = Literal["raise", "mask"]
DECODE_RULES: tuple[str, ...] = get_args(DecodeRule)
SUPPLIER_MAPS: tuple[str, ...] = get_args(SupplierMap)
DECODED_MAPS: tuple[str, ...] = get_args(DecodedMap)
#: The rescoring joint threshold of each decode rule (on its confidence): HRNet's 0.2 on an MSE heatmap's peak;
#: 0.05 on the 2x2 window's share of the mass (a `CodecSpec.joint_threshold` overrides it).
JOINT_THRESHOLDS: dict[str, float] = {"argmax": 0.2, "2x2": 0.05}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class SpecError(ValueError):
    """A spec (or loss-options) field is invalid; the message names the source and the field."""


def describe_error(e: dict, loc: str, label: str = "") -> str:
    """One pydantic error as "LABELloc: message (got value)" (our own validators' messages name the value
    already, so theirs come without "(got ...)"); the one formatter of spec and config errors."""
    got = e.get("input")
    shown = "{...}" if isinstance(got, dict) else repr(got)[:80]
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "value_error":
        return f"{label}{loc}: {msg}" if loc else msg
    return f"{label}{loc or '<root>'}: {msg} (got {shown})"


def format_validation_error(err: ValidationError, source: str, prefix: str = "") -> str:
    """One line per problem: `source: field a.b: message (got value)`."""
    return "\n".join(f"{source}: " + describe_error(e, ".".join(str(p) for p in (prefix, *e["loc"]) if p != ""),
                                                    "field ") for e in err.errors())


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


class DMLossOptions(BaseModel):
    """The distribution-matching loss options, validated once (see `dmpose.loss.dm_loss` for meaning).

    The cost is the Euclidean distance d in heatmap pixels ("l2", the paper's) raised to `cost_power` p in (0, 1]:
    p = 1 is the paper's; p < 1 is concave (d^p is still a metric), so moving mass the last pixel onto the dot
    earns more than moving it a pixel far away (docs/findings.md). p > 1 is refused: its costs to the four
    demanders differ by more than sqrt(2) far from the dot, which the row-shifted fp32 kernels cannot take.
    `nonfinite`: "raise"
    (a NaN/Inf heatmap is a ValueError naming its (batch, joint)) or "mask" (such joints are left out
    and counted in the loss's stats).
    """

    model_config = _FROZEN

    eps: float = 1.0
    max_iters: int = 1000
    tol: float = 1e-5
    demander_mode: DemanderMode = "subpixel"
    suppliers: SupplierMap = "softplus"  # relu, the paper's, dies from scratch (docs/training.md)
    supplier_beta: float = Field(default=8.0, gt=0.0, allow_inf_nan=False)  # softplus(beta H) / beta
    cost: Literal["l2"] = "l2"
    cost_power: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)  # C = d ** cost_power
    grad: GradMode = "exact"
    backend: LossBackend = "auto"
    reduction: Reduction = "mean"
    nonfinite: NonFinite = "raise"

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

    @field_validator("demander_mode", "suppliers", "cost", "grad", "backend", "reduction", "nonfinite", mode="before")
    @classmethod
    def _choice(cls, v: Any, info) -> str:
        choices = get_args(cls.model_fields[info.field_name].annotation)
        if v not in choices:
            raise ValueError(f"{info.field_name} must be one of {choices}, got {v!r}")
        return v

    @classmethod
    def validated(cls, data: dict | None = None, source: str = "dm_loss", **kwargs) -> DMLossOptions:
        try:
            return cls.model_validate({**(data or {}), **kwargs})
        except ValidationError as e:
            raise SpecError(format_validation_error(e, source)) from None


class CodecSpec(BaseModel):
    """Targets and decoding. name "dm": the dot itself is the target (DM loss), decode "2x2" by default;
    "gaussian": Gaussian heatmaps (MSE), sigma and flavour ("official" peak at the rounded pixel, as in
    the HRNet code; "unbiased" at the sub-pixel dot), decode "argmax" by default.

    `supplier_map` names the map the loss was trained on and so the one the decode reads ("relu", the
    paper's, or "softplus" with `supplier_beta` for DM — `dmpose.suppliers`; "raw" for MSE, whose
    heatmaps are read as they are). A DM codec's defaults are the DM loss's (`DMLossOptions`).
    `joint_threshold` is the rescoring threshold on the decode's confidence (None: `JOINT_THRESHOLDS` of the
    decode rule; `rescore_threshold` resolves it).
    """

    model_config = _FROZEN

    name: Literal["dm", "gaussian"] = "dm"
    decode: DecodeRule | None = None
    supplier_map: DecodedMap | None = None
    supplier_beta: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)
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
            loss = DMLossOptions.model_fields
            if self.decode is None:
                set_(self, "decode", "2x2")
            if self.supplier_map is None:
                set_(self, "supplier_map", loss["suppliers"].default)
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
        if self.supplier_beta is None:  # only softplus reads it
            softplus = self.supplier_map == "softplus"
            set_(self, "supplier_beta", DMLossOptions.model_fields["supplier_beta"].default if softplus else 1.0)
        return self

    @property
    def rescore_threshold(self) -> float:
        """The rescoring joint threshold: `joint_threshold`, else the decode rule's (`JOINT_THRESHOLDS`)."""
        return float(self.joint_threshold) if self.joint_threshold is not None else JOINT_THRESHOLDS[self.decode]

    def with_decode(self, decode: str | None) -> CodecSpec:
        """This codec decoding by `decode` instead (None: unchanged). Crossing a rule also changes the map it
        reads: a DM codec keeps its supplier map for "2x2" and reads the raw heatmaps for "argmax"; a raw
        (MSE) map is read through relu for "2x2" (the paper's decode of a heatmap)."""
        if decode is None or decode == self.decode:
            return self
        if decode not in DECODE_RULES:
            raise ValueError(f"unknown decode rule {decode!r}; expected one of {DECODE_RULES}")
        if decode == "argmax":
            supplier = "raw"
        else:
            supplier = "relu" if self.supplier_map == "raw" else self.supplier_map
        data = {**self.model_dump(), "decode": decode, "supplier_map": supplier}
        if supplier != self.supplier_map:
            data["supplier_beta"] = None
        return CodecSpec.model_validate(data)


class PoseSpec(BaseModel):
    """What a pose model is and how to feed and read it (module docstring).

    `relative_position_bias`: whether the attention logits get the relative position bias (architectures with
    window attention, HRFormer; `dmpose.models.registry.has_position_bias`). On for dmpose-built networks and
    MMPose's HRFormer weights, off for weights from the official HRFormer pose code, which builds the bias
    table but never adds it. Written only when off, so a file without it (every older one) means on.
    """

    model_config = _FROZEN

    arch: str = Field(min_length=1)
    keypoints: KeypointSpec
    input_wh: tuple[int, int]
    heatmap_wh: tuple[int, int] | None = None
    output_stride: int = Field(default=4, ge=1)
    normalisation: Normalisation = Normalisation()
    codec: CodecSpec = CodecSpec()
    relative_position_bias: bool = Field(default=True, strict=True)

    @model_serializer(mode="wrap")
    def _dump(self, handler) -> dict[str, Any]:
        data = handler(self)
        if self.relative_position_bias:  # the default is left out: such files stay what older readers accept
            data.pop("relative_position_bias", None)
        return data

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

    def with_decode(self, decode: str | None) -> PoseSpec:
        """This spec decoding by `decode` ("2x2", "argmax"; None: unchanged), as `CodecSpec.with_decode`."""
        codec = self.codec.with_decode(decode)
        return self if codec is self.codec else self.replace(codec=codec)

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
              normalisation: Normalisation | dict | None = None, relative_position_bias: bool = True) -> PoseSpec:
        """Convenience constructor; `keypoints` is a built-in set name, a YAML path or a KeypointSpec."""
        kps = keypoints if isinstance(keypoints, KeypointSpec) else KeypointSpec.builtin(str(keypoints))
        return cls.validated(dict(arch=arch, keypoints=kps, input_wh=tuple(input_wh), output_stride=output_stride,
                                  codec=codec if codec is not None else CodecSpec(),
                                  normalisation=normalisation if normalisation is not None else Normalisation(),
                                  relative_position_bias=relative_position_bias))

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
        try:
            codec = legacy_codec(meta.get("loss"), meta.get("decode"))
        except (ValidationError, ValueError, TypeError) as e:
            raise SpecError(f"{source}: fields loss/decode do not describe a codec: {e}") from None
        hm = meta.get("heatmap_size")
        stride = size[0] // hm[0] if hm else 4
        return cls.validated(dict(arch=meta.get("arch"), keypoints=kps, input_wh=(size[1], size[0]),
                                  output_stride=stride, codec=codec), source)


def legacy_codec(loss: Any, decode: str | None) -> CodecSpec:
    """The codec of a file written before the spec existed, from every field it carries: the loss field (a name,
    or {"name", ...options}: a DM file's suppliers and supplier_beta, an MSE file's sigma and flavour) and the
    decode rule (default: the loss's own). A DM loss field without `suppliers` predates that option: relu, the
    only map then."""
    opts = loss if isinstance(loss, dict) else {}
    name = opts.get("name") if isinstance(loss, dict) else loss
    if name is None:
        name = "dm" if decode == "2x2" else "mse"
    if name == "dm":
        supplier = opts.get("suppliers", "relu")
        beta = opts.get("supplier_beta") if supplier == "softplus" else None
        codec = CodecSpec(name="dm", supplier_map=supplier, supplier_beta=beta)
    else:
        codec = CodecSpec(name="gaussian", sigma=opts.get("sigma"), flavour=opts.get("flavour"))
    return codec.with_decode(decode)
