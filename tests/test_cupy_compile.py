"""Every fused CUDA kernel of backends/cupy_kernels.py compiles (NVRTC, no GPU needed).

NVRTC is a compiler library: it needs no driver and no device, only the CuPy wheel (whose code
generator writes each ElementwiseKernel's full source) and the NVRTC wheel. CI installs both
without their other CUDA libraries (.ci/run: cupy-cuda13x, cuda-pathfinder, nvidia-cuda-nvrtc)
and runs these tests with ``-m cupy_audit``; elsewhere they skip. They show that the sources
compile for an H100/H200 (sm_90) for every argument type the backend uses; that the kernels give
the reference's numbers is tests/test_cupy_kernels.py's job, on a GPU.
"""
import importlib.util

import pytest

from xpnet.backends import cupy_kernels

from .helpers import skip_unless_required

pytestmark = pytest.mark.cupy_audit


@pytest.fixture(scope="module")
def compiler():
    if importlib.util.find_spec("cupy") is None:
        skip_unless_required("CuPy is not installed; compiling needs its wheel and NVRTC, no GPU: "
                    "pip install --no-deps cupy-cuda13x cuda-pathfinder nvidia-cuda-nvrtc")
    from cupy.cuda import nvrtc
    try:
        nvrtc.getVersion()
    except Exception as exc:  # the NVRTC library is not installed
        skip_unless_required(f"NVRTC is not available ({type(exc).__name__}: {exc}); "
                    "pip install --no-deps nvidia-cuda-nvrtc")
    from xpnet.backends import cupy_compile
    return cupy_compile


def signatures():
    return [pytest.param(name, ins, outs, id=f"{name}-{'-'.join(ins[:1] + outs[:1])}-{i}")
            for name, sigs in cupy_kernels.SIGNATURES.items() for i, (ins, outs) in enumerate(sigs)]


def test_every_kernel_has_signatures_and_a_launch_count():
    assert set(cupy_kernels.SIGNATURES) == set(cupy_kernels.SOURCES)
    assert set(cupy_kernels.LAUNCHES) <= set(cupy_kernels.SOURCES) | set(cupy_kernels.RAW)


@pytest.mark.parametrize("name", sorted(cupy_kernels.RAW))
@pytest.mark.parametrize("dtype", sorted(cupy_kernels.REAL))
def test_the_raw_kernel_compiles(compiler, name, dtype):
    assert compiler.compile_raw(name, dtype) > 0


@pytest.mark.parametrize("name, ins, outs", signatures())
def test_the_kernel_compiles(compiler, name, ins, outs):
    assert compiler.compile_one(name, ins, outs) > 0


def test_a_broken_kernel_fails_to_compile(compiler, monkeypatch):
    """The check can fail: a kernel with a type error is refused with NVRTC's message."""
    ins, outs, op = cupy_kernels.SOURCES["relu_forward"]
    monkeypatch.setitem(cupy_kernels.SOURCES, "relu_forward", (ins, outs, op.replace("(T)0;", "undeclared;", 1)))
    with pytest.raises(RuntimeError, match="undeclared"):
        compiler.compile_one("relu_forward", ("float32",), ("float32", "bool"))
