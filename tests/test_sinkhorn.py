"""The batched Sinkhorn solver against independent references: POT, exact EMD, finite differences."""

import numpy as np
import ot
import pytest
import torch

from dmpose.loss import demanders
from dmpose.sinkhorn import dm_sinkhorn_torch, pixel_demander_cost, sinkhorn, suppliers


def make_problem(h, w, n, seed, kind="random", dtype=torch.float64):
    """n heatmaps of one kind and n dots strictly inside the grid."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
    dots = torch.rand(n, 2, generator=g, dtype=dtype) * torch.tensor([w - 1.0, h - 1.0], dtype=dtype)
    if kind == "random":  # about half the pixels <= 0
        hm = torch.randn(n, h, w, generator=g, dtype=dtype)
    elif kind == "peaked":
        d2 = (xs - dots[:, 0, None, None]) ** 2 + (ys - dots[:, 1, None, None]) ** 2
        hm = torch.exp(-d2 / 4.0) - 0.05
    elif kind == "multimodal":
        c = torch.rand(n, 3, 2, generator=g, dtype=dtype) * torch.tensor([w - 1.0, h - 1.0], dtype=dtype)
        hm = (
            sum(
                torch.exp(-((xs - c[:, i, 0, None, None]) ** 2 + (ys - c[:, i, 1, None, None]) ** 2) / 8.0)
                for i in range(3)
            )
            - 0.1
        )
    elif kind == "noise":
        hm = torch.rand(n, h, w, generator=g, dtype=dtype) * 1e-3
    else:
        raise ValueError(kind)
    return hm, dots


@pytest.mark.parametrize("h,w", [(8, 6), (17, 13), (64, 48), (96, 72)])
def test_value_and_plan_match_pot_sinkhorn_log(h, w):
    hm, dots = make_problem(h, w, 3, seed=h)
    xy, mass = demanders(dots)
    a, _, _ = suppliers(hm)
    C = pixel_demander_cost(h, w, xy)
    res = sinkhorn(a, C, mass, eps=1.0, max_iters=1000, tol=1e-12)
    assert (res.marginal_error < 1e-10).all()
    for p in range(3):
        keep, live = a[p] > 0, mass[p] > 0  # POT needs strictly positive marginals
        M = C[p][live][:, keep].T.numpy()  # POT takes (pixels, demanders)
        P_ref = ot.sinkhorn(
            a[p][keep].numpy(), mass[p][live].numpy(), M, 1.0, method="sinkhorn_log", numItermax=5000, stopThr=1e-13
        )
        value_ref = float((P_ref * M).sum())
        assert res.cost[p].item() == pytest.approx(value_ref, rel=1e-5)
        P = (a[p][None, :] * res.pi[p])[live][:, keep].T.numpy()
        np.testing.assert_allclose(P, P_ref, atol=1e-9)
        # POT's sinkhorn2 reports the same linear term <C, P>.
        v2 = ot.sinkhorn2(
            a[p][keep].numpy(), mass[p][live].numpy(), M, 1.0, method="sinkhorn_log", numItermax=5000, stopThr=1e-13
        )
        assert res.cost[p].item() == pytest.approx(float(v2), rel=1e-5)


def test_regularised_cost_approaches_exact_emd_from_above():
    hm, dots = make_problem(10, 8, 2, seed=3, kind="peaked")
    xy, mass = demanders(dots)
    a, _, _ = suppliers(hm)
    C = pixel_demander_cost(10, 8, xy)
    for p in range(2):
        emd = ot.emd2(a[p].numpy(), mass[p].numpy(), C[p].T.numpy())
        values = []
        for eps in (1.0, 0.5, 0.25, 0.1, 0.05, 0.02):
            res = sinkhorn(a[p : p + 1], C[p : p + 1], mass[p : p + 1], eps=eps, max_iters=200000, tol=1e-11)
            assert res.marginal_error.item() < 1e-10
            values.append(res.cost.item())
        assert all(v >= emd - 1e-9 for v in values)
        assert all(x >= y - 1e-9 for x, y in zip(values, values[1:])), values  # shrinking eps lowers <C,P>
        assert values[-1] - emd < 0.02 * emd


@pytest.mark.parametrize("eps", [1.0, 0.3, 0.1])
def test_shifted_and_log_sum_exp_forms_agree(eps):
    hm, dots = make_problem(13, 7, 4, seed=5)
    xy, mass = demanders(dots)
    a, _, _ = suppliers(hm)
    C = pixel_demander_cost(13, 7, xy)
    r1 = sinkhorn(a, C, mass, eps=eps, max_iters=5000, tol=1e-12, method="shifted")
    r2 = sinkhorn(a, C, mass, eps=eps, max_iters=5000, tol=1e-12, method="lse")
    torch.testing.assert_close(r1.cost, r2.cost, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(r1.pi, r2.pi, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(
        r1.f - r1.f.mean(-1, keepdim=True), r2.f - r2.f.mean(-1, keepdim=True), rtol=1e-8, atol=1e-10
    )


def test_small_eps_uses_log_sum_exp_and_stays_finite_in_fp32():
    hm, dots = make_problem(9, 9, 3, seed=1, dtype=torch.float32)
    xy, mass = demanders(dots)
    cost, grad, err, iters = dm_sinkhorn_torch(hm, xy, mass, eps=0.01, max_iters=3000, tol=1e-5, grad="exact")
    assert torch.isfinite(cost).all() and torch.isfinite(grad).all()
    ref, _, _, _ = dm_sinkhorn_torch(
        hm.double(), xy.double(), mass.double(), eps=0.01, max_iters=20000, tol=1e-12, grad="exact"
    )
    torch.testing.assert_close(cost.double(), ref, rtol=1e-3, atol=1e-4)


def test_tol_zero_runs_exactly_max_iters():
    hm, dots = make_problem(8, 6, 3, seed=2)
    xy, mass = demanders(dots)
    a, _, _ = suppliers(hm)
    C = pixel_demander_cost(8, 6, xy)
    assert sinkhorn(a, C, mass, eps=1.0, max_iters=37, tol=0.0).iterations.tolist() == [37, 37, 37]
    res = sinkhorn(a, C, mass, eps=1.0, max_iters=1000, tol=1e-5)
    assert (res.iterations < 20).all() and (res.marginal_error < 1e-5).all()


def _finite_difference(fn, hm, direction, step=1e-6):
    return (fn(hm + step * direction) - fn(hm - step * direction)) / (2 * step)


def _dots_cases():
    # random sub-pixel dots, a dot on a pixel centre (three dead demanders), a dot on a pixel-centre
    # line (two dead), a dot in the outer half of a border pixel (demanders outside the heatmap)
    return torch.tensor([[3.37, 4.71], [5.0, 2.0], [2.0, 6.4], [-0.3, 10.45]], dtype=torch.float64)


@pytest.mark.parametrize("power", [0.5, 0.25])
def test_concave_cost_matches_pot_on_its_own_cost_matrix(power):
    """cost_power p: C = d ** p, checked against POT fed a cost matrix built independently in numpy."""
    h, w = 17, 13
    hm, dots = make_problem(h, w, 3, seed=5, kind="peaked")
    xy, mass = demanders(dots)
    a, _, _ = suppliers(hm)
    C = pixel_demander_cost(h, w, xy, power)
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    res = sinkhorn(a, C, mass, eps=1.0, max_iters=2000, tol=1e-12)
    for p in range(3):
        keep, live = (a[p] > 0).numpy(), (mass[p] > 0).numpy()
        d = np.hypot(xs.reshape(-1, 1) - xy[p, :, 0].numpy(), ys.reshape(-1, 1) - xy[p, :, 1].numpy())
        M = (d ** power)[keep][:, live]
        np.testing.assert_allclose(C[p].T.numpy()[keep][:, live], M, rtol=1e-12, atol=1e-12)
        v_ref = ot.sinkhorn2(a[p].numpy()[keep], mass[p].numpy()[live], M, 1.0, method="sinkhorn_log",
                             numItermax=5000, stopThr=1e-13)
        assert res.cost[p].item() == pytest.approx(float(v_ref), rel=1e-6)


@pytest.mark.parametrize("power", [0.5, 0.25])
def test_exact_gradient_of_the_concave_cost_matches_finite_differences(power):
    h, w = 11, 8
    dots = _dots_cases()
    hm = _heatmaps_away_from_kink(h, w, len(dots), seed=3)
    xy, mass = demanders(dots)
    kw = dict(eps=1.0, max_iters=5000, tol=1e-13, grad="exact", supplier="softplus", beta=8.0, cost_power=power)
    _, grad, _, _ = dm_sinkhorn_torch(hm, xy, mass, **kw)

    def value(x):
        return dm_sinkhorn_torch(x, xy, mass, **kw)[0]
    for seed in range(2):
        d = torch.randn(hm.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.01
        torch.testing.assert_close((grad * d).sum((1, 2)), _finite_difference(value, hm, d), rtol=1e-6, atol=1e-9)


def _heatmaps_away_from_kink(h, w, n, seed):
    g = torch.Generator().manual_seed(seed)
    hm = torch.randn(n, h, w, generator=g, dtype=torch.float64)
    return torch.where(hm.abs() < 0.05, hm.sign() * 0.05 + hm, hm)  # FD never crosses relu's kink


@pytest.mark.parametrize("mode", ["subpixel", "naive"])
def test_exact_gradient_matches_finite_differences_of_transport_cost(mode):
    h, w = 11, 8
    dots = _dots_cases()
    hm = _heatmaps_away_from_kink(h, w, len(dots), seed=7)
    hm[1] = -hm[1].abs()  # no positive mass: the softmax fallback
    xy, mass = demanders(dots, mode)
    _, grad, _, _ = dm_sinkhorn_torch(hm, xy, mass, eps=1.0, max_iters=5000, tol=1e-13, grad="exact")
    def value(x):
        return dm_sinkhorn_torch(x, xy, mass, eps=1.0, max_iters=5000, tol=1e-13, grad="exact")[0]
    for seed in range(3):
        d = torch.randn(hm.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.01
        torch.testing.assert_close((grad * d).sum((1, 2)), _finite_difference(value, hm, d), rtol=1e-6, atol=1e-9)


def test_envelope_gradient_matches_finite_differences_of_kl_objective():
    h, w = 11, 8
    dots = _dots_cases()
    hm = _heatmaps_away_from_kink(h, w, len(dots), seed=8)
    xy, mass = demanders(dots)
    C = pixel_demander_cost(h, w, xy)
    _, grad, _, _ = dm_sinkhorn_torch(hm, xy, mass, eps=1.0, max_iters=5000, tol=1e-13, grad="envelope")

    def ot_kl(x):
        a, _, _ = suppliers(x)
        return sinkhorn(a, C, mass, eps=1.0, max_iters=5000, tol=1e-13).dual

    d = torch.randn(hm.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.01
    torch.testing.assert_close((grad * d).sum((1, 2)), _finite_difference(ot_kl, hm, d), rtol=1e-6, atol=1e-9)
    # ... and it is not the gradient of <C, P>:
    _, exact, _, _ = dm_sinkhorn_torch(hm, xy, mass, eps=1.0, max_iters=5000, tol=1e-13, grad="exact")
    assert not torch.allclose(grad, exact, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("kind", ["random", "peaked", "multimodal", "noise"])
@pytest.mark.parametrize("size", [(64, 48), (96, 72)])
def test_default_tolerance_agrees_with_the_papers_1000_iterations(kind, size):
    """fp32: defaults (tol 1e-5) vs tol=0 (1000 iterations) within 1e-4 relative, value and gradient."""
    hm, dots = make_problem(*size, 4, seed=11, kind=kind, dtype=torch.float32)
    xy, mass = demanders(dots)
    c1, g1, e1, it1 = dm_sinkhorn_torch(hm, xy, mass, eps=1.0, max_iters=1000, tol=1e-5, grad="exact")
    c0, g0, _, it0 = dm_sinkhorn_torch(hm, xy, mass, eps=1.0, max_iters=1000, tol=0.0, grad="exact")
    assert (it0 == 1000).all() and (it1 <= 12).all()
    torch.testing.assert_close(c1, c0, rtol=1e-4, atol=0)
    scale = g0.abs().amax(dim=(1, 2), keepdim=True)
    assert ((g1 - g0).abs() <= 1e-4 * scale).all()


def test_exact_gradient_stays_accurate_when_the_plan_is_nearly_one_hot():
    """eps 0.02 after 3 iterations: couplings between demanders are ~1e-21, so the 4x4 system must be
    built without cancellation (Laplacian diagonal from the couplings, h summed as written). Compared
    with the kernels' independent float64 reference, which solves per problem."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from kernels.reference import dm_sinkhorn_reference

    g = torch.Generator().manual_seed(0)
    rel = []
    for _ in range(60):
        h, w = (int(v) for v in torch.randint(2, 6, (2,), generator=g))
        hm = torch.rand(1, h, w, generator=g, dtype=torch.float64)
        dot = torch.rand(1, 2, generator=g, dtype=torch.float64) * torch.tensor([w - 1.0, h - 1.0], dtype=torch.float64)
        xy, mass = demanders(dot)
        _, ours, _, _ = dm_sinkhorn_torch(hm, xy, mass, eps=0.02, max_iters=3, tol=0.0, grad="exact")
        _, ref, _, _ = dm_sinkhorn_reference(hm, xy, mass, eps=0.02, max_iters=3, tol=0.0, grad="exact")
        rel.append(((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item())
    rel = torch.tensor(rel)
    assert rel.median() < 1e-8 and rel.max() < 0.05, rel.max()


@pytest.mark.parametrize("grad_mode", ["exact", "envelope"])
def test_softplus_supplier_gradient_matches_finite_differences(grad_mode):
    # the softplus map is smooth: no kink to avoid; a map far below zero (exp regime) included
    h, w = 11, 8
    dots = _dots_cases()
    g = torch.Generator().manual_seed(9)
    hm = torch.randn(len(dots), h, w, generator=g, dtype=torch.float64) * 2
    hm[1] = hm[1] - 6.0
    xy, mass = demanders(dots, "subpixel")
    for beta in (1.0, 4.0):
        opts = dict(eps=1.0, max_iters=5000, tol=1e-13, grad=grad_mode, supplier="softplus", beta=beta)
        cost, grad, _, _ = dm_sinkhorn_torch(hm, xy, mass, **opts)
        def value(x, opts=opts):
            return dm_sinkhorn_torch(x, xy, mass, **opts)[0]

        if grad_mode == "envelope":  # the envelope gradient is that of <C,P> + eps KL: compare that
            def value(x):
                from dmpose.suppliers import supplier_map
                a = supplier_map(x, "softplus", beta).flatten(1)
                a = a / a.sum(-1, keepdim=True)
                res = sinkhorn(a, pixel_demander_cost(h, w, xy), mass, eps=1.0, max_iters=5000, tol=1e-13)
                return res.dual
        for seed in range(2):
            d = torch.randn(hm.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.01
            torch.testing.assert_close((grad * d).sum((1, 2)), _finite_difference(value, hm, d), rtol=1e-6, atol=1e-9)


def test_relu_supplier_option_is_the_default():
    dots = _dots_cases()
    hm = _heatmaps_away_from_kink(11, 8, len(dots), seed=3)
    xy, mass = demanders(dots, "subpixel")
    a = dm_sinkhorn_torch(hm, xy, mass, eps=1.0, max_iters=100, tol=1e-10, grad="exact")
    b = dm_sinkhorn_torch(hm, xy, mass, eps=1.0, max_iters=100, tol=1e-10, grad="exact", supplier="relu")
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
