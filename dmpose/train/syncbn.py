"""SyncBatchNorm for CPU (gloo) DDP: torch's nn.SyncBatchNorm refuses CPU modules, so on the CPU the trainer
uses this BatchNorm2d whose training-mode statistics are all-reduced over the ranks (autograd-aware, via
torch.distributed.nn.functional.all_reduce). On CUDA the trainer uses torch's nn.SyncBatchNorm."""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import nn

with warnings.catch_warnings():  # its replacement (_functional_collectives) has no autograd on gloo
    warnings.simplefilter("ignore", FutureWarning)
    from torch.distributed.nn.functional import all_reduce

__all__ = ["CpuSyncBatchNorm", "convert_cpu_sync_bn"]


class CpuSyncBatchNorm(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        count = torch.full((1,), x.numel() / c, dtype=torch.float32, device=x.device)
        stats = all_reduce(torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), count]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_((var * n / (n - 1)).to(self.running_var.dtype), m)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_cpu_sync_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by a CpuSyncBatchNorm holding the same parameters and buffers."""
    out = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CpuSyncBatchNorm):
        out = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        out.load_state_dict(module.state_dict())
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_cpu_sync_bn(child))
    return out
