"""dmpose's FCOS person detector against torchvision's: equality and CPU latency.

1. Equality: dmpose.detect's FCOS and torchvision's fcos_resnet50_fpn (built as for its COCO weights:
   FrozenBatchNorm2d), loaded with the same random state dict whose person label fires
   (`dmpose.detect.fcos.firing_random_state_dict`), on a few images (random ones and the real COCO sample images
   when present); prints the max abs difference of boxes and scores (all labels, torchvision's coordinates).
2. Latency (median of --repeats, after a warm-up) of one image (the first real image, else a 640x480 random
   one) at 1 torch thread and at 2, side by side: dmpose's FCOS (`PersonDetector.detect`, person boxes) and the
   reference candidates through torchvision with random weights (fcos_resnet50_fpn, retinanet_resnet50_fpn_v2,
   ssdlite320_mobilenet_v3_large, fasterrcnn_mobilenet_v3_large_fpn), with their documented COCO val2017 box AP
   from torchvision's weight metadata.

Caveat: torchvision is imported through a stub of its C operators (`--stub`) whose NMS is a Python loop, and
random weights leave many boxes to suppress: the NMS-heavy (two-stage) models' latencies are inflated.

    python benchmarks/detector_reference.py --torchvision-path /tmp/tvtarget2 --stub /tmp/tvstub.py
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import header, markdown_table  # noqa: E402

from dmpose.detect import PersonDetector  # noqa: E402
from dmpose.detect.fcos import fcos_resnet50_fpn, firing_random_state_dict  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_sample"
CANDIDATES = ("fcos_resnet50_fpn", "retinanet_resnet50_fpn_v2", "ssdlite320_mobilenet_v3_large",
              "fasterrcnn_mobilenet_v3_large_fpn")


def import_torchvision(path: str | None, stub: str | None):
    if path:
        sys.path.insert(0, path)
    if stub:
        sys.path.insert(0, str(Path(stub).parent))
        stub_module = importlib.import_module(Path(stub).stem)
    import torchvision

    if stub:
        stub_module.patch_extension()
    return torchvision


def reference_fcos(state):
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.fcos import FCOS
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    backbone = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(256, 256))
    ref = FCOS(backbone, 91).eval()
    ref.load_state_dict(state)
    return ref


def real_images(root: Path, n: int) -> list[np.ndarray]:
    import cv2

    files = sorted(root.glob("*.jpg"))[:n] if root.is_dir() else []
    return [cv2.imread(str(f))[:, :, ::-1].copy() for f in files]


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--torchvision-path", help="a folder holding torchvision's Python package")
    ap.add_argument("--stub", help="a module defining torchvision's C operators (tvstub.py)")
    ap.add_argument("--data", type=Path, default=SAMPLE, help="real images (*.jpg); default the COCO sample")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-latency", action="store_true")
    args = ap.parse_args()
    tv = import_torchvision(args.torchvision_path, args.stub)
    from torchvision.models import get_model, get_model_weights

    state = firing_random_state_dict(0)
    ours, ref = fcos_resnet50_fpn().eval(), reference_fcos(state)
    ours.load_state_dict(state)
    rng = np.random.default_rng(0)
    reals = real_images(args.data, 2)
    images = [(rng.uniform(0, 1, (240, 320, 3)) * 255).astype(np.uint8),
              (rng.uniform(0, 1, (333, 250, 3)) * 255).astype(np.uint8), *reals]
    print(header("Person detector: dmpose FCOS vs torchvision (CPU)", torchvision=tv.__version__,
                 images=len(images), real_images=len(reals)))
    rows = []
    with torch.no_grad():
        for i, im in enumerate(images):
            x = torch.from_numpy(im).permute(2, 0, 1).float() / 255.0
            e, g = ref([x])[0], ours([x])[0]
            same = len(e["boxes"]) == len(g.boxes) and torch.equal(e["labels"], g.labels)
            db = float((e["boxes"] - g.boxes).abs().max()) if same and len(g.boxes) else float("nan")
            ds = float((e["scores"] - g.scores).abs().max()) if same and len(g.boxes) else float("nan")
            rows.append([f"{'real' if i >= 2 else 'random'} {im.shape[1]}x{im.shape[0]}", len(g.boxes),
                         int((g.labels == 1).sum()), "yes" if same else "NO", f"{db:.2e}", f"{ds:.2e}"])
    print(markdown_table(["image", "detections", "persons", "same boxes & labels", "max |box diff| px",
                          "max |score diff|"], rows, title="Equality (random weights, the same state dict)"))
    if args.skip_latency:
        return
    image = reals[0] if reals else (rng.uniform(0, 1, (480, 640, 3)) * 255).astype(np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    detector = PersonDetector(state, device="cpu")
    models = {"dmpose FCOS (PersonDetector.detect)": (lambda: detector.detect(image), 39.2, "same as fcos")}
    for name in CANDIDATES:
        m = get_model(name, weights=None, weights_backbone=None).eval()
        if name == "fcos_resnet50_fpn":
            m = ref  # the same firing weights as ours: the same work
        ap_box = get_model_weights(name).DEFAULT.meta["_metrics"]["COCO-val2017"]["box_map"]
        models[f"torchvision {name}"] = ((lambda m=m: m([x])), ap_box, "firing" if m is ref else "torchvision init")
    times: dict[str, dict[int, float]] = {k: {} for k in models}
    with torch.no_grad():  # 1 and 2 threads back to back per model: both see the same machine load
        for name, (fn, _, _) in models.items():
            for threads in (1, 2):
                torch.set_num_threads(threads)
                times[name][threads] = median_seconds(fn, args.repeats)
    rows = [[name, f"{ap_box}", f"{times[name][1] * 1e3:.0f}", f"{times[name][2] * 1e3:.0f}", init]
            for name, (_, ap_box, init) in models.items()]
    print(markdown_table(["model", "COCO box AP (torchvision)", "1 thread ms", "2 threads ms", "random weights"],
                         rows, title=f"CPU latency, one {image.shape[1]}x{image.shape[0]} image "
                                     f"(median of {args.repeats})"))


if __name__ == "__main__":
    main()
