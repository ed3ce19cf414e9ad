"""Evaluation: COCO keypoint metrics (pycocotools), MPII PCKh, and the top-down inference helpers."""
