"""dm_loss / DMLoss: the public API, its validation, its invariants and its optimum."""


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dmpose import DMLoss, decode_2x2, demanders, dm_loss, heatmap_weights, mse_loss
from dmpose.sinkhorn import dm_sinkhorn_torch


def batch(b=2, k=3, h=10, w=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    hm = torch.randn(b, k, h, w, generator=g).to(dtype)
    kp = torch.rand(b, k, 2, generator=g) * torch.tensor([w - 1.0, h - 1.0])
    return hm, kp


# ---- demanders -------------------------------------------------------------------------------------
@given(st.floats(-0.5, 40.0, allow_nan=False), st.floats(-0.5, 40.0, allow_nan=False))
def test_subpixel_demanders_sum_to_one_and_average_to_the_dot(x, y):
    dot = torch.tensor([x, y], dtype=torch.float64)
    xy, mass = demanders(dot)
    assert (mass >= 0).all() and mass.sum().item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close((mass[:, None] * xy).sum(0), dot, rtol=0, atol=1e-12)
    # the four centres are the pixel holding the dot and its three neighbours towards the dot's quadrant
    assert (xy - dot).abs().max() <= 1.0
    assert torch.floor(dot + 0.5).tolist() in xy.tolist()


def test_dot_on_pixel_centre_keeps_one_demander():
    xy, mass = demanders(torch.tensor([5.0, 2.0]))
    assert mass.tolist() == [1.0, 0.0, 0.0, 0.0] and xy[0].tolist() == [5.0, 2.0]


def test_naive_demander_is_the_centre_of_the_pixel_holding_the_dot():
    xy, mass = demanders(torch.tensor([[2.49, 3.5], [2.51, -0.4]]), "naive")
    assert xy[:, 0].tolist() == [[2.0, 4.0], [3.0, 0.0]]
    assert mass[:, 0].tolist() == [1.0, 1.0] and (mass[:, 1:] == 0).all()


def test_heatmap_weights():
    kp = torch.tensor([[[0.0, 0.0], [-0.5, 3.0], [7.49, 9.0], [7.5, 1.0], [3.0, float("nan")], [3.0, 3.0]]])
    vis = torch.tensor([[2, 1, 2, 2, 2, 0]])
    assert heatmap_weights(kp, vis, heatmap_wh=(8, 10)).tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]]
    with pytest.warns(DeprecationWarning, match="heatmap_wh"):  # the old (H, W) positional spelling
        assert heatmap_weights(kp, vis, (10, 8)).tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]]


# ---- API ---------------------------------------------------------------------------------------------
def test_reductions_and_module_agree():
    hm, kp = batch()
    w = torch.tensor([[1.0, 0.5, 2.0], [0.0, 1.0, 1.0]])
    per = dm_loss(hm, kp, w, reduction="none")
    assert per.shape == (2, 3) and per[1, 0].item() == 0.0
    assert dm_loss(hm, kp, w, reduction="sum").item() == pytest.approx(per.sum().item(), rel=1e-6)
    assert dm_loss(hm, kp, w).item() == pytest.approx(per.sum().item() / 2, rel=1e-6)
    assert DMLoss(eps=0.5)(hm, kp, w).item() == pytest.approx(dm_loss(hm, kp, w, eps=0.5).item(), rel=1e-6)
    unweighted = dm_loss(hm, kp, reduction="none")
    torch.testing.assert_close(per, unweighted * w)


def test_value_equals_the_solver_and_sums_joints():
    hm, kp = batch(1, 3, dtype=torch.float64)
    xy, mass = demanders(kp[0].double())
    cost, _, _, _ = dm_sinkhorn_torch(hm[0], xy, mass, eps=1.0, max_iters=1000, tol=1e-12, grad="exact")
    value = dm_loss(hm, kp.double(), tol=1e-12, reduction="sum", suppliers="relu").item()
    assert value == pytest.approx(cost.sum().item(), rel=1e-12)


def test_weight_zero_gives_exactly_zero_and_no_gradient_even_for_nan_keypoints():
    hm, kp = batch()
    kp[0, 1] = float("nan")
    w = torch.ones(2, 3)
    w[0, 1] = 0
    hm.requires_grad_(True)
    per = dm_loss(hm, kp, w, reduction="none")
    per.sum().backward()
    assert per[0, 1].item() == 0.0 and (hm.grad[0, 1] == 0).all()
    assert torch.isfinite(hm.grad).all() and hm.grad[0, 0].abs().sum() > 0


def test_gradient_flows_to_heatmaps_and_scales_with_grad_output():
    hm, kp = batch(dtype=torch.float64)
    hm.requires_grad_(True)
    (3.0 * dm_loss(hm, kp.double(), reduction="sum")).backward()
    g3 = hm.grad.clone()
    hm.grad = None
    dm_loss(hm, kp.double(), reduction="sum").backward()
    torch.testing.assert_close(g3, 3.0 * hm.grad)


def test_scale_invariance_of_the_papers_relu_form():
    hm, kp = batch()
    torch.testing.assert_close(
        dm_loss(hm, kp, reduction="none", suppliers="relu"), dm_loss(7.5 * hm, kp, reduction="none", suppliers="relu"),
        rtol=1e-5, atol=1e-6
    )


def test_half_precision_inputs():
    hm, kp = batch()
    ref = dm_loss(hm, kp, reduction="none")
    for dtype in (torch.float16, torch.bfloat16):
        x = hm.to(dtype).requires_grad_(True)
        out = dm_loss(x, kp, reduction="none")
        assert out.dtype == torch.float32
        out.sum().backward()
        assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()
        torch.testing.assert_close(out, ref, rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(heatmaps=torch.zeros(3, 10, 8)), "heatmaps must be a \\(B, K, H, W\\)"),
        (dict(keypoints=torch.zeros(2, 4, 2)), "keypoints must have shape"),
        (dict(keypoints=torch.zeros(2, 3)), "keypoints must have shape"),
        (dict(weights=torch.ones(2, 4)), "weights must have shape"),
        (dict(weights=-torch.ones(2, 3)), "weights must be finite and >= 0"),
        (dict(keypoints=torch.full((2, 3, 2), float("inf"))), "keypoints must be finite.*keypoints\\[0, 0\\]"),
        (dict(eps=0.0), "eps must be .* got 0.0"),
        (dict(eps=-1.0), "eps must be"),
        (dict(eps=float("nan")), "eps must be"),
        (dict(max_iters=0), "max_iters must be an integer >= 1, got 0"),
        (dict(tol=-1e-3), "tol must be"),
        (dict(demander_mode="bilinear"), "demander_mode must be one of"),
        (dict(cost="l1"), "cost must be one of"),
        (dict(cost_power=0.0), "cost_power"),
        (dict(cost_power=2.0), "cost_power"),
        (dict(cost_power=float("nan")), "cost_power"),
        (dict(grad="autograd"), "grad must be one of"),
        (dict(reduction="avg"), "reduction must be one of"),
        (dict(backend="cuda"), "backend must be one of"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(change, message):
    hm, kp = batch()
    args = dict(heatmaps=hm, keypoints=kp, weights=None)
    opts = {k: change.pop(k) for k in list(change) if k not in args}
    args.update(change)
    with pytest.raises(ValueError, match=message):
        dm_loss(args["heatmaps"], args["keypoints"], args["weights"], **opts)


def test_triton_backend_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    hm, kp = batch()
    with pytest.raises(ValueError, match="backend='triton'"):
        dm_loss(hm, kp, backend="triton")


# ---- never NaN or Inf ------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(2, 9),
    w=st.integers(2, 9),
    kind=st.sampled_from(["random", "zero", "negative", "one-pixel", "huge", "tiny"]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
    grad=st.sampled_from(["exact", "envelope"]),
    mode=st.sampled_from(["subpixel", "naive"]),
    eps=st.sampled_from([1.0, 0.1, 0.02]),
    fx=st.floats(0, 1),
    fy=st.floats(0, 1),
    snap=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_never_nan_or_inf(h, w, kind, dtype, grad, mode, eps, fx, fy, snap, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 2, h, w, generator=g)
    hm = (
        {
            "random": base,
            "zero": torch.zeros_like(base),
            "negative": -base.abs() - 0.1,
            "one-pixel": torch.zeros_like(base).index_put_(
                (torch.tensor([0]), torch.tensor([1]), torch.tensor([h - 1]), torch.tensor([0])), torch.tensor(1.0)
            ),
            "huge": base * 1e4,
            "tiny": base.abs() * 1e-6,
        }[kind]
        .to(dtype)
        .requires_grad_(True)
    )
    # dots anywhere in the heatmap's area, including the outer half of border pixels and exact centres
    x, y = -0.5 + fx * (w - 1e-3), -0.5 + fy * (h - 1e-3)
    if snap:
        x, y = float(round(x)), float(round(y))
    kp = torch.tensor([[[x, y], [w - 1.0, 0.0]]])
    out = dm_loss(hm, kp, eps=eps, grad=grad, demander_mode=mode, reduction="none", max_iters=300)
    out.sum().backward()
    assert torch.isfinite(out).all() and (out >= 0).all()
    assert torch.isfinite(hm.grad.float()).all()


def test_no_positive_mass_gives_a_way_back():
    """All-negative heatmap: finite loss, non-zero gradient, and descent brings positive mass near the dot."""
    hm = torch.full((1, 1, 12, 10), -1.0, dtype=torch.float64, requires_grad=True)
    kp = torch.tensor([[[6.3, 4.6]]], dtype=torch.float64)
    opt = torch.optim.SGD([hm], lr=50.0)
    for _ in range(40):
        opt.zero_grad()
        loss = dm_loss(hm, kp)
        loss.backward()
        assert torch.isfinite(loss) and hm.grad.abs().sum() > 0
        opt.step()
        if (hm > 0).any():
            break
    assert (hm > 0).any()
    coords, _ = decode_2x2(hm.detach())
    assert (coords[0, 0] - kp[0, 0].float()).norm() < 1.5


# ---- the loss's own optimum ------------------------------------------------------------------------
def fit(eps, grad, dot=(7.3, 5.7), size=(14, 12), steps=500):
    torch.manual_seed(0)
    hm = (0.01 * torch.rand(1, 1, *size, dtype=torch.float64)).requires_grad_(True)
    kp = torch.tensor([[list(dot)]], dtype=torch.float64)
    opt = torch.optim.Adam([hm], lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        dm_loss(hm, kp, eps=eps, grad=grad, tol=1e-7, suppliers="relu").backward()
        opt.step()
    coords, _ = decode_2x2(hm.detach())
    return (coords[0, 0].double() - kp[0, 0]).norm().item()


def test_exact_gradient_optimum_decodes_onto_the_dot():
    """Descent on a free 14x12 heatmap, dot (7.3, 5.7), then the 2x2 decode.

    Measured with this test's `fit`: exact gradient at eps 0.25 -> 0.0003 px from the dot; at eps 1 the
    entropic plan blurs: exact -> 0.15 px, envelope -> 0.38 px (the envelope optimum piles the mass
    on the nearest pixel centre (7, 6), i.e. quantisation comes back).
    """
    assert fit(0.25, "exact") < 0.02
    exact_eps1, envelope_eps1 = fit(1.0, "exact"), fit(1.0, "envelope")
    assert 0.02 < exact_eps1 < envelope_eps1


def test_concave_cost_optimum_decodes_onto_the_dot_and_power_one_is_the_paper():
    """cost_power < 1 keeps the loss's optimum on the dot (eps 0.25, as the paper's cost above), and
    cost_power 1 is exactly the default."""
    torch.manual_seed(0)
    hm = torch.randn(2, 3, 16, 12, dtype=torch.float64)
    kp = torch.rand(2, 3, 2, dtype=torch.float64) * 10
    assert torch.equal(dm_loss(hm, kp, cost_power=1.0), dm_loss(hm, kp))
    for power in (0.5, 0.25):
        hm = (0.01 * torch.rand(1, 1, 14, 12, dtype=torch.float64)).requires_grad_(True)
        kp = torch.tensor([[[7.3, 5.7]]], dtype=torch.float64)
        opt = torch.optim.Adam([hm], lr=0.01)
        for _ in range(500):
            opt.zero_grad()
            dm_loss(hm, kp, eps=0.25, tol=1e-7, suppliers="relu", cost_power=power).backward()
            opt.step()
        coords, _ = decode_2x2(hm.detach())
        assert (coords[0, 0].double() - kp[0, 0]).norm().item() < 0.05, power


def test_concave_cost_gives_the_push_reach_near_the_dot():
    """On a uniform map the push -dL/dH is the pixel potential centred: with the paper's cost the step from
    1 px to the dot earns what a step from 10 px to 9 px earns; with cost_power 0.5 it earns several times more."""
    h, w = 32, 24
    kp = torch.tensor([[[12.0, 16.0]]], dtype=torch.float64)  # on a pixel centre: one demander
    ring = {r: (r, 0) for r in (0, 1, 9, 10)}  # pixels r px right of the dot

    def push(power):
        hm = torch.zeros(1, 1, h, w, dtype=torch.float64, requires_grad=True)
        dm_loss(hm, kp, suppliers="softplus", cost_power=power, tol=1e-10).backward()
        g = -hm.grad[0, 0]
        at = {r: g[16 + dy, 12 + dx].item() for r, (dx, dy) in ring.items()}
        return (at[0] - at[1]) / (at[9] - at[10])

    assert push(1.0) == pytest.approx(1.0, rel=0.05)
    assert push(0.5) > 2.5  # sqrt: (1 - 0) / (sqrt 10 - 3) = 6.2 for the cost alone


# ---- the MSE baseline --------------------------------------------------------------------------------
def test_mse_loss_matches_the_official_joints_mse_formula():
    hm, _ = batch()
    tgt = torch.rand_like(hm)
    w = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    ref = 0.0
    for k in range(3):  # official: mean over joints of 0.5 * MSE(pred * w, gt * w) over batch and pixels
        ref += 0.5 * torch.nn.functional.mse_loss(hm[:, k] * w[:, k, None, None], tgt[:, k] * w[:, k, None, None])
    assert mse_loss(hm, tgt, w).item() == pytest.approx(ref.item() / 3, rel=1e-6)


# ---- options object, deprecated name, no-grad fast path -----------------------------------------
def test_options_object_equals_keywords_and_validates_once():
    from dmpose.spec import DMLossOptions, SpecError

    hm, kp = batch()
    opts = DMLossOptions(eps=0.5, max_iters=200)
    assert dm_loss(hm, kp, options=opts).item() == dm_loss(hm, kp, eps=0.5, max_iters=200).item()
    assert DMLoss(opts).options is opts and DMLoss(eps=0.5).options.eps == 0.5
    with pytest.raises(SpecError, match="cost must be one of"):
        DMLoss(cost="l1")  # validated at construction
    with pytest.warns(DeprecationWarning, match="demander_mode"):
        with pytest.raises(ValueError, match="demanders must be one of"):
            dm_loss(hm, kp, demanders="bilinear")



def test_nonfinite_is_a_loss_option_and_return_stats_a_keyword():
    from dmpose.spec import DMLossOptions, SpecError

    hm, kp = batch()
    hm = hm.clone()
    hm[0, 1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"heatmaps\[0, 1\] holds NaN/Inf"):
        dm_loss(hm, kp)
    opts = DMLossOptions(nonfinite="mask", reduction="none")
    per_joint, stats = dm_loss(hm, kp, options=opts, return_stats=True)
    assert per_joint[0, 1].item() == 0.0 and stats.nonfinite == 1 and torch.isfinite(per_joint).all()
    module = DMLoss(opts)
    assert torch.equal(module(hm, kp), per_joint) and module.last_stats.nonfinite == 1
    assert DMLoss(nonfinite="mask").options.nonfinite == "mask"
    with pytest.raises(SpecError, match="nonfinite must be one of"):
        DMLossOptions.validated(nonfinite="skip")
    with pytest.raises(SpecError, match="return_stats"):
        DMLossOptions.validated(return_stats=True)  # a return form, not an option

def test_no_grad_skips_the_gradient(monkeypatch):
    import dmpose.sinkhorn as sk

    calls = []
    real = sk.exact_grad_a
    monkeypatch.setattr(sk, "exact_grad_a", lambda *a, **k: calls.append(1) or real(*a, **k))
    hm, kp = batch()
    with_grad = dm_loss(hm.clone().requires_grad_(True), kp, backend="torch")
    assert calls == [1]
    with torch.no_grad():
        value = dm_loss(hm.clone().requires_grad_(True), kp, backend="torch")
    plain = dm_loss(hm, kp, backend="torch")  # heatmaps that do not require grad
    assert calls == [1] and not value.requires_grad
    assert value.item() == with_grad.item() == plain.item()


def test_softplus_suppliers_option():
    from dmpose.suppliers import supplier_map

    g = torch.Generator().manual_seed(0)
    hm = (torch.randn(2, 3, 9, 7, generator=g, dtype=torch.float64) - 3.0).requires_grad_(True)  # mostly <= 0
    kp = torch.rand(2, 3, 2, generator=g, dtype=torch.float64) * 5 + 1
    loss = dm_loss(hm, kp, suppliers="softplus", supplier_beta=2.0, tol=1e-12)
    loss.backward()
    assert torch.isfinite(loss) and (hm.grad != 0).all()  # every pixel gets a gradient: no dead maps
    # the same as dm_loss on the supplier map with the relu form (which is then the identity)
    ref = dm_loss(supplier_map(hm.detach(), "softplus", 2.0), kp, tol=1e-12, suppliers="relu")
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-10, atol=0)
    module = DMLoss(suppliers="softplus", supplier_beta=2.0, tol=1e-12)
    assert module(hm.detach(), kp).item() == pytest.approx(loss.item(), rel=1e-9)
    with pytest.raises(ValueError, match="suppliers"):
        dm_loss(hm, kp, suppliers="sigmoid")
    with pytest.raises(ValueError, match="supplier_beta"):
        dm_loss(hm, kp, suppliers="softplus", supplier_beta=0.0)


def test_decoded_map_is_the_loss_supplier_distribution_with_one_dead_map_rule():
    """The decode reads what the loss transports: phi(H)/sum phi(H), softmax(H) for a dead map."""
    from dmpose.sinkhorn import suppliers as loss_suppliers
    from dmpose.suppliers import decoded_map, supplier_map

    g = torch.Generator().manual_seed(3)
    hm = torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64)
    hm[1, 1] = -torch.rand(6, 5, generator=g, dtype=torch.float64) - 0.1  # dead under relu
    a, _, _ = loss_suppliers(hm.reshape(-1, 6, 5))
    torch.testing.assert_close(decoded_map(hm, "relu").double().reshape(6, -1), a.reshape(6, -1).float().double())
    sp = supplier_map(hm, "softplus", 2.0)
    torch.testing.assert_close(decoded_map(hm, "softplus", 2.0).double(), (sp / sp.sum((-2, -1), keepdim=True)),
                               rtol=1e-6, atol=1e-7)
    assert torch.equal(decoded_map(hm, "raw"), hm.float())
    with pytest.raises(ValueError, match="supplier map"):
        decoded_map(hm, "sigmoid")


def test_demander_cross_entropy_matches_the_direct_formula_and_its_optimum_is_the_demander_masses():
    from dmpose.loss import demander_cross_entropy, log_supplier_distribution

    torch.manual_seed(0)
    hm = torch.randn(1, 2, 8, 6, dtype=torch.float64)
    kp = torch.tensor([[[2.3, 4.7], [5.4, 7.4]]], dtype=torch.float64)  # the second's y1 = 8 lies outside
    s = torch.nn.functional.softplus(hm)
    s = s / s.sum((-2, -1), keepdim=True)
    first = -(0.7 * 0.3 * s[0, 0, 4, 2].log() + 0.3 * 0.3 * s[0, 0, 4, 3].log()
              + 0.7 * 0.7 * s[0, 0, 5, 2].log() + 0.3 * 0.7 * s[0, 0, 5, 3].log())
    second = -s[0, 1, 7, 5].log()  # only (5, 7) is inside: its mass renormalised to 1
    got = demander_cross_entropy(hm, kp, reduction="none", supplier_beta=1.0)
    assert got.dtype == torch.float64 and torch.allclose(got[0], torch.stack([first, second]), rtol=1e-12)
    # no underflow far below zero: log S = H - logsumexp there, finite where softplus(H) itself is 0 in fp32
    deep = torch.full((1, 1, 4, 4), -200.0)
    deep[0, 0, 1, 1] = -100.0
    assert torch.isfinite(log_supplier_distribution(deep, "softplus", 1.0)).all()
    assert float(demander_cross_entropy(deep, torch.tensor([[[1.0, 1.0]]]), supplier_beta=1.0)) < 1e-6
    # minimised over a free map at S = b: the gradient vanishes there
    b_map = torch.zeros(1, 1, 8, 6, dtype=torch.float64)
    b_map[0, 0, 4, 2], b_map[0, 0, 4, 3], b_map[0, 0, 5, 2], b_map[0, 0, 5, 3] = 0.21, 0.09, 0.49, 0.21
    # the inverse softplus of b where b > 0 (so softplus(H) = b), far below zero elsewhere
    x = torch.where(b_map > 0, torch.expm1(b_map).log(), torch.full_like(b_map, -600.0)).requires_grad_()
    ce = demander_cross_entropy(x, kp[:, :1], supplier_beta=1.0)
    ce.backward()
    assert float(x.grad.abs().max()) < 1e-3
    with pytest.raises(ValueError, match="softplus"):
        demander_cross_entropy(hm, kp, suppliers="relu")


def test_demander_cross_entropy_gradient_matches_finite_differences_and_autograd_of_the_log_map():
    """The closed-form gradient against float64 finite differences (gradcheck) and against autograd through
    `log_supplier_distribution` (the direct formula), with unlabelled joints, a dot half outside and maps far
    below zero (where log phi = beta H)."""
    from dmpose.loss import demander_cross_entropy, log_supplier_distribution

    torch.manual_seed(1)
    hm = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    hm[1, 2] -= 4.0  # beta H < -15 on most pixels at beta 8
    kp = torch.tensor([[[1.3, 2.6], [4.4, 6.2], [0.0, 0.0]], [[2.0, 3.0], [3.7, 0.2], [2.5, 5.5]]],
                      dtype=torch.float64)
    w = torch.tensor([[1.0, 1.0, 0.0], [0.5, 1.0, 1.0]], dtype=torch.float64)
    for beta in (1.0, 8.0):
        def ce(x):
            return demander_cross_entropy(x, kp, w, supplier_beta=beta, reduction="none")

        assert torch.autograd.gradcheck(ce, (hm.clone().requires_grad_(),), eps=1e-6, atol=1e-7)
        x = hm.clone().requires_grad_()
        (ce(x) * torch.arange(1.0, 7.0, dtype=torch.float64).reshape(2, 3)).sum().backward()
        ref_x = hm.clone().requires_grad_()
        log_s = log_supplier_distribution(ref_x.double(), "softplus", beta).reshape(2, 3, 7, 5)
        direct = demander_cross_entropy(hm, kp, w, supplier_beta=beta, reduction="none")
        # the direct formula: gather log S at the demanders (reusing the same value as a check of the forward)
        from dmpose.loss import demanders

        xy, mass = demanders(kp)
        ref = torch.zeros(2, 3, dtype=torch.float64)
        for bi in range(2):
            for ki in range(3):
                keep = [(int(xx), int(yy), mm) for (xx, yy), mm in zip(xy[bi, ki].tolist(), mass[bi, ki].tolist())
                        if 0 <= xx < 5 and 0 <= yy < 7 and mm > 0]
                tot = sum(mm for *_, mm in keep)
                ref[bi, ki] = -sum(mm / tot * log_s[bi, ki, yy, xx] for xx, yy, mm in keep) * w[bi, ki]
        assert torch.allclose(direct, ref.detach(), rtol=1e-10, atol=1e-12)
        (ref * torch.arange(1.0, 7.0, dtype=torch.float64).reshape(2, 3)).sum().backward()
        assert torch.allclose(x.grad, ref_x.grad, rtol=1e-9, atol=1e-12)
        assert float(x.grad[0, 2].abs().max()) == 0.0  # the unlabelled joint
