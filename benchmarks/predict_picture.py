"""docs/images/predict_chain.jpg: `dmpose predict PHOTO` run as a user runs it, with nothing but the photo, on a
machine that cannot reach the published weights. A loopback server (127.0.0.1) stands in for the weights hosts,
serving under published-style names (sha256 prefix in the file name) the weights that exist here:

- pose: a dmpose checkpoint trained on the synthetic set (`--pose`, e.g. runs/synthetic/best.safetensors),
  written out in MMPose's layout so that it goes through the same fetch -> verify -> convert path;
- detector: FCOS ResNet50-FPN with random weights (`dmpose.detect.fcos.firing_random_state_dict`), since
  torchvision's COCO weights cannot be fetched here.

So the picture shows the chain working end to end, not what the published weights draw.

    python benchmarks/predict_picture.py --pose runs/synthetic/best.safetensors \
        --image ../shared/data/coco_sample/000000197388.jpg
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import os
import shutil
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from dmpose.cli import app
from dmpose.detect.fcos import firing_random_state_dict
from dmpose.models import read_checkpoint_spec
from dmpose.weights import REGISTRY, registry

REPO = Path(__file__).resolve().parents[1]


def _publish(folder: Path, stem: str, obj) -> str:
    tmp = folder / f"{stem}.tmp"
    torch.save(obj, tmp)
    name = f"{stem}-{hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]}.pth"
    tmp.rename(folder / name)
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pose", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "predict_chain.jpg")
    args = parser.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        served = tmp / "served"
        served.mkdir()
        spec = read_checkpoint_spec(args.pose)
        state = {("keypoint_head." if k.startswith("final_layer") else "backbone.") + k: v
                 for k, v in load_file(str(args.pose)).items()}
        pose_file = _publish(served, f"{spec.arch}_synthetic", {"state_dict": state})
        det_file = _publish(served, "fcos_resnet50_fpn_random", firing_random_state_dict(0))
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        REGISTRY["synthetic_pose"] = registry.WeightsEntry(
            "synthetic_pose", "pose", f"{base}/{pose_file}", spec.arch, "benchmarks/predict_picture.py",
            keypoints=spec.keypoints.name, input_wh=spec.input_wh, decode=spec.decode)
        REGISTRY[registry.DEFAULT_DETECTOR] = replace(REGISTRY[registry.DEFAULT_DETECTOR], url=f"{base}/{det_file}")
        registry.DEFAULT_POSE_MODEL = "synthetic_pose"
        os.environ["DMPOSE_CACHE"] = str(tmp / "cache")
        os.environ.pop("DMPOSE_WEIGHTS_MIRROR", None)
        photo = tmp / args.image.name
        shutil.copy(args.image, photo)
        result = CliRunner().invoke(app, ["predict", str(photo), "--out", str(tmp / "out"), "--max-people", "5"],
                                    env={"COLUMNS": "120"})
        httpd.shutdown()
        print(result.output)
        if result.exit_code != 0:
            raise SystemExit(result.exit_code)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp / "out" / f"{photo.stem}_pose.jpg", args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
