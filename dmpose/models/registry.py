"""Model registry: architectures register a factory by name; `build_model` looks them up.

Every factory takes `num_joints` plus architecture-specific keywords and returns a module whose
`arch` and `num_joints` attributes are enough to rebuild it (`dmpose.load_model` relies on this).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["register_model", "build_model", "list_models"]

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


def build_model(name: str, num_joints: int = 17, **kwargs) -> nn.Module:
    """Build the registered architecture `name` with a `num_joints`-channel heatmap head."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    if not isinstance(num_joints, int) or isinstance(num_joints, bool) or num_joints < 1:
        raise ValueError(f"num_joints must be a positive int, got {num_joints!r}")
    return _REGISTRY[name](num_joints=num_joints, **kwargs)
