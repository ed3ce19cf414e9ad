"""Datasets, keypoint sets, augmentation and the synthetic COCO-format generator."""
