"""Compile the fused kernels of backends/cupy_kernels.py with NVRTC, without a GPU (for CI).

CuPy generates each ElementwiseKernel's CUDA source from its parameters and the argument types
of a call, then compiles it with NVRTC, which is a library, not a device call. Here the source is
generated for the argument types in ``cupy_kernels.SIGNATURES`` with CuPy's own code generator
(``cupy._core._kernel._get_elementwise_kernel_code``, a CuPy internal: checked against CuPy 14)
and compiled by NVRTC with the options CuPy uses, for an explicit GPU architecture, so that a
syntax or type error fails CI instead of a GPU run. What it cannot show: that the kernels give the
reference's numbers (tests/test_cupy_kernels.py does that on a GPU).

Needs the CuPy wheel and NVRTC (``pip install --no-deps cupy-cuda13x cuda-pathfinder
nvidia-cuda-nvrtc``, see .ci/run); no driver, no device.
"""
import numpy

from . import cupy_kernels

ARCH = "90"  # sm_90 (H100/H200); NVRTC needs an explicit architecture when no device is present


def _arginfo(kernel_module, cupy, dtype, raw, scalar):
    from cupy._core import _scalar
    if scalar:
        return kernel_module._ArgInfo(3, _scalar.CScalar, numpy.dtype(dtype), 0, True, True)
    return kernel_module._ArgInfo(1, cupy.ndarray, numpy.dtype(dtype), 1, True, True)


def source(name, in_types, out_types):
    """The full CUDA source CuPy generates for kernel ``name`` called with these dtypes."""
    import cupy
    from cupy._core import _carray
    from cupy._core import _kernel
    from cupy._core import core

    ins, outs, op = cupy_kernels.SOURCES[name]
    kernel = cupy.ElementwiseKernel(ins, outs, op, "xpnet_" + name, options=cupy_kernels.OPTIONS)
    params = kernel.params
    in_dt = tuple(numpy.dtype(t) for t in in_types)
    out_dt = tuple(numpy.dtype(t) for t in out_types)
    _, _, type_map = kernel._decide_params_type(in_dt, out_dt)
    infos = []
    for p, dt in zip(params, in_dt + out_dt):
        # a typed (non-raw) input whose name is declared with a concrete or template type and
        # passed as a Python number in the backend is a scalar argument (CScalar)
        scalar = not p.raw and p.is_const and _is_scalar(name, p.name)
        infos.append(_arginfo(_kernel, cupy, dt, p.raw, scalar))
    infos.append(_kernel._ArgInfo(2, _carray.Indexer, None, 1, True, True))
    code = _kernel._get_elementwise_kernel_code(tuple(infos), type_map, params, op, "xpnet_" + name,
                                                "", "", "", ())
    headers = "".join(f"#include <{h}>\n" for h in core._cupy_header_list)
    return headers + code


# the arguments that the CuPy backend passes as scalars (everything else is an array)
SCALARS = {
    "dropout": {"scale"},
    "spectral_matrices": {"f", "c", "bins"},
    "bias_relu": {"inner", "nb"},
    "adam_update": {"b1d", "b1", "one_minus_b1", "b2d", "b2", "one_minus_b2", "eps", "wd", "wdt",
                    "decoupled"},
    "splitmix64_at": {"start"},
    "maxpool2d_forward": {"h", "w", "ho", "wo", "ph", "pw", "sh", "sw"},
    "maxpool2d_backward": {"h", "w", "ho", "wo", "ph", "pw", "sh", "sw"},
    "affine_warp": {"c", "h", "w", "fill", "nearest"},
    "softmax_labels": {"k"},
    "softmax_labels_grad": {"k", "inv_n"},
    "keras_affine_matrices": {"angle", "shift_x", "shift_y", "zoom", "n"},
}


def _is_scalar(name, param):
    return param in SCALARS.get(name, ())


def compile_one(name, in_types, out_types, arch=ARCH):
    """Compile one kernel for one signature with NVRTC; returns the cubin's size in bytes, raises
    RuntimeError with NVRTC's log on a compile error."""
    from cupy._core import core
    return _nvrtc(source(name, in_types, out_types), name,
                  list(core.assemble_cupy_compiler_options(cupy_kernels.OPTIONS)), arch,
                  f"{name} {in_types}->{out_types}")


def compile_raw(name, dtype, arch=ARCH):
    """Compile RawKernel ``name`` for float32 or float64 as CuPy's RawKernel does (no CuPy
    headers); the cubin's size in bytes, RuntimeError with NVRTC's log on a compile error."""
    return _nvrtc(cupy_kernels.raw_source(name, dtype), name, list(cupy_kernels.OPTIONS), arch,
                  f"{name} ({dtype})")


def _nvrtc(src, name, options, arch, what):
    from cupy.cuda import nvrtc
    options = options + ["-ftz=true", "--device-as-default-execution-space", f"-arch=sm_{arch}"]
    prog = nvrtc.createProgram(src, f"xpnet_{name}.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as exc:
            raise RuntimeError(f"NVRTC could not compile {what}: {exc}\n"
                               f"{nvrtc.getProgramLog(prog)}") from exc
        return len(nvrtc.getCUBIN(prog))
    finally:
        nvrtc.destroyProgram(prog)


def compile_all(arch=ARCH):
    """{(name, in_types, out_types): cubin bytes} for every kernel and signature."""
    out = {(name, ins, outs): compile_one(name, ins, outs, arch)
           for name, sigs in cupy_kernels.SIGNATURES.items() for ins, outs in sigs}
    out.update({(name, dtype): compile_raw(name, dtype, arch)
                for name in cupy_kernels.RAW for dtype in cupy_kernels.REAL})
    return out
