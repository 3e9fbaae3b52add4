"""Compiled CPU kernels for the passes NumPy runs slowly: max pooling's 2x2 windows (optional).

NumPy pools a 2x2 window by one pass per window offset over a strided view (pooling._fold), each
a copy and three ufunc calls, and scatters the gradient back the same way (pooling._scatter): about
4 and 4.5 passes over the data where one is enough. These kernels do each in one pass, with numba
(``pip install xpnet[compiled]``; without it, or with ``$XPNET_COMPILED=0``, NumPy's passes run).
numba compiles the Python loops below to machine code; they release the GIL, so the backend's
pool runs them on all cores without the threads waiting for each other between NumPy calls.

Same bits as NumPy's passes (tests/test_compiled.py, against pooling._fold and _scatter):
- ``window_max_2x2``: per window the maximum and the offset (0..3, row-major) of its first
  maximum. The value follows ``numpy.maximum(m, v)`` offset by offset, which keeps the later
  operand when the two compare equal (+0.0 and -0.0), and the offset moves only when a value is
  strictly greater (ties to the first, as PyTorch). A window with a NaN is not handled here: the
  kernel reports one and the caller runs NumPy's passes, which make NaN the maximum.
- ``unpool_2x2``: each window's gradient times 1 at its offset and times 0 elsewhere (0 * dy:
  -0.0 for a negative dy, NaN for a NaN), as NumPy's multiply by the bool mask; 0 on the rows and
  columns no window covers.
"""
import os

import numpy

from xpnet.errors import ConfigError

try:
    import numba
except ImportError:   # the optional extra is not installed: NumPy's passes run
    numba = None



def _switch():
    """``$XPNET_COMPILED``: 1 (default) or 0 (NumPy's passes even where numba is installed)."""
    value = os.environ.get("XPNET_COMPILED", "1").strip() or "1"
    if value not in ("0", "1"):
        raise ConfigError(f"XPNET_COMPILED must be 0 or 1, got {value!r}")
    return int(value)


# 0: NumPy's passes (the same bits, only slower): for benchmarks/ab_setting.py's in-process
# comparison and the tests of both paths; read when a pass runs
ENABLED = _switch()
DTYPES = (numpy.float32, numpy.float64)   # numba has no float16 arithmetic on the CPU


def available():
    """Whether the compiled kernels run (numba installed and not switched off)."""
    return bool(ENABLED) and numba is not None


def describe():
    """One line for ``xpnet info``: whether the kernels run, and why not."""
    if numba is None:
        return "off (numba not installed: pip install 'xpnet[compiled]'; NumPy's passes run)"
    if not ENABLED:
        return f"off (XPNET_COMPILED=0; numba {numba.__version__} installed)"
    return f"on (numba {numba.__version__}; XPNET_COMPILED=0 turns them off)"


def _fits(*arrays):
    """Whether the kernels take these arrays: numba on, float32 or float64, each C-contiguous (the
    callers' planes and chunks are; anything else takes NumPy's passes)."""
    return (available() and arrays[0].dtype.type in DTYPES
            and all(a.flags.c_contiguous for a in arrays))


def window_max_2x2(x, m, k_of, bias=None):
    """m, k_of <- each 2x2 window's maximum of x and its offset, for x given as planes (P, H, W)
    with m (P, H // 2, W // 2), or as bands of planes (R, 2, W, Q) (two rows of (W, Q) positions a
    band: the planes layout of layout.py) with m (R, W // 2, Q). ``bias`` (F,) (planes only):
    added to each value first, plane p getting bias[p % F] (a convolution's output with its bias
    not yet added: the same sums as adding it before). False when not done (no numba, another
    dtype, or a NaN in some window: the caller's NumPy passes then give every value; x is never
    written)."""
    if not (_fits(x, m, k_of) and k_of.dtype == numpy.uint8 and m.dtype == x.dtype
            and m.shape == k_of.shape and x.ndim in (3, 4) and m.ndim == 3):
        return False
    if x.ndim == 4:
        return bias is None and not _band_max_2x2(x, m, k_of)
    if bias is None:
        bias = numpy.empty(0, dtype=x.dtype)
    elif not (bias.dtype == x.dtype and bias.ndim == 1 and bias.shape[0] and x.shape[0] % bias.shape[0] == 0):
        return False
    return not _window_max_2x2(x, m, k_of, numpy.ascontiguousarray(bias))


def unpool_2x2(k_of, d, x):
    """x <- d at each 2x2 window's offset k_of, 0 * d at the other three, 0 where no window covers;
    x and d shaped as in window_max_2x2. False when not done (no numba or another dtype)."""
    if not (_fits(d, x, k_of) and k_of.dtype == numpy.uint8 and x.dtype == d.dtype
            and d.shape == k_of.shape and x.ndim in (3, 4) and d.ndim == 3):
        return False
    (_unpool_2x2 if x.ndim == 3 else _band_unpool_2x2)(k_of, d, x)
    return True


if numba is not None:
    @numba.njit(nogil=True, cache=True)
    def _window_max_2x2(planes, m, k_of, bias):   # returns whether some value was NaN
        count, ho, wo = m.shape
        filters = bias.shape[0]
        nan = False
        for p in range(count):
            add = bias[p % filters] if filters else planes.dtype.type(0)
            for r in range(ho):
                top, bottom = planes[p, 2 * r], planes[p, 2 * r + 1]
                m_row, k_row = m[p, r], k_of[p, r]
                for c in range(wo):
                    a, b, e, f = top[2 * c], top[2 * c + 1], bottom[2 * c], bottom[2 * c + 1]
                    if filters:
                        a, b, e, f = a + add, b + add, e + add, f + add
                    nan |= (a != a) | (b != b) | (e != e) | (f != f)
                    best, k = a, numpy.uint8(0)
                    if b > best:
                        k = numpy.uint8(1)
                    if b >= best:
                        best = b
                    if e > best:
                        k = numpy.uint8(2)
                    if e >= best:
                        best = e
                    if f > best:
                        k = numpy.uint8(3)
                    if f >= best:
                        best = f
                    m_row[c], k_row[c] = best, k
        return nan

    @numba.njit(nogil=True, cache=True)
    def _unpool_2x2(k_of, d, planes):
        count, ho, wo = d.shape
        h, w = planes.shape[1], planes.shape[2]
        zero = d.dtype.type(0)
        flat_k, flat_d = k_of.reshape(count * ho * wo), d.reshape(count * ho * wo)
        for p in range(count):
            for r in range(ho):
                first = (p * ho + r) * wo
                for i in range(2):
                    row = 2 * r + i
                    for c in range(wo):
                        k, g = flat_k[first + c], flat_d[first + c]
                        planes[p, row, 2 * c] = g * d.dtype.type(k == 2 * i)
                        planes[p, row, 2 * c + 1] = g * d.dtype.type(k == 2 * i + 1)
                    for c in range(2 * wo, w):
                        planes[p, row, c] = zero
            for row in range(2 * ho, h):
                for c in range(w):
                    planes[p, row, c] = zero

    @numba.njit(nogil=True, cache=True)
    def _band_max_2x2(bands, m, k_of):   # bands (R, 2, W, Q); each window's four values Q apart
        count, wo, width = m.shape
        nan = False
        for r in range(count):
            for c in range(wo):
                a_row, b_row = bands[r, 0, 2 * c], bands[r, 0, 2 * c + 1]
                e_row, f_row = bands[r, 1, 2 * c], bands[r, 1, 2 * c + 1]
                m_row, k_row = m[r, c], k_of[r, c]
                for q in range(width):
                    a, b, e, f = a_row[q], b_row[q], e_row[q], f_row[q]
                    nan |= (a != a) | (b != b) | (e != e) | (f != f)
                    best, k = a, numpy.uint8(0)
                    if b > best:
                        k = numpy.uint8(1)
                    if b >= best:
                        best = b
                    if e > best:
                        k = numpy.uint8(2)
                    if e >= best:
                        best = e
                    if f > best:
                        k = numpy.uint8(3)
                    if f >= best:
                        best = f
                    m_row[q], k_row[q] = best, k
        return nan

    @numba.njit(nogil=True, cache=True)
    def _band_unpool_2x2(k_of, d, bands):
        count, wo, width = d.shape
        w = bands.shape[2]
        zero = d.dtype.type(0)
        for r in range(count):
            for i in range(2):
                for c in range(wo):
                    k_row, d_row = k_of[r, c], d[r, c]
                    left, right = bands[r, i, 2 * c], bands[r, i, 2 * c + 1]
                    for q in range(width):
                        k, g = k_row[q], d_row[q]
                        left[q] = g * d.dtype.type(k == 2 * i)
                        right[q] = g * d.dtype.type(k == 2 * i + 1)
                for c in range(2 * wo, w):
                    bands[r, i, c, :] = zero
