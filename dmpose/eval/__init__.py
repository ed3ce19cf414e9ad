"""Evaluation: COCO keypoint metrics (pycocotools), MPII PCKh, batched top-down inference over a dataset
(`topdown.predict_dataset`) and checkpoint evaluation end to end (`evaluate.evaluate_checkpoint`)."""
