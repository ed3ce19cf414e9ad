"""Every Triton kernel compiles ahead of time for sm_90 (no GPU needed) without register spills.

Run by tests/test_kernels_compile.py in a subprocess without TRITON_INTERPRET (the interpreter accepts
code the compiler rejects: a module-level float inside a kernel, a loop-carried value changing dtype).
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    pytest.skip("TRITON_INTERPRET=1 is set: kernels built for the interpreter cannot be compiled",
                allow_module_level=True)
triton = pytest.importorskip("triton")


def _probe_reason() -> str | None:
    """None when this triton can compile a trivial kernel for sm_90 here, else why not."""
    try:
        import triton.language as tl
        from triton.backends.compiler import GPUTarget

        @triton.jit
        def probe(x_ptr, BLOCK: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            tl.store(x_ptr + offs, tl.load(x_ptr + offs) * 2.0)

        src = triton.compiler.ASTSource(fn=probe, signature={"x_ptr": "*fp32", "BLOCK": "constexpr"},
                                        constexprs={"BLOCK": 32})
        triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 1})
    except Exception as exc:  # API differences between triton releases, missing ptxas, ...
        return f"triton {triton.__version__} cannot AOT-compile a probe kernel for sm_90: {exc!r}"
    return None


REASON = _probe_reason()
if REASON is not None:
    pytest.skip(REASON, allow_module_level=True)


def test_every_kernel_compiles_for_sm90_without_spills():
    from dmpose.kernels.compile_report import compile_all, markdown_table

    builds = compile_all(arch=90, full=False)  # every code path; the report script builds all
    print(f"triton {triton.__version__}, sm_90:")
    print(markdown_table(builds))
    assert {b.name for b in builds} == {"dm_sinkhorn", "decode_2x2"}
    if any(b.regs is None or b.stack_bytes is None for b in builds):
        pytest.skip("compiled, but neither the ptxas log nor cuobjdump gave registers/spills")
    for b in builds:
        assert b.regs <= 255, b
        # At most a scalar or two on the stack (ptxas' register-allocation workaround can spill 4 bytes);
        # a real spill, e.g. 4096-pixel blocks, costs 48-232 bytes.
        assert b.stack_bytes <= 8 and (b.spill_stores or 0) <= 8, f"register spills: {b}"
