"""The numba kernels of the spectral route's per-bin complex products (backends/compiled.py says
when they run): every GEMM is a call of NumPy's own BLAS, the same call with the same arguments as
``numpy.matmul`` makes for it, and every element-wise step the same operation on the same values,
so the bits are NumPy's (tests/test_compiled_products.py). What differs is the GIL: NumPy's path
is about ten calls a chunk of bins, each giving the GIL back and taking it again; here a whole
piece of bins is one call that never takes it.

Only NumPy builds whose BLAS is the scipy-openblas library of its wheels are served (that library
has the one ``sgemm``/``dgemm`` NumPy calls, ILP64, beside numpy in ``numpy.libs`` or ``.dylibs``);
with any other BLAS (MKL, a distribution's OpenBLAS) this module refuses to import and NumPy's
path runs. Compiled on first use per dtype and cached on disk as compiled_kernels.py's (the GEMMs
are external symbols that numba's linker finds by name, registered here from NumPy's library).
"""
import ctypes
import glob
import os

import llvmlite.binding
import numba
import numpy
from numba import types

from .compiled_kernels import _compiled

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112   # cblas.h's enums


def _numpy_blas():
    """NumPy's BLAS library (ctypes) when it is the scipy-openblas of NumPy's wheels, else an
    ImportError saying why."""
    config = getattr(getattr(numpy, "__config__", None), "CONFIG", None)
    blas = (config or {}).get("Build Dependencies", {}).get("blas", {})
    if blas.get("name") != "scipy-openblas" or "USE64BITINT" not in blas.get("openblas configuration", ""):
        raise ImportError(f"NumPy's BLAS is {blas.get('name')!r} ({blas.get('openblas configuration')!r}), "
                          "not the ILP64 scipy-openblas of NumPy's wheels")
    here = os.path.dirname(numpy.__file__)
    found = sorted(glob.glob(os.path.join(here, "..", "numpy.libs", "libscipy_openblas64_*"))
                   + glob.glob(os.path.join(here, ".dylibs", "libscipy_openblas64_*")))
    if not found:
        raise ImportError(f"NumPy's scipy-openblas library was not found beside {here}")
    return ctypes.CDLL(found[0])


def _external(lib, name, scalar):
    """The BLAS function ``name`` of ``lib`` as a numba external function (cblas_?gemm's arguments:
    three enums, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc; pointers as addresses)."""
    llvmlite.binding.add_symbol(name, ctypes.cast(getattr(lib, name), ctypes.c_void_p).value)
    i32, i64, ptr = types.int32, types.int64, types.uintp
    return types.ExternalFunction(name, types.void(i32, i32, i32, i64, i64, i64, scalar, ptr, i64, ptr, i64,
                                                   scalar, ptr, i64))


_LIB = _numpy_blas()
sgemm = _external(_LIB, "scipy_cblas_sgemm64_", types.float32)
dgemm = _external(_LIB, "scipy_cblas_dgemm64_", types.float64)


@numba.njit(inline="always")
def at(a, offset):
    """The address of element ``offset`` of the C-contiguous array a."""
    return a.ctypes.data + offset * a.itemsize


@numba.njit(inline="always")
def mm(ta, tb, m, n, k, a, lda, b, ldb, c, ldc, itemsize):
    """c (m, n) <- op(a) @ op(b), the call numpy.matmul makes for it (alpha 1, beta 0); the
    addresses' arrays hold float32 (itemsize 4) or float64."""
    if itemsize == 4:
        sgemm(ROW_MAJOR, ta, tb, m, n, k, 1.0, a, lda, b, ldb, 0.0, c, ldc)
    else:
        dgemm(ROW_MAJOR, ta, tb, m, n, k, 1.0, a, lda, b, ldb, 0.0, c, ldc)


@numba.njit(inline="always")
def add_blocks(out, a, b):   # out <- a + b, as numpy.add
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = a[i, j] + b[i, j]


@numba.njit(inline="always")
def subtract_blocks(out, a, b):   # out <- a - b, as numpy.subtract
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = a[i, j] - b[i, j]


@numba.njit(inline="always")
def combine_add(a, b, t):   # spectral._gauss_combine(a, b, t, 1) on (rows, cols) blocks
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            r, u = a[i, j], t[i, j]
            b[i, j] = (b[i, j] - r) + u
            a[i, j] = r + u


@numba.njit(inline="always")
def combine_subtract(a, b, t):   # spectral._gauss_combine(a, b, t, -1)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            r, u = a[i, j], t[i, j]
            b[i, j] = (b[i, j] - r) - u
            a[i, j] = r - u


@numba.njit(inline="always")
def real_form(s, z, n, c):   # z (2N, 2C) <- [[Xi, Xr], [-Xr, Xi]] of s (2N, C) = [Xr; Xi]
    for i in range(n):
        for j in range(c):
            xr, xi = s[i, j], s[n + i, j]
            z[i, j], z[i, c + j], z[n + i, j], z[n + i, c + j] = xi, xr, -xr, xi


@_compiled
def forward_real_form(S, K, Y, b0, b1):   # Y = Z @ K a bin
    _, n2, c = S.shape
    w = S.itemsize
    n, f = n2 // 2, K.shape[2]
    z = numpy.empty((n2, 2 * c), S.dtype)
    for b in range(b0, b1):
        real_form(S[b], z, n, c)
        mm(NO_TRANS, NO_TRANS, n2, f, 2 * c, at(z, 0), 2 * c, at(K, b * 2 * c * f), f, at(Y, b * n2 * f), f, w)


@_compiled
def forward_gauss(S, K, Y, b0, b1):   # P1 = Xr Kr, P2 = Xi Ki, P3 = (Xr + Xi)(Kr - Ki)
    _, n2, c = S.shape
    w = S.itemsize
    n, f = n2 // 2, K.shape[2]
    t, xs, kd = numpy.empty((n, f), S.dtype), numpy.empty((n, c), S.dtype), numpy.empty((c, f), S.dtype)
    for b in range(b0, b1):
        s, k, y = S[b], K[b], Y[b]
        mm(NO_TRANS, NO_TRANS, n, f, c, at(S, b * n2 * c), c, at(K, (b * 2 + 1) * c * f), f, at(Y, b * n2 * f), f, w)
        mm(NO_TRANS, NO_TRANS, n, f, c, at(S, (b * 2 + 1) * n * c), c, at(K, b * 2 * c * f), f, at(t, 0), f, w)
        add_blocks(xs, s[:n], s[n:])
        subtract_blocks(kd, k[c:], k[:c])
        mm(NO_TRANS, NO_TRANS, n, f, c, at(xs, 0), c, at(kd, 0), f, at(Y, (b * 2 + 1) * n * f), f, w)
        combine_add(y[:n], y[n:], t)


@_compiled
def backward_real_form(S, DY, K, G, DX, b0, b1, need_dx, need_g):
    # G = Z^T @ DY; Q = DY @ K^T, dX = [Q(:N, C:) - Q(N:, :C); Q(:N, :C) + Q(N:, C:)]
    _, n2, c = S.shape
    w = S.itemsize
    n, f = n2 // 2, DY.shape[2]
    z, q = numpy.empty((n2, 2 * c), S.dtype), numpy.empty((n2, 2 * c), S.dtype)
    for b in range(b0, b1):
        if need_g:
            real_form(S[b], z, n, c)
            mm(TRANS, NO_TRANS, 2 * c, f, n2, at(z, 0), 2 * c, at(DY, b * n2 * f), f, at(G, b * 2 * c * f), f, w)
        if need_dx:
            mm(NO_TRANS, TRANS, n2, 2 * c, f, at(DY, b * n2 * f), f, at(K, b * 2 * c * f), f, at(q, 0), 2 * c, w)
            dx = DX[b]
            for i in range(n):
                for j in range(c):
                    dx[i, j] = q[i, c + j] - q[n + i, j]
                    dx[n + i, j] = q[i, j] + q[n + i, c + j]


@_compiled
def backward_gauss(S, DY, K, G, DX, b0, b1, need_dx, need_g):
    # G: P1 = Xr^T Dr, P2 = Xi^T Di, P3 = (Xr + Xi)^T (Dr - Di);
    # dX: P1 = Dr Kr^T, P2 = Di Ki^T, P3 = (Dr + Di)(Kr + Ki)^T
    _, n2, c = S.shape
    w = S.itemsize
    n, f = n2 // 2, DY.shape[2]
    dt = S.dtype
    t, xs, dd = numpy.empty((c, f), dt), numpy.empty((n, c), dt), numpy.empty((n, f), dt)
    u, ks = numpy.empty((n, c), dt), numpy.empty((c, f), dt)
    for b in range(b0, b1):
        s, k, d = S[b], K[b], DY[b]
        if need_g:
            g = G[b]
            mm(TRANS, NO_TRANS, c, f, n, at(S, b * n2 * c), c, at(DY, b * n2 * f), f, at(G, (b * 2 + 1) * c * f), f, w)
            mm(TRANS, NO_TRANS, c, f, n, at(S, (b * 2 + 1) * n * c), c, at(DY, (b * 2 + 1) * n * f), f, at(t, 0), f, w)
            add_blocks(xs, s[:n], s[n:])
            subtract_blocks(dd, d[:n], d[n:])
            mm(TRANS, NO_TRANS, c, f, n, at(xs, 0), c, at(dd, 0), f, at(G, b * 2 * c * f), f, w)
            combine_add(g[c:], g[:c], t)
        if need_dx:
            mm(NO_TRANS, TRANS, n, c, f, at(DY, b * n2 * f), f, at(K, (b * 2 + 1) * c * f), f, at(DX, b * n2 * c), c, w)
            mm(NO_TRANS, TRANS, n, c, f, at(DY, (b * 2 + 1) * n * f), f, at(K, b * 2 * c * f), f, at(u, 0), c, w)
            add_blocks(dd, d[:n], d[n:])
            add_blocks(ks, k[c:], k[:c])
            mm(NO_TRANS, TRANS, n, c, f, at(dd, 0), f, at(ks, 0), f, at(DX, (b * 2 + 1) * n * c), c, w)
            combine_subtract(DX[b, :n], DX[b, n:], u)


KERNELS = {"forward": (forward_real_form, forward_gauss), "backward": (backward_real_form, backward_gauss)}
