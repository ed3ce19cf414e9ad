"""Data-pipeline throughput: crops per second in ONE process (one core), as a DataLoader worker sees it.

Part 1 (library choice): JPEG decode + affine warp of one person crop, per image library:
  pillow       Image.open + convert("RGB") + Image.transform(AFFINE, BILINEAR)
  opencv       cv2.imdecode + cvtColor + cv2.warpAffine (INTER_LINEAR)
  simplejpeg   simplejpeg.decode_jpeg (RGB) + cv2.warpAffine
Part 2 (what training gets): CocoKeypoints.__getitem__ with HRNet augmentation and the DM / Gaussian
codec targets (read + decode + warp + normalise + targets), on the real COCO sample and synthetic images.

Images: shared/data/coco_sample (COCO val2017, ~640x430), shared/data/mpii_sample (1280x720 / 854x480)
and 30 synthetic images (256..320 px). Run from the repository root:

    python benchmarks/bench_data.py [--seconds 2] [--shared PATH]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
from harness import header, markdown_table  # noqa: E402
from PIL import Image  # noqa: E402

from dmpose.geometry import crop_affine, invert_affine  # noqa: E402

cv2.setNumThreads(1)
SIZES = {"256x192": (192, 256), "384x288": (288, 384)}


def crop_matrix(shape_hw, out_wh, rng):
    h, w = shape_hw
    size = np.array([0.45 * h * out_wh[0] / out_wh[1], 0.45 * h])
    center = rng.uniform([0.3 * w, 0.3 * h], [0.7 * w, 0.7 * h])
    return crop_affine(center, size, rng.uniform(-45, 45), out_wh)


def run_pillow(data, out_wh, rng):
    im = Image.open(io.BytesIO(data)).convert("RGB")
    inv = invert_affine(crop_matrix((im.height, im.width), out_wh, rng))
    # Pillow puts pixel centres at +0.5 on both sides: shift the output->input map accordingly
    a, b, c = inv[0]
    d, e, f = inv[1]
    coeffs = (a, b, c + 0.5 - 0.5 * (a + b), d, e, f + 0.5 - 0.5 * (d + e))
    return np.asarray(im.transform(out_wh, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR))


def run_opencv(data, out_wh, rng):
    im = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return cv2.warpAffine(im, crop_matrix(im.shape[:2], out_wh, rng), out_wh, flags=cv2.INTER_LINEAR)


def run_simplejpeg(data, out_wh, rng):
    import simplejpeg

    im = simplejpeg.decode_jpeg(data, colorspace="RGB")
    return cv2.warpAffine(im, crop_matrix(im.shape[:2], out_wh, rng), out_wh, flags=cv2.INTER_LINEAR)


def rate(fn, items, seconds):
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for item in items:
            fn(item)
            n += 1
    return n / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--shared", type=Path,
                        default=Path(os.environ.get("DMPOSE_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")))
    args = parser.parse_args()

    from dmpose.data.synthetic import generate_synthetic_coco

    tmp = Path(tempfile.mkdtemp(prefix="dmpose-bench-"))
    generate_synthetic_coco(tmp / "synth", 30, 0, seed=0)
    sets = {"synthetic": sorted((tmp / "synth" / "train2017").glob("*.jpg"))}
    for name, sub in (("COCO sample", "coco_sample"), ("MPII sample", "mpii_sample")):
        files = sorted((args.shared / sub).glob("*.jpg"))
        if files:
            sets[name] = files
    backends = {"pillow": run_pillow, "opencv": run_opencv}
    try:
        import simplejpeg  # noqa: F401

        backends["simplejpeg+cv2 warp"] = run_simplejpeg
    except ImportError:
        print("simplejpeg not installed: skipped")

    print(header("Data (CPU)", "cpu", seconds=args.seconds, processes=1, opencv_threads=1))
    rows = []
    for set_name, files in sets.items():
        datas = [f.read_bytes() for f in files]
        for size_name, out_wh in SIZES.items():
            row = []
            for fn in backends.values():
                rng = np.random.default_rng(0)
                row.append(f"{rate(lambda d: fn(d, out_wh, rng), datas, args.seconds):.0f}")
            rows.append((set_name, size_name, *row))
    print(markdown_table(("images", "size", *backends), rows, title="JPEG decode + affine warp, crops/s per process"))

    import torch

    from dmpose.codec import DMCodec, GaussianCodec
    from dmpose.data.coco import CocoKeypoints
    from dmpose.data.layouts import coco_paths
    from dmpose.data.transforms import AugmentConfig, TopDownTransform
    from dmpose.keypoints import load_keypoint_set

    torch.set_num_threads(1)
    ks = load_keypoint_set("coco17")
    datasets = {"synthetic": coco_paths(tmp / "synth", "train2017")}
    if "COCO sample" in sets:
        datasets["COCO sample"] = (args.shared / "coco_sample" / "test_coco.json", args.shared / "coco_sample")
    rows = []
    for set_name, (ann, img_dir) in datasets.items():
        for size_name, in_wh in SIZES.items():
            hm_wh = (in_wh[0] // 4, in_wh[1] // 4)
            row = []
            for codec in (DMCodec(hm_wh), GaussianCodec(hm_wh, sigma=2.0 * in_wh[0] / 192, flavour="unbiased")):
                ds = CocoKeypoints(ann, img_dir, TopDownTransform(in_wh, hm_wh, codec, ks, AugmentConfig()))
                torch.manual_seed(0)
                row.append(f"{rate(lambda i: ds[i], range(len(ds)), args.seconds):.0f}")
            rows.append((set_name, size_name, *row))
    print(markdown_table(("images", "size", "DM codec", "Gaussian codec (unbiased)"), rows,
                         title="Full training sample (read + decode + augment + warp + normalise + targets), "
                         "samples/s per process"))
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
