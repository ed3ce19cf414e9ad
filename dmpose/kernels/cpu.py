"""The fused CPU kernels of the DM loss and of the demander cross-entropy (`dm_cpu.c`), compiled on first use.

The torch solver (`dmpose.sinkhorn`) makes ~20 passes over a (problems x 4 x pixels) array per call, most of
them allocating; this kernel solves one problem at a time in double with its kernel in the cache, from one
table of exp(-d / eps) over integer pixel offsets (demanders sit on pixel centres), and computes the value
and the exact (or envelope) gradient in the same sweep, as the Triton kernel does on a GPU. Same iteration,
stopping rule, iteration count and gradient as the torch path (tested against it and against float64).

The C file is compiled once per machine by the system C compiler (``$CC``, else ``cc``) into
``dmpose.cache.cache_root()/kernels/`` (a file named by a hash of the source, the flags, the compiler and the
CPU, written atomically) and loaded with ctypes. Where that cannot be done (no compiler, a read-only cache
folder, ``DMPOSE_CPU_KERNEL=0``) `cpu_kernel_status` says why and ``backend="auto"`` uses the torch path
(logged once); ``backend="cpu"`` raises with the reason.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from dmpose.cache import cache_root

__all__ = ["cpu_kernel_status", "cpu_kernel_skip_reason", "cpu_tensor_skip_reason", "dm_sinkhorn_cpu",
           "demander_ce_cpu", "SOURCE", "FLAGS"]

SOURCE = Path(__file__).with_name("dm_cpu.c")
#: -fopenmp-simd: vectorise the marked reductions without -ffast-math (which would change NaN/inf rules)
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-std=c99", "-fPIC", "-shared")
#: tried in turn: glibc's vectorised exp/log (libmvec), then plain libm, then without -march=native
_ATTEMPTS = ((*FLAGS, "-DDM_MVEC", "-lmvec"), FLAGS, tuple(f for f in FLAGS if f != "-march=native"))
#: exp(-d / eps) must stay a normal double for every pixel-demander distance d
MAX_DISTANCE_OVER_EPS = 600.0
_P = ctypes.c_void_p
_I64, _F64, _INT = ctypes.c_int64, ctypes.c_double, ctypes.c_int


def _cpu_id() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(dict.fromkeys(keep))  # one copy of each distinct line


def _compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc)


def _compile(cc: str, out: Path) -> tuple[bool, str]:
    """Build the shared library at `out` atomically; (ok, compiler message)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    msg = ""
    try:
        for flags in _ATTEMPTS:
            libs = [f for f in flags if f.startswith("-l")]
            opts = [f for f in flags if not f.startswith("-l")]
            r = subprocess.run([cc, *opts, "-o", tmp, str(SOURCE), *libs, "-lm"], capture_output=True, text=True,
                               timeout=300)
            if r.returncode == 0:
                os.replace(tmp, out)
                return True, ""
            out_lines = (r.stderr or r.stdout).strip().splitlines()[:3]  # the last attempt's first lines
            msg = " / ".join(out_lines) or f"exit status {r.returncode}, no output"
        return False, msg
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.lru_cache(maxsize=1)
def _library() -> tuple[ctypes.CDLL | None, str]:
    if os.environ.get("DMPOSE_CPU_KERNEL", "1") == "0":
        return None, "DMPOSE_CPU_KERNEL=0 is set"
    cc = _compiler()
    if cc is None:
        return None, f"no C compiler found ({os.environ.get('CC') or 'cc'}; set $CC)"
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"the C compiler {cc} does not run: {e}"
    key = hashlib.sha256("\0".join([SOURCE.read_text(), repr(_ATTEMPTS), version, platform.machine(),
                                    _cpu_id()]).encode()).hexdigest()[:16]
    path = cache_root() / "kernels" / f"dm_cpu-{key}.so"
    if not path.exists():
        try:
            ok, msg = _compile(cc, path)
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"compiling {SOURCE.name} into {path.parent} failed: {e}"
        if not ok:
            return None, f"compiling {SOURCE.name} with {cc} failed: {msg}"
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        return None, f"loading {path} failed: {e}"
    lib.dm_loss_f32.argtypes = [_I64, _I64, _I64, _P, _P, _P, _P, _INT, _F64, _F64, _F64, _I64, _F64, _INT, _P,
                                _P, _P, _P, _P, _P, _I64, _I64, _P, _P]
    lib.dm_loss_f32.restype = None
    lib.demander_ce_f32.argtypes = [_I64, _I64, _P, _P, _P, _P, _P, _F64, _P, _P, _P]
    lib.demander_ce_f32.restype = None
    return lib, f"compiled C kernel {path.name}"


def cpu_kernel_status() -> tuple[bool, str]:
    """Whether the compiled CPU kernel is available (compiling it on the first call), and why not."""
    lib, reason = _library()
    return lib is not None, reason


def _table_extent(demander_xy: Tensor, height: int, width: int) -> tuple[int, int]:
    """(TH, TW): one more than the largest |y| and |x| offset between a pixel centre and a demander."""
    x, y = demander_xy[..., 0], demander_xy[..., 1]
    tx = max(int(x.max()), width - 1 - int(x.min()), width - 1) + 1
    ty = max(int(y.max()), height - 1 - int(y.min()), height - 1) + 1
    return ty, tx


def cpu_tensor_skip_reason(heatmaps: Tensor) -> str | None:
    """Why the CPU kernels cannot read these heatmaps (None: they can): CPU float32/16/bf16 only (float64 goes
    to the torch path, the reference)."""
    if heatmaps.device.type != "cpu":
        return f"heatmaps are on {heatmaps.device}"
    if heatmaps.dtype == torch.float64:
        return "float64 heatmaps use the torch path"
    return None


def cpu_kernel_skip_reason(heatmaps: Tensor, demander_xy: Tensor, eps: float) -> str | None:
    """Why the CPU kernel cannot take these problems (None: it can): CPU float32/16/bf16 heatmaps (float64
    goes to the torch path, the reference), demanders on pixel centres, exp(-d / eps) representable."""
    reason = cpu_tensor_skip_reason(heatmaps)
    if reason is not None:
        return reason
    if demander_xy.numel() and not bool((demander_xy == demander_xy.floor()).all()):
        return "demanders off pixel centres"
    if demander_xy.numel():
        th, tw = _table_extent(demander_xy, heatmaps.shape[-2], heatmaps.shape[-1])
        if math.hypot(th, tw) / eps > MAX_DISTANCE_OVER_EPS:
            return f"eps {eps:g} too small for the double kernel at this heatmap size (distance / eps > 600)"
    return None


def dm_sinkhorn_cpu(heatmaps: Tensor, demander_xy: Tensor, demander_mass: Tensor, *, eps: float, max_iters: int,
                    tol: float, grad: str, supplier: str = "relu", beta: float | None = None,
                    cost_power: float = 1.0, rows: Tensor | None = None,
                    grad_out: Tensor | None = None, grad_weight: Tensor | None = None
                    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """`dmpose.sinkhorn.dm_sinkhorn_torch`'s contract on the compiled kernel: heatmaps (P, H, W) (float32, or
    fp16/bf16, read as float32), demander_xy (P, 4, 2) on pixel centres, demander_mass (P, 4). Returns cost
    (P,) float32, d cost / d heatmaps (P, H, W) float32 (None for grad="none"), marginal error (P,) and
    iterations (P,) int32. Arithmetic in double. cost_power: the cost is distance ** cost_power (1: the paper's).

    rows (P,) int64: solve the maps heatmaps[rows] (heatmaps then (R, H, W)) without gathering them; the
    gradient of problem q, times grad_weight[q], is then written into grad_out[rows[q]] (a float32 (R, H, W)
    tensor the caller zeroed; other rows are left alone), which is returned as the gradient."""
    lib, reason = _library()
    if lib is None:
        raise RuntimeError(f"the CPU kernel is not available: {reason}")
    h, w = heatmaps.shape[-2:]
    p = demander_xy.shape[0]
    if demander_xy.shape[1:] != (4, 2) or demander_mass.shape != (p, 4):
        raise ValueError(f"the CPU kernel takes 4 demanders per problem, got {tuple(demander_xy.shape)}")
    modes = {"none": 0, "exact": 1, "envelope": 2}
    if grad not in modes or supplier not in ("relu", "softplus"):
        raise ValueError(f"grad must be one of {tuple(modes)} and supplier 'relu' or 'softplus', got {grad!r}, "
                         f"{supplier!r}")
    hm = heatmaps.detach().to(torch.float32).contiguous()
    if rows is not None:
        rows = rows.to(torch.int64).contiguous()
    elif hm.shape[0] != p:
        raise ValueError(f"heatmaps hold {hm.shape[0]} maps for {p} problems (pass rows)")
    xy = demander_xy.detach().to(torch.int32).contiguous()
    mass = demander_mass.detach().to(torch.float64).contiguous()
    cost = torch.empty(p, dtype=torch.float64)
    err = torch.empty(p, dtype=torch.float64)
    iters = torch.empty(p, dtype=torch.int32)
    g = None
    if grad != "none":
        g = grad_out if grad_out is not None else torch.empty(hm.shape, dtype=torch.float32)
        if g.dtype != torch.float32 or g.shape != hm.shape or not g.is_contiguous():
            raise ValueError(f"grad_out must be a contiguous float32 tensor of shape {tuple(hm.shape)}")
    gw = grad_weight.detach().to(torch.float64).contiguous() if grad_weight is not None else None
    th, tw = _table_extent(xy, h, w) if p else (1, 1)
    work = torch.empty(12 * h * w, dtype=torch.float64)
    table = torch.empty(2, th * (2 * tw - 1), dtype=torch.float64)
    if p:
        lib.dm_loss_f32(p, h, w, hm.data_ptr(), _ptr(rows), xy.data_ptr(), mass.data_ptr(),
                        int(supplier == "softplus"), float(beta or 1.0), float(eps), float(cost_power), int(max_iters),
                        float(tol),
                        modes[grad],
                        _ptr(gw), cost.data_ptr(), _ptr(g), err.data_ptr(), iters.data_ptr(), work.data_ptr(), th, tw,
                        table[0].data_ptr(), table[1].data_ptr())
    return cost.float(), g, err.float(), iters


def demander_ce_cpu(heatmaps: Tensor, pix: Tensor, m: Tensor, w: Tensor, beta: float, need_grad: bool,
                    rows: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """The demander cross-entropy of n softplus maps on the compiled kernel: heatmaps (n, N) (or (R, N) with
    rows (n,): map q is heatmaps[rows[q]]), pix (n, 4) pixel indices, m (n, 4) masses, w (n,) weights.
    Returns w * -sum_j m_j log S(pix_j) (n,) float32 and its gradient, the shape of heatmaps, float32 (zero
    on rows no problem reads; None unless need_grad). Arithmetic in double."""
    lib, reason = _library()
    if lib is None:
        raise RuntimeError(f"the CPU kernel is not available: {reason}")
    n = pix.shape[0]
    hm = heatmaps.detach().to(torch.float32).contiguous()
    if rows is not None:
        rows = rows.to(torch.int64).contiguous()
    pix = pix.to(torch.int64).contiguous()
    m, w = m.detach().to(torch.float64).contiguous(), w.detach().to(torch.float64).contiguous()
    value = torch.empty(n, dtype=torch.float64)
    g = (torch.zeros if rows is not None else torch.empty)(hm.shape, dtype=torch.float32) if need_grad else None
    work = torch.empty(hm.shape[-1], dtype=torch.float64)
    if n:
        lib.demander_ce_f32(n, hm.shape[-1], hm.data_ptr(), _ptr(rows), pix.data_ptr(), m.data_ptr(), w.data_ptr(),
                            float(beta), value.data_ptr(), _ptr(g), work.data_ptr())
    return value.float(), g


def _ptr(t: Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None
