"""Evaluation throughput: `evaluate_checkpoint` on a small synthetic val split, flip on/off, both decodes.

Crops/s of the inference loop (loading, model, flip, decode, inverse affine) and the wall time of the
whole evaluation (plus rescoring, OKS-NMS, COCOeval). A freshly initialised network (the numbers do not
depend on the weights). Reported, never asserted.

    python benchmarks/bench_eval.py --arch hrnet_tiny --val 20 --batch 32 --workers 0
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from harness import Table, header

import dmpose
from dmpose.data.synthetic import ensure_synthetic
from dmpose.eval.evaluate import evaluate_checkpoint
from dmpose.spec import PoseSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="hrnet_tiny")
    parser.add_argument("--val", type=int, default=20, help="synthetic val images")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        root = ensure_synthetic(Path(tmp) / "synth", 1, args.val, seed=0)
        torch.manual_seed(0)
        ckpt = dmpose.save_checkpoint(dmpose.build_model(args.arch), Path(tmp) / "model.safetensors",
                                      spec=PoseSpec.build(args.arch, "coco17", (192, 256)))
        print(header("Evaluation throughput", device, arch=args.arch, input_wh="192x256", batch=args.batch,
                     workers=args.workers, val_images=args.val))
        table = Table("boxes", "decode", "flip", "crops", "crops/s", "total s", align="lllrrr")
        for boxes in ("gt", "dets"):
            for decode in ("2x2", "argmax"):
                for flip in (False, True):
                    start = time.perf_counter()
                    report = evaluate_checkpoint(ckpt, root, gt_boxes=boxes == "gt", flip=flip, decode=decode,
                                                 batch_size=args.batch, num_workers=args.workers, device=device)
                    total = time.perf_counter() - start
                    s = report.settings
                    table.add_row(boxes, decode, flip, s["instances"], f"{s['images_per_second']:.1f}",
                                  f"{total:.2f}")
        table.print()


if __name__ == "__main__":
    main()
