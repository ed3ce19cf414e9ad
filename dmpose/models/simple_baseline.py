"""SimpleBaseline pose network (Xiao et al., ECCV 2018): a ResNet backbone written
here (torchvision's key layout: `conv1 bn1 layer1..4`, so ImageNet ResNet weights load directly),
three 4x4 stride-2 deconvolutions (256 channels, BN, ReLU) in `deconv_layers` and a 1x1
`final_layer`, as in the official code (microsoft/human-pose-estimation.pytorch).

Input (B, 3, H, W) -> heatmaps (B, K, H/4, W/4) for H, W multiples of 32. The heatmap covers the
input's region: its outer edges (-0.5 ... W_hm - 0.5) are the input's outer edges
(-0.5 ... W_in - 0.5), pixel centres at integer coordinates.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from dmpose.models.blocks import add_resnet_body
from dmpose.models.registry import register_model

__all__ = ["SimpleBaseline"]


class SimpleBaseline(nn.Module):
    """ResNet (stride 32) + three stride-2 deconvolutions + 1x1 head: output stride 4."""

    output_stride = 4

    def __init__(self, layers: tuple[int, int, int, int], num_joints: int = 17, arch: str = "simplebaseline",
                 deconv_channels: int = 256):
        super().__init__()
        self.arch = arch
        self.num_joints = num_joints
        inplanes = add_resnet_body(self, layers)

        deconvs: list[nn.Module] = []
        for _ in range(3):
            deconvs += [
                nn.ConvTranspose2d(inplanes, deconv_channels, kernel_size=4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(deconv_channels),
                nn.ReLU(inplace=True),
            ]
            inplanes = deconv_channels
        self.deconv_layers = nn.Sequential(*deconvs)
        self.final_layer = nn.Conv2d(deconv_channels, num_joints, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Backbone convs: Kaiming (fan-out); deconvs and head: N(0, 0.001) as in the official code;
        BN weight 1, bias 0."""
        for name, m in self.named_modules():
            if isinstance(m, nn.ConvTranspose2d) or name == "final_layer":
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.final_layer(self.deconv_layers(x))


def _simplebaseline(arch: str, layers: tuple[int, int, int, int], num_joints: int, device) -> SimpleBaseline:
    """Build on `device` (e.g. "meta" to count parameters without allocating memory)."""
    with torch.device(device) if device is not None else nullcontext():
        return SimpleBaseline(layers, num_joints=num_joints, arch=arch)


@register_model
def simplebaseline_res50(num_joints: int = 17, device=None) -> SimpleBaseline:
    """SimpleBaseline with ResNet-50 (34.0M parameters with 17 joints)."""
    return _simplebaseline("simplebaseline_res50", (3, 4, 6, 3), num_joints, device)


@register_model
def simplebaseline_res101(num_joints: int = 17, device=None) -> SimpleBaseline:
    """SimpleBaseline with ResNet-101 (53.0M parameters with 17 joints)."""
    return _simplebaseline("simplebaseline_res101", (3, 4, 23, 3), num_joints, device)


@register_model
def simplebaseline_res152(num_joints: int = 17, device=None) -> SimpleBaseline:
    """SimpleBaseline with ResNet-152 (68.6M parameters with 17 joints)."""
    return _simplebaseline("simplebaseline_res152", (3, 8, 36, 3), num_joints, device)
