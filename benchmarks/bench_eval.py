"""Evaluation throughput: `evaluate_checkpoint` on a small synthetic val split, flip on/off, both decodes.

Crops/s of the inference loop (loading, model, flip, decode, inverse affine) and the wall time of the
whole evaluation (plus rescoring, OKS-NMS, COCOeval). A freshly initialised network (the numbers do not
depend on the weights). Reported, never asserted.

    python benchmarks/bench_eval.py --arch hrnet_tiny --val 20 --batch 32 --workers 0
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dmpose  # noqa: E402
from dmpose.data.synthetic import ensure_synthetic  # noqa: E402
from dmpose.eval.evaluate import evaluate_checkpoint  # noqa: E402


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
                                      meta={"input_size": [256, 192], "decode": "2x2"})
        print(f"{args.arch} 256x192, batch {args.batch}, workers {args.workers}, {device} "
              f"({platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()})")
        print(f"{'boxes':<10} {'decode':<7} {'flip':<5} {'crops':>6} {'crops/s':>8} {'total s':>8}")
        for boxes in ("gt", "dets"):
            for decode in ("2x2", "argmax"):
                for flip in (False, True):
                    start = time.perf_counter()
                    report = evaluate_checkpoint(ckpt, root, gt_boxes=boxes == "gt", flip=flip, decode=decode,
                                                 batch_size=args.batch, num_workers=args.workers, device=device)
                    total = time.perf_counter() - start
                    s = report.settings
                    print(f"{boxes:<10} {decode:<7} {str(flip):<5} {s['instances']:>6} "
                          f"{s['images_per_second']:>8.1f} {total:>8.2f}")


if __name__ == "__main__":
    main()
