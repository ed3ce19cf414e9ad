"""The published weights dmpose knows by name: top-down COCO/MPII pose models, the ImageNet backbones the
recipe configs start from, and the person detector (`dmpose weights list`).

Every URL, file name and published metric is copied from its source (`source` of each entry): MMPose's model
zoo pages (configs/body/2d_kpt_sview_rgb_img/topdown_heatmap/{coco,mpii}/*.md: "Results on COCO val2017 with
detector having human AP of 56.4", MPII val PCKh@0.5 "Mean"), MMPose's configs for the ImageNet backbones and
torchvision's weight tables. The integrity check is the hash in the file name: OpenMMLab's publish step and
torch.hub both name a file by the first hex digits of its sha256 (`-c78dce93_20200708.pth`,
`-19c8e357.pth`); `sha256_prefix` reads it.

The pose models are MMPose's: MSE-trained on Gaussian heatmaps, so they decode with argmax (the official
quarter-pixel shift), RGB input with ImageNet's mean and std. HRFormer checkpoints are in MMPose's layout.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal
from urllib.parse import urlparse

from dmpose.spec import Normalisation

__all__ = [
    "DEFAULT_DETECTOR",
    "DEFAULT_POSE_MODEL",
    "REGISTRY",
    "WeightsEntry",
    "entry_for_file",
    "get_entry",
    "imagenet_entry",
    "sha256_prefix",
]

Kind = Literal["pose", "backbone", "detector"]

MMPOSE_COCO = "MMPose model zoo, configs/body/2d_kpt_sview_rgb_img/topdown_heatmap/coco/{}.md"
MMPOSE_MPII = "MMPose model zoo, configs/body/2d_kpt_sview_rgb_img/topdown_heatmap/mpii/{}.md"
TOP_DOWN = "https://download.openmmlab.com/mmpose/top_down/{}/{}"
PRETRAIN = "https://download.openmmlab.com/mmpose/pretrain_models/{}"
TORCHVISION = "https://download.pytorch.org/models/{}"

_HASH = re.compile(r"-([0-9a-f]{8,64})(?:_\d{8})?\.[A-Za-z.]+$")


def sha256_prefix(file_name: str) -> str | None:
    """The sha256 prefix a published file name carries (`hrnet_w32_coco_256x192-c78dce93_20200708.pth` ->
    c78dce93, torch.hub's `resnet50-19c8e357.pth` -> 19c8e357), else None."""
    m = _HASH.search(file_name)
    return m.group(1) if m else None


@dataclass(frozen=True)
class WeightsEntry:
    """One published file. Pose entries say what the weights do not: arch, keypoint set, input (W, H),
    normalisation (ImageNet RGB) and decode; `metric`/`value` are the published number on `dataset`."""

    name: str
    kind: Kind
    url: str
    arch: str
    source: str
    keypoints: str | None = None
    input_wh: tuple[int, int] | None = None
    decode: str = "argmax"
    dataset: str | None = None
    metric: str | None = None
    value: float | None = None
    normalisation: Normalisation = field(default_factory=Normalisation)

    @property
    def file_name(self) -> str:
        return PurePosixPath(urlparse(self.url).path).name

    @property
    def sha256_prefix(self) -> str | None:
        return sha256_prefix(self.file_name)

    @property
    def metric_text(self) -> str:
        """The published number, e.g. "AP 0.746" or "box AP 39.2"; "" for none."""
        if self.metric is None or self.value is None:
            return ""
        return f"{self.metric} {self.value:.3f}" if self.value < 1 else f"{self.metric} {self.value:.1f}"

    @property
    def published(self) -> str:
        return f"{self.metric_text} ({self.dataset})" if self.metric_text else ""


def _coco(arch: str, wh: tuple[int, int], folder: str, file: str, ap: float, page: str) -> WeightsEntry:
    w, h = wh
    return WeightsEntry(f"{arch}_coco_{h}x{w}", "pose", TOP_DOWN.format(folder, file), arch,
                        MMPOSE_COCO.format(page), keypoints="coco17", input_wh=wh,
                        dataset="COCO val2017, AP-56.4 person detections", metric="AP", value=ap)


def _mpii(arch: str, folder: str, file: str, pckh: float, page: str) -> WeightsEntry:
    return WeightsEntry(f"{arch}_mpii_256x256", "pose", TOP_DOWN.format(folder, file), arch,
                        MMPOSE_MPII.format(page), keypoints="mpii16", input_wh=(256, 256),
                        dataset="MPII val", metric="PCKh@0.5", value=pckh)


def _backbone(arch: str, url: str, source: str) -> WeightsEntry:
    short = arch.removeprefix("simplebaseline_").replace("res", "resnet", 1) if "simplebaseline" in arch else arch
    return WeightsEntry(f"{short}_imagenet", "backbone", url, arch, source, dataset="ImageNet")


_ENTRIES = [
    _coco("hrnet_w32", (192, 256), "hrnet", "hrnet_w32_coco_256x192-c78dce93_20200708.pth", 0.746, "hrnet_coco"),
    _coco("hrnet_w32", (288, 384), "hrnet", "hrnet_w32_coco_384x288-d9f0d786_20200708.pth", 0.760, "hrnet_coco"),
    _coco("hrnet_w48", (192, 256), "hrnet", "hrnet_w48_coco_256x192-b9e0b3ab_20200708.pth", 0.756, "hrnet_coco"),
    _coco("hrnet_w48", (288, 384), "hrnet", "hrnet_w48_coco_384x288-314c8528_20200708.pth", 0.767, "hrnet_coco"),
    _coco("simplebaseline_res50", (192, 256), "resnet", "res50_coco_256x192-ec54d7f3_20200709.pth", 0.718,
          "resnet_coco"),
    _coco("simplebaseline_res50", (288, 384), "resnet", "res50_coco_384x288-e6f795e9_20200709.pth", 0.731,
          "resnet_coco"),
    _coco("simplebaseline_res101", (192, 256), "resnet", "res101_coco_256x192-6e6babf0_20200708.pth", 0.726,
          "resnet_coco"),
    _coco("simplebaseline_res101", (288, 384), "resnet", "res101_coco_384x288-8c71bdc9_20200709.pth", 0.748,
          "resnet_coco"),
    _coco("simplebaseline_res152", (192, 256), "resnet", "res152_coco_256x192-f6e307c2_20200709.pth", 0.735,
          "resnet_coco"),
    _coco("simplebaseline_res152", (288, 384), "resnet", "res152_coco_384x288-3860d4c9_20200709.pth", 0.750,
          "resnet_coco"),
    _coco("hrformer_small", (192, 256), "hrformer", "hrformer_small_coco_256x192-b657896f_20220226.pth", 0.737,
          "hrformer_coco"),
    _coco("hrformer_small", (288, 384), "hrformer", "hrformer_small_coco_384x288-4b52b078_20220226.pth", 0.755,
          "hrformer_coco"),
    _coco("hrformer_base", (192, 256), "hrformer", "hrformer_base_coco_256x192-66cee214_20220226.pth", 0.753,
          "hrformer_coco"),
    _mpii("hrnet_w32", "hrnet", "hrnet_w32_mpii_256x256-6c4f923f_20200812.pth", 0.900, "hrnet_mpii"),
    _mpii("hrnet_w48", "hrnet", "hrnet_w48_mpii_256x256-92cab7bd_20200812.pth", 0.901, "hrnet_mpii"),
    _mpii("simplebaseline_res50", "resnet", "res50_mpii_256x256-418ffc88_20200812.pth", 0.882, "resnet_mpii"),
    _mpii("simplebaseline_res101", "resnet", "res101_mpii_256x256-416f5d71_20200812.pth", 0.888, "resnet_mpii"),
    _mpii("simplebaseline_res152", "resnet", "res152_mpii_256x256-3ecba29d_20200812.pth", 0.889, "resnet_mpii"),
    _backbone("hrnet_w32", PRETRAIN.format("hrnet_w32-36af842e.pth"), "MMPose configs (HRNet backbone)"),
    _backbone("hrnet_w48", PRETRAIN.format("hrnet_w48-8ef0771d.pth"), "MMPose configs (HRNet backbone)"),
    _backbone("simplebaseline_res50", TORCHVISION.format("resnet50-19c8e357.pth"), "torchvision model_urls"),
    _backbone("simplebaseline_res101", TORCHVISION.format("resnet101-5d3b4d8f.pth"), "torchvision model_urls"),
    _backbone("simplebaseline_res152", TORCHVISION.format("resnet152-b121ed2d.pth"), "torchvision model_urls"),
    _backbone("hrformer_small", PRETRAIN.format("hrformer_small-09516375_20220226.pth"),
              "MMPose configs (HRFormer backbone)"),
    _backbone("hrformer_base", PRETRAIN.format("hrformer_base-32815020_20220226.pth"),
              "MMPose configs (HRFormer backbone)"),
    WeightsEntry("fcos_resnet50_fpn_coco", "detector", TORCHVISION.format("fcos_resnet50_fpn_coco-99b0c9b7.pth"),
                 "fcos_resnet50_fpn", "torchvision FCOS_ResNet50_FPN_Weights.COCO_V1", dataset="COCO val2017",
                 metric="box AP", value=39.2),
]

#: name -> entry, in listing order.
REGISTRY: dict[str, WeightsEntry] = {e.name: e for e in _ENTRIES}
#: what `dmpose predict` fetches without --ckpt, and its person detector.
DEFAULT_POSE_MODEL = "hrnet_w32_coco_256x192"
DEFAULT_DETECTOR = "fcos_resnet50_fpn_coco"


def get_entry(name: str) -> WeightsEntry:
    """The entry called `name`; ValueError naming the closest names and `dmpose weights list`."""
    try:
        return REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(REGISTRY), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"no published weights named {name!r}{hint}; `dmpose weights list` lists them") from None


def entry_for_file(file_name: str) -> WeightsEntry | None:
    """The entry whose published file is called `file_name` (a URL's or a downloaded file's name)."""
    return next((e for e in REGISTRY.values() if e.file_name == file_name), None)


def imagenet_entry(arch: str) -> WeightsEntry:
    """The ImageNet backbone entry of `arch` (what `model.pretrained: imagenet` loads)."""
    entry = next((e for e in REGISTRY.values() if e.kind == "backbone" and e.arch == arch), None)
    if entry is None:
        known = sorted({e.arch for e in REGISTRY.values() if e.kind == "backbone"})
        raise ValueError(f"model.pretrained: imagenet: no published ImageNet backbone for arch {arch!r} "
                       f"(known for {', '.join(known)}); give a file path or null")
    return entry
