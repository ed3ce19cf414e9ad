"""The pictures of docs/training.md from a finished default-job run folder: its curves.png, diagnostics.png and the
last validation's crops, redrawn by the current code.

    python benchmarks/doc_pictures.py runs/synthetic      # writes docs/images/{curves,diagnostics}.png, val_crops.jpg
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dmpose.codec import build_codec  # noqa: E402
from dmpose.models import load_model  # noqa: E402
from dmpose.train.config import load_config  # noqa: E402
from dmpose.train.datasets import build_datasets  # noqa: E402
from dmpose.train.run_folder import RunFolder  # noqa: E402
from dmpose.train.validate import heatmap_pass  # noqa: E402


def main(run: Path, out: Path = REPO / "docs" / "images") -> None:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = RunFolder(Path(tmp))
        for name in ("metrics.csv", "metrics.jsonl"):
            shutil.copyfile(run / name, folder.file(name))
        folder.load_metrics(10**9, 10**9)
        best = load_model(run / "best.safetensors")
        folder.plot_curves("AP", "detections")
        cfg = load_config(run / "config.yaml")
        spec = best.spec
        _, val = build_datasets(cfg, spec)
        _, fig = heatmap_pass(best, val.gt_dataset, build_codec(spec), cfg.loss.dm, batch_size=8, crops=4)
        mean = torch.tensor(spec.normalisation.mean)[:, None, None].numpy()
        std = torch.tensor(spec.normalisation.std)[:, None, None].numpy()
        imgs = ((fig["images"] * std + mean) * 255).clip(0, 255).astype("uint8").transpose(0, 2, 3, 1)
        s = spec.output_stride
        path = folder.write_val_crops(30, imgs, fig["heatmaps"], (fig["pred"] + 0.5) * s - 0.5,
                                      (fig["gt"] + 0.5) * s - 0.5, fig["weights"], "GT boxes", spec.keypoints.skeleton)
        for src, dst in ((folder.file("curves.png"), "curves.png"), (folder.file("diagnostics.png"), "diagnostics.png"),
                         (path, "val_crops.jpg")):
            shutil.copyfile(src, out / dst)
    print(f"wrote {out}/curves.png, diagnostics.png, val_crops.jpg")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
