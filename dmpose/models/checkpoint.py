"""The dmpose checkpoint: one `.safetensors` file holding the weights and string metadata from which
`load_model` rebuilds the network with nothing else.

Metadata fields (safetensors metadata values are strings; structured values are stored as JSON):

=================  ======  =================================================================
field              stored  meaning
=================  ======  =================================================================
format             text    ``dmpose-checkpoint/1`` (required)
spec               JSON    the `dmpose.spec.PoseSpec` (arch, keypoints, input_wh, heatmap_wh, stride,
                           normalisation, codec, relative_position_bias when false); absent in files
                           written before the spec existed
arch               text    registry name, e.g. ``hrnet_w32`` (required)
num_joints         JSON    heatmap channels K (required)
dmpose_version     text    the dmpose version that wrote the file
input_size         JSON    [height, width] of the input crop in pixels, e.g. [256, 192]
heatmap_size       JSON    [height, width] of the heatmaps (input_size / output stride)
keypoint_names     JSON    K joint names
flip_pairs         JSON    [[left, right], ...] joint indices swapped by a horizontal flip
skeleton           JSON    [[a, b], ...] joint index pairs drawn as limbs
loss               JSON    the training loss: a name or a dict of options
decode             text    ``2x2`` (distribution-matching decode) or ``argmax``
config             text    the resolved training configuration as YAML
extra              JSON    any other keys given to `save_checkpoint` (returned flattened)
=================  ======  =================================================================

The spec is the source of truth: when present the field-per-key values below it (input_size ... decode)
are written from it, for readability and for older readers. `read_checkpoint_spec` returns the spec of
any file (the stored one, else `PoseSpec.from_legacy_meta` of the old fields), validated on read; a bad
field raises `dmpose.spec.SpecError` naming the file and the field.

Coordinates: heatmaps cover the input crop's region; heatmap pixel centres sit at integer
coordinates and the heatmap's outer edges (-0.5 ... W_hm - 0.5) are the crop's outer edges.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from dmpose.atomic import atomic_write_bytes
from dmpose.models.onnx_model import OnnxPoseModel, is_onnx
from dmpose.models.registry import OUTPUT_STRIDE, build_from_spec, build_model
from dmpose.spec import DECODE_RULES, DMLossOptions, PoseSpec, SpecError, legacy_codec
from dmpose.version import __version__

__all__ = ["FORMAT", "save_checkpoint", "load_model", "load_pose_model", "read_checkpoint_meta", "read_checkpoint_spec",
           "model_meta", "checkpoint_summary", "spec_meta"]

logger = logging.getLogger(__name__)

FORMAT = "dmpose-checkpoint/1"
REQUIRED = ("format", "arch", "num_joints")
TEXT_FIELDS = ("format", "arch", "dmpose_version", "decode", "config")
JSON_FIELDS = ("spec", "num_joints", "input_size", "heatmap_size", "keypoint_names", "flip_pairs", "skeleton", "loss")
# the field-per-key metadata that describes a model without a spec (files written before the spec existed)
LEGACY_SPEC_FIELDS = ("input_size", "heatmap_size", "keypoint_names", "flip_pairs", "skeleton", "decode")
FIELD_ORDER = ("format", "spec", "arch", "num_joints", "dmpose_version", "input_size", "heatmap_size", "keypoint_names",
               "flip_pairs", "skeleton", "loss", "decode", "config", "extra")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The network inside torch.compile (`_orig_mod`) and (Distributed)DataParallel (`module`) wrappers."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def model_meta(model: nn.Module) -> dict[str, Any]:
    """The metadata a model carries: `arch`, `num_joints`, plus whatever `load_model` attached."""
    for attr in ("arch", "num_joints"):
        if not hasattr(model, attr):
            raise ValueError(f"{type(model).__name__} has no `{attr}` attribute; build it with dmpose.build_model")
    meta = dict(getattr(model, "checkpoint_meta", {}))
    meta.update(arch=model.arch, num_joints=model.num_joints)
    return meta


def spec_meta(spec: PoseSpec) -> dict[str, Any]:
    """The field-per-key metadata a spec implies (the old layout, kept readable next to ``spec``)."""
    kps = spec.keypoints
    return {"spec": spec.model_dump(mode="json"), "input_size": list(spec.input_hw),
            "heatmap_size": list(spec.heatmap_hw), "keypoint_names": list(kps.names),
            "flip_pairs": [list(p) for p in kps.flip_pairs], "skeleton": [list(p) for p in kps.skeleton],
            "decode": spec.decode}


def _validate(meta: dict[str, Any]) -> None:
    k = meta["num_joints"]
    for field in ("input_size", "heatmap_size"):
        v = meta.get(field)
        if v is None:
            continue
        if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(s, int) and s > 0 for s in v)):
            raise ValueError(f"metadata {field} must be [height, width] positive ints, got {v!r}")
    names = meta.get("keypoint_names")
    if names is not None and (len(names) != k or not all(isinstance(n, str) for n in names)):
        raise ValueError(f"metadata keypoint_names must be {k} strings (num_joints), got {names!r}")
    for field in ("flip_pairs", "skeleton"):
        pairs = meta.get(field)
        if pairs is None:
            continue
        for pair in pairs:
            if not (len(pair) == 2 and all(isinstance(i, int) and 0 <= i < k for i in pair)):
                raise ValueError(f"metadata {field} entries must be index pairs in [0, {k}), got {pair!r}")
    decode = meta.get("decode")
    if decode is not None and decode not in DECODE_RULES:
        raise ValueError(f"metadata decode must be one of {DECODE_RULES}, got {decode!r}")


def _encode(meta: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    extra = {}
    for key, value in meta.items():
        if value is None:
            continue
        if key in TEXT_FIELDS:
            if key == "config" and not isinstance(value, str):
                value = yaml.safe_dump(value, sort_keys=False)
            if not isinstance(value, str):
                raise ValueError(f"metadata {key} must be a string, got {type(value).__name__}")
            out[key] = value
        elif key in JSON_FIELDS:
            out[key] = json.dumps(value)
        else:
            extra[key] = value
    if extra:
        try:
            out["extra"] = json.dumps(extra)
        except TypeError as e:
            raise ValueError(f"extra metadata must be JSON-serialisable: {e}") from None
    return out


def _decode(raw: dict[str, str], path: Path) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    order = [k for k in FIELD_ORDER if k in raw] + sorted(k for k in raw if k not in FIELD_ORDER)
    for key, value in ((k, raw[k]) for k in order):
        try:
            if key in JSON_FIELDS:
                meta[key] = json.loads(value)
            elif key == "extra":
                extra = json.loads(value)
                if not isinstance(extra, dict):
                    raise SpecError(f"{path}: field extra must be a JSON object, got {type(extra).__name__}")
                clash = sorted(set(extra) & {*FIELD_ORDER, *REQUIRED})
                if clash:
                    raise SpecError(f"{path}: field extra.{clash[0]} shadows the metadata field {clash[0]!r} "
                                    "(extra may only hold other keys)")
                meta.update(extra)
            else:  # text fields, and keys written by other tools, stay strings
                meta[key] = value
        except json.JSONDecodeError as e:
            raise SpecError(f"{path}: metadata field {key!r} is not valid JSON ({e}): {value[:80]!r}") from None
    return meta


def save_checkpoint(model: nn.Module, path: str | os.PathLike, spec: PoseSpec | None = None,
                    meta: dict[str, Any] | None = None) -> Path:
    """Write `model`'s weights, its `spec` and metadata to one `.safetensors` file, atomically.

    `spec` (a PoseSpec; default: the spec stored in the file the model was loaded from, else, unless `meta`
    describes the model by the old fields (`LEGACY_SPEC_FIELDS`), a freshly built model's default `spec`) is written
    under ``spec`` together with the old field-per-key values it implies; its arch and keypoint count must
    be the model's. `meta` adds or overrides fields (see the module docstring); `arch` and `num_joints` come from the
    model and may not contradict it. torch.compile and DataParallel wrappers are unwrapped, so the
    keys are the network's own. `heatmap_size` defaults to `input_size` / output stride. The
    bytes go to a temporary file in the target's directory, are flushed to disk, then renamed over
    `path`: a crash never leaves a partial file under the final name.
    """
    path = Path(path)
    model = unwrap_model(model)
    full = model_meta(model)
    for key in ("arch", "num_joints"):
        if meta and key in meta and meta[key] != full[key]:
            raise ValueError(f"meta[{key!r}]={meta[key]!r} contradicts the model's {key}={full[key]!r}")
    full.update(meta or {})
    full.update(format=FORMAT, dmpose_version=__version__)
    if isinstance(full.get("loss"), DMLossOptions):  # the loss field: {"name": "dm", ...the options}
        full["loss"] = {"name": "dm", **full["loss"].model_dump(mode="json")}
    if spec is None and isinstance(full.get("spec"), dict):
        spec = PoseSpec.validated(full["spec"], source="save_checkpoint spec")
    described = any(k in (meta or {}) for k in LEGACY_SPEC_FIELDS)
    if (spec is None and not described and not hasattr(model, "checkpoint_meta")
            and isinstance(getattr(model, "spec", None), PoseSpec)):
        spec = model.spec  # a freshly built model: build_model's default (a loaded one keeps its file's fields)
        if (meta or {}).get("loss") is not None:  # the loss it was trained with fixes the map its decode reads
            spec = spec.replace(codec=legacy_codec(meta["loss"], None))
    if spec is not None:
        if not isinstance(spec, PoseSpec):
            raise TypeError(f"spec must be a dmpose.spec.PoseSpec, got {type(spec).__name__}")
        if spec.arch != full["arch"] or spec.num_joints != full["num_joints"]:
            raise ValueError(f"spec (arch {spec.arch!r}, {spec.num_joints} joints) contradicts the model "
                             f"(arch {full['arch']!r}, {full['num_joints']} joints)")
        bias = getattr(model, "relative_position_bias", True)
        if spec.relative_position_bias != bias:
            raise ValueError(f"spec relative_position_bias={spec.relative_position_bias} contradicts the model's "
                             f"attention (relative_position_bias={bias})")
        full.update(spec_meta(spec))
    if full.get("input_size") is not None:
        full["input_size"] = list(full["input_size"])
        if full.get("heatmap_size") is None:
            stride = getattr(model, "output_stride", 4)
            full["heatmap_size"] = [s // stride for s in full["input_size"]]
    _validate(full)

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    data = safetensors_bytes(tensors, metadata=_encode(full))
    atomic_write_bytes(path, data)
    logger.info("saved %s checkpoint (%d tensors, %.1f MB) to %s", full["arch"], len(tensors), len(data) / 1e6, path)
    return path


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded metadata of a dmpose checkpoint (no weights are read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path} is not a safetensors file ({e})") from None
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise ValueError(
            f"{path}: metadata lacks required field(s) {', '.join(missing)}; "
            "not a dmpose checkpoint (convert foreign weights with `dmpose convert`)"
        )
    if raw["format"] != FORMAT:
        raise ValueError(f"{path}: unsupported checkpoint format {raw['format']!r} (this dmpose reads {FORMAT!r})")
    meta = _decode(raw, path)
    if isinstance(meta["num_joints"], bool) or not isinstance(meta["num_joints"], int) or meta["num_joints"] < 1:
        raise SpecError(f"{path}: field num_joints must be a positive int, got {meta['num_joints']!r}")
    return meta


def _legacy_checks(meta: dict[str, Any], source: str) -> None:
    """The old fields of a file without ``spec``, checked on read (each error names file and field)."""
    try:
        _validate(meta)
    except (ValueError, TypeError) as e:
        field = next((f for f in FIELD_ORDER if f in str(e)), "metadata")
        raise SpecError(f"{source}: field {field}: {e}") from None
    for key in ("input_size", "heatmap_size"):
        v = meta.get(key)
        if v is not None and any(isinstance(x, bool) for x in v):
            raise SpecError(f"{source}: field {key} must be [height, width] positive ints, got {v!r}")
    inp, hm = meta.get("input_size"), meta.get("heatmap_size")
    if hm is not None:
        expected = tuple(s // OUTPUT_STRIDE for s in (inp or (256, 192)))
        if tuple(hm) != expected:
            raise SpecError(f"{source}: field heatmap_size {tuple(hm)} (H, W) does not match input_size "
                            f"{tuple(inp or (256, 192))} / output stride {OUTPUT_STRIDE} = {expected}")
    if not isinstance(meta.get("arch"), str) or not meta["arch"]:
        raise SpecError(f"{source}: field arch must be a non-empty string, got {meta.get('arch')!r}")


def spec_from_meta(meta: dict[str, Any], source: str) -> PoseSpec:
    """The PoseSpec of decoded metadata: the stored ``spec`` (which must agree with arch and num_joints),
    else one rebuilt from the old fields. Raises SpecError naming `source` and the field."""
    data = meta.get("spec")
    if data is not None:
        if not isinstance(data, dict):
            raise SpecError(f"{source}: field spec must be a JSON object, got {type(data).__name__}")
        spec = PoseSpec.validated(data, source=f"{source}: spec")
        if spec.arch != meta["arch"]:
            raise SpecError(f"{source}: field spec.arch {spec.arch!r} != field arch {meta['arch']!r}")
        if spec.num_joints != meta["num_joints"]:
            raise SpecError(f"{source}: field spec.keypoints has {spec.num_joints} joints but num_joints is "
                            f"{meta['num_joints']}")
        return spec
    _legacy_checks(meta, source)
    return PoseSpec.from_legacy_meta(meta, source=source)


def read_checkpoint_spec(path: str | os.PathLike) -> PoseSpec:
    """The PoseSpec of a dmpose checkpoint (no weights are read), validated; SpecError names file and field."""
    return spec_from_meta(read_checkpoint_meta(path), str(path))


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the network from a dmpose checkpoint's metadata and load its weights strictly.

    Returns the model in eval mode on `map_location`; its metadata is in `model.checkpoint_meta` and its
    spec in `model.spec` (None only for an old file that names no keypoint set the spec could take: a
    custom joint count without keypoint_names; corrupt fields raise SpecError).
    """
    path = Path(path)
    meta = read_checkpoint_meta(path)
    try:
        spec = spec_from_meta(meta, str(path))
    except SpecError as e:
        if "spec" in meta or "no built-in set" not in str(e):
            raise
        logger.info("%s", e)
        spec = None
    try:
        model = build_from_spec(spec) if spec is not None else build_model(meta["arch"], num_joints=meta["num_joints"])
    except ValueError as e:
        raise ValueError(f"{path}: cannot rebuild the model: {e}") from None
    state = load_file(str(path), device=str(map_location))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or misshaped:
        raise ValueError(
            f"{path}: weights do not fit {meta['arch']} with {meta['num_joints']} joints: "
            + list_key_problems(missing=missing, unexpected=unexpected, misshaped=misshaped)
        )
    model.load_state_dict(state, strict=True)
    model.checkpoint_meta = meta
    model.spec = spec
    return model.to(map_location).eval()


def load_pose_model(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """A dmpose checkpoint (`load_model`) or an ONNX file exported by dmpose (`OnnxPoseModel`, run by
    onnxruntime on the CPU), by the file's suffix; either has `spec`, `arch` and `num_joints`."""
    if is_onnx(path):
        return OnnxPoseModel(path)
    return load_model(path, map_location=map_location)


def list_key_problems(limit: int = 10, **groups: list[str]) -> str:
    parts = []
    for name, keys in groups.items():
        if keys:
            shown = ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
            parts.append(f"{len(keys)} {name} ({shown})")
    return "; ".join(parts)


def checkpoint_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Metadata plus what loading reveals: parameter and tensor counts and the file size in bytes."""
    model = load_model(path)
    meta = dict(model.checkpoint_meta)
    meta["parameters"] = sum(p.numel() for p in model.parameters())
    meta["tensors"] = len(model.state_dict())
    meta["file_bytes"] = Path(path).stat().st_size
    return meta
