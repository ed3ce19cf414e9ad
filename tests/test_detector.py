"""The person detector (dmpose.detect): NMS, FCOS's key layout against torchvision's (a stored fixture), the
postprocess on hand-built head outputs, the detector end to end on random weights, and, where torchvision can be
imported (DMPOSE_TORCHVISION_PATH / DMPOSE_TORCHVISION_STUB point at its Python code and a stub of its C operators
on a torch it was not built for), equality with torchvision's fcos_resnet50_fpn."""

import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dmpose.detect import PersonDetector, batched_nms, box_iou, load_person_detector, nms, select_boxes
from dmpose.detect.fcos import FCOSConfig, fcos_resnet50_fpn, firing_random_state_dict

FIXTURE = Path(__file__).parent / "fixtures" / "torchvision_fcos_resnet50_fpn_keys.txt"
SMALL = FCOSConfig(min_size=96, max_size=160)  # torchvision's settings but a small resize: fast tests


# ---- NMS

def brute_force_nms(boxes: np.ndarray, scores: np.ndarray, thr: float) -> list[int]:
    """The definition, one pair at a time: visit boxes by score (ties: lower index first); keep a box unless a kept
    one overlaps it by IoU > thr."""
    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
        return w * h / union if union > 0 else 0.0
    keep: list[int] = []
    for i in sorted(range(len(boxes)), key=lambda i: (-scores[i], i)):
        if all(iou(boxes[i], boxes[k]) <= thr for k in keep):
            keep.append(i)
    return keep


def random_boxes(rng, n):
    xy = rng.uniform(0, 50, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(1, 30, (n, 2))], 1)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("thr", [0.0, 0.3, 0.6])
def test_nms_matches_brute_force(seed, thr):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    boxes = random_boxes(rng, n)
    scores = np.round(rng.uniform(0, 1, n), 1)  # rounded: many ties
    got = nms(torch.from_numpy(boxes), torch.from_numpy(scores), thr).tolist()
    assert got == brute_force_nms(boxes, scores, thr)


def test_nms_ties_and_empty():
    same = torch.tensor([[0.0, 0, 10, 10]] * 3)
    assert nms(same, torch.tensor([0.5, 0.5, 0.5]), 0.5).tolist() == [0]  # ties: the lower index wins
    assert nms(same, torch.tensor([0.5, 0.9, 0.5]), 0.5).tolist() == [1]
    assert nms(same, torch.tensor([0.5, 0.5, 0.5]), 1.0).tolist() == [0, 1, 2]  # IoU 1 is not > 1
    empty = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    assert box_iou(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0  # degenerate boxes: no NaN
    with pytest.raises(ValueError, match="boxes must be"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)


def test_batched_nms_keeps_labels_apart():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10]])
    keep = batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1, 2, 1]), 0.5)
    assert keep.tolist() == [0, 1]


def test_select_boxes_counts_each_rule():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 10, 10], [80, 80, 5, 5], [0, 50, 10, 10.0]])
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.6])
    s = select_boxes(boxes, scores, score_thr=0.3, nms_thr=0.5, max_boxes=2)
    assert s.keep.tolist() == [0, 2] and (s.below_thr, s.by_nms, s.over_max, s.dropped) == (1, 1, 1, 3)
    assert select_boxes(boxes, scores).keep.tolist() == [0, 1, 2, 4, 3]
    assert len(select_boxes(np.zeros((0, 4)), np.zeros(0), 0.5, 0.5, 3).keep) == 0


# ---- the network's key layout, against torchvision's (a stored fixture)

def test_state_dict_is_torchvisions():
    rows = [line.split("\t") for line in FIXTURE.read_text().splitlines() if not line.startswith("#")]
    expected = [(k, () if s == "-" else tuple(int(d) for d in s.split("x"))) for k, s in rows]
    got = [(k, tuple(v.shape)) for k, v in fcos_resnet50_fpn().state_dict().items()]
    assert got == expected  # names, shapes and order
    assert sum(v.numel() for v in fcos_resnet50_fpn().parameters()) == 32269600  # torchvision's num_params


@pytest.fixture(scope="module")
def detector_weights():
    return firing_random_state_dict()


def test_mismatched_state_dict_names_keys(detector_weights):
    bad = dict(detector_weights)
    del bad["head.regression_head.bbox_reg.weight"]
    bad["extra.weight"] = torch.zeros(1)
    bad["head.classification_head.cls_logits.bias"] = torch.zeros(80)
    with pytest.raises(ValueError) as e:
        PersonDetector(bad)
    text = str(e.value)
    for part in ("1 missing (head.regression_head.bbox_reg.weight)", "1 unexpected (extra.weight)",
                 "cls_logits.bias (80,) (expected (91,))"):
        assert part in text


def test_reads_pth_and_safetensors(tmp_path, detector_weights):
    from safetensors.torch import save_file

    torch.save(detector_weights, tmp_path / "fcos.pth")
    save_file({k: v.contiguous() for k, v in detector_weights.items()}, tmp_path / "fcos.safetensors")
    for name in ("fcos.pth", "fcos.safetensors"):
        det = load_person_detector(tmp_path / name, device="cpu")
        assert torch.equal(det.model.state_dict()["head.classification_head.cls_logits.bias"],
                           detector_weights["head.classification_head.cls_logits.bias"])
    with pytest.raises(FileNotFoundError, match="fcos_resnet50_fpn"):
        load_person_detector(tmp_path / "missing.pth")
    (tmp_path / "x.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=".pth, .pt or .safetensors"):
        load_person_detector(tmp_path / "x.bin")


# ---- hand-built cases whose answer is known

def test_postprocess_one_location_fires():
    """One location of level 0 (stride 8) fires for label 1 with distances (1, 2, 3, 4) anchor sizes: the box is
    its centre -/+ those times 8, and its score sqrt(sigmoid(cls) * sigmoid(ctr))."""
    model = fcos_resnet50_fpn().eval()
    padded = torch.zeros(1, 3, 64, 64)
    features = [torch.zeros(1, 1, 64 // s, 64 // s) for s in (8, 16, 32, 64, 128)]
    features[-1] = torch.zeros(1, 1, 1, 1)
    anchors = model.anchors(padded, features)
    assert anchors[0][9].tolist() == [4.0, 4.0, 12.0, 12.0]  # location (1, 1): centre (8, 8), side 8
    logits = [torch.full((len(a), 91), -10.0) for a in anchors]
    regression = [torch.zeros(len(a), 4) for a in anchors]
    centerness = [torch.full((len(a), 1), -10.0) for a in anchors]
    logits[0][9, 1], centerness[0][9, 0] = 3.0, 1.0
    regression[0][9] = torch.tensor([1.0, 0.5, 2.0, 0.25])
    det = model.postprocess(logits, regression, centerness, anchors, (64, 64))
    assert det.labels.tolist() == [1]
    assert det.boxes.tolist() == [[0.0, 4.0, 24.0, 10.0]]  # x1 = 8 - 8 clipped at 0; y1 = 8 - 4; x2 = 8 + 16
    assert det.scores.item() == pytest.approx(float(torch.sqrt(torch.sigmoid(torch.tensor(3.0)) *
                                                               torch.sigmoid(torch.tensor(1.0)))))


def test_detect_converts_to_dmpose_coordinates(detector_weights, monkeypatch):
    """torchvision's edge coordinates -> dmpose's (pixel centres at integers): x - 0.5; other labels dropped."""
    from dmpose.detect.fcos import Detections

    det = PersonDetector(detector_weights, device="cpu", config=SMALL)
    out = Detections(torch.tensor([[10.0, 20, 50, 80], [0, 0, 5, 5], [0, 0, 64, 48]]), torch.tensor([0.9, 0.8, 0.4]),
                     torch.tensor([1, 3, 1]))
    monkeypatch.setattr(det.model, "forward", lambda images: [out])
    got = det.detect(np.zeros((48, 64, 3), np.uint8), det_thr=0.3)
    np.testing.assert_allclose(got, [[9.5, 19.5, 40, 60, 0.9], [-0.5, -0.5, 64, 48, 0.4]], rtol=1e-6)
    assert det.detect(np.zeros((48, 64, 3), np.uint8)).shape == (1, 5)  # default det_thr 0.5


# ---- end to end on random weights

def test_detect_end_to_end(detector_weights):
    rng = np.random.default_rng(0)
    image = (rng.uniform(0, 1, (50, 70, 3)) * 255).astype(np.uint8)
    det = PersonDetector(detector_weights, device="cpu", config=SMALL, det_thr=0.0, nms_thr=None)
    every = det.detect(image)
    assert every.ndim == 2 and every.shape[1] == 5 and len(every) > 3
    x, y, w, h, s = every.T
    assert np.all(x >= -0.5) and np.all(y >= -0.5) and np.all(x + w <= 70 - 0.5 + 1e-4)
    assert np.all(y + h <= 50 - 0.5 + 1e-4) and np.all(w >= 0) and np.all(h >= 0)
    assert np.all(np.diff(s) <= 0) and np.all((s > 0.2) & (s <= 1))  # sorted; FCOS's own score threshold 0.2
    thr = float(np.median(s))
    assert np.all(det.detect(image, det_thr=thr)[:, 4] >= thr)
    assert len(det.detect(image, max_people=2)) == 2
    kept = det.detect(image, nms_thr=0.3)
    xyxy = torch.from_numpy(np.concatenate([kept[:, :2], kept[:, :2] + kept[:, 2:4]], 1))
    iou = box_iou(xyxy, xyxy).fill_diagonal_(0)
    assert float(iou.max()) <= 0.3
    with pytest.raises(ValueError, match=r"RGB uint8 numpy array \(H, W, 3\)"):
        det.detect(np.zeros((50, 70), np.uint8))
    with pytest.raises(ValueError, match="RGB uint8"):
        det.detect(np.zeros((50, 70, 3), np.float32))


# ---- against torchvision itself (skipped where it cannot be imported)

def import_torchvision():
    path, stub = os.environ.get("DMPOSE_TORCHVISION_PATH"), os.environ.get("DMPOSE_TORCHVISION_STUB")
    if path:
        sys.path.insert(0, path)
    if stub:
        sys.path.insert(0, str(Path(stub).parent))
        stub_module = importlib.import_module(Path(stub).stem)
    tv = pytest.importorskip("torchvision")
    if stub:
        stub_module.patch_extension()
    return tv


def test_equals_torchvision(detector_weights):
    import_torchvision()
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.fcos import FCOS
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    backbone = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3, returned_layers=[2, 3, 4],
                                     extra_blocks=LastLevelP6P7(256, 256))
    ref = FCOS(backbone, 91, min_size=SMALL.min_size, max_size=SMALL.max_size).eval()
    ref.load_state_dict(detector_weights)
    ours = fcos_resnet50_fpn(config=SMALL).eval()
    ours.load_state_dict(detector_weights)
    images = [torch.rand(3, 50, 70, generator=torch.Generator().manual_seed(1)), torch.rand(3, 90, 41)]
    with torch.no_grad():
        expected, got = ref(images), ours(images)
    for e, g in zip(expected, got):
        assert len(e["boxes"]) == len(g.boxes) > 0
        torch.testing.assert_close(g.boxes, e["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(g.scores, e["scores"], atol=1e-4, rtol=0)
        assert torch.equal(g.labels, e["labels"])
