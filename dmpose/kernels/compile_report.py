"""Ahead-of-time compilation of every dmpose Triton kernel for an NVIDIA target, no GPU needed.

``triton.compile`` with ``GPUTarget("cuda", 90, 32)`` lowers a kernel to PTX and a cubin on any machine.
Registers and spills come from the ptxas log of that very compile (triton runs ptxas with -v; the log is
captured through ``triton.knobs`` where this triton has them), and the cubin's resource usage (registers,
stack, local and shared memory) from the ``cuobjdump`` that ships with triton. The interpreter accepts code the compiler rejects, so this is the
check that the kernels really build. Must not run with TRITON_INTERPRET=1 set.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dmpose.constants import triton_interpret

__all__ = ["KernelBuild", "compile_all", "kernel_variants", "markdown_table"]

_SINKHORN_SIGNATURE = {
    "h_ptr": None, "xy_ptr": "*fp32", "mass_ptr": "*fp32", "cost_ptr": "*fp32", "grad_ptr": "*fp32",
    "err_ptr": "*fp32", "iters_ptr": "*i32", "N": "i32", "W": "i32", "eps": "fp32", "max_iters": "i32",
    "tol": "fp32", "BLOCK": "constexpr", "LOG_DOMAIN": "constexpr", "EXACT": "constexpr", "POWER": "constexpr",
}
_DECODE_SIGNATURE = {"h_ptr": None, "coords_ptr": "*fp32", "conf_ptr": "*fp32", "H": "i32", "W": "i32",
                     "BLOCK": "constexpr"}


@dataclass
class KernelBuild:
    name: str
    variant: str
    num_warps: int
    regs: int | None = None
    spill_stores: int | None = None  # bytes, from the ptxas log (None: log not available)
    spill_loads: int | None = None
    stack_bytes: int | None = None  # stack frame per thread (spills live there)
    local_bytes: int | None = None
    shared_bytes: int | None = None
    seconds: float = 0.0


def kernel_variants(full: bool = True) -> list[tuple[str, str, object, dict, dict, int]]:
    """(name, variant, jit function, signature, constexprs, num_warps) of the production builds.

    full=False keeps one build per code path (both solver forms x both gradients, bf16 input; the concave cost in
    both forms; decode)
    for a quick check; full=True adds the fp32/fp16 inputs.
    """
    from dmpose.kernels.decode import MAX_BLOCK as DECODE_BLOCK
    from dmpose.kernels.decode import _decode_2x2_kernel
    from dmpose.kernels.sinkhorn import DEFAULT_BLOCK, DEFAULT_WARPS, _dm_sinkhorn_kernel

    out = []
    for dtype in ("fp32", "bf16", "fp16") if full else ("bf16",):
        for log_domain in (False, True):
            for exact in (True, False):
                if dtype == "fp16" and (log_domain or not exact):
                    continue  # fp16 and bf16 lower alike: one fp16 build is enough
                sig = dict(_SINKHORN_SIGNATURE, h_ptr=f"*{dtype}")
                variant = (f"h={dtype} {'log-sum-exp' if log_domain else 'multiplicative'} "
                           f"{'exact' if exact else 'envelope'} BLOCK={DEFAULT_BLOCK}")
                consts = {"BLOCK": DEFAULT_BLOCK, "LOG_DOMAIN": log_domain, "EXACT": exact, "POWER": 1.0}
                out.append(("dm_sinkhorn", variant, _dm_sinkhorn_kernel, sig, consts, DEFAULT_WARPS))
    # the concave cost d^p (loss.dm.cost_power < 1) is its own build: one per solver form
    for log_domain in (False, True):
        sig = dict(_SINKHORN_SIGNATURE, h_ptr="*bf16")
        variant = f"h=bf16 {'log-sum-exp' if log_domain else 'multiplicative'} exact cost d^0.5 BLOCK={DEFAULT_BLOCK}"
        consts = {"BLOCK": DEFAULT_BLOCK, "LOG_DOMAIN": log_domain, "EXACT": True, "POWER": 0.5}
        out.append(("dm_sinkhorn", variant, _dm_sinkhorn_kernel, sig, consts, DEFAULT_WARPS))
    if full:  # other launch shapes, for comparison (the bench's --configs times them on a GPU)
        for block, warps in ((256, 4), (1024, 8), (4096, 8)):
            for log_domain in (False, True):
                sig = dict(_SINKHORN_SIGNATURE, h_ptr="*bf16")
                variant = f"h=bf16 {'log-sum-exp' if log_domain else 'multiplicative'} exact BLOCK={block}"
                consts = {"BLOCK": block, "LOG_DOMAIN": log_domain, "EXACT": True, "POWER": 1.0}
                out.append(("dm_sinkhorn", variant, _dm_sinkhorn_kernel, sig, consts, warps))
    for dtype in ("fp32", "bf16") if full else ("fp32",):
        sig = dict(_DECODE_SIGNATURE, h_ptr=f"*{dtype}")
        out.append(("decode_2x2", f"h={dtype} BLOCK={DECODE_BLOCK}", _decode_2x2_kernel, sig,
                    {"BLOCK": DECODE_BLOCK}, 4))
    return out


def _cuobjdump() -> str | None:
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if bundled.exists():
        return str(bundled)
    return shutil.which("cuobjdump")


def _resource_usage(cubin: bytes, tool: str | None) -> dict[str, int]:
    if tool is None:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([tool, "--dump-resource-usage", str(path)], capture_output=True, text=True,
                              check=True).stdout
    found = {key: int(val) for key, val in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text)}
    return found


def _ptxas_log_knobs():
    """Context that makes triton print its ptxas -v log and skip its cache, or None on older tritons."""
    try:
        from triton import knobs

        nvidia, compilation = knobs.nvidia, knobs.compilation
        nvidia.dump_ptxas_log, compilation.always_compile  # noqa: B018  (attribute check)
    except (ImportError, AttributeError):
        return None

    @contextlib.contextmanager
    def ctx():
        old = (nvidia.dump_ptxas_log, compilation.always_compile)
        nvidia.dump_ptxas_log, compilation.always_compile = True, True
        try:
            yield
        finally:
            nvidia.dump_ptxas_log, compilation.always_compile = old

    return ctx


def _parse_ptxas_log(text: str) -> dict[str, int]:
    found = {}
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", text)
    if m:
        found.update(STACK=int(m.group(1)), SPILL_STORES=int(m.group(2)), SPILL_LOADS=int(m.group(3)))
    m = re.search(r"Used (\d+) registers", text)
    if m:
        found["REG"] = int(m.group(1))
    return found


def compile_all(arch: int = 90, full: bool = True) -> list[KernelBuild]:
    """Compile the kernel variants for ``sm_<arch>``; raises if triton cannot target CUDA here."""
    if triton_interpret():
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    import triton
    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", arch, 32)
    tool = _cuobjdump()
    log_ctx = _ptxas_log_knobs()
    builds = []
    for name, variant, fn, sig, consts, warps in kernel_variants(full):
        t0 = time.perf_counter()
        src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=consts)
        log = io.StringIO()
        with (log_ctx() if log_ctx else contextlib.nullcontext()), contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=target, options={"num_warps": warps})
        usage = _resource_usage(compiled.asm["cubin"], tool)
        usage.update(_parse_ptxas_log(log.getvalue()))
        builds.append(KernelBuild(name, variant, warps, regs=usage.get("REG"), spill_stores=usage.get("SPILL_STORES"),
                                  spill_loads=usage.get("SPILL_LOADS"), stack_bytes=usage.get("STACK"),
                                  local_bytes=usage.get("LOCAL"), shared_bytes=usage.get("SHARED"),
                                  seconds=time.perf_counter() - t0))
    return builds


def markdown_table(builds: list[KernelBuild]) -> str:
    rows = ["| kernel | variant | warps | registers/thread | spill stores / loads (bytes) | stack frame bytes "
            "| shared bytes |",
            "|---|---|---|---|---|---|---|"]
    for b in builds:
        rows.append(f"| {b.name} | {b.variant} | {b.num_warps} | {b.regs} | {b.spill_stores} / {b.spill_loads} "
                    f"| {b.stack_bytes} | {b.shared_bytes} |")
    return "\n".join(rows)
