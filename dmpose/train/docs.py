"""Generate docs/configs.md from the training config schema: `python -m dmpose.train.docs [--check]`."""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path

from pydantic import BaseModel

from dmpose.train.config import TrainConfig

__all__ = ["render"]

_AUGMENT_HELP = {
    "scale_factor": "Scale jitter: size x clip(1 + N(0,1) x f, 1-f, 1+f).",
    "rotation_factor": "Rotation: clip(N(0,1) x f, -2f, 2f) degrees.",
    "rotation_prob": "Probability of rotating.",
    "flip_prob": "Probability of a horizontal flip.",
    "half_body_prob": "Probability of the half-body crop.",
    "half_body_min_joints": "Half-body needs more labelled joints than this.",
    "half_body_padding": "Half-body box enlargement.",
    "shift_factor": "Box shift: the centre moves by U(-1, 1) x f x size per axis (MMPose's 0.16; HRNet: none).",
    "shift_prob": "Probability of the box shift (0: off, the HRNet recipe; MMPose 0.3).",
}


_DM_HELP = {
    "eps": "Entropic regularisation (the paper's 1).",
    "max_iters": "Sinkhorn updates at most (the paper's 1000).",
    "tol": "Per-problem stop once the L1 marginal error < tol; 0 runs exactly max_iters (the paper).",
    "demander_mode": "subpixel: four bilinear demanders around the dot (the paper's); naive: one.",
    "suppliers": "The map normalised into suppliers (and read by the decode): relu(H), the paper's, or "
                 "softplus(beta H)/beta, which never dies (docs/training.md).",
    "supplier_beta": "beta of the softplus supplier map.",
    "cost": "Euclidean distance d in heatmap pixels (the only metric), raised to cost_power.",
    "cost_power": "p in (0, 1]: the cost is d^p. 1 is the paper's; p < 1 is concave, so the last pixel onto the dot "
                  "earns more than a pixel far away (docs/findings.md).",
    "grad": "exact: gradient of <C, P*> (implicit differentiation); envelope: cheaper, biased.",
    "backend": "auto: Triton for CUDA tensors; on the CPU the compiled C kernel (dmpose.kernels.cpu) where it "
               "compiles, else torch. cpu: that kernel or an error.",
    "reduction": "The trainer always uses mean (sum over joints, mean over the batch).",
    "nonfinite": "raise: a map holding NaN/Inf is an error naming its (batch, joint); mask: such maps are "
                 "left out of the loss. The trainer skips and counts a step with non-finite heatmaps first.",
}

_NORMALISATION_HELP = {
    "mean": "Per-channel mean of pixel / 255, in channel_order (ImageNet's).",
    "std": "Per-channel standard deviation of pixel / 255, in channel_order (ImageNet's).",
    "channel_order": "The order of the network's input channels (images are converted before normalising).",
}


def _limits(meta) -> str:
    out = []
    for m in meta:
        for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(m, attr, None) is not None:
                out.append(f"{sym} {getattr(m, attr)}")
        if getattr(m, "min_length", None) is not None:
            out.append(f"length >= {m.min_length}")
        if getattr(m, "pattern", None) is not None:
            out.append(f"matches `{m.pattern}`")
        if getattr(m, "allow_inf_nan", None) is False:
            out.append("finite")
    return ", ".join(out)


def _type_name(ann) -> str:
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return " \\| ".join(repr(a).replace("'", '"') for a in typing.get_args(ann))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " \\| ".join(_type_name(a) for a in typing.get_args(ann))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(ann) if a is not Ellipsis]
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if origin is typing.Annotated:  # a constrained item type: float (> 0, finite)
        base, *meta = typing.get_args(ann)
        limits = _limits([m for field in meta for m in getattr(field, "metadata", [field])])
        return f"{_type_name(base)}{f' ({limits})' if limits else ''}"
    if ann is type(None):
        return "null"
    return getattr(ann, "__name__", str(ann))


def _default(value) -> str:
    if isinstance(value, BaseModel) or dataclasses.is_dataclass(value):
        return "(section)"
    if isinstance(value, Path):
        return f"`{value}`"
    if value is None:
        return "`null`"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{value!r}`".replace("'", '"').replace("True", "true").replace("False", "false")


def _section(model, prefix: str, rows: list[str]) -> None:
    subs = []
    if isinstance(model, type) and issubclass(model, BaseModel):
        helps = {"DMLossOptions": _DM_HELP, "Normalisation": _NORMALISATION_HELP}.get(model.__name__, {})
        items = [(n, f.annotation, f.get_default(call_default_factory=True), f.description or helps.get(n, ""),
                  f.metadata) for n, f in model.model_fields.items()]
    else:  # a stdlib dataclass (AugmentConfig)
        items = [(f.name, f.type, f.default, _AUGMENT_HELP.get(f.name, ""), []) for f in dataclasses.fields(model)]
    for name, ann, default, help_, meta in items:
        key = f"{prefix}{name}"
        sub = ann if isinstance(ann, type) and (issubclass(ann, BaseModel) or dataclasses.is_dataclass(ann)) else None
        if sub is not None:
            subs.append((sub, key))
            help_ = help_ or (sub.__doc__ or "").strip().splitlines()[0]
            rows.append(f"| `{key}` | section | | {help_} See `{key}.*`. |")
            continue
        limits = _limits(meta)
        tname = _type_name(ann) if not isinstance(ann, str) else ann
        rows.append(f"| `{key}` | {tname}{f' ({limits})' if limits else ''} | {_default(default)} | {help_} |")
    for sub, key in subs:
        rows.append("")
        doc = (sub.__doc__ or "").strip().splitlines()[0]
        rows += [f"### `{key}`", "", doc, "", "| key | type | default | meaning |", "|---|---|---|---|"]
        _section(sub, key + ".", rows)


def render() -> str:
    rows = ["# Training configuration keys", "",
            "Generated from the schema in `dmpose/train/config.py` by `python -m dmpose.train.docs`; a test checks "
            "that this file is current. Every key may be set in the YAML file or with `--set KEY=VALUE` (the value "
            "is parsed as YAML). Unknown keys are errors, with the closest valid key suggested.", "",
            "## Top level", "", "| key | type | default | meaning |", "|---|---|---|---|"]
    _section(TrainConfig, "", rows)
    return "\n".join(rows).rstrip() + "\n"


def main(argv: list[str]) -> int:
    path = Path(__file__).resolve().parents[2] / "docs" / "configs.md"
    text = render()
    if "--check" in argv:
        return 0 if path.is_file() and path.read_text() == text else 1
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
