"""Import foreign weights into a dmpose model.

Accepted sources (read with `torch.load(..., weights_only=True)`, or `.safetensors`):

- official HRNet / SimpleBaseline pose checkpoints: a state dict or a dict with `state_dict`; the
  dmpose attribute names are the official ones, so these load unchanged;
- the same wrapped by (Distributed)DataParallel (`module.` prefix);
- MMPose checkpoints (`backbone.`, `keypoint_head.` (0.x) or `head.` (1.x) prefixes; MMPose's heatmap
  heads name their layers `deconv_layers.*` and `final_layer.*` like the official code);
- ImageNet HRNet classification checkpoints and torchvision-format ResNets as backbone
  initialisation: their classifier parts are dropped and reported, the pose head stays at its
  initialisation (`partial=True`);
- HRFormer pose checkpoints in the official layout (separate `q_proj`/`k_proj`/`v_proj`,
  `out_proj`, `mlp.`) or MMPose 1.x's (fused `qkv`, `proj`, `ffn.`): `hrformer_layout_map` renames
  their block keys to dmpose's, concatenates q, k, v along dim 0, and checks and drops the
  `relative_position_index` buffers (dmpose recomputes them). The official pose code never adds the
  relative position bias to the attention logits (MMPose's port, retrained, does): a model converted from
  the official layout is built, and its spec written, with `relative_position_bias` false.

The converted checkpoint carries a full `PoseSpec` (input size, keypoint set, normalisation, decode):
facts the foreign file does not state come from options, defaulting to the official recipes
(`official_spec`): the official HRNet / SimpleBaseline models are MSE-trained on Gaussian heatmaps
(sigma 2, peak at the rounded pixel), so decode argmax; ImageNet normalisation in RGB; COCO-17 at
192x256 (W x H) for 17 joints, MPII-16 at 256x256 for 16.

The whole mapping is the two short rule lists below: prefixes stripped, and patterns of keys
dropped with a reason, plus per architecture family a layout map (`LAYOUT_MAPS`). Any other key
that is unexpected, missing or mis-shaped is an error listing it.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from dmpose.atomic import check_not_input
from dmpose.models.checkpoint import list_key_problems, save_checkpoint
from dmpose.models.hrformer import relative_position_index
from dmpose.models.registry import DEFAULT_KEYPOINT_SETS, build_model
from dmpose.spec import DECODE_RULES, CodecSpec, KeypointSpec, Normalisation, PoseSpec

__all__ = [
    "ConversionReport",
    "ConversionError",
    "read_foreign_state_dict",
    "unwrap_state_dict",
    "convert_state_dict",
    "convert_checkpoint",
]

logger = logging.getLogger(__name__)

# Wrapper prefixes stripped from every key (`module.` repeatedly, then at most one MMPose prefix).
DATA_PARALLEL_PREFIX = "module."
MMPOSE_PREFIXES = ("backbone.", "keypoint_head.", "head.")

# Keys the target model does not have that are dropped (with this reason) instead of being errors.
DROP_RULES: tuple[tuple[str, str], ...] = (
    (r"^(incre_modules|downsamp_modules|classifier)\.", "HRNet ImageNet classification head"),
    (r"^final_layer\.\d+\.", "HRNet ImageNet classification final_layer (2048 channels)"),
    (r"^stage4\.\d+\.fuse_layers\.[1-9]\d*\.",
     "HRNet classification multi-scale outputs (the pose net keeps the highest resolution)"),
    (r"^fc\.", "ResNet ImageNet classifier"),
)

# Present in PyTorch >= 0.4.1 state dicts only; a missing one is left at its value 0 (it has no
# effect on the outputs unless BN momentum is None).
TRACKING_SUFFIX = ".num_batches_tracked"


@dataclass
class ConversionReport:
    """What happened to every key of the source."""

    arch: str
    num_joints: int
    loaded: list[str] = field(default_factory=list)
    renamed: int = 0
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> source keys (after prefix stripping)
    missing: list[str] = field(default_factory=list)  # left at initialisation (partial loads only)
    head_shape_skipped: list[str] = field(default_factory=list)  # mis-shaped head keys left at init (partial)
    tracking_missing: int = 0  # num_batches_tracked buffers absent from the source
    spec: Any = None  # the PoseSpec written (convert_checkpoint)
    defaulted: list[str] = field(default_factory=list)  # spec facts taken from the official recipe defaults
    layout: str = ""  # the foreign layout a family's layout map recognised ("" if none applied)
    layout_renamed: int = 0  # source keys renamed or merged by that layout map
    relative_position_bias: bool = True  # whether the source's attention adds it (False: official HRFormer pose)

    @property
    def is_partial(self) -> bool:
        return bool(self.missing or self.head_shape_skipped)


class ConversionError(ValueError):
    """The source weights do not fit the target architecture."""


def read_foreign_state_dict(src: str | os.PathLike) -> dict[str, Tensor]:
    """Read a `.pth`/`.pt`/`.ckpt` (weights_only) or `.safetensors` file and unwrap `state_dict`."""
    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"source checkpoint not found: {src}")
    if src.suffix == ".safetensors":
        try:
            obj: Any = load_file(str(src))
        except Exception as e:  # noqa: BLE001  (SafetensorError, OSError, ...)
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"{src} is not a safetensors file ({reason})") from None
    else:
        if src.stat().st_size == 0:
            raise ValueError(f"{src} is empty (0 bytes): not a PyTorch checkpoint")
        try:
            obj = torch.load(src, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001  (torch.load raises many types on foreign bytes)
            raise _load_error(src, e) from None
    return unwrap_state_dict(obj, str(src))


def _load_error(src: Path, e: Exception) -> ValueError:
    """A one-line reason for a failed `torch.load(weights_only=True)`. The weights-only unpickler refuses
    anything that could run code while loading (globals it does not know, object-building opcodes): such
    a file is reported as refused; loading it in full is never suggested."""
    text = str(e)
    refused = isinstance(e, pickle.UnpicklingError) and ("WeightsUnpickler" in text or "Weights only load" in text)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    op = re.search(r"Unsupported operand (\d+)", text)
    if refused and not found:  # an opcode it does not run: a pickle (zip checkpoint or protocol-2+ stream), or junk?
        with open(src, "rb") as f:
            refused = zipfile.is_zipfile(f) or (f.seek(0) == 0 and f.read(1) == b"\x80")
    if refused:
        what = (f"the global {found.group(1)}" if found else f"pickle opcode {op.group(1)}" if op
                else "objects outside tensors and plain containers")
        return ValueError(
            f"{src}: refused: the file holds objects that can execute code when unpickled (first: {what}); "
            "dmpose loads only tensors and plain containers. Get the weights as a plain state dict or a "
            ".safetensors file from their source.")
    detail = text.split("WeightsUnpickler error:", 1)[-1]  # torch's own advice (weights_only=False) is dropped
    first = next((line.strip() for line in detail.splitlines() if line.strip() and "weights_only" not in line),
                 type(e).__name__)
    return ValueError(f"{src} is not a PyTorch checkpoint ({first[:200]})")


def unwrap_state_dict(obj: Any, name: str = "checkpoint") -> dict[str, Tensor]:
    """The state dict itself: `obj`, or `obj['state_dict']` (official training / MMPose checkpoints), or
    `obj['model']` (torchvision's reference training scripts)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{name}: expected a state dict (or a dict with 'state_dict'), got {type(obj).__name__}")
    not_tensors = sorted(str(k) for k, v in obj.items() if not isinstance(v, Tensor))
    if not_tensors:
        raise ValueError(f"{name}: state dict entries that are not tensors: {', '.join(not_tensors[:10])}")
    return obj


def strip_prefixes(key: str) -> str:
    while key.startswith(DATA_PARALLEL_PREFIX):
        key = key[len(DATA_PARALLEL_PREFIX):]
    for prefix in MMPOSE_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _drop_reason(key: str) -> str | None:
    for pattern, reason in DROP_RULES:
        if re.match(pattern, key):
            return reason
    return None


# --- HRFormer: official / MMPose 1.x block layouts -> dmpose names -----------------------------------

_QKV = re.compile(r"^(.*\.attn)\.attn\.([qkv])_proj\.(weight|bias)$")
_HRFORMER_RENAMES: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"^(.*\.attn)\.attn\.out_proj\."), r"\1.proj."),  # official
    (re.compile(r"^(.*\.attn)\.attn\."), r"\1."),  # MMPose: qkv, proj; both: the bias table and index
    (re.compile(r"^(.*\.branches\.\d+\.\d+)\.mlp\."), r"\1.ffn."),  # official FFN name
)
HRFORMER_INDEX_DROPPED = "HRFormer relative_position_index buffers (equal to the ones dmpose recomputes)"


class LayoutMapping(NamedTuple):
    """What a layout map returns."""

    state: dict[str, Tensor]  # renamed to dmpose's keys
    layout: str  # the layout recognised ("" if the keys were dmpose's already)
    renamed: int  # source keys renamed or merged
    dropped: dict[str, list[str]]  # {drop reason: source keys}
    relative_position_bias: bool = True  # whether that layout's code adds it to the attention logits


def hrformer_layout_map(state: dict[str, Tensor]) -> LayoutMapping:
    """Map an HRFormer state dict (prefixes already stripped) onto dmpose's block names.

    Official q/k/v projections are concatenated along dim 0 into `attn.qkv` (q rows first, as
    MMPose's fused layer); an incomplete triple, a `relative_position_index` that differs from
    dmpose's, or keys of both layouts (which leave the relative position bias undecided) are a
    ConversionError. Keys already in dmpose's layout pass unchanged. The official layout's attention
    has no relative position bias (the official pose code leaves the addition out); MMPose's and
    dmpose's have it.
    """
    out: dict[str, Tensor] = {}
    triples: dict[str, dict[str, Tensor]] = {}
    dropped: list[str] = []
    n_renamed, official, mmpose = 0, False, False
    for key, value in state.items():
        m = _QKV.match(key)
        if m:
            triples.setdefault(f"{m.group(1)}.qkv.{m.group(3)}", {})[m.group(2)] = value
            n_renamed, official = n_renamed + 1, True
            continue
        new = key
        for pattern, repl in _HRFORMER_RENAMES:
            new = pattern.sub(repl, new)
        if new != key:
            n_renamed += 1
            official |= ".out_proj." in key or ".mlp." in key
            mmpose |= key.endswith((".attn.attn.qkv.weight", ".attn.attn.qkv.bias"))
        if new.endswith(".attn.relative_position_index"):
            w = round(value.shape[-1] ** 0.5) if value.dim() == 2 else 0
            if value.shape != (w * w, w * w) or not torch.equal(value.cpu(), relative_position_index(w, w)):
                raise ConversionError(f"{key}: relative_position_index {tuple(value.shape)} differs from the "
                                      "standard row-major window index; refusing to reinterpret the bias tables")
            dropped.append(key)
            continue
        if new in out:
            raise ConversionError(f"two source keys map to {new!r} (one is {key!r})")
        out[new] = value
    for new, parts in triples.items():
        absent = [p for p in "qkv" if p not in parts]
        if absent:
            lacks = ", ".join(p + "_proj" for p in absent)
            raise ConversionError(f"{new}: the source lacks {lacks} of its q/k/v triple")
        if new in out:
            raise ConversionError(f"two source layouts map to {new!r} (separate q/k/v_proj and a fused qkv)")
        out[new] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if official and mmpose:
        raise ConversionError("the source mixes the official HRFormer layout (q/k/v_proj, out_proj, mlp) with "
                              "MMPose's (fused qkv): whether its attention adds the relative position bias is unknown")
    layout = "HRFormer official" if official else "HRFormer MMPose 1.x" if mmpose else ""
    if triples:
        layout += f" ({len({k.rsplit('.', 1)[0] for k in triples})} q/k/v triples concatenated)"
    return LayoutMapping(out, layout, n_renamed, {HRFORMER_INDEX_DROPPED: dropped} if dropped else {},
                         relative_position_bias=not official)


# Architecture-name prefix -> layout map applied after the prefixes are stripped.
LAYOUT_MAPS: dict[str, Callable[[dict[str, Tensor]], LayoutMapping]] = {
    "hrformer_": hrformer_layout_map,
}


def _layout_map(arch: str):
    return next((fn for prefix, fn in LAYOUT_MAPS.items() if arch.startswith(prefix)), None)


def convert_state_dict(
    state: dict[str, Tensor], arch: str, num_joints: int | None = None, partial: bool = False
) -> tuple[nn.Module, ConversionReport]:
    """Map `state` onto a fresh `arch` model and load it.

    `num_joints` defaults to the source's head (`final_layer.weight`), else 17. With `partial=True`,
    keys the source lacks (a backbone-only checkpoint) and mis-shaped `final_layer.*` keys (another
    joint set) stay at their initialisation and are listed in the report; without it they are errors.
    Unexpected keys that no drop rule explains and mis-shaped backbone keys are always errors.
    """
    renamed: dict[str, Tensor] = {}
    n_renamed = 0
    for key, value in state.items():
        new = strip_prefixes(key)
        if new in renamed:
            raise ConversionError(f"two source keys map to {new!r} after stripping prefixes (one is {key!r})")
        n_renamed += new != key
        renamed[new] = value

    mapping = LayoutMapping(renamed, "", 0, {})
    layout_map = _layout_map(arch)
    if layout_map is not None:
        mapping = layout_map(renamed)
    renamed = mapping.state

    if num_joints is None:
        head = renamed.get("final_layer.weight")
        num_joints = int(head.shape[0]) if head is not None and head.dim() == 4 else 17
    model = build_model(arch, num_joints=num_joints, relative_position_bias=mapping.relative_position_bias)
    target = model.state_dict()
    report = ConversionReport(arch=arch, num_joints=num_joints, renamed=n_renamed, layout=mapping.layout,
                              layout_renamed=mapping.renamed, dropped=dict(mapping.dropped),
                              relative_position_bias=mapping.relative_position_bias)

    unexpected, misshaped, load = [], [], {}
    for key, value in renamed.items():
        if key not in target:
            reason = _drop_reason(key)
            if reason is None:
                unexpected.append(key)
            else:
                report.dropped.setdefault(reason, []).append(key)
        elif value.shape != target[key].shape:
            desc = f"{key} {tuple(value.shape)} != {tuple(target[key].shape)}"
            if partial and key.startswith("final_layer."):
                report.head_shape_skipped.append(desc)
            else:
                misshaped.append(desc)
        else:
            load[key] = value
    missing = [k for k in target if k not in renamed]
    report.tracking_missing = sum(k.endswith(TRACKING_SUFFIX) for k in missing)
    missing = [k for k in missing if not k.endswith(TRACKING_SUFFIX)]

    if unexpected or misshaped or (missing and not partial):
        hint = ""
        if missing and not partial:
            hint = " (pass partial=True to keep missing keys at their initialisation)"
        raise ConversionError(
            f"weights do not fit {arch} with {num_joints} joints: "
            + list_key_problems(unexpected=unexpected, misshaped=misshaped, missing=missing)
            + hint
        )
    report.missing = missing
    model.load_state_dict(load, strict=False)
    report.loaded = list(load)
    for reason, keys in report.dropped.items():
        logger.info("dropped %d keys: %s", len(keys), reason)
    if report.is_partial:
        n_init = len(report.missing) + len(report.head_shape_skipped)
        logger.warning("partial load: %d keys left at initialisation", n_init)
    return model, report




def official_spec(arch: str, num_joints: int, input_wh: tuple[int, int] | None = None,
                  keypoints: str | None = None, normalisation: Normalisation | dict | None = None,
                  decode: str | None = None, relative_position_bias: bool = True) -> tuple[PoseSpec, list[str]]:
    """The spec of a converted model: the given facts, the rest from the official recipes (module
    docstring; `relative_position_bias` is the source layout's, `ConversionReport.relative_position_bias`).
    Returns (spec, names of the facts that were defaulted)."""
    defaulted = []
    if keypoints is None:
        keypoints = DEFAULT_KEYPOINT_SETS.get(num_joints, (None,))[0]
        if keypoints is None:
            raise ValueError(f"{num_joints} joints match no built-in keypoint set; give the keypoint set "
                             "(a keypoint YAML file)")
        defaulted.append(f"keypoints={keypoints}")
    kps = KeypointSpec.builtin(keypoints)
    if kps.num_keypoints != num_joints:
        raise ValueError(f"keypoint set '{kps.name}' has {kps.num_keypoints} joints but the model has {num_joints}")
    if input_wh is None:
        input_wh = next((wh for name, wh in DEFAULT_KEYPOINT_SETS.values() if name == kps.name), (192, 256))
        defaulted.append(f"input_wh={input_wh[0]}x{input_wh[1]}")
    if normalisation is None:
        normalisation = Normalisation()
        defaulted.append("normalisation=ImageNet RGB")
    if decode is None:
        decode = "argmax"
        defaulted.append("decode=argmax")
    if decode not in DECODE_RULES:
        raise ValueError(f"unknown decode rule {decode!r}; expected one of {DECODE_RULES}")
    # foreign weights decoded by 2x2 are read through the paper's relu map
    codec = CodecSpec(name="gaussian") if decode == "argmax" else CodecSpec(name="dm", supplier_map="relu")
    return PoseSpec.build(arch, kps, input_wh, codec=codec, normalisation=normalisation,
                          relative_position_bias=relative_position_bias), defaulted


def convert_checkpoint(
    src: str | os.PathLike,
    arch: str,
    out: str | os.PathLike,
    num_joints: int | None = None,
    partial: bool = False,
    meta: dict[str, Any] | None = None,
    *,
    input_wh: tuple[int, int] | None = None,
    keypoints: str | None = None,
    normalisation: Normalisation | dict | None = None,
    decode: str | None = None,
) -> ConversionReport:
    """Read foreign weights from `src`, convert them to `arch` and write a dmpose checkpoint `out` with a
    full spec (`official_spec`: input_wh (W, H), keypoints (a built-in set or YAML file), normalisation,
    decode; what is not given defaults to the official recipes and is listed in `report.defaulted`).
    `out` may not be `src` itself (same path, symlink or hard link): ValueError naming both."""
    check_not_input(out, [src])
    meta = dict(meta or {})
    if input_wh is None and meta.get("input_size"):  # the old (H, W) metadata spelling
        h, w = meta.pop("input_size")
        input_wh = (int(w), int(h))
    model, report = convert_state_dict(read_foreign_state_dict(src), arch, num_joints=num_joints, partial=partial)
    spec, report.defaulted = official_spec(arch, report.num_joints, input_wh, keypoints, normalisation, decode,
                                           relative_position_bias=report.relative_position_bias)
    report.spec = spec
    meta.setdefault("converted_from", Path(src).name)
    meta.setdefault("loss", "mse" if spec.decode == "argmax" else "dm")
    if report.is_partial:
        meta.setdefault("partial_load", True)
    save_checkpoint(model, out, spec=spec, meta=meta)
    return report
