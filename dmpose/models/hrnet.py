"""HRNet pose network (Sun et al., CVPR 2019), residual blocks from blocks.py.

Attribute names follow the official code (leoxiaobin/deep-high-resolution-net.pytorch), so an
official pose state dict loads strictly with no renaming: stem `conv1 bn1 conv2 bn2`, `layer1`
(bottlenecks), `transition1..3`, `stage2..4` (modules with `branches` and `fuse_layers`) and the 1x1
`final_layer` on the highest-resolution branch.

Input (B, 3, H, W) -> heatmaps (B, K, H/4, W/4) (H, W multiples of 32 keep every branch exact; other
sizes work, the fusion upsamples to each branch's own size). The heatmap covers the input's region:
its outer edges (-0.5 ... W_hm - 0.5) are the input's outer edges (-0.5 ... W_in - 0.5), pixel
centres at integer coordinates.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmpose.models.blocks import BasicBlock, Bottleneck, conv3x3, make_layer
from dmpose.models.registry import register_model

__all__ = ["HRNet", "HRNetSpec"]


class FusedBranches(nn.Module):
    """Parallel branches, then the HRNet exchange: output i = relu(sum_j fuse_layers[i][j](branch j)).

    `fuse_layers[i][j]`: identity for j == i; for j > i a 1x1 conv + BN, then upsampling to branch i's size
    (`upsample_mode`); for j < i, (i - j) stride-2 steps (`_down_step`), ReLU after every step but the last.
    Sums run in branch order 0, 1, ... as in the official code (same float rounding). Subclasses give the
    branches and may change the down step and the upsampling (HRFormer).
    """

    upsample_mode = "nearest"

    def __init__(self, branches: nn.ModuleList, widths: list[int], multi_scale_output: bool = True):
        super().__init__()
        self.branches = branches
        self.relu = nn.ReLU(inplace=True)
        n_out = len(widths) if multi_scale_output else 1
        self.fuse_layers = nn.ModuleList(
            nn.ModuleList(self._fuse(widths, i, j) for j in range(len(widths))) for i in range(n_out)
        )

    @staticmethod
    def _down_step(cin: int, cout: int) -> list[nn.Module]:
        return [conv3x3(cin, cout, stride=2), nn.BatchNorm2d(cout)]

    def _fuse(self, widths: list[int], i: int, j: int) -> nn.Module:
        if j == i:
            return nn.Identity()
        if j > i:
            return nn.Sequential(nn.Conv2d(widths[j], widths[i], 1, bias=False), nn.BatchNorm2d(widths[i]))
        steps = []
        for k in range(i - j):
            last = k == i - j - 1
            layers = self._down_step(widths[j], widths[i] if last else widths[j])
            if not last:
                layers.append(nn.ReLU(inplace=True))
            steps.append(nn.Sequential(*layers))
        return nn.Sequential(*steps)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        if len(xs) == 1:
            return xs
        resize = {"mode": self.upsample_mode}
        if self.upsample_mode != "nearest":
            resize["align_corners"] = False
        out = []
        for i, fuse in enumerate(self.fuse_layers):
            y = None
            for j, layer in enumerate(fuse):
                z = layer(xs[j])
                if j > i:  # by size: equal to scale_factor 2^(j-i) when the sizes are exact multiples
                    z = F.interpolate(z, size=xs[i].shape[-2:], **resize)
                y = z if y is None else y + z
            out.append(self.relu(y))
        return out


class HighResolutionModule(FusedBranches):
    """Parallel branches of basic blocks, then every output branch sums all (resampled) inputs.

    `fuse_layers[i][j]` brings branch j to branch i: a 1x1 conv + BN then nearest upsampling when
    j > i, identity when j == i, a chain of (i - j) stride-2 3x3 convs when j < i.
    """

    def __init__(self, widths: list[int], num_blocks: int, multi_scale_output: bool = True):
        super().__init__(nn.ModuleList(make_layer(BasicBlock, w, w, num_blocks) for w in widths), widths,
                         multi_scale_output)


def _transition(prev: list[int], cur: list[int]) -> nn.ModuleList:
    """From a stage's outputs (`prev` widths) to the next stage's inputs (`cur` widths).

    Existing branches get a 3x3 conv only if their width changes; each new branch is made from the
    lowest-resolution previous output by stride-2 3x3 convs.
    """
    layers: list[nn.Module] = []
    for i, c in enumerate(cur):
        if i < len(prev):
            if c == prev[i]:
                layers.append(nn.Identity())
            else:
                layers.append(nn.Sequential(conv3x3(prev[i], c), nn.BatchNorm2d(c), nn.ReLU(inplace=True)))
        else:
            steps = []
            for k in range(i + 1 - len(prev)):
                cout = c if k == i - len(prev) else prev[-1]
                conv = conv3x3(prev[-1], cout, stride=2)
                steps.append(nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)))
            layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)


@dataclass(frozen=True)
class HRNetSpec:
    """Architecture hyper-parameters. `modules`/`blocks` are per stage 2, 3, 4.

    The official pose nets: stem 64, layer1 = 4 bottlenecks of 64 planes, stage widths
    (W, 2W, 4W, 8W), 1/4/3 modules of 4 basic blocks per branch.
    """

    width: int
    stem_channels: int = 64
    layer1_planes: int = 64
    layer1_blocks: int = 4
    modules: tuple[int, int, int] = (1, 4, 3)
    blocks: tuple[int, int, int] = (4, 4, 4)


class HighResolutionTrunk(nn.Module):
    """The forward pass HRNet and HRFormer share: stem (conv1/bn1, conv2/bn2, relu), stage 1 (layer1), then
    transitions 1-3 and stages 2-4 over the parallel branches; the head reads the highest-resolution one."""

    @staticmethod
    def _run_stage(transition: nn.ModuleList, stage: nn.Sequential, ys: list[Tensor]) -> list[Tensor]:
        xs = [t(ys[i] if i < len(ys) else ys[-1]) for i, t in enumerate(transition)]
        for module in stage:
            xs = module(xs)
        return xs

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        ys = [self.layer1(x)]
        ys = self._run_stage(self.transition1, self.stage2, ys)
        ys = self._run_stage(self.transition2, self.stage3, ys)
        ys = self._run_stage(self.transition3, self.stage4, ys)
        return self.final_layer(ys[0])


class HRNet(HighResolutionTrunk):
    """HRNet pose network: four stages at strides 4/8/16/32 and a 1x1 head on the stride-4 branch."""

    output_stride = 4

    def __init__(self, spec: HRNetSpec, num_joints: int = 17, arch: str = "hrnet"):
        super().__init__()
        self.arch = arch
        self.num_joints = num_joints
        self.arch_spec = spec  # the architecture (`model.spec` is the PoseSpec a checkpoint gives)
        s = spec.stem_channels
        self.conv1 = nn.Conv2d(3, s, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(s)
        self.conv2 = nn.Conv2d(s, s, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(s)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_layer(Bottleneck, s, spec.layer1_planes, spec.layer1_blocks)

        widths = [spec.width * 2**i for i in range(4)]
        prev = [spec.layer1_planes * Bottleneck.expansion]
        for n, (n_modules, n_blocks) in enumerate(zip(spec.modules, spec.blocks), start=2):
            cur = widths[:n]
            setattr(self, f"transition{n - 1}", _transition(prev, cur))
            last_stage = n == 4
            stage = nn.Sequential(
                *(
                    HighResolutionModule(cur, n_blocks, multi_scale_output=not (last_stage and m == n_modules - 1))
                    for m in range(n_modules)
                )
            )
            setattr(self, f"stage{n}", stage)
            prev = cur

        self.final_layer = nn.Conv2d(widths[0], num_joints, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: convs N(0, 0.001), zero biases, BN weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)



def _hrnet(arch: str, spec: HRNetSpec, num_joints: int, device: torch.device | str | None) -> HRNet:
    """Build on `device` (e.g. "meta" to count parameters without allocating memory)."""
    with torch.device(device) if device is not None else nullcontext():
        return HRNet(spec, num_joints=num_joints, arch=arch)


@register_model
def hrnet_tiny(num_joints: int = 17, device=None) -> HRNet:
    """A small HRNet for CPU runs and the synthetic default: width 16, one module of one block per
    stage, a 32-channel stem and one bottleneck (0.7M parameters, about 0.5 s per training step of
    16 images at 256x192 on two CPU cores)."""
    spec = HRNetSpec(width=16, stem_channels=32, layer1_planes=16, layer1_blocks=1, modules=(1, 1, 1), blocks=(1, 1, 1))
    return _hrnet("hrnet_tiny", spec, num_joints, device)


@register_model
def hrnet_w18(num_joints: int = 17, device=None) -> HRNet:
    """HRNet-W18 pose network (official layout)."""
    return _hrnet("hrnet_w18", HRNetSpec(width=18), num_joints, device)


@register_model
def hrnet_w32(num_joints: int = 17, device=None) -> HRNet:
    """HRNet-W32 pose network (official layout, 28.5M parameters with 17 joints)."""
    return _hrnet("hrnet_w32", HRNetSpec(width=32), num_joints, device)


@register_model
def hrnet_w48(num_joints: int = 17, device=None) -> HRNet:
    """HRNet-W48 pose network (official layout, 63.6M parameters with 17 joints)."""
    return _hrnet("hrnet_w48", HRNetSpec(width=48), num_joints, device)
