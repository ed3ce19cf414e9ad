"""Evaluation: COCO keypoint metrics (pycocotools), MPII PCKh, batched top-down inference over a dataset
(`predictor.TopDownPredictor`, `runner.predict_dataset`, `metrics.CocoEvaluator` / `MpiiEvaluator`) and
checkpoint evaluation end to end (`evaluate.evaluate_checkpoint`)."""
