"""HRFormer: parameter counts and key layouts against the upstream fixtures, output shapes, the window
attention / FFN / block / fusion against plain references written here (einsum level, explicit loops),
drop path schedule, weight import from the official and MMPose 1.x layouts, FLOPs, ONNX export."""

from __future__ import annotations

import inspect
import math
import os

import numpy as np
import pytest
import torch
from official_keys import read_hrformer_key_fixture, single_thread
from torch import Tensor

import dmpose
from dmpose.models import hrformer as hrformer_module
from dmpose.models.convert import ConversionError, convert_state_dict
from dmpose.models.flops import count_macs
from dmpose.models.hrformer import (
    ConvFFN,
    DropPath,
    HRFormerBlock,
    HRFormerModule,
    WindowAttention,
    hrformer_param_groups,
    relative_position_index,
)

pytestmark = pytest.mark.usefixtures("single_thread")
assert single_thread  # imported for its fixture

SIZES = {"hrformer_small": "small", "hrformer_base": "base"}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- architecture ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SIZES))
def test_parameter_count_equals_the_upstream_code(name):
    _, expected = read_hrformer_key_fixture("official", SIZES[name])
    _, expected_mmpose = read_hrformer_key_fixture("mmpose", SIZES[name])
    assert expected == expected_mmpose
    assert n_params(dmpose.build_model(name, num_joints=17, device="meta")) == expected


@pytest.mark.parametrize("name", list(SIZES))
def test_state_dict_is_the_mmpose_layout_renamed(name):
    """dmpose's keys = MMPose 1.x's without prefixes, `attn.attn.` -> `attn.`, and without the
    relative_position_index buffers (recomputed, not stored); the same shapes."""
    layout, _ = read_hrformer_key_fixture("mmpose", SIZES[name])
    expected = {}
    for key, (shape, _) in layout.items():
        if key.endswith("relative_position_index"):
            continue
        key = key.removeprefix("backbone.").removeprefix("head.").replace(".attn.attn.", ".attn.")
        expected[key] = shape
    got = {k: list(v.shape) for k, v in dmpose.build_model(name, device="meta").state_dict().items()}
    assert got == expected


@pytest.mark.parametrize("size", [(256, 192), (384, 288)])
def test_small_output_shapes(size):
    model = dmpose.build_model("hrformer_small", num_joints=17).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 17, size[0] // 4, size[1] // 4) and torch.isfinite(out).all()


def test_base_output_shapes_on_meta():
    model = dmpose.build_model("hrformer_base", num_joints=16, device="meta")
    assert model.arch == "hrformer_base" and model.num_joints == 16 and model.output_stride == 4
    for size in ((256, 192), (384, 288)):
        assert model(torch.empty(2, 3, *size, device="meta")).shape == (2, 16, size[0] // 4, size[1] // 4)


def test_small_trains_on_an_odd_input():
    """Forward + backward in train mode (drop path active) on a size that pads every branch."""
    torch.manual_seed(0)
    model = dmpose.build_model("hrformer_small", num_joints=3).train()
    out = model(torch.randn(2, 3, 72, 52))
    assert out.shape == (2, 3, 18, 13)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_drop_path_rises_linearly_with_block_depth():
    model = dmpose.build_model("hrformer_small", device="meta")
    expected = torch.linspace(0, 0.1, 14).tolist()  # 2 blocks x (1 + 4 + 2) modules
    for stage, first in (("stage2", 0), ("stage3", 2), ("stage4", 10)):
        for m, module in enumerate(getattr(model, stage)):
            for branch in module.branches:  # every branch of a module has its module's rates
                got = [b.drop_path.p for b in branch]
                assert got == pytest.approx(expected[first + 2 * m: first + 2 * m + 2])
    base = dmpose.build_model("hrformer_base", device="meta", drop_path=0.3)  # the 384x288 config's
    rates = [m.drop_path.p for m in base.modules() if isinstance(m, HRFormerBlock)]
    assert max(rates) == pytest.approx(0.3) and min(rates) == 0.0
    defaults = {name: inspect.signature(fn).parameters["drop_path"].default
                for name, fn in ((n, getattr(hrformer_module, n)) for n in SIZES)}
    assert defaults == {"hrformer_small": 0.1, "hrformer_base": 0.2}
    with pytest.raises(ValueError, match="drop path probability"):
        DropPath(1.0)


def test_drop_path_is_per_sample_and_unbiased():
    torch.manual_seed(0)
    drop = DropPath(0.25).train()
    y = drop(torch.ones(4000, 3, 2, 2))
    per_sample = y.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1)).all()  # whole samples dropped
    assert y.mean().item() == pytest.approx(1.0, abs=0.05)
    assert torch.equal(drop.eval()(y), y)


# --- references ------------------------------------------------------------------------------------


def mmpose_style_index(s: int) -> Tensor:
    """The relative_position_index as MMPose builds it (a different construction than dmpose's)."""
    seq = (torch.arange(0, (2 * s - 1) * s, 2 * s - 1)[:, None] + torch.arange(s)[None, :]).reshape(1, -1)
    return (seq + seq.T).flip(1)


@pytest.mark.parametrize("s", [3, 7])
def test_relative_position_index_equals_the_upstream_construction(s):
    assert torch.equal(relative_position_index(s, s), mmpose_style_index(s))


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and biases, and BN statistics away from 0 / 1, so that every term shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.3))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.2)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return module.eval()


def ref_window_attention(x: Tensor, attn: WindowAttention, with_bias: bool = True) -> Tensor:
    """(B, H, W, C): pad symmetrically to whole windows (extra row/column at the end), then per window
    softmax(q k^T / sqrt(d) + table[offset]) v with explicit loops over windows and token pairs; without
    the table term when not `with_bias`. In x's dtype."""
    b, h, w, c = x.shape
    s, nh = attn.window, attn.num_heads
    d = c // nh
    hp, wp = math.ceil(h / s) * s, math.ceil(w / s) * s
    top, left = (hp - h) // 2, (wp - w) // 2
    xp = x.new_zeros(b, hp, wp, c)
    xp[:, top: top + h, left: left + w] = x
    wq, wk, wv = attn.qkv.weight.split(c)
    bq, bk, bv = attn.qkv.bias.split(c)
    table = attn.relative_position_bias_table
    cells = [(r, col) for r in range(s) for col in range(s)]
    bias = x.new_zeros(nh, s * s, s * s)
    for i, (ri, ci) in enumerate(cells):
        for j, (rj, cj) in enumerate(cells):
            if with_bias:
                bias[:, i, j] = table[(ri - rj + s - 1) * (2 * s - 1) + (ci - cj + s - 1)]
    out = torch.zeros_like(xp)
    for wy in range(hp // s):
        for wx in range(wp // s):
            t = xp[:, wy * s: (wy + 1) * s, wx * s: (wx + 1) * s].reshape(b, s * s, c)
            q = (torch.einsum("bnc,oc->bno", t, wq) + bq).reshape(b, s * s, nh, d)
            k = (torch.einsum("bnc,oc->bno", t, wk) + bk).reshape(b, s * s, nh, d)
            v = (torch.einsum("bnc,oc->bno", t, wv) + bv).reshape(b, s * s, nh, d)
            logits = torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(d) + bias
            o = torch.einsum("bhnm,bmhd->bnhd", logits.softmax(-1), v).reshape(b, s * s, c)
            o = torch.einsum("bnc,oc->bno", o, attn.proj.weight) + attn.proj.bias
            out[:, wy * s: (wy + 1) * s, wx * s: (wx + 1) * s] = o.reshape(b, s, s, c)
    return out[:, top: top + h, left: left + w]


@pytest.mark.parametrize(("h", "w", "s", "heads"), [(9, 13, 7, 2), (5, 3, 7, 1), (14, 7, 7, 2), (7, 5, 3, 2)])
def test_window_attention_matches_the_reference(h, w, s, heads):
    attn = randomise(WindowAttention(8, heads, window=s))
    x = torch.randn(2, h, w, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(attn(x), ref_window_attention(x, attn), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["official", "mmpose"])
@pytest.mark.parametrize(("h", "w", "s"), [(9, 13, 7), (7, 5, 3)])
def test_window_attention_follows_each_layouts_formula(layout, h, w, s):
    """In float64: the official pose code's softmax(q k^T * scale) v with relative_position_bias=False,
    MMPose's (and the official segmentation code's) softmax(q k^T * scale + B[relative_position_index]) v
    with True; the two differ, and both keep the table (the official keys load strictly)."""
    bias = layout == "mmpose"
    attn = randomise(WindowAttention(8, 2, window=s, relative_position_bias=bias)).double()
    assert "relative_position_bias_table" in attn.state_dict()
    x = torch.randn(2, h, w, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        got = attn(x)
        torch.testing.assert_close(got, ref_window_attention(x, attn, with_bias=bias), atol=1e-12, rtol=1e-12)
        assert (got - ref_window_attention(x, attn, with_bias=not bias)).abs().max() > 1e-2


def ref_bn(x: Tensor, bn: torch.nn.BatchNorm2d) -> Tensor:
    shape = (1, -1, 1, 1)
    x = (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
    return x * bn.weight.view(shape) + bn.bias.view(shape)


def gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def ref_ffn(x: Tensor, ffn: ConvFFN) -> Tensor:
    """(B, C, H, W): 1x1 (einsum) + BN + GELU, depth-wise 3x3 as a sum of 9 shifted slices + BN + GELU,
    1x1 + BN + GELU."""
    y = torch.einsum("bchw,oc->bohw", x, ffn.fc1.weight[:, :, 0, 0]) + ffn.fc1.bias.view(1, -1, 1, 1)
    y = gelu(ref_bn(y, ffn.norm1))
    h, w = y.shape[-2:]
    yp = y.new_zeros(y.shape[0], y.shape[1], h + 2, w + 2)
    yp[:, :, 1: h + 1, 1: w + 1] = y
    z = ffn.dw3x3.bias.view(1, -1, 1, 1).expand_as(y).clone()
    for dy in range(3):
        for dx in range(3):
            z = z + yp[:, :, dy: dy + h, dx: dx + w] * ffn.dw3x3.weight[:, 0, dy, dx].view(1, -1, 1, 1)
    z = gelu(ref_bn(z, ffn.norm2))
    u = torch.einsum("bchw,oc->bohw", z, ffn.fc2.weight[:, :, 0, 0]) + ffn.fc2.bias.view(1, -1, 1, 1)
    return gelu(ref_bn(u, ffn.norm3))


def test_ffn_matches_the_reference():
    ffn = randomise(ConvFFN(6, 24))
    x = torch.randn(2, 6, 9, 5, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(ffn(x), ref_ffn(x, ffn), atol=1e-5, rtol=1e-5)


def ref_layer_norm(x: Tensor, ln: torch.nn.LayerNorm) -> Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-6) * ln.weight + ln.bias


def test_block_matches_the_reference():
    block = randomise(HRFormerBlock(8, 2, window=7, mlp_ratio=4, drop_path=0.1))
    assert block.norm1.eps == 1e-6 and block.norm2.eps == 1e-6
    x = torch.randn(2, 8, 11, 9, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        t = x.permute(0, 2, 3, 1)
        t = t + ref_window_attention(ref_layer_norm(t, block.norm1), block.attn)
        expected = t.permute(0, 3, 1, 2) + ref_ffn(ref_layer_norm(t, block.norm2).permute(0, 3, 1, 2), block.ffn)
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_fusion_matches_a_functional_reference():
    """Output i = relu(sum_j resample_j->i(branch_j)): 1x1 conv + BN + bilinear x2^(j-i) upsampling (the
    original's nn.Upsample(scale_factor)) from lower resolutions, chains of [depth-wise stride-2 3x3 + BN
    + 1x1 + BN] (ReLU between) from higher ones."""
    F = torch.nn.functional
    widths = [4, 8, 16]
    module = randomise(HRFormerModule(widths, [1, 2, 2], [0.0, 0.0], window=3))
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(1, c, 8 // 2**i, 12 // 2**i, generator=g) for i, c in enumerate(widths)]
    with torch.no_grad():
        ys = [branch(x) for branch, x in zip(module.branches, xs)]
        got = module(xs)
        for i in range(3):
            total = torch.zeros_like(ys[i])
            for j in range(3):
                layer = module.fuse_layers[i][j]
                if j == i:
                    z = ys[j]
                elif j > i:
                    z = ref_bn(F.conv2d(ys[j], layer[0].weight), layer[1])
                    z = F.interpolate(z, scale_factor=2 ** (j - i), mode="bilinear", align_corners=False)
                else:
                    z = ys[j]
                    for k, step in enumerate(layer):
                        z = ref_bn(F.conv2d(z, step[0].weight, stride=2, padding=1, groups=widths[j]), step[1])
                        z = ref_bn(F.conv2d(z, step[2].weight), step[3])
                        if k < i - j - 1:
                            z = z.clamp_min(0)
                total = total + z
            torch.testing.assert_close(got[i], total.clamp_min(0), atol=1e-5, rtol=1e-5)


# --- weight import ---------------------------------------------------------------------------------


def random_state(layout: dict[str, tuple[list[int], str]], seed: int = 0) -> dict[str, Tensor]:
    """Random values (positive BN variances), the upstream relative_position_index buffers."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, (shape, dtype) in layout.items():
        if key.endswith("relative_position_index"):
            state[key] = mmpose_style_index(math.isqrt(shape[0]))
        elif dtype == "int64":
            state[key] = torch.randint(0, 1000, shape, generator=g)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.05
    return state


def official_to_mmpose(official: dict[str, Tensor], mmpose_layout: dict) -> dict[str, Tensor]:
    """The same weights in the MMPose 1.x layout, key by key from its fixture list."""
    out = {}
    for key in mmpose_layout:
        src = key.replace("head.final_layer", "keypoint_head.final_layer", 1) if key.startswith("head.") else key
        if ".attn.attn.qkv." in key:
            part = key.rsplit(".", 1)[1]
            base = key.split(".attn.attn.qkv.")[0] + ".attn.attn."
            out[key] = torch.cat([official[f"{base}{p}_proj.{part}"] for p in "qkv"])
        elif ".attn.attn.proj." in key:
            out[key] = official[key.replace(".proj.", ".out_proj.")]
        elif ".ffn." in key:
            out[key] = official[key.replace(".ffn.", ".mlp.")]
        else:
            out[key] = official[src]
    return out


@pytest.fixture(scope="module")
def small_states():
    official_layout, _ = read_hrformer_key_fixture("official", "small")
    mmpose_layout, _ = read_hrformer_key_fixture("mmpose", "small")
    official = random_state(official_layout)
    return official, official_to_mmpose(official, mmpose_layout)


def test_official_layout_converts_strictly(small_states):
    official, _ = small_states
    model, report = convert_state_dict(official, "hrformer_small")
    assert not report.is_partial and report.num_joints == 17 and report.tracking_missing == 0
    assert report.layout == "HRFormer official (44 q/k/v triples concatenated)"
    assert list(report.dropped) == ["HRFormer relative_position_index buffers (equal to the ones dmpose recomputes)"]
    assert len(next(iter(report.dropped.values()))) == 44
    assert len(report.loaded) == len(model.state_dict())
    block = model.stage3[2].branches[1][1]
    prefix = "backbone.stage3.2.branches.1.1."
    for part in ("weight", "bias"):
        qkv = torch.cat([official[f"{prefix}attn.attn.{p}_proj.{part}"] for p in "qkv"])
        assert torch.equal(getattr(block.attn.qkv, part), qkv)
        assert torch.equal(getattr(block.attn.proj, part), official[f"{prefix}attn.attn.out_proj.{part}"])
    assert torch.equal(block.ffn.dw3x3.weight, official[prefix + "mlp.dw3x3.weight"])
    table = official[prefix + "attn.attn.relative_position_bias_table"]
    assert torch.equal(block.attn.relative_position_bias_table, table)
    assert torch.equal(model.final_layer.weight, official["keypoint_head.final_layer.weight"])


def test_both_layouts_give_the_same_weights_each_with_its_own_attention(small_states):
    """The same tensors; the official layout's model leaves the relative position bias out, MMPose's adds it,
    and with the bias left out MMPose's weights give the official model's outputs exactly."""
    official, mmpose = small_states
    a, report_a = convert_state_dict(official, "hrformer_small")
    b, report = convert_state_dict(mmpose, "hrformer_small")
    assert report.layout == "HRFormer MMPose 1.x" and not report.is_partial
    assert (report_a.relative_position_bias, report.relative_position_bias) == (False, True)
    assert (a.relative_position_bias, b.relative_position_bias) == (False, True)
    assert (a.spec.relative_position_bias, b.spec.relative_position_bias) == (False, True)
    assert all(m.relative_position_bias is False for m in a.modules() if isinstance(m, WindowAttention))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    without = dmpose.build_model("hrformer_small", relative_position_bias=False)
    without.load_state_dict(sb)
    x = torch.randn(1, 3, 64, 48, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(a.eval()(x), without.eval()(x))
        assert not torch.equal(a(x), b.eval()(x))  # small here: the tables are 0.05-scale noise


@pytest.mark.parametrize("size", ["small", "base"])
def test_each_upstream_layout_states_its_relative_position_bias(size):
    """The fixtures' key lists: official pose -> off, MMPose 1.x -> on; dmpose's own keys -> on."""
    from dmpose.models.convert import hrformer_layout_map, strip_prefixes

    for layout, expected in (("official", False), ("mmpose", True)):
        keys, _ = read_hrformer_key_fixture(layout, size)
        state = {strip_prefixes(k): mmpose_style_index(math.isqrt(shape[0])) if k.endswith("relative_position_index")
                 else torch.empty(shape) for k, (shape, _) in keys.items()}
        mapping = hrformer_layout_map(state)
        assert mapping.relative_position_bias is expected, layout
        assert hrformer_layout_map(mapping.state).relative_position_bias is True  # dmpose's layout


def test_converted_checkpoints_carry_the_setting_through_load_and_info(tmp_path, small_states):
    """convert_checkpoint writes the layout's setting into the spec; load_model builds that attention (the same
    outputs as the converted model); `dmpose convert` and `dmpose info` show it."""
    from typer.testing import CliRunner

    from dmpose.cli import app
    from dmpose.models.checkpoint import read_checkpoint_spec

    x = torch.randn(1, 3, 64, 48, generator=torch.Generator().manual_seed(9))
    for state, expected, text in zip(small_states, (False, True), ("relative position bias off",
                                                                   "relative position bias on")):
        src = tmp_path / f"{expected}.pth"
        torch.save({"state_dict": state}, src)
        out = tmp_path / f"{expected}.safetensors"
        result = CliRunner().invoke(app, ["convert", str(src), "--arch", "hrformer_small", "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert text in " ".join(result.output.split())
        assert read_checkpoint_spec(out).relative_position_bias is expected
        loaded = dmpose.load_model(out)
        assert loaded.relative_position_bias is expected and loaded.spec.relative_position_bias is expected
        converted, _ = convert_state_dict(state, "hrformer_small")
        with torch.no_grad():
            assert torch.equal(loaded(x), converted.eval()(x))
        card = CliRunner().invoke(app, ["info", str(out)])
        assert card.exit_code == 0, card.output
        assert text in " ".join(card.output.split())
        resaved = dmpose.save_checkpoint(loaded, tmp_path / f"{expected}.again.safetensors")
        assert read_checkpoint_spec(resaved).relative_position_bias is expected


def test_files_without_the_field_keep_the_bias(tmp_path):
    """A spec without relative_position_bias (every file before the field, and every file with it on: the
    default is not written) and a file with no spec at all load with the bias added, as they always did."""
    from dmpose.models.checkpoint import read_checkpoint_meta
    from dmpose.spec import PoseSpec

    model = dmpose.build_model("hrformer_small")
    on = dmpose.save_checkpoint(model, tmp_path / "on.safetensors")
    assert "relative_position_bias" not in read_checkpoint_meta(on)["spec"]
    model.spec = None  # the field-per-key layout written before the spec existed
    old = dmpose.save_checkpoint(model, tmp_path / "old.safetensors", meta={"input_size": [256, 192]})
    assert "spec" not in read_checkpoint_meta(old)
    for path in (on, old):
        loaded = dmpose.load_model(path)
        assert loaded.spec.relative_position_bias is True
        assert all(m.relative_position_bias for m in loaded.modules() if isinstance(m, WindowAttention))
    off = PoseSpec.build("hrformer_small", relative_position_bias=False)
    assert PoseSpec.from_json(off.to_json()) == off and '"relative_position_bias":false' in off.to_json()


def test_the_setting_is_checked_against_the_architecture(tmp_path):
    from dmpose.spec import PoseSpec

    with pytest.raises(ValueError, match="hrnet_tiny has no relative position bias"):
        dmpose.build_model("hrnet_tiny", relative_position_bias=False)
    off = PoseSpec.build("hrformer_small", relative_position_bias=False)
    with pytest.raises(ValueError, match="relative_position_bias=False contradicts"):
        dmpose.save_checkpoint(dmpose.build_model("hrformer_small", device="meta"), tmp_path / "x.safetensors",
                               spec=off)


def test_dmpose_layout_round_trips(small_states):
    _, mmpose = small_states
    model, _ = convert_state_dict(mmpose, "hrformer_small")
    _, report = convert_state_dict(model.state_dict(), "hrformer_small")
    assert report.layout == "" and report.dropped == {} and report.layout_renamed == 0


def test_layout_errors(small_states):
    official, mmpose = small_states
    no_k = {k: v for k, v in official.items() if k != "backbone.stage2.0.branches.0.0.attn.attn.k_proj.weight"}
    with pytest.raises(ConversionError, match=r"stage2.0.branches.0.0.attn.qkv.weight: the source lacks k_proj"):
        convert_state_dict(no_k, "hrformer_small")
    bad_index = dict(mmpose)
    bad_index["backbone.stage4.1.branches.3.1.attn.attn.relative_position_index"] = relative_position_index(7, 7).T
    with pytest.raises(ConversionError, match="stage4.1.branches.3.1.attn.attn.relative_position_index"):
        convert_state_dict(bad_index, "hrformer_small")
    mixed = dict(mmpose)
    mixed.update({k: v for k, v in official.items() if "stage2.0.branches.0.0.attn.attn." in k and "_proj." in k})
    with pytest.raises(ConversionError, match="two"):
        convert_state_dict(mixed, "hrformer_small")
    with pytest.raises(ConversionError, match="misshaped"):
        convert_state_dict(mmpose, "hrformer_base")


def test_cli_convert_reports_the_layout(tmp_path, small_states):
    from typer.testing import CliRunner

    from dmpose.cli import app

    official, _ = small_states
    src = tmp_path / "hrt_small.pth"
    torch.save({"state_dict": official}, src)
    out = tmp_path / "hrt_small.safetensors"
    result = CliRunner().invoke(app, ["convert", str(src), "--arch", "hrformer_small", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "HRFormer official" in result.output and "relative_position_index" in result.output
    assert dmpose.load_model(out).arch == "hrformer_small"


# --- compute, optimiser groups, export -------------------------------------------------------------


def test_flops_conventions():
    """Conv + linear MACs, and the attention matmuls exactly: 2 * windows * 49^2 * C per block, with the
    stride 4/8/16/32 maps of 64x48, 32x24, 16x12, 8x6 in 70, 20, 6, 2 windows of 7x7 and 14, 14, 12, 4
    blocks per branch."""
    model = dmpose.build_model("hrformer_small", device="meta")
    plain = count_macs(model, (256, 192))
    full = count_macs(model, (256, 192), attention=True)
    attention = 2 * 49**2 * (14 * 70 * 32 + 14 * 20 * 64 + 12 * 6 * 128 + 4 * 2 * 256)
    assert full - plain == attention
    assert round(plain / 1e9, 2) == 2.30


def test_info_shows_parameters_and_both_gflops():
    from typer.testing import CliRunner

    from dmpose.cli import app

    result = CliRunner().invoke(app, ["info", "--arch", "hrformer_small"])
    assert result.exit_code == 0, result.output
    for text in ("7,746,779", "2.30 at 256x192", "2.59 at 256x192", "attention"):
        assert text in result.output, text


def test_param_groups_exclude_the_bias_tables_from_weight_decay():
    model = dmpose.build_model("hrformer_small", device="meta")
    decay, no_decay = hrformer_param_groups(model, weight_decay=0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    tables = [p for n, p in model.named_parameters() if n.endswith("relative_position_bias_table")]
    assert len(tables) == 44 and {id(p) for p in no_decay["params"]} == {id(p) for p in tables}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    _, wide = hrformer_param_groups(model, no_decay_norms_and_biases=True)
    table_ids = {id(p) for p in tables}
    assert table_ids <= {id(p) for p in wide["params"]} and len(wide["params"]) > 44
    assert all(p.dim() == 1 or id(p) in table_ids for p in wide["params"])
    (only,) = hrformer_param_groups(dmpose.build_model("hrnet_tiny", device="meta"))
    assert only["weight_decay"] == 0.01


def _onnx_runtime():
    for extra in ("onnx", "onnxscript"):
        pytest.importorskip(extra, reason="the onnx extra (pip install 'dmpose[onnx]') is not installed")
    return pytest.importorskip("onnxruntime", reason="the onnx extra (pip install 'dmpose[onnx]') is not installed")


def _check_onnx(model: torch.nn.Module, path, size: tuple[int, int]) -> None:
    """Export with batch 1, run onnxruntime with batch 2 on `size`, compare with torch."""
    ort = _onnx_runtime()
    from dmpose.models.export import export_onnx

    out = export_onnx(model.eval(), path, input_wh=(size[1], size[0]))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(7))
    (heatmaps,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert heatmaps.shape == expected.shape == (2, model.num_joints, size[0] // 4, size[1] // 4)
    assert np.abs(expected).std() > 1e-3  # a non-trivial output
    np.testing.assert_allclose(heatmaps, expected, atol=1e-4 * max(1.0, np.abs(expected).max()), rtol=0)


def _scaled(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights scaled down so that activations stay O(1) through the blocks."""
    randomise(model, seed=seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.3)
    return model


@pytest.mark.parametrize("bias", [True, False])
def test_onnx_export_matches_torch_for_a_reduced_hrformer(tmp_path, bias):
    """The HRFormer code paths (padded window attention, FFN, both resamplers, 4 branches) in a net of
    one 1-block module per stage: the exporter's time grows with the graph, and Small's 44 blocks
    take minutes on two cores (see the slow test below). The spec's relative_position_bias reads back from the
    file's metadata."""
    _onnx_runtime()
    from dmpose.models.hrformer import HRFormer, HRFormerSpec
    from dmpose.models.onnx_model import read_onnx_spec
    from dmpose.spec import PoseSpec

    spec = HRFormerSpec(widths=(8, 16, 24, 32), heads=(1, 2, 2, 4), drop_path=0.1, blocks=1, modules=(1, 1, 1),
                        stem_channels=16, layer1_planes=8, layer1_blocks=1, relative_position_bias=bias)
    model = _scaled(HRFormer(spec, num_joints=17, arch="hrformer_reduced"), seed=6)
    model.spec = PoseSpec.build("hrformer_reduced", "coco17", (48, 64), relative_position_bias=bias)
    _check_onnx(model, tmp_path / "reduced.onnx", (64, 48))
    assert read_onnx_spec(tmp_path / "reduced.onnx")[0].relative_position_bias is bias


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("DMPOSE_SLOW_EXPORT"), reason="minutes on 2 CPU cores: set DMPOSE_SLOW_EXPORT=1")
def test_onnx_export_matches_torch_for_small(tmp_path):
    _check_onnx(_scaled(dmpose.build_model("hrformer_small", num_joints=3), seed=6), tmp_path / "small.onnx", (64, 48))


def test_training_from_official_weights_says_it_adds_the_bias(tmp_path, small_states):
    """A run's network follows its own spec (the bias on); initialised from official-layout weights, it says
    that those were trained without it."""
    from dmpose.train.config import load_config
    from dmpose.train.network import build_network

    src = tmp_path / "hrt_small.pth"
    torch.save({"state_dict": small_states[0]}, src)
    cfg = load_config(data={"name": "t", "out_root": str(tmp_path), "data": {"dataset": "synthetic",
                                                                              "root": str(tmp_path / "data")},
                            "model": {"arch": "hrformer_small", "pretrained": str(src)}})
    messages = []
    model = build_network(cfg, cfg.pose_spec(), messages.append)
    assert model.relative_position_bias is True and model.spec.relative_position_bias is True
    assert "pretrained weights' attention leaves out the relative position bias; this run's adds it" in messages[-1]
