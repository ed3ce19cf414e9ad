"""FCOS ResNet-50-FPN (Tian et al., ICCV 2019), written here in plain torch with torchvision's exact module and key
layout, so torchvision's published COCO weights (`FCOS_ResNet50_FPN_Weights.COCO_V1`, box AP 39.2 on COCO
val2017) load unchanged with strict=True, without importing torchvision.

The computation is torchvision 0.28's `fcos_resnet50_fpn` in evaluation mode, step by step:

1. transform (`GeneralizedRCNNTransform`): RGB in [0, 1], ImageNet mean/std, bilinear resize (align_corners=False,
   recompute_scale_factor=True) by min(800 / short side, 1333 / long side), zero padding to a multiple of 32;
2. backbone (`backbone.body`): ResNet-50 with FrozenBatchNorm2d (eps 1e-5); `backbone.fpn`: FPN on layer2..4
   (1x1 lateral `inner_blocks`, 3x3 `layer_blocks`, nearest top-down upsampling) plus P6, P7
   (`extra_blocks.p6` on P5, `p7` on relu(P6)): 5 levels, strides 8..128, 256 channels;
3. head: two towers of 4 x (3x3 conv, GroupNorm(32), ReLU); `cls_logits` (91 COCO labels), `bbox_reg`
   (relu'd l, t, r, b distances in units of the anchor's size) and `bbox_ctrness`;
4. anchors: one per location, centred at (x * stride, y * stride) of the padded tensor, size = stride
   (8, 16, 32, 64, 128); boxes = centre -/+ distances * stride (`BoxLinearCoder(normalize_by_size=True)`);
5. postprocess: score = sqrt(sigmoid(cls) * sigmoid(ctrness)) per (location, label); per level the scores
   > 0.2, at most the 1000 best; boxes clipped to the resized image; NMS per label at IoU 0.6; the 100 best;
   boxes scaled back to the original image (ratio new / old per axis).

Boxes out of `FCOS.forward` are torchvision's: [x1, y1, x2, y2] in edge coordinates (pixel j covers [j, j+1));
`dmpose.detect.person.PersonDetector` converts them to dmpose's convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmpose.detect.nms import batched_nms
from dmpose.models.blocks import add_resnet_body

__all__ = ["FCOS", "FCOSConfig", "FrozenBatchNorm2d", "Detections", "fcos_resnet50_fpn", "firing_random_state_dict"]

#: torchvision's published weights for this network (URL and the sha256 prefix in its file name).
FCOS_COCO_WEIGHTS_URL = "https://download.pytorch.org/models/fcos_resnet50_fpn_coco-99b0c9b7.pth"
#: COCO val2017 box AP of those weights, from torchvision's weight metadata.
FCOS_COCO_BOX_AP = 39.2
#: COCO's label of a person in torchvision's 91-label layout.
PERSON_LABEL = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (torchvision.ops.FrozenBatchNorm2d: buffers weight,
    bias, running_mean, running_var; y = x * w / sqrt(var + eps) + (b - mean * w / sqrt(var + eps)), eps 1e-5).
    A `num_batches_tracked` entry in a state dict is ignored, as torchvision does."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight.reshape(1, -1, 1, 1) * (self.running_var.reshape(1, -1, 1, 1) + self.eps).rsqrt()
        bias = self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale
        return x * scale + bias


class ResNetBody(nn.Module):
    """ResNet-50 up to layer4 (torchvision's `IntermediateLayerGetter` keys); returns layer2, layer3, layer4."""

    def __init__(self, layers: tuple[int, int, int, int] = (3, 4, 6, 3)):
        super().__init__()
        add_resnet_body(self, layers, norm_layer=FrozenBatchNorm2d)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]


class _ConvBlock(nn.Sequential):
    """torchvision's Conv2dNormActivation without norm and activation: one conv at key `.0` (the FPN's blocks)."""

    def __init__(self, cin: int, cout: int, kernel_size: int):
        super().__init__(nn.Conv2d(cin, cout, kernel_size, padding=(kernel_size - 1) // 2))


class LastLevelP6P7(nn.Module):
    """P6 = conv3x3/2(P5), P7 = conv3x3/2(relu(P6)) (torchvision's, with in = out channels: on P5)."""

    def __init__(self, channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)

    def forward(self, p5: Tensor) -> list[Tensor]:
        p6 = self.p6(p5)
        return [p6, self.p7(F.relu(p6))]


class FeaturePyramid(nn.Module):
    """torchvision's FeaturePyramidNetwork with LastLevelP6P7: P3..P7 from C3..C5."""

    def __init__(self, in_channels: tuple[int, ...] = (512, 1024, 2048), channels: int = 256):
        super().__init__()
        self.inner_blocks = nn.ModuleList(_ConvBlock(c, channels, 1) for c in in_channels)
        self.layer_blocks = nn.ModuleList(_ConvBlock(channels, channels, 3) for _ in in_channels)
        self.extra_blocks = LastLevelP6P7(channels)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        last = self.inner_blocks[-1](features[-1])
        out = [self.layer_blocks[-1](last)]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[i](features[i])
            last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            out.insert(0, self.layer_blocks[i](last))
        return out + self.extra_blocks(out[-1])


class Backbone(nn.Module):
    """`backbone.body` (ResNet-50) + `backbone.fpn`."""

    def __init__(self):
        super().__init__()
        self.body = ResNetBody()
        self.fpn = FeaturePyramid()

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.fpn(self.body(x))


def _tower(channels: int, num_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(32, channels), nn.ReLU()]
    return nn.Sequential(*layers)


def _flatten_level(x: Tensor, per_location: int) -> Tensor:
    """(N, A * C, H, W) -> (N, H * W * A, C), torchvision's location-major order."""
    n, _, h, w = x.shape
    return x.view(n, -1, per_location, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, per_location)


class ClassificationHead(nn.Module):
    def __init__(self, channels: int, num_classes: int, num_convs: int = 4, prior_probability: float = 0.01):
        super().__init__()
        self.num_classes = num_classes
        self.conv = _tower(channels, num_convs)
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        for m in [*self.conv.children(), self.cls_logits]:  # torchvision's initialisation (training from scratch)
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_probability) / prior_probability))

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [_flatten_level(self.cls_logits(self.conv(f)), self.num_classes) for f in features]


class RegressionHead(nn.Module):
    def __init__(self, channels: int, num_convs: int = 4):
        super().__init__()
        self.conv = _tower(channels, num_convs)
        self.bbox_reg = nn.Conv2d(channels, 4, 3, padding=1)
        self.bbox_ctrness = nn.Conv2d(channels, 1, 3, padding=1)
        for m in [*self.conv.children(), self.bbox_reg, self.bbox_ctrness]:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        regression, centerness = [], []
        for f in features:
            t = self.conv(f)
            regression.append(_flatten_level(F.relu(self.bbox_reg(t)), 4))
            centerness.append(_flatten_level(self.bbox_ctrness(t), 1))
        return regression, centerness


class FCOSHead(nn.Module):
    def __init__(self, channels: int = 256, num_classes: int = 91, num_convs: int = 4):
        super().__init__()
        self.classification_head = ClassificationHead(channels, num_classes, num_convs)
        self.regression_head = RegressionHead(channels, num_convs)


@dataclass(frozen=True)
class FCOSConfig:
    """torchvision's evaluation settings of `fcos_resnet50_fpn`."""

    min_size: int = 800
    max_size: int = 1333
    size_divisible: int = 32
    score_thresh: float = 0.2
    nms_thresh: float = 0.6
    detections_per_img: int = 100
    topk_candidates: int = 1000
    anchor_sizes: tuple[int, ...] = (8, 16, 32, 64, 128)


@dataclass
class Detections:
    """One image's detections: boxes (N, 4) [x1, y1, x2, y2] in torchvision's edge coordinates of the original
    image, scores (N,), labels (N,) int64 (COCO's 91-label layout, 1 = person); highest score first."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


class FCOS(nn.Module):
    """FCOS with torchvision's keys (`backbone.body.*`, `backbone.fpn.*`, `head.classification_head.*`,
    `head.regression_head.*`). `forward(images)` takes a list of (3, H, W) float RGB images in [0, 1] (sizes may
    differ) and returns a `Detections` per image (module docstring for the steps)."""

    def __init__(self, num_classes: int = 91, config: FCOSConfig = FCOSConfig()):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.backbone = Backbone()
        self.head = FCOSHead(256, num_classes)
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD), persistent=False)

    # ---- the transform
    def resize(self, image: Tensor) -> Tensor:
        """Normalise and resize one (3, H, W) image exactly as torchvision's GeneralizedRCNNTransform (eval)."""
        image = (image - self.image_mean[:, None, None]) / self.image_std[:, None, None]
        h, w = image.shape[-2:]
        scale = min(self.config.min_size / min(h, w), self.config.max_size / max(h, w))
        return F.interpolate(image[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                             align_corners=False)[0]

    def batch(self, images: list[Tensor]) -> Tensor:
        """Zero-pad to a common size, a multiple of `size_divisible`."""
        d = self.config.size_divisible
        h = int(math.ceil(max(im.shape[-2] for im in images) / d) * d)
        w = int(math.ceil(max(im.shape[-1] for im in images) / d) * d)
        out = images[0].new_zeros((len(images), 3, h, w))
        for i, im in enumerate(images):
            out[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
        return out

    # ---- anchors
    def anchors(self, padded: Tensor, features: list[Tensor]) -> list[Tensor]:
        """Per level (HW, 4) anchor boxes: centre (x * stride, y * stride), side = the level's anchor size."""
        out = []
        for size, f in zip(self.config.anchor_sizes, features):
            gh, gw = f.shape[-2:]
            sh, sw = padded.shape[-2] // gh, padded.shape[-1] // gw
            half = round(size / 2)
            ys, xs = torch.meshgrid(torch.arange(gh, device=f.device) * sh, torch.arange(gw, device=f.device) * sw,
                                    indexing="ij")
            xs, ys = xs.reshape(-1).to(f.dtype), ys.reshape(-1).to(f.dtype)
            out.append(torch.stack([xs - half, ys - half, xs + half, ys + half], 1))
        return out

    # ---- the network
    def head_outputs(self, padded: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Per level: class logits (N, HW, C), box distances (N, HW, 4), centerness logits (N, HW, 1), and the
        FPN features."""
        features = self.backbone(padded)
        logits = self.head.classification_head(features)
        regression, centerness = self.head.regression_head(features)
        return logits, regression, centerness, features

    def postprocess(self, logits: list[Tensor], regression: list[Tensor], centerness: list[Tensor],
                    anchors: list[Tensor], image_size: tuple[int, int]) -> Detections:
        """One image's detections in the resized image (torchvision's `postprocess_detections`)."""
        cfg = self.config
        boxes_all, scores_all, labels_all = [], [], []
        for cls, reg, ctr, anc in zip(logits, regression, centerness, anchors):
            scores = torch.sqrt(torch.sigmoid(cls) * torch.sigmoid(ctr)).flatten()
            idx = torch.where(scores > cfg.score_thresh)[0]
            scores, top = scores[idx].topk(min(cfg.topk_candidates, len(idx)))
            idx = idx[top]
            loc, labels = torch.div(idx, cls.shape[-1], rounding_mode="floor"), idx % cls.shape[-1]
            a = anc[loc]
            centre = 0.5 * (a[:, :2] + a[:, 2:])
            size = (a[:, 2:] - a[:, :2]).repeat(1, 2)
            d = reg[loc] * size
            boxes = torch.cat([centre - d[:, :2], centre + d[:, 2:]], 1)
            h, w = image_size
            boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h), boxes[:, 2].clamp(0, w),
                                 boxes[:, 3].clamp(0, h)], 1)
            boxes_all.append(boxes)
            scores_all.append(scores)
            labels_all.append(labels)
        boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
        keep = batched_nms(boxes, scores, labels, cfg.nms_thresh)[: cfg.detections_per_img]
        return Detections(boxes[keep], scores[keep], labels[keep])

    @torch.no_grad()
    def forward(self, images: list[Tensor]) -> list[Detections]:
        originals = [tuple(im.shape[-2:]) for im in images]
        resized = [self.resize(im) for im in images]
        padded = self.batch(resized)
        logits, regression, centerness, features = self.head_outputs(padded)
        anchors = self.anchors(padded, features)
        out = []
        for i, (im, (oh, ow)) in enumerate(zip(resized, originals)):
            h, w = im.shape[-2:]
            det = self.postprocess([x[i] for x in logits], [x[i] for x in regression], [x[i] for x in centerness],
                                   anchors, (h, w))
            # torchvision's resize_boxes: the ratio of the sizes as float32 tensors
            rw, rh = (torch.tensor(float(o), dtype=torch.float32) / torch.tensor(float(n), dtype=torch.float32)
                      for o, n in ((ow, w), (oh, h)))
            ratio = torch.stack([rw, rh, rw, rh]).to(det.boxes)
            out.append(Detections(det.boxes * ratio, det.scores, det.labels))
        return out


def fcos_resnet50_fpn(num_classes: int = 91, config: FCOSConfig = FCOSConfig()) -> FCOS:
    """The network of torchvision's `fcos_resnet50_fpn` (its evaluation settings), randomly initialised."""
    return FCOS(num_classes, config)


def firing_random_state_dict(seed: int = 0, labels: dict[int, float] | None = None) -> dict[str, Tensor]:
    """For tests and benchmarks: torchvision's random initialisation with the backbone's BatchNorm statistics and
    scales perturbed, and class biases set so that `labels` ({label: logit bias}; default person 2.0, label 2 1.5)
    fire at every location and no other does (torchvision's own init scores ~0.07, below its 0.2 threshold)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        state = fcos_resnet50_fpn().state_dict()
    for k, v in state.items():
        if k.endswith("running_var"):
            state[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith("running_mean"):
            state[k] = 0.1 * torch.randn(v.shape, generator=g)
        elif k.startswith("backbone.body") and k.endswith(".weight") and v.ndim == 1:
            state[k] = v + 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith("cls_logits.bias"):
            state[k] = torch.full_like(v, -10.0)
            for label, bias in (labels or {PERSON_LABEL: 2.0, 2: 1.5}).items():
                state[k][label] = bias
    return state
