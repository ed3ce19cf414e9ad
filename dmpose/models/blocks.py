"""Residual blocks shared by the HRNet and ResNet (SimpleBaseline) families.

Attribute names follow the official HRNet / torchvision layout (conv1, bn1, ..., downsample) so that
official state dicts load without renaming.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

__all__ = ["BasicBlock", "Bottleneck", "add_resnet_body", "conv3x3", "make_layer"]

#: A normalisation layer factory: channels -> module (nn.BatchNorm2d; the detector's FrozenBatchNorm2d).
NormLayer = Callable[[int], nn.Module]


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (1x1, 3x3 with the stride, 1x1 x4) with a residual connection."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = norm_layer(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def make_layer(block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, blocks: int,
               stride: int = 1, norm_layer: NormLayer = nn.BatchNorm2d) -> nn.Sequential:
    """`blocks` residual blocks; the first takes the stride and a 1x1 projection if the shape changes."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
            norm_layer(planes * block.expansion),
        )
    layers = [block(inplanes, planes, stride, downsample, norm_layer)]
    layers += [block(planes * block.expansion, planes, norm_layer=norm_layer) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def add_resnet_body(module: nn.Module, layers: tuple[int, int, int, int],
                    norm_layer: NormLayer = nn.BatchNorm2d) -> int:
    """Give `module` torchvision's ResNet body (bottleneck blocks) as attributes `conv1 bn1 relu maxpool
    layer1..layer4` (stride 4 after the stem, 8, 16, 32 after layer2..4), so torchvision's ResNet keys load;
    returns layer4's channels (2048). The caller's forward runs them (SimpleBaseline, the FCOS detector's body)."""
    module.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
    module.bn1 = norm_layer(64)
    module.relu = nn.ReLU(inplace=True)
    module.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    inplanes = 64
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        setattr(module, f"layer{i}", make_layer(Bottleneck, inplanes, planes, blocks, stride=1 if i == 1 else 2,
                                                norm_layer=norm_layer))
        inplanes = planes * Bottleneck.expansion
    return inplanes
