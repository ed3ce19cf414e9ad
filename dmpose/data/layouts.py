"""Dataset folder layouts: where a split's annotations, images and detections live under a data root (the one
definition, shared by training and `dmpose eval`).

COCO (the official layout)::

    ROOT/annotations/person_keypoints_SPLIT.json      keypoint annotations (test splits: image_info_SPLIT.json)
    ROOT/SPLIT/                                       images (test splits: ROOT/test2017/)
    ROOT/person_detection_results/COCO_val2017_detections_AP_H_56_person.json   the paper's person detections

A custom COCO-format dataset may instead keep ROOT/annotations/SPLIT.json, and its images in ROOT/images/SPLIT/ or
ROOT/images/: the first layout that exists is used, so `data.root` and the split names are all a config needs.

MPII (as the official HRNet code)::

    ROOT/annot/SPLIT.json, ROOT/annot/gt_SPLIT.mat, ROOT/images/
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_DETECTION_FILE", "coco_paths", "mpii_paths"]

#: The person detections of the paper's COCO protocol (the AP-56 detector's), relative to the data root.
DEFAULT_DETECTION_FILE = "person_detection_results/COCO_val2017_detections_AP_H_56_person.json"


def coco_paths(root: str | Path, split: str = "val2017") -> tuple[Path, Path]:
    """(annotation json, image folder) of a split in the standard COCO layout.

    Test splits have no keypoint annotations: test-dev2017 -> annotations/image_info_test-dev2017.json
    and the images in test2017/ (as COCO ships them)."""
    root = Path(root)
    if split.startswith("test"):
        return root / "annotations" / f"image_info_{split}.json", root / "test2017"
    anns = [root / "annotations" / f"person_keypoints_{split}.json", root / "annotations" / f"{split}.json"]
    images = [root / split, root / "images" / split, root / "images"]
    return next((a for a in anns if a.is_file()), anns[0]), next((i for i in images if i.is_dir()), images[0])


def mpii_paths(root: str | Path, split: str = "valid") -> tuple[Path, Path, Path]:
    """(annotation json, image folder, ground-truth .mat) of an MPII split in the official HRNet layout."""
    root = Path(root)
    return root / "annot" / f"{split}.json", root / "images", root / "annot" / f"gt_{split}.mat"
