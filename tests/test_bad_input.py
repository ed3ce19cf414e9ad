"""Hostile and careless input, one case per class of issue 10: each asserts that the message names the
culprit and that nothing on disk changed (inputs and output folders hashed before and after).

Classes -> tests:
  data loss: output == input ............................ test_output_that_is_an_input_is_refused
             synthetic cache deletes / races ............ test_synthetic_cache_only_touches_its_own_folder
             interrupted `data synth` ................... test_interrupted_synth_leaves_nothing_behind
  silent wrong numbers: huge finite heatmaps ............ test_huge_heatmaps_give_the_scaled_down_loss
             small eps: solve + non-convergence ......... test_small_eps_exact_gradient_is_robust_and_reported
             non-finite heatmaps (loss, decoders) ....... test_nonfinite_heatmaps_raise_or_are_masked
             boundary values (boxes, sigmas, dots, B=0) . test_boundary_values_are_validated
  errors naming their cause: DataLoader workers ......... test_worker_errors_read_as_with_no_workers
             CLI options and output paths ............... test_cli_errors_name_their_cause
             COCO json structure ........................ test_coco_json_structure_errors_name_file_entry_field
             malicious / empty pickles .................. test_convert_refuses_code_pickles_and_empty_files
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import sys
import threading
import warnings
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import dmpose
from dmpose.cli import app
from dmpose.codec import DMCodec
from dmpose.data.coco import CocoKeypoints
from dmpose.data.transforms import TopDownTransform
from dmpose.keypoints import KeypointSpec, load_keypoint_set

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernels.reference import solve_one, subpixel_demanders  # noqa: E402

runner = CliRunner()


def snapshot(*paths: Path) -> dict[str, str]:
    """sha256 of every file (hidden ones included) under each path, plus the set of names."""
    out = {}
    for root in paths:
        if root.is_file():
            out[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
        elif root.is_dir():
            for p in sorted(root.rglob("*")):
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        else:
            out[str(root)] = "absent"
    return out


def cli(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "300"})


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt")
    return dmpose.save_checkpoint(dmpose.build_model("hrnet_tiny"), folder / "tiny.safetensors",
                                  meta={"input_size": [64, 48], "decode": "2x2"})


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    from dmpose.data.synthetic import generate_synthetic_coco

    root = tmp_path_factory.mktemp("synth") / "coco"
    generate_synthetic_coco(root, 1, 2, seed=0)
    return root


def _transform():
    return TopDownTransform((48, 64), (12, 16), DMCodec((12, 16)), load_keypoint_set("coco17"))


# ----------------------------------------------------------------------------------------------- data loss


def test_output_that_is_an_input_is_refused(ckpt, synth, tmp_path):
    link = tmp_path / "link.safetensors"
    link.symlink_to(ckpt)
    hard = tmp_path / "hard.safetensors"
    os.link(ckpt, hard)
    before = snapshot(ckpt.parent, tmp_path, synth)
    for out in (ckpt, link, hard, ckpt.parent / ".." / ckpt.parent.name / ckpt.name):
        for fmt in ("onnx", "safetensors"):
            result = cli("export", "--ckpt", str(ckpt), "--format", fmt, "-o", str(out))
            assert result.exit_code == 1, result.output
            assert "same file as the input" in result.output
            assert str(out) in result.output and str(ckpt) in result.output
    result = cli("convert", str(ckpt), "--arch", "hrnet_tiny", "-o", str(ckpt))
    assert result.exit_code == 1 and "same file as the input" in result.output and str(ckpt) in result.output
    # eval: an output file of --out that is the detection file given
    dets = synth / "person_detection_results" / "COCO_val2017_detections_AP_H_56_person.json"
    own = tmp_path / "out" / "person_keypoints_val2017_dmpose_results.json"
    own.parent.mkdir()
    own.write_bytes(dets.read_bytes())
    before = snapshot(ckpt.parent, tmp_path, synth)
    result = cli("eval", "--ckpt", str(ckpt), "--data", str(synth), "--dets", str(own), "--out", str(own.parent),
                 "--workers", "0", "--device", "cpu")
    assert result.exit_code == 1 and "same file as the input" in result.output and own.name in result.output
    assert snapshot(ckpt.parent, tmp_path, synth) == before


def test_synthetic_cache_only_touches_its_own_folder(tmp_path, monkeypatch):
    from dmpose.data import synthetic
    from dmpose.data.synthetic import default_synthetic_root, ensure_synthetic

    monkeypatch.setenv("DMPOSE_CACHE", str(tmp_path / "cache"))
    cache = default_synthetic_root()
    cache.mkdir(parents=True)
    (cache / "my-notes.txt").write_text("mine")  # a user's file in the default cache folder
    (cache / ".complete.json").write_text("{}")  # an old-layout marker: not ours to judge or remove
    first = ensure_synthetic(None, 1, 1, seed=0)
    kept = snapshot(cache / "my-notes.txt", cache / ".complete.json", first)
    second = ensure_synthetic(None, 2, 1, seed=0)  # other counts: another cache, the first is untouched
    assert second != first and second.parent == first.parent == cache
    assert snapshot(cache / "my-notes.txt", cache / ".complete.json", first) == kept

    # a folder under the dataset's name that dmpose did not complete is reported, never removed
    squatter = cache / synthetic.synthetic_cache_key(3, 1, 0)
    squatter.mkdir()
    (squatter / "precious.bin").write_bytes(b"\x00" * 10)
    before = snapshot(cache)
    with pytest.raises(ValueError, match="not a complete dmpose synthetic dataset") as info:
        ensure_synthetic(None, 3, 1, seed=0)
    assert str(squatter) in str(info.value) and snapshot(cache) == before

    # concurrent generation: both callers get the same complete dataset, no temporary folder is left
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_synthetic(None, 1, 2, seed=1))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1] and (results[0] / ".complete.json").is_file()
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]
    assert snapshot(cache / "my-notes.txt", cache / ".complete.json", first) == kept


def test_interrupted_synth_leaves_nothing_behind(tmp_path, monkeypatch):
    from dmpose.data import synthetic

    real = synthetic._write_split

    def full_disk(out, split, *args):
        if split == "val2017":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(out, split, *args)

    target = tmp_path / "data"
    monkeypatch.setattr(synthetic, "_write_split", full_disk)
    result = cli("data", "synth", str(target), "--train", "1", "--val", "1")
    assert result.exit_code == 1 and str(target) in result.output and "No space left" in result.output
    assert list(tmp_path.iterdir()) == []  # no partial dataset, no temporary sibling

    def interrupted(out, split, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write_split", interrupted)
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate_synthetic_coco(target, 1, 1)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synthetic, "_write_split", real)
    result = cli("data", "synth", str(target), "--train", "1", "--val", "1")  # the rerun is not blocked
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# ------------------------------------------------------------------------------------ silent wrong numbers


def test_huge_heatmaps_give_the_scaled_down_loss():
    torch.manual_seed(0)
    base = torch.rand(2, 3, 64, 48) + 0.01
    kp = torch.rand(2, 3, 2) * torch.tensor([47.0, 63.0])
    scale = 2.0 ** 119  # ~6.6e35: the positive-mass sum (~1e39) overflows fp32
    losses, grads = [], []
    for h in (base, base * scale):
        h = h.clone().requires_grad_()
        loss = dmpose.dm_loss(h, kp, backend="torch", suppliers="relu")  # relu: exactly scale-invariant
        loss.backward()
        losses.append(loss.item())
        grads.append(h.grad.double())
    assert math.isfinite(losses[1]) and losses[1] > 0
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    torch.testing.assert_close(grads[1] * scale, grads[0], rtol=1e-4, atol=1e-9)
    # the default softplus suppliers equal relu that far above zero: the same finite loss and gradient
    h = (base * scale).requires_grad_()
    loss = dmpose.dm_loss(h, kp, backend="torch")
    loss.backward()
    assert loss.item() == pytest.approx(losses[1], rel=1e-6) and bool(torch.isfinite(h.grad).all())


def test_small_eps_exact_gradient_is_robust_and_reported(monkeypatch):
    from dmpose import loss as loss_module
    from dmpose.sinkhorn import dm_sinkhorn_torch, solve_grounded_laplacian

    # seed 6 raised torch._C._LinAlgError in the 4x4 solve before (torch.linalg.solve on the Laplacian block)
    torch.manual_seed(6)
    h = torch.randn(1, 4, 10, 8)
    k = (torch.rand(4, 2) * torch.tensor([7.0, 9.0]))[None]
    monkeypatch.setattr(loss_module, "_WARNED_UNCONVERGED", False)
    module = dmpose.DMLoss(eps=1e-3, max_iters=100, backend="torch")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hh = h.clone().requires_grad_()
        module(hh, k).backward()
        module(h, k)
    assert torch.isfinite(hh.grad).all()
    convergence = [w for w in caught if issubclass(w.category, dmpose.loss.DMConvergenceWarning)]
    assert len(convergence) == 1  # once per process
    stats = module.last_stats
    assert stats.solved == 4 and stats.unconverged > 0 and stats.max_iterations == 100 and not stats.converged
    assert f"{stats.max_marginal_error:.3g}" in str(convergence[0].message)
    _, fstats = dmpose.dm_loss(h, k, eps=1e-3, max_iters=100, backend="torch", return_stats=True)
    assert fstats == stats

    # float64 torch path against the independent float64 reference (well conditioned there) at eps 1e-3
    torch.manual_seed(1)
    hd = torch.rand(6, 10, 8).double()
    xy, mass = subpixel_demanders(torch.rand(6, 2) * torch.tensor([7.0, 9.0]))
    cost, grad, _, _ = dm_sinkhorn_torch(hd, xy.double(), mass.double(), eps=1e-3, max_iters=300, tol=1e-5,
                                         grad="exact")
    for p in range(6):
        rc, rg, _, _ = solve_one(hd[p], xy[p], mass[p], eps=1e-3, max_iters=300, tol=1e-5, grad="exact")
        assert abs(cost[p].item() - rc.item()) < 1e-9
        torch.testing.assert_close(grad[p], rg, rtol=1e-7, atol=1e-9 * rg.abs().max().item())

    # the solve itself: a nearly disconnected Laplacian (couplings 1e-27 next to 1e-2) against exact rationals,
    # and a component cut off from the ground entirely (w = 0 there, no singular-matrix error)
    G = torch.tensor([[[0, 8.6e-32, 4.26e-3, 1.1e-31], [8.6e-32, 0, 2.36e-27, 1.68e-2],
                       [4.26e-3, 2.36e-27, 0, 3.0e-27], [1.1e-31, 1.68e-2, 3.0e-27, 0]]], dtype=torch.float64)
    rhs = torch.tensor([[0.0042, 0.0168, -0.0042, -0.0168]], dtype=torch.float64)
    w = solve_grounded_laplacian(G, torch.ones(1, 4, dtype=torch.bool), rhs)[0]
    # (the 1e-31 couplings reach w only through a 1e-29 relative rounding amplified by 1e27: 1e-4 is what
    # float64 elimination can give here; torch.linalg.solve gave a LinAlgError or a 100% error)
    exact = torch.tensor(_exact_grounded(G[0], rhs[0], ref=1), dtype=torch.float64)
    torch.testing.assert_close(w, exact, rtol=1e-3, atol=1e-12)
    cut = G.clone()
    for i, j in ((1, 2), (0, 1), (0, 3), (2, 3)):
        cut[0, i, j] = cut[0, j, i] = 0
    w = solve_grounded_laplacian(cut, torch.ones(1, 4, dtype=torch.bool), rhs)[0]
    assert torch.isfinite(w).all()


def _exact_grounded(G, rhs, ref: int) -> list[float]:
    """Solve (diag(G 1) - G) w = rhs with w_ref = 0 in exact rational arithmetic."""
    m = G.shape[0]
    g = [[Fraction(float(G[i, j])) if i != j else Fraction(0) for j in range(m)] for i in range(m)]
    idx = [i for i in range(m) if i != ref]
    A = [[sum(g[i]) if i == j else -g[i][j] for j in idx] for i in idx]
    b = [Fraction(float(rhs[i])) for i in idx]
    n = len(idx)
    for c in range(n):
        for r in range(n):
            if r != c and A[r][c] != 0:
                f = A[r][c] / A[c][c]
                A[r] = [x - f * y for x, y in zip(A[r], A[c])]
                b[r] -= f * b[c]
    w = [0.0] * m
    for t, i in enumerate(idx):
        w[i] = float(b[t] / A[t][t])
    return w


def test_nonfinite_heatmaps_raise_or_are_masked():
    torch.manual_seed(0)
    h = torch.rand(2, 3, 8, 6)
    kp = torch.full((2, 3, 2), 2.5)
    h[1, 2, 4, 4] = float("nan")
    h[0, 1, 0, 0] = float("inf")
    for fn in (lambda x: dmpose.dm_loss(x, kp), dmpose.decode_2x2, dmpose.decode.decode_argmax):
        with pytest.raises(ValueError, match=r"heatmaps\[0, 1\] holds NaN/Inf .*2 of the 6"):
            fn(h)
    hh = h.clone().requires_grad_()
    loss, stats = dmpose.dm_loss(hh, kp, nonfinite="mask", reduction="none", return_stats=True)
    loss.sum().backward()
    assert stats.nonfinite == 2 and stats.solved == 4
    assert loss[1, 2] == 0 and loss[0, 1] == 0 and torch.isfinite(hh.grad).all() and (hh.grad[1, 2] == 0).all()
    for decode in (dmpose.decode_2x2, dmpose.decode.decode_argmax):
        coords, conf = decode(h, nonfinite="mask")
        assert coords[1, 2].isnan().all() and conf[1, 2] == 0 and int(coords[..., 0].isnan().sum()) == 2
        assert torch.isfinite(coords[0, 0]).all()
    # values near the fp32 maximum decode as the same map scaled down
    big = torch.zeros(1, 1, 8, 6)
    big[0, 0, 3:5, 2:4] = torch.tensor([[0.3e38, 1.0e38], [2.0e38, 0.5e38]])
    coords, conf = dmpose.decode_2x2(big)
    ref_coords, ref_conf = dmpose.decode_2x2(big / 1e38)
    torch.testing.assert_close(coords, ref_coords)
    assert conf.item() == pytest.approx(1.0) and ref_conf.item() == pytest.approx(1.0)


def test_boundary_values_are_validated(synth, tmp_path):
    # a dot 1e20 px off the heatmap with weight 1: a clear error, not NaN; heatmap_weights gives it 0
    h = torch.rand(1, 2, 8, 6)
    kp = torch.tensor([[[1e20, 3.0], [2.0, 2.0]]])
    with pytest.raises(ValueError, match=r"keypoints\[0, 0\] .* outside the 8x6 heatmap.*weight 0"):
        dmpose.dm_loss(h, kp)
    weights = dmpose.heatmap_weights(kp, torch.ones(1, 2), heatmap_wh=(6, 8))
    assert weights.tolist() == [[0.0, 1.0]] and math.isfinite(dmpose.dm_loss(h, kp, weights).item())
    # an empty batch: 0 with reduction="mean" (and "sum"), not NaN
    empty = dmpose.dm_loss(torch.rand(0, 2, 8, 6, requires_grad=True), torch.zeros(0, 2, 2))
    assert empty.item() == 0.0
    # OKS sigmas must be finite
    names = ["a", "b"]
    with pytest.raises(ValueError, match=r"sigmas\[1\] \(b\) is inf"):
        KeypointSpec.from_dict({"keypoints": names, "sigmas": [0.1, float("inf")]}, source="mine.yaml")
    # NaN/Inf in a ground-truth box or a detection box, and a size-0 detection box
    ann_file = synth / "annotations" / "person_keypoints_val2017.json"
    data = json.loads(ann_file.read_text())
    image_dir = synth / "val2017"
    before = snapshot(synth)
    bad = tmp_path / "bad_gt.json"
    aid = data["annotations"][0]["id"]
    data["annotations"][0]["bbox"][2] = float("nan")
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"bad_gt.json: annotation id {aid} field 'bbox' must be .*finite.*nan"):
        CocoKeypoints(bad, image_dir, _transform())
    image_id = data["images"][0]["id"]
    for box, match in (([1, 2, float("inf"), 4], "finite"), ([1, 2, 0, 40], "empty box")):
        dets = tmp_path / "bad_dets.json"
        dets.write_text(json.dumps([{"image_id": image_id, "score": 0.9, "category_id": 1, "bbox": [1, 2, 30, 40]},
                                    {"image_id": image_id, "score": 0.9, "category_id": 1, "bbox": box}]))
        with pytest.raises(ValueError, match=rf"bad_dets.json: entry 1 field 'bbox' .*{match}"):
            CocoKeypoints(ann_file, image_dir, _transform(), detections=dets)
    assert snapshot(synth) == before


# ------------------------------------------------------------------------------- errors naming their cause


def test_worker_errors_read_as_with_no_workers(synth, ckpt, tmp_path):
    from dmpose.eval.predictor import TopDownPredictor
    from dmpose.eval.runner import predict_dataset

    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").symlink_to(synth / "annotations")
    for p in (synth / "val2017").iterdir():
        (root / "val2017" / p.name).write_bytes(p.read_bytes())
    victim = sorted((root / "val2017").iterdir())[0]
    victim.write_bytes(b"not a jpeg")
    ds = CocoKeypoints(root / "annotations" / "person_keypoints_val2017.json", root / "val2017", _transform())
    model = dmpose.load_model(ckpt)
    messages = []
    for workers in (0, 2):
        with pytest.raises(ValueError) as info:
            predict_dataset(TopDownPredictor(model, model.spec), ds, batch_size=2, workers=workers)
        messages.append(str(info.value))
    assert messages[0] == messages[1] == f"corrupt or unsupported image file: {victim}"
    before = snapshot(tmp_path, synth)
    outputs = []
    for workers in ("0", "2"):
        result = cli("eval", "--ckpt", str(ckpt), "--data", str(root), "--gt-boxes", "--workers", workers,
                     "--device", "cpu", "--out", str(tmp_path / "out"))
        assert result.exit_code == 1 and "DataLoader worker" not in result.output and "Traceback" not in result.output
        outputs.append([line for line in result.output.splitlines() if line.startswith("error:")])
    assert outputs[0] == outputs[1] == [f"error: corrupt or unsupported image file: {victim}"]
    assert snapshot(tmp_path, synth) == before


def test_cli_errors_name_their_cause(ckpt, tmp_path, monkeypatch):
    before = snapshot(ckpt.parent, tmp_path)
    result = cli("eval", "--ckpt", str(ckpt), "--device", "foo")
    assert result.exit_code == 2 and "--device 'foo'" in result.output
    if not torch.cuda.is_available():
        result = cli("eval", "--ckpt", str(ckpt), "--device", "cuda")
        expected = "is CPU-only; install a CUDA build" if torch.version.cuda is None else "finds no usable GPU"
        assert result.exit_code == 2 and expected in " ".join(result.output.split()), result.output
        # the trainer: one line, no traceback (a config key and the --device option)
        for args in (["--set", "train.device=cuda"], ["--device", "cuda"]):
            result = cli("train", "synthetic", *args, "--dry-run")
            assert result.exit_code in (1, 2) and "Traceback" not in result.output
            assert "cuda" in result.output and expected.split(";")[0] in " ".join(result.output.split())
    for size, match in (("0x0", "--input-wh must be positive"), ("30x30", "divisible by the output stride"),
                        ("abc", "--input-wh")):
        result = cli("export", "--ckpt", str(ckpt), "--format", "onnx", "--input-wh", size,
                     "-o", str(tmp_path / "m.onnx"))
        assert result.exit_code in (1, 2) and match in result.output, result.output
    folder = tmp_path / "a_folder"
    folder.mkdir()
    before = snapshot(ckpt.parent, tmp_path)
    result = cli("export", "--ckpt", str(ckpt), "--format", "safetensors", "-o", str(folder))
    assert result.exit_code == 1 and f"cannot write {folder}: it is a directory" in result.output
    # a read-only folder (simulated when running as root, which ignores permissions) and a full disk
    from dmpose import atomic

    locked = tmp_path / "locked"
    locked.mkdir()
    target = locked / "x.safetensors"
    if os.geteuid() == 0:
        def denied(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied", str(locked))
        monkeypatch.setattr(atomic.tempfile, "mkstemp", denied)
    else:
        locked.chmod(0o555)
    try:
        result = cli("export", "--ckpt", str(ckpt), "--format", "safetensors", "-o", str(target))
    finally:
        locked.chmod(0o755)
        monkeypatch.undo()
    assert result.exit_code == 1 and f"cannot write {target}: Permission denied" in result.output
    assert "Traceback" not in result.output

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", no_space)
    before = snapshot(ckpt.parent, tmp_path)
    result = cli("export", "--ckpt", str(ckpt), "--format", "safetensors", "-o", str(tmp_path / "y.safetensors"))
    monkeypatch.undo()
    assert result.exit_code == 1 and "y.safetensors: No space left on device" in result.output
    assert snapshot(ckpt.parent, tmp_path) == before  # nothing half-written, no temporary file left


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["annotations"][0].pop("image_id"), r"annotations\[0\] \(annotation id \d+\) has no 'image_id' field"),
    (lambda d: d["images"][0].pop("width"), r"images\[0\] \(id \d+\) has no 'width' field"),
    (lambda d: d["images"][1].__setitem__("height", None), r"images\[1\] \(id \d+\) field 'height' is null"),
    (lambda d: d["annotations"][0].__setitem__("image_id", "1"), r"field 'image_id' must be an integer, got 1"),
    (lambda d: d["images"][0].__setitem__("width", "wide"), r"field 'width' must be a positive integer, got wide"),
    (lambda d: d["annotations"].__setitem__(0, [1, 2]), r"annotations\[0\] must be a JSON object"),
    (lambda d: d.__setitem__("images", {"id": 1}), r"field 'images' must be a list"),
])
def test_coco_json_structure_errors_name_file_entry_field(synth, tmp_path, edit, match):
    data = json.loads((synth / "annotations" / "person_keypoints_val2017.json").read_text())
    edit(data)
    bad = tmp_path / "broken.json"
    bad.write_text(json.dumps(data))
    before = snapshot(synth, bad)
    with pytest.raises(ValueError, match=match) as info:
        CocoKeypoints(bad, synth / "val2017", _transform())
    assert str(bad) in str(info.value)
    assert snapshot(synth, bad) == before


class _Shout:
    def __reduce__(self):
        return (print, ("this would have run",))


def test_convert_refuses_code_pickles_and_empty_files(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Shout()}, evil)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    out = tmp_path / "out.safetensors"
    before = snapshot(tmp_path)
    result = cli("convert", str(evil), "--arch", "hrnet_tiny", "-o", str(out))
    assert result.exit_code == 1 and "this would have run" not in result.output
    assert f"{evil}: refused: the file holds objects that can execute code" in result.output
    assert "weights_only=False" not in result.output and "print" in result.output
    result = cli("convert", str(empty), "--arch", "hrnet_tiny", "-o", str(out))
    assert result.exit_code == 1 and f"{empty} is empty (0 bytes)" in result.output
    assert snapshot(tmp_path) == before
