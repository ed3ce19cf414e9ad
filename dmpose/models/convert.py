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
  `relative_position_index` buffers (dmpose recomputes them).

The whole mapping is the two short rule lists below: prefixes stripped, and patterns of keys
dropped with a reason, plus per architecture family a layout map (`LAYOUT_MAPS`). Any other key
that is unexpected, missing or mis-shaped is an error listing it.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from dmpose.models.checkpoint import list_key_problems, save_checkpoint
from dmpose.models.registry import build_model

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
    layout: str = ""  # the foreign layout a family's layout map recognised ("" if none applied)
    layout_renamed: int = 0  # source keys renamed or merged by that layout map

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
        obj: Any = load_file(str(src))
    else:
        try:
            obj = torch.load(src, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
            detail = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
            if detail:
                raise ValueError(
                    f"{src}: cannot be read with torch.load(weights_only=True): it holds objects other than "
                    f"tensors and plain containers (first: {detail.group(1)}). Re-save only its state dict, e.g. "
                    "torch.save(ckpt['state_dict'], path), where you trust the file."
                ) from None
            raise ValueError(f"{src} is not a PyTorch checkpoint ({str(e).splitlines()[0]})") from None
    return unwrap_state_dict(obj, str(src))


def unwrap_state_dict(obj: Any, name: str = "checkpoint") -> dict[str, Tensor]:
    """The state dict itself: `obj`, or `obj['state_dict']` (official training / MMPose checkpoints)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{name}: expected a state dict (or a dict with 'state_dict'), got {type(obj).__name__}")
    not_tensors = sorted(str(k) for k, v in obj.items() if not isinstance(v, Tensor))
    if not_tensors:
        raise ValueError(f"{name}: state dict entries that are not tensors: {', '.join(not_tensors[:10])}")
    return obj


def _strip_prefixes(key: str) -> str:
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


def hrformer_layout_map(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], str, int, dict[str, list[str]]]:
    """Map an HRFormer state dict (prefixes already stripped) onto dmpose's block names.

    Returns (state, layout name, number of source keys renamed or merged, {drop reason: keys}).
    Official q/k/v projections are concatenated along dim 0 into `attn.qkv` (q rows first, as
    MMPose's fused layer); an incomplete triple or a `relative_position_index` that differs from
    dmpose's is a ConversionError. Keys already in dmpose's layout pass unchanged.
    """
    from dmpose.models.hrformer import relative_position_index

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
            raise ConversionError(f"{new}: the source lacks {', '.join(p + '_proj' for p in absent)} of its q/k/v triple")
        if new in out:
            raise ConversionError(f"two source layouts map to {new!r} (separate q/k/v_proj and a fused qkv)")
        out[new] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    layout = " + ".join(n for n, on in (("HRFormer official", official), ("HRFormer MMPose 1.x", mmpose)) if on)
    if triples:
        layout += f" ({len({k.rsplit('.', 1)[0] for k in triples})} q/k/v triples concatenated)"
    return out, layout, n_renamed, {HRFORMER_INDEX_DROPPED: dropped} if dropped else {}


# Architecture-name prefix -> layout map applied after the prefixes are stripped.
LAYOUT_MAPS: dict[str, Callable[[dict[str, Tensor]], tuple[dict[str, Tensor], str, int, dict[str, list[str]]]]] = {
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
        new = _strip_prefixes(key)
        if new in renamed:
            raise ConversionError(f"two source keys map to {new!r} after stripping prefixes (one is {key!r})")
        n_renamed += new != key
        renamed[new] = value

    layout, n_layout, layout_dropped = "", 0, {}
    layout_map = _layout_map(arch)
    if layout_map is not None:
        renamed, layout, n_layout, layout_dropped = layout_map(renamed)

    if num_joints is None:
        head = renamed.get("final_layer.weight")
        num_joints = int(head.shape[0]) if head is not None and head.dim() == 4 else 17
    model = build_model(arch, num_joints=num_joints)
    target = model.state_dict()
    report = ConversionReport(arch=arch, num_joints=num_joints, renamed=n_renamed, layout=layout,
                              layout_renamed=n_layout, dropped=dict(layout_dropped))

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
            hint = " (pass partial=True / --partial to keep missing keys at their initialisation)"
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


def convert_checkpoint(
    src: str | os.PathLike,
    arch: str,
    out: str | os.PathLike,
    num_joints: int | None = None,
    partial: bool = False,
    meta: dict[str, Any] | None = None,
) -> ConversionReport:
    """Read foreign weights from `src`, convert them to `arch` and write a dmpose checkpoint `out`."""
    model, report = convert_state_dict(read_foreign_state_dict(src), arch, num_joints=num_joints, partial=partial)
    meta = dict(meta or {})
    meta.setdefault("converted_from", Path(src).name)
    if report.is_partial:
        meta.setdefault("partial_load", True)
    save_checkpoint(model, out, meta=meta)
    return report
