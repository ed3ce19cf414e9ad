"""Model registry: architectures register a factory by name; `build_model` looks them up.

Every factory takes `num_joints` plus architecture-specific keywords and returns a module whose
`arch` and `num_joints` attributes, with the spec's architecture facts (`PoseSpec.relative_position_bias`, which a
factory with window attention takes as a keyword), are enough to rebuild it: `build_from_spec`, which
`dmpose.load_model` uses. `build_model` also gives the module a complete default `spec` (`default_spec`: the
built-in keypoint set of its joint count, the dataset's usual input size, the DM codec's defaults), so
`save_checkpoint` of a freshly built model writes a file that `dmpose predict` and `dmpose eval` read; `load_model`
replaces it with the file's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from dmpose.spec import PoseSpec

__all__ = ["register_model", "build_model", "build_from_spec", "list_models", "default_spec", "has_position_bias",
           "DEFAULT_KEYPOINT_SETS", "OUTPUT_STRIDE"]

#: The output stride of every registered architecture (heatmaps at input size / 4).
OUTPUT_STRIDE = 4
#: The built-in keypoint set and usual input size (W, H) by joint count (the official recipes): COCO's 192x256,
#: MPII's 256x256.
DEFAULT_KEYPOINT_SETS = {17: ("coco17", (192, 256)), 16: ("mpii16", (256, 256))}

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register `fn` under its function name (e.g. `hrnet_w32`)."""
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    """Names accepted by `build_model`, sorted."""
    return sorted(_REGISTRY)


def has_position_bias(name: str) -> bool:
    """Whether architecture `name` has window attention with a relative position bias (its factory takes
    `relative_position_bias`)."""
    return name in _REGISTRY and "relative_position_bias" in inspect.signature(_REGISTRY[name]).parameters


def build_model(name: str, num_joints: int = 17, *, relative_position_bias: bool = True, **kwargs) -> nn.Module:
    """Build the registered architecture `name` with a `num_joints`-channel heatmap head.

    `relative_position_bias=False`: attention logits without the relative position bias (`PoseSpec`'s field of
    the name); only for an architecture that has one (`has_position_bias`), else ValueError."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    if not isinstance(num_joints, int) or isinstance(num_joints, bool) or num_joints < 1:
        raise ValueError(f"num_joints must be a positive int, got {num_joints!r}")
    if not relative_position_bias:
        if not has_position_bias(name):
            raise ValueError(f"{name} has no relative position bias to leave out (relative_position_bias false "
                             "applies to attention models: HRFormer)")
        kwargs["relative_position_bias"] = False
    model = _REGISTRY[name](num_joints=num_joints, **kwargs)
    model.spec = default_spec(name, num_joints, relative_position_bias)
    return model


def build_from_spec(spec: PoseSpec, **kwargs) -> nn.Module:
    """The network `spec` describes (arch, joints, relative position bias), with `spec` as its `spec`."""
    model = build_model(spec.arch, num_joints=spec.num_joints, relative_position_bias=spec.relative_position_bias,
                        **kwargs)
    model.spec = spec
    return model


def default_spec(arch: str, num_joints: int, relative_position_bias: bool = True) -> PoseSpec | None:
    """The spec `build_model` attaches: the built-in set of `num_joints` joints (COCO-17, MPII-16) at its usual
    input size with the default DM codec; None for another joint count (no built-in set describes it)."""
    if num_joints not in DEFAULT_KEYPOINT_SETS:
        return None
    keypoints, input_wh = DEFAULT_KEYPOINT_SETS[num_joints]
    return PoseSpec.build(arch, keypoints, input_wh, relative_position_bias=relative_position_bias)
