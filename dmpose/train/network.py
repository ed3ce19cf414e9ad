"""The network of a run: built from the spec, initialised from `model.pretrained` (foreign or dmpose weights, read
by `dmpose convert`'s reader; `imagenet`, published names and URLs are fetched through `dmpose.weights`), and
prepared for the device (SyncBatchNorm, memory format, DDP, torch.compile).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dmpose.models.convert import convert_state_dict, read_foreign_state_dict, strip_prefixes
from dmpose.models.registry import build_from_spec
from dmpose.spec import PoseSpec
from dmpose.train.config import TrainConfig
from dmpose.train.syncbn import convert_cpu_sync_bn
from dmpose.weights import resolve_pretrained

__all__ = ["build_network", "final_layer", "prepare_network"]


def build_network(cfg: TrainConfig, spec: PoseSpec, log: Callable[[str], None]) -> nn.Module:
    """The spec's architecture with its joints, initialised from model.pretrained when set (logged)."""
    model = build_from_spec(spec)
    if cfg.model.pretrained is not None:
        source = resolve_pretrained(cfg.model.pretrained, spec.arch)  # imagenet, a name or a URL: fetched once
        if str(source) != cfg.model.pretrained:
            log(f"model.pretrained {cfg.model.pretrained}: {source}")
        state = read_foreign_state_dict(source)
        fresh = {}
        if not cfg.model.pretrained_head:  # a backbone: the head keeps this model's initialisation
            head = next(name for name, m in model.named_modules() if m is final_layer(model, spec.num_joints))
            fresh = {k: v for k, v in model.state_dict().items() if k.startswith(head + ".")}
            state = {k: v for k, v in state.items() if not strip_prefixes(k).startswith(head + ".")}
        loaded, report = convert_state_dict(state, spec.arch, num_joints=spec.num_joints, partial=True)
        model.load_state_dict({**loaded.state_dict(), **fresh})
        log(f"initialised from {cfg.model.pretrained} ({report})"
            + (f"; the head ({', '.join(fresh)}) freshly initialised" if fresh else ""))
        if report.relative_position_bias != spec.relative_position_bias:
            log(f"the pretrained weights' attention {'adds' if report.relative_position_bias else 'leaves out'} "
                f"the relative position bias; this run's {'adds' if spec.relative_position_bias else 'leaves out'} it")
    else:
        log("no model.pretrained: training from scratch")
    return model


def final_layer(model: nn.Module, k: int) -> nn.Module | None:
    """The convolution that outputs the K heatmaps (its bias is a training diagnostic)."""
    layer = getattr(model, "final_layer", None)
    if isinstance(layer, nn.Conv2d):
        return layer
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == k]
    return convs[-1] if convs else None


def sync_batch_norm(model: nn.Module, cfg: TrainConfig, device: torch.device, world: int) -> nn.Module:
    """model.sync_bn under DDP: torch's SyncBatchNorm on GPUs, dmpose's CPU version on the CPU."""
    if not (cfg.model.sync_bn and world > 1):
        return model
    return convert_cpu_sync_bn(model) if device.type == "cpu" else nn.SyncBatchNorm.convert_sync_batchnorm(model)


def prepare_network(raw: nn.Module, cfg: TrainConfig, device: torch.device, world: int
                    ) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """(the model as trained: DDP-wrapped under DDP, its forward: torch.compile'd when model.compile)."""
    model = nn.parallel.DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else raw
    return model, torch.compile(model) if cfg.model.compile else model
