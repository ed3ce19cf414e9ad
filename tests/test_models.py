"""Architectures: registry, parameter counts, the official key layout, output shapes.

Big networks are built on the meta device (no memory, no compute); real forward passes only run on
the small variant.
"""

from __future__ import annotations

import pytest
import torch
from official_keys import read_key_fixture, single_thread

from dmpose.models import build_model, list_models

pytestmark = pytest.mark.usefixtures("single_thread")
assert single_thread  # imported for its fixture

# Published parameter counts (HRNet paper, Table 1, 17 joints), in millions, to the nearest 0.1M.
PUBLISHED_PARAMS_M = {
    "hrnet_w32": 28.5,
    "hrnet_w48": 63.6,
    "simplebaseline_res50": 34.0,
    "simplebaseline_res101": 53.0,
    "simplebaseline_res152": 68.6,
}
ALL = ["hrnet_tiny", "hrnet_w18", "hrnet_w32", "hrnet_w48",
       "simplebaseline_res50", "simplebaseline_res101", "simplebaseline_res152"]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_architecture():
    assert set(ALL) <= set(list_models())


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'hrnet_w33'.*hrnet_w32"):
        build_model("hrnet_w33")


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_bad_num_joints_is_rejected(bad):
    with pytest.raises(ValueError, match="num_joints"):
        build_model("hrnet_tiny", num_joints=bad)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS_M))
def test_parameter_count_matches_published(name):
    model = build_model(name, num_joints=17, device="meta")
    assert round(n_params(model) / 1e6, 1) == PUBLISHED_PARAMS_M[name]


@pytest.mark.parametrize("width", [32, 48])
def test_hrnet_state_dict_equals_official_layout(width):
    expected, expected_params = read_key_fixture(width)
    model = build_model(f"hrnet_w{width}", device="meta")
    got = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
    assert list(got) == list(expected)  # same keys, same order
    assert got == expected
    assert n_params(model) == expected_params


@pytest.mark.parametrize(
    ("name", "num_joints"), [(name, 17) for name in ALL] + [("hrnet_tiny", 16), ("simplebaseline_res50", 16)]
)
def test_output_stride_4_and_meta_attributes(name, num_joints):
    model = build_model(name, num_joints=num_joints, device="meta")
    assert model.arch == name and model.num_joints == num_joints
    out = model(torch.empty(2, 3, 256, 192, device="meta"))
    assert out.shape == (2, num_joints, 64, 48)


def test_small_variant_runs_forward_and_backward():
    torch.manual_seed(0)
    model = build_model("hrnet_tiny", num_joints=5)
    x = torch.randn(2, 3, 128, 96)
    out = model(x)
    assert out.shape == (2, 5, 32, 24) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert n_params(model) < 1_000_000


def test_hrnet_fusion_reaches_every_branch():
    """The head sees the low-resolution branches: changing the input far from a pixel changes it
    (receptive field through the stride-32 branch), and the eval output is deterministic."""
    torch.manual_seed(0)
    model = build_model("hrnet_tiny", num_joints=1).eval()
    for p in model.parameters():  # larger weights than the 0.001 init so that differences show
        torch.nn.init.normal_(p, std=0.3) if p.dim() > 1 else None
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        base = model(x)
        assert torch.equal(base, model(x))
        x2 = x.clone()
        x2[..., 96:, 96:] += 1.0  # bottom-right corner only
        diff = (model(x2) - base).abs()[0, 0]
    # The top-left output pixel is outside the high-resolution branch's small receptive field but is
    # reached through the fused lower-resolution branches.
    assert diff[0, 0] > 0


def _conv_bn(x, conv, bn, stride=1, relu=False):
    """Reference conv + eval-mode BN (+ ReLU) written with functional ops."""
    y = torch.nn.functional.conv2d(x, conv.weight, stride=stride, padding=conv.padding)
    y = (y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    y = y * bn.weight[:, None, None] + bn.bias[:, None, None]
    return y.clamp_min(0) if relu else y


def test_fusion_matches_a_functional_reference():
    """Branch i of a module's output = relu(sum_j resample_j->i(branch_j)): 1x1 conv + BN + nearest 2^(j-i)
    upsampling from lower resolutions, chains of stride-2 3x3 conv + BN (ReLU between) from higher ones."""
    from dmpose.models.hrnet import HighResolutionModule

    torch.manual_seed(0)
    widths = [4, 8, 16]
    module = HighResolutionModule(widths, num_blocks=1).eval()
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
        xs = [torch.randn(2, w, 16 // 2**k, 12 // 2**k) for k, w in enumerate(widths)]
        out = module(xs)
        branches = [b(x) for b, x in zip(module.branches, xs)]
        for i in range(3):
            total = torch.zeros_like(branches[i])
            for j in range(3):
                layer = module.fuse_layers[i][j]
                if j == i:
                    z = branches[j]
                elif j > i:
                    z = _conv_bn(branches[j], layer[0], layer[1])
                    z = z.repeat_interleave(2 ** (j - i), dim=2).repeat_interleave(2 ** (j - i), dim=3)
                else:
                    z = branches[j]
                    for k, step in enumerate(layer):
                        z = _conv_bn(z, step[0], step[1], stride=2, relu=k < i - j - 1)
                total = total + z
            torch.testing.assert_close(out[i], total.clamp_min(0), rtol=1e-5, atol=1e-5)
