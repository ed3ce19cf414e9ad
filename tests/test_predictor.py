"""TopDownPredictor (mode untouched, spec-driven flip and decode) and the evaluators' de-duplication."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dmpose.decode import decode_2x2, decode_argmax
from dmpose.eval.metrics import CocoEvaluator, MpiiEvaluator
from dmpose.eval.predictor import TopDownPredictor
from dmpose.spec import CodecSpec, PoseSpec
from dmpose.suppliers import decoded_map

torch.set_num_threads(1)
SPEC = PoseSpec.build("toy", "coco17", (32, 64), codec=CodecSpec(name="dm", supplier_map="relu"))  # heatmaps 8 x 16


class Toy(nn.Module):
    """Heatmaps from the crop by a fixed conv + pooling (so the flip test has something to average);
    dropout in training mode would make outputs random, eval mode must be used."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 17, 3, padding=1)
        self.drop = nn.Dropout(0.9)

    def forward(self, x):
        return self.drop(nn.functional.avg_pool2d(self.conv(x), 4))


def test_predictor_keeps_the_callers_mode_and_decodes_by_the_spec():
    model = Toy().train()
    model.conv.eval()  # a mixed state must come back as it was
    images = torch.randn(2, 3, 64, 32)
    affines = np.tile(np.array([[1.0, 0, 5], [0, 1.0, 7]]), (2, 1, 1))  # image -> heatmap: a shift
    out = TopDownPredictor(model, SPEC, flip=False).predict(images, affines)
    assert model.training and not model.conv.training and model.drop.training
    with torch.no_grad():
        hm = model.eval()(images)
    read = decoded_map(hm, "relu")  # the decode reads the map the loss saw: relu(H) normalised
    coords, conf = decode_2x2(read)
    torch.testing.assert_close(out.heatmaps, read)
    torch.testing.assert_close(coords, decode_2x2(hm)[0])  # the 2x2 decode is scale-invariant
    np.testing.assert_allclose(out.keypoints.numpy(), coords.double().numpy() - [5, 7], atol=1e-6)
    assert out.keypoints.dtype == torch.float64 and out.scores.shape == (2, 17)
    torch.testing.assert_close(out.scores, conf.float())

    argmax = SPEC.replace(codec=CodecSpec(name="gaussian"))
    out = TopDownPredictor(model, argmax, flip=False).predict(images, affines)
    np.testing.assert_allclose(out.keypoints.numpy(), decode_argmax(hm)[0].double().numpy() - [5, 7], atol=1e-6)


def test_flip_test_uses_the_spec_permutation():
    model = Toy().eval()
    images = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        direct, mirrored = model(images), model(images.flip(-1))
    back = mirrored.flip(-1)[:, list(SPEC.keypoints.flip_index)]
    hm = TopDownPredictor(model, SPEC.replace(codec=CodecSpec(name="gaussian"))).heatmaps(images)
    torch.testing.assert_close(hm, 0.5 * (direct + back))  # raw map: plain mean


def test_flip_average_of_the_predictor_and_predict_heatmaps_read_the_softplus_map():
    from dmpose.codec import build_codec
    from dmpose.eval.inference import predict_heatmaps

    model = Toy().eval()
    images = torch.randn(2, 3, 64, 32)
    spec = SPEC.replace(codec=CodecSpec(name="dm", supplier_map="softplus", supplier_beta=8.0))
    with torch.no_grad():
        direct, mirrored = model(images), model(images.flip(-1))
    back = mirrored.flip(-1)[:, list(SPEC.keypoints.flip_index)]
    expected = 0.5 * (decoded_map(direct, "softplus", 8.0) + decoded_map(back, "softplus", 8.0))
    torch.testing.assert_close(TopDownPredictor(model, spec).heatmaps(images), expected)
    helper = predict_heatmaps(model, images, build_codec(spec), spec.keypoints.flip_pairs)
    torch.testing.assert_close(helper, expected)
    relu = 0.5 * (decoded_map(direct, "relu", 1.0) + decoded_map(back, "relu", 1.0))
    assert not torch.allclose(expected, relu)  # the two maps differ here: the test can tell them apart


def test_predictor_checks_sizes():
    with pytest.raises(ValueError, match="input_wh"):
        TopDownPredictor(Toy(), SPEC).predict(torch.randn(1, 3, 32, 32), np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="heatmap_wh"):
        TopDownPredictor(Toy(), SPEC.replace(input_wh=(32, 64), output_stride=2)).heatmaps(torch.randn(1, 3, 64, 32))


def _instances(n, seed=0):
    rng = np.random.default_rng(seed)
    boxes = np.column_stack([rng.uniform(0, 50, (n, 2)), rng.uniform(50, 100, (n, 2))])
    return (np.arange(n) // 2, boxes, rng.uniform(0.5, 1, n), boxes[:, None, :2] + rng.uniform(0, 50, (n, 17, 2)),
            rng.uniform(0, 1, (n, 17)))


def test_coco_evaluator_is_idempotent_and_merges_ranks():
    ids, boxes, bs, kp, conf = _instances(6)
    whole = CocoEvaluator(None, SPEC.keypoints)
    whole.update(ids, boxes, bs, kp, conf)
    whole.compute()
    a, b = CocoEvaluator(None, SPEC.keypoints), CocoEvaluator(None, SPEC.keypoints)
    a.update(ids[:4], boxes[:4], bs[:4], kp[:4], conf[:4])
    b.update(ids[3:], boxes[3:], bs[3:], kp[3:], conf[3:])  # instance 3 on both ranks (DistributedSampler pad)
    b.update(ids[3:], boxes[3:], bs[3:], kp[3:], conf[3:])  # and seen twice
    a.merge([b.state()])
    assert len(a) == 6 and a.results() == whole.results()
    assert a.info["instances"] == 6


def test_mpii_evaluator_merges_ranks():
    rng = np.random.default_rng(0)
    gt = {"headboxes": np.tile([[0.0, 0.0], [20.0, 20.0]], (4, 1, 1)), "jnt_missing": np.zeros((4, 16), bool),
          "joints": rng.uniform(0, 100, (4, 16, 2))}
    a, b = MpiiEvaluator(gt), MpiiEvaluator(gt)
    a.update([0, 1], gt["joints"][:2])
    b.update([2, 3, 1], gt["joints"][[2, 3, 1]])
    with pytest.raises(ValueError, match="correspond"):
        b.compute()
    a.merge([b.state()])
    metrics = a.compute()
    assert metrics["PCKh@0.5"] == 100.0 and metrics["PCKh@0.1/Head"] == 100.0
