"""The compiled CPU kernel of the DM loss and the demander cross-entropy (dmpose.kernels.cpu) against the float64
torch path (itself tested against POT, finite differences and gradcheck), its dispatch and its failure modes."""

from __future__ import annotations

import logging

import pytest
import torch

from dmpose.kernels import cpu as cpu_kernel
from dmpose.kernels import select_loss_backend
from dmpose.loss import demander_cross_entropy, demanders, dm_loss
from dmpose.sinkhorn import dm_sinkhorn_torch

OK, WHY = cpu_kernel.cpu_kernel_status()
needs_kernel = pytest.mark.skipif(not OK, reason=f"the CPU kernel is not available here: {WHY}")


def _problems(seed: int, n: int, h: int, w: int, mode: str = "subpixel"):
    g = torch.Generator().manual_seed(seed)
    hm = torch.randn(n, h, w, generator=g) * 2.0
    hm[0] -= 10.0  # every pixel negative: relu's softmax fallback
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 0.0, h - 0.0]) - 0.5  # the whole area, borders too
    xy[1] = torch.tensor([-0.5, h - 0.5001])  # outer halves of two border pixels: demanders outside the map
    xy[2] = torch.tensor([3.0, 2.0])  # a pixel centre: one live demander, three dead ones
    dxy, mass = demanders(xy, mode)
    return hm, dxy, mass


@needs_kernel
@pytest.mark.parametrize("supplier,beta", [("softplus", 8.0), ("softplus", 1.0), ("relu", 1.0)])
@pytest.mark.parametrize("grad", ["exact", "envelope", "none"])
@pytest.mark.parametrize("mode", ["subpixel", "naive"])
@pytest.mark.parametrize("tol", [1e-5, 0.0])
def test_the_kernel_matches_the_float64_torch_solver(supplier, beta, grad, mode, tol):
    hm, dxy, mass = _problems(0, 9, 11, 7, mode)
    kw = dict(eps=1.0, max_iters=40 if tol == 0 else 1000, tol=tol, grad=grad, supplier=supplier, beta=beta)
    ref = dm_sinkhorn_torch(hm.double(), dxy.double(), mass.double(), **kw)
    got = cpu_kernel.dm_sinkhorn_cpu(hm, dxy, mass, **kw)
    torch.testing.assert_close(got[0].double(), ref[0], rtol=1e-6, atol=1e-7)
    assert torch.equal(got[3], ref[3])  # the same iteration, stopping rule and count
    torch.testing.assert_close(got[2].double(), ref[2], rtol=1e-3, atol=1e-7)
    if grad == "none":
        assert got[1] is None
    else:
        assert got[1].dtype == torch.float32 and got[1].shape == hm.shape
        torch.testing.assert_close(got[1].double(), ref[1], rtol=1e-5, atol=1e-6)


@needs_kernel
def test_the_kernel_on_the_default_jobs_heatmap_size_and_at_other_eps():
    hm, dxy, mass = _problems(1, 40, 32, 24)
    for eps in (1.0, 0.25, 3.0):
        kw = dict(eps=eps, max_iters=1000, tol=1e-5, grad="exact", supplier="softplus", beta=8.0)
        ref = dm_sinkhorn_torch(hm.double(), dxy.double(), mass.double(), **kw)
        got = cpu_kernel.dm_sinkhorn_cpu(hm, dxy, mass, **kw)
        torch.testing.assert_close(got[0].double(), ref[0], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got[1].double(), ref[1], rtol=1e-5, atol=1e-6)


@needs_kernel
@pytest.mark.parametrize("power", [0.5, 0.25])
@pytest.mark.parametrize("supplier,grad", [("softplus", "exact"), ("relu", "envelope")])
def test_the_kernel_with_a_concave_cost_matches_the_float64_torch_solver(power, supplier, grad):
    hm, dxy, mass = _problems(4, 12, 32, 24)
    kw = dict(eps=1.0, max_iters=1000, tol=1e-5, grad=grad, supplier=supplier, beta=8.0, cost_power=power)
    ref = dm_sinkhorn_torch(hm.double(), dxy.double(), mass.double(), **kw)
    got = cpu_kernel.dm_sinkhorn_cpu(hm, dxy, mass, **kw)
    torch.testing.assert_close(got[0].double(), ref[0], rtol=1e-6, atol=1e-7)
    assert torch.equal(got[3], ref[3])
    torch.testing.assert_close(got[1].double(), ref[1], rtol=1e-5, atol=1e-6)
    plain = cpu_kernel.dm_sinkhorn_cpu(hm, dxy, mass, **{**kw, "cost_power": 1.0})
    assert not torch.allclose(got[0], plain[0])  # the power reaches the kernel's cost table


@needs_kernel
@pytest.mark.parametrize("grad", ["exact", "envelope"])
def test_dm_loss_on_the_cpu_backend_equals_float64_torch_value_and_gradient(grad):
    torch.manual_seed(2)
    hm = torch.randn(3, 5, 16, 12)
    kp = torch.rand(3, 5, 2) * torch.tensor([11.0, 15.0])
    w = torch.tensor([[1.0, 0.0, 1.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0], [2.0, 1.0, 1.0, 1.0, 0.0]])
    kp[0, 1] = float("nan")  # unlabelled: anything goes
    for reduction in ("mean", "none"):
        x32, x64 = hm.clone().requires_grad_(), hm.double().requires_grad_()
        got = dm_loss(x32, kp, w, grad=grad, reduction=reduction, backend="cpu")
        ref = dm_loss(x64, kp.double(), w.double(), grad=grad, reduction=reduction, backend="torch")
        torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-6, atol=1e-6)
        scale = torch.arange(1.0, 16.0).reshape(3, 5) if reduction == "none" else torch.tensor(1.0)
        (got * scale).sum().backward()
        (ref * scale.double()).sum().backward()
        assert x32.grad.dtype == torch.float32
        torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)
        assert float(x32.grad[1].abs().max()) == 0.0 and float(x32.grad[0, 1].abs().max()) == 0.0


@needs_kernel
def test_dm_loss_backend_auto_on_the_cpu_is_the_kernel_and_bf16_gets_a_bf16_gradient():
    assert select_loss_backend("auto", "cpu") == "cpu"
    torch.manual_seed(3)
    hm = torch.randn(2, 3, 8, 6).bfloat16().requires_grad_()
    kp = torch.rand(2, 3, 2) * 5
    dm_loss(hm, kp).backward()
    assert hm.grad.dtype == torch.bfloat16 and torch.isfinite(hm.grad.float()).all()
    with torch.no_grad():  # no gradient work, the same value
        torch.testing.assert_close(dm_loss(hm, kp), dm_loss(hm.float(), kp, backend="torch"), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_demander_cross_entropy_on_the_cpu_backend_equals_float64_torch():
    """Unlabelled joints, weights, a dot half outside, maps far below zero (beta H < -745: softplus underflows in
    double too, so the kernel takes its log-domain branch) and one map with a single very negative pixel."""
    torch.manual_seed(4)
    hm = torch.randn(2, 4, 7, 5)
    hm[1, 2] -= 4.0
    hm[1, 3] = -200.0  # beta 8: x = -1600 everywhere
    hm[1, 3, 2, 2] = -150.0
    hm[0, 3, 1, 1] = -1e4
    kp = torch.tensor([[[1.3, 2.6], [4.4, 6.2], [0.0, 0.0], [1.0, 1.0]],
                       [[2.0, 3.0], [3.7, 0.2], [2.5, 5.5], [2.2, 2.1]]])
    w = torch.tensor([[1.0, 1.0, 0.0, 1.0], [0.5, 1.0, 1.0, 2.0]])
    for beta in (1.0, 8.0):
        for reduction in ("mean", "none"):
            x32, x64 = hm.clone().requires_grad_(), hm.double().requires_grad_()
            got = demander_cross_entropy(x32, kp, w, supplier_beta=beta, reduction=reduction, backend="cpu")
            ref = demander_cross_entropy(x64, kp.double(), w.double(), supplier_beta=beta, reduction=reduction,
                                         backend="torch")
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-6, atol=1e-5)
            scale = torch.arange(1.0, 9.0).reshape(2, 4) if reduction == "none" else torch.tensor(1.0)
            (got * scale).sum().backward()
            (ref * scale.double()).sum().backward()
            torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)
            assert float(x32.grad[0, 2].abs().max()) == 0.0  # the unlabelled joint


@needs_kernel
def test_backend_cpu_refuses_what_it_cannot_take_and_names_why():
    hm, kp = torch.randn(1, 2, 8, 6, dtype=torch.float64), torch.rand(1, 2, 2) * 5
    with pytest.raises(ValueError, match="float64"):
        dm_loss(hm, kp, backend="cpu")
    with pytest.raises(ValueError, match="float64"):
        demander_cross_entropy(hm, kp, backend="cpu")
    with pytest.raises(ValueError, match="eps 0.01 too small"):
        dm_loss(hm.float(), kp, backend="cpu", eps=0.01, max_iters=5)
    # auto takes the torch path for both, without a word: float64 is the reference path, small eps the log domain
    assert torch.isfinite(dm_loss(hm.float(), kp, eps=0.01, max_iters=5))
    with pytest.raises(ValueError, match="takes CPU tensors"):
        select_loss_backend("cpu", "cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        select_loss_backend("numpy", "cpu")


@needs_kernel
def test_non_finite_maps_are_still_refused_or_masked_on_the_kernel():
    hm, kp = torch.randn(2, 2, 8, 6), torch.rand(2, 2, 2) * 5
    hm[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"heatmaps\[1, 0\] holds NaN/Inf"):
        dm_loss(hm, kp)
    loss, stats = dm_loss(hm, kp, nonfinite="mask", reduction="none", return_stats=True)
    assert stats.nonfinite == 1 and float(loss[1, 0]) == 0.0 and torch.isfinite(loss).all()
    big = torch.full((1, 1, 8, 6), 3e38)  # finite maps whose sum overflows: not mistaken for non-finite ones
    assert torch.isfinite(dm_loss(big, torch.tensor([[[2.0, 2.0]]]), suppliers="relu"))


def test_a_missing_compiler_falls_back_to_torch_with_the_reason(monkeypatch, tmp_path, caplog):
    import dmpose.kernels as kernels

    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("DMPOSE_CACHE", str(tmp_path / "cache"))
    cpu_kernel._library.cache_clear()
    monkeypatch.setattr(kernels, "_WARNED", set())
    try:
        ok, why = cpu_kernel.cpu_kernel_status()
        assert not ok and "no C compiler found" in why and "no-such-cc" in why
        with caplog.at_level(logging.WARNING, logger="dmpose.kernels"):
            assert select_loss_backend("auto", "cpu") == "torch"
        assert "compiled CPU kernel is not available" in caplog.text
        with pytest.raises(ValueError, match="backend='cpu' cannot run: no C compiler"):
            dm_loss(torch.randn(1, 1, 5, 5), torch.tensor([[[2.0, 2.0]]]), backend="cpu")
        assert torch.isfinite(dm_loss(torch.randn(1, 1, 5, 5), torch.tensor([[[2.0, 2.0]]])))
        monkeypatch.setenv("CC", "false")  # a compiler that fails: its exit status is the reason
        cpu_kernel._library.cache_clear()
        ok, why = cpu_kernel.cpu_kernel_status()
        assert not ok and "failed: exit status 1" in why
        assert not list((tmp_path / "cache" / "kernels").glob("*"))  # nothing half-written left behind
        monkeypatch.delenv("CC")
        monkeypatch.setenv("DMPOSE_CPU_KERNEL", "0")
        cpu_kernel._library.cache_clear()
        assert cpu_kernel.cpu_kernel_status() == (False, "DMPOSE_CPU_KERNEL=0 is set")
    finally:
        cpu_kernel._library.cache_clear()


@needs_kernel
def test_the_library_is_compiled_into_the_cache_atomically(monkeypatch, tmp_path):
    monkeypatch.setenv("DMPOSE_CACHE", str(tmp_path))
    cpu_kernel._library.cache_clear()
    try:
        ok, why = cpu_kernel.cpu_kernel_status()
        assert ok, why
        files = sorted(p.name for p in (tmp_path / "kernels").iterdir())
        assert len(files) == 1 and files[0].startswith("dm_cpu-") and files[0].endswith(".so")  # no temp files
        hm, dxy, mass = _problems(5, 4, 6, 5)
        kw = dict(eps=1.0, max_iters=1000, tol=1e-5, grad="exact", supplier="softplus", beta=8.0)
        torch.testing.assert_close(cpu_kernel.dm_sinkhorn_cpu(hm, dxy, mass, **kw)[0].double(),
                                   dm_sinkhorn_torch(hm.double(), dxy.double(), mass.double(), **kw)[0],
                                   rtol=1e-6, atol=1e-7)
    finally:
        monkeypatch.delenv("DMPOSE_CACHE")
        cpu_kernel._library.cache_clear()
