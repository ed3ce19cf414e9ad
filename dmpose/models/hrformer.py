"""HRFormer pose network (Yuan et al., NeurIPS 2021): HRNet's multi-resolution layout with
transformer blocks (local-window self-attention + a depth-wise convolutional FFN) in stages 2-4.

As in the official code (HRNet/HRFormer) and MMPose 1.x `hrformer.py`:

- stem (two stride-2 3x3 convs, 64 channels) and stage 1 (2 bottlenecks, 64 -> 256), transitions as
  HRNet's (`hrnet._transition`);
- stages 2/3/4 of 1/4/2 modules, 2 blocks per branch. A block on (B, C, H, W):
  x + drop_path(attn(LN(x))), then x + drop_path(ffn(LN(x))), LayerNorm eps 1e-6. The attention is
  multi-head self-attention inside 7x7 windows (qkv bias, relative position bias added to the logits
  unless `relative_position_bias=False`: the official pose code builds the table but leaves it out,
  MMPose's port and the official segmentation and classification code add it); a map that is
  not a whole number of windows is zero-padded symmetrically (pad // 2 before, the rest after) after
  the LayerNorm and cropped back afterwards (padded tokens take part as keys, unmasked, as in the
  original). The FFN is 1x1 conv (C -> 4C) + BN + GELU, depth-wise 3x3 + BN + GELU, 1x1 conv
  (4C -> C) + BN + GELU (every conv with a bias);
- fusion as HRNet's (sum, then ReLU) with other resamplers: from a lower resolution 1x1 conv + BN +
  bilinear upsampling (align_corners=False), from a higher one chains of [depth-wise 3x3 stride 2 +
  BN + 1x1 conv + BN (+ ReLU between steps)];
- drop path rising linearly from 0 to `drop_path` over the 14 blocks of a branch's depth (every
  branch of a module shares its module's rates);
- stage 4's last module keeps only the stride-4 branch; the head is a 1x1 conv to K channels.

dmpose's key names: the stem, stages, fusion and head are named like HRNet's (and like both foreign
layouts); inside a block `norm1`, `attn.qkv` (q, k, v stacked along dim 0), `attn.proj`,
`attn.relative_position_bias_table`, `norm2`, `ffn.{fc1,norm1,dw3x3,norm2,fc2,norm3}`. The
`relative_position_index` is a non-persistent buffer (recomputed, not stored): `dmpose convert`
checks the source's copy and drops it. `hrformer_layout_map` in convert.py maps the official and
MMPose layouts onto these names.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmpose.models.blocks import Bottleneck, make_layer
from dmpose.models.hrnet import FusedBranches, HighResolutionTrunk, _transition
from dmpose.models.registry import register_model

__all__ = [
    "ConvFFN",
    "HRFormer",
    "HRFormerBlock",
    "HRFormerSpec",
    "WindowAttention",
    "hrformer_param_groups",
    "relative_position_index",
]


def relative_position_index(wh: int, ww: int) -> Tensor:
    """(wh*ww, wh*ww) int64: the bias-table row of the offset between window tokens i and j (row-major).

    Row = (dy + wh - 1) * (2 * ww - 1) + (dx + ww - 1) with (dy, dx) = position_i - position_j.
    """
    ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + wh - 1
    dx = xs[:, None] - xs[None, :] + ww - 1
    return dy * (2 * ww - 1) + dx


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability p, scale by 1/(1-p)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p:.4g}"


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows: softmax(q k^T / sqrt(d) + B) v per window
    and head, B the relative position bias (`position_bias`), or no B with `relative_position_bias=False`
    (the table is kept, so weights of either kind load strictly).

    Input and output (B, H, W, C); any H, W: the map is zero-padded symmetrically to whole windows
    and cropped back.
    """

    def __init__(self, dim: int, num_heads: int, window: int = 7, relative_position_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.window = dim, num_heads, window
        self.relative_position_bias = relative_position_bias
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window, window), persistent=False)

    def position_bias(self) -> Tensor:
        """(heads, N, N) bias added to the attention logits, N = window * window."""
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.reshape(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        s = self.window
        ph, pw = -h % s, -w % s
        if ph or pw:
            x = F.pad(x, (0, 0, pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        nh, nw = (h + ph) // s, (w + pw) // s
        # (B, nh, s, nw, s, C) -> (B * nh * nw, s * s, C): one row of tokens per window, row-major inside
        x = x.reshape(b, nh, s, nw, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b * nh * nw, s * s, c)
        qkv = self.qkv(x).reshape(x.shape[0], s * s, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (windows, heads, N, head_dim)
        # explicit products (not scaled_dot_product_attention: its ONNX decomposition mis-tracks strides)
        logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        if self.relative_position_bias:
            logits = logits + self.position_bias().to(q.dtype)
        y = logits.softmax(dim=-1) @ v
        y = self.proj(y.transpose(1, 2).reshape(x.shape[0], s * s, c))
        y = y.reshape(b, nh, nw, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h + ph, w + pw, c)
        return y[:, ph // 2: ph // 2 + h, pw // 2: pw // 2 + w]

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, window={self.window}, "
                f"relative_position_bias={self.relative_position_bias}")


class ConvFFN(nn.Module):
    """1x1 conv + BN + GELU, depth-wise 3x3 + BN + GELU, 1x1 conv + BN + GELU; (B, C, H, W) -> same."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, kernel_size=1)
        self.norm1 = nn.BatchNorm2d(hidden)
        self.dw3x3 = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.norm2 = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, dim, kernel_size=1)
        self.norm3 = nn.BatchNorm2d(dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm1(self.fc1(x)))
        x = self.act(self.norm2(self.dw3x3(x)))
        return self.act(self.norm3(self.fc2(x)))


class HRFormerBlock(nn.Module):
    """LN -> window attention -> drop path, residual; LN -> FFN -> drop path, residual. (B, C, H, W)."""

    def __init__(self, dim: int, num_heads: int, window: int = 7, mlp_ratio: int = 4, drop_path: float = 0.0,
                 relative_position_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = WindowAttention(dim, num_heads, window, relative_position_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = ConvFFN(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        t = x.permute(0, 2, 3, 1)  # (B, H, W, C): LayerNorm and attention act on the channel axis
        t = t + self.drop_path(self.attn(self.norm1(t)))
        # contiguous NCHW for the convs: a channels-last view with batch 1 breaks the ONNX export's dynamic batch
        f = self.ffn(self.norm2(t).permute(0, 3, 1, 2).contiguous())
        return t.permute(0, 3, 1, 2) + self.drop_path(f)


class HRFormerModule(FusedBranches):
    """Parallel branches of HRFormer blocks, then HRNet-style fusion with HRFormer's resamplers.

    `fuse_layers[i][j]` brings branch j to branch i: 1x1 conv + BN then bilinear upsampling when
    j > i, identity when j == i, (i - j) steps of depth-wise stride-2 3x3 + BN + 1x1 + BN (ReLU
    after every step but the last) when j < i.
    """

    upsample_mode = "bilinear"

    def __init__(self, widths: list[int], heads: list[int], drop_paths: list[float], window: int = 7,
                 mlp_ratio: int = 4, multi_scale_output: bool = True, relative_position_bias: bool = True):
        branches = nn.ModuleList(
            nn.Sequential(*(HRFormerBlock(w, h, window, mlp_ratio, p, relative_position_bias) for p in drop_paths))
            for w, h in zip(widths, heads)
        )
        super().__init__(branches, widths, multi_scale_output)

    @staticmethod
    def _down_step(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cin, 3, stride=2, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)]


@dataclass(frozen=True)
class HRFormerSpec:
    """Architecture hyper-parameters; `modules` per stage 2, 3, 4; `widths`/`heads` per branch;
    `relative_position_bias` as `WindowAttention`'s (a model's PoseSpec states it: `build_model` passes it)."""

    widths: tuple[int, int, int, int]
    heads: tuple[int, int, int, int]
    drop_path: float
    window: int = 7
    mlp_ratio: int = 4
    blocks: int = 2
    modules: tuple[int, int, int] = (1, 4, 2)
    stem_channels: int = 64
    layer1_planes: int = 64
    layer1_blocks: int = 2
    relative_position_bias: bool = True

    def drop_path_rates(self) -> list[float]:
        """Per block depth (stage 2 module 0 block 0, block 1, stage 3 module 0 ...): linear 0 -> drop_path."""
        n = self.blocks * sum(self.modules)
        return torch.linspace(0, self.drop_path, n, device="cpu").tolist()


class HRFormer(HighResolutionTrunk):
    """HRFormer pose network: four stages at strides 4/8/16/32 and a 1x1 head on the stride-4 branch."""

    output_stride = 4

    def __init__(self, spec: HRFormerSpec, num_joints: int = 17, arch: str = "hrformer"):
        super().__init__()
        self.arch = arch
        self.num_joints = num_joints
        self.arch_spec = spec  # the architecture (`model.spec` is the PoseSpec a checkpoint gives)
        s = spec.stem_channels
        self.conv1 = nn.Conv2d(3, s, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(s)
        self.conv2 = nn.Conv2d(s, s, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(s)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_layer(Bottleneck, s, spec.layer1_planes, spec.layer1_blocks)

        rates = spec.drop_path_rates()
        depth = 0
        prev = [spec.layer1_planes * Bottleneck.expansion]
        for n, n_modules in enumerate(spec.modules, start=2):
            cur, heads = list(spec.widths[:n]), list(spec.heads[:n])
            setattr(self, f"transition{n - 1}", _transition(prev, cur))
            modules = []
            for m in range(n_modules):
                last = n == 4 and m == n_modules - 1
                dp = rates[depth: depth + spec.blocks]
                depth += spec.blocks
                modules.append(HRFormerModule(cur, heads, dp, spec.window, spec.mlp_ratio, multi_scale_output=not last,
                                              relative_position_bias=spec.relative_position_bias))
            setattr(self, f"stage{n}", nn.Sequential(*modules))
            prev = cur

        self.final_layer = nn.Conv2d(spec.widths[0], num_joints, kernel_size=1)
        self.reset_parameters()

    @property
    def relative_position_bias(self) -> bool:
        """Whether the attention logits get the relative position bias (`WindowAttention`)."""
        return self.arch_spec.relative_position_bias

    def reset_parameters(self) -> None:
        """Convs N(0, 0.001) with zero biases, BN and LayerNorm weight 1 / bias 0 (the original's); linear
        layers and the relative-position tables truncated normal with std 0.02, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, WindowAttention):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)



NO_DECAY_SUFFIXES = ("relative_position_bias_table",)


def hrformer_param_groups(model: nn.Module, weight_decay: float = 0.01,
                          no_decay_norms_and_biases: bool = False) -> list[dict]:
    """AdamW parameter groups for the HRFormer recipe: `weight_decay` on every parameter except the
    relative-position bias tables (decay 0, as the official configs' `decay_mult=0`).

    With `no_decay_norms_and_biases=True`, BN/LayerNorm parameters and all biases (1-d parameters) go
    to the no-decay group too (a common transformer practice; not what the HRFormer configs do).
    Empty groups are left out. Works on any model (a model without bias tables gets one group).
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith(NO_DECAY_SUFFIXES) or (no_decay_norms_and_biases and p.dim() <= 1):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _hrformer(arch: str, spec: HRFormerSpec, num_joints: int, device: torch.device | str | None) -> HRFormer:
    """Build on `device` (e.g. "meta" to count parameters without allocating memory)."""
    with torch.device(device) if device is not None else nullcontext():
        return HRFormer(spec, num_joints=num_joints, arch=arch)


@register_model
def hrformer_small(num_joints: int = 17, device=None, drop_path: float = 0.1,
                   relative_position_bias: bool = True) -> HRFormer:
    """HRFormer-Small: widths (32, 64, 128, 256), heads (1, 2, 4, 8), drop path 0.1 (7.7M parameters
    with 17 joints)."""
    spec = HRFormerSpec(widths=(32, 64, 128, 256), heads=(1, 2, 4, 8), drop_path=drop_path,
                        relative_position_bias=relative_position_bias)
    return _hrformer("hrformer_small", spec, num_joints, device)


@register_model
def hrformer_base(num_joints: int = 17, device=None, drop_path: float = 0.2,
                  relative_position_bias: bool = True) -> HRFormer:
    """HRFormer-Base: widths (78, 156, 312, 624), heads (2, 4, 8, 16), drop path 0.2 (the official
    256x192 config; its 384x288 config uses 0.3: pass `drop_path=0.3`). 43.2M parameters with 17 joints."""
    spec = HRFormerSpec(widths=(78, 156, 312, 624), heads=(2, 4, 8, 16), drop_path=drop_path,
                        relative_position_bias=relative_position_bias)
    return _hrformer("hrformer_base", spec, num_joints, device)
