"""Compiled CPU kernels for the passes NumPy runs slowly: max pooling's 2x2 windows, the
spectral route's per-bin complex products, the large element-wise passes of ReLU, Dropout and
the random generator, and the augmentation's bilinear warp (optional).

NumPy pools a 2x2 window by one pass per window offset over a strided view (pooling._fold), each
a copy and three ufunc calls, and scatters the gradient back the same way (pooling._scatter): about
4 and 4.5 passes over the data where one is enough. These kernels do each in one pass, with numba
(``pip install xpnet[compiled]``; without it, or with ``$XPNET_COMPILED=0``, NumPy's passes run).
numba compiles the Python loops of compiled_kernels.py to machine code; they release the GIL, so
the backend's pool runs them on all cores without the threads waiting for each other between NumPy
calls. The price: numba (with LLVM) is imported the first time a kernel runs, about 0.3 s and
about 100 MB of memory more in that process (measured: 39 -> 143 MB resident; 156 MB where scipy
is installed, which numba then imports too); ``$XPNET_COMPILED=0`` avoids both.

The spectral products (compiled_products.py, ``bin_products``) are NumPy's own calls, GEMMs included,
made for a whole piece of frequency bins in one call that never takes the GIL, where NumPy's path
makes about ten calls a chunk of bins, each taking and giving back the GIL: on two threads the
pieces then run without waiting for each other. They need NumPy's wheels' BLAS (scipy-openblas,
whose GEMM they call); with another BLAS NumPy's path runs.

Same bits as NumPy's passes (tests/test_compiled.py, against pooling._fold and _scatter;
tests/test_compiled_products.py, against the spectral route's NumPy path):
- ``window_max_2x2``: per window the maximum and the offset (0..3, row-major) of its first
  maximum. The value follows ``numpy.maximum(m, v)`` offset by offset, which keeps the later
  operand when the two compare equal (+0.0 and -0.0), and the offset moves only when a value is
  strictly greater (ties to the first, as PyTorch). A window with a NaN is not handled here: the
  kernel reports one and the caller runs NumPy's passes, which make NaN the maximum.
- ``unpool_2x2``: each window's gradient times 1 at its offset and times 0 elsewhere (0 * dy:
  -0.0 for a negative dy, NaN for a NaN), as NumPy's multiply by the bool mask; 0 on the rows and
  columns no window covers.
- ``relu``, ``multiply_mask``, ``dropout``, ``splitmix64`` (tests/test_compiled_elementwise.py):
  one pass where NumPy makes two to eight, and casts bools through buffers: ReLU's forward and its
  mask, a gradient times a bool mask, Dropout's forward and backward (x times where(keep, scale,
  0)), the generator's words. ReLU's forward and Dropout's forward (then with its float mask
  written too) took 0.86 and 1.08-1.15 ms for 3.2 M float32 values on one thread against NumPy's
  2.11 and 2.05-2.18 ms, a gradient times a mask 0.71 against 1.50 ms, 0.8 M words 0.75 against
  1.85 ms (AMD EPYC Zen 4, console, 2026-12-03).
- ``relu_dropout``, ``relu_dropout_grad``: a ReLU and the Dropout after it in one pass each way
  (model._link_relu_dropout), the same expressions as ``relu`` then ``dropout`` and ``dropout``
  then ``multiply_mask``, so the same bits, without the ReLU's output (forward) or the Dropout's
  gradient (backward) written and read between them.
"""
import functools
import importlib.metadata
import importlib.util
import os
import threading
import warnings

import numpy

from xpnet.errors import ConfigError

# whether the optional extra is installed (numba itself is imported with the kernels, on first use)
INSTALLED = importlib.util.find_spec("numba") is not None
_kernels = None   # backends/compiled_kernels.py once loaded
_unusable = None  # why numba, though installed, could not be used here (its import error), once tried
_loading = threading.Lock()
_products = None   # compiled_products.KERNELS once loaded
_no_products = None   # why the spectral products are not compiled here (NumPy's BLAS), once tried


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
    """Whether the compiled kernels run (numba installed, usable and not switched off)."""
    return bool(ENABLED) and INSTALLED and _unusable is None


def _numba_version():
    try:
        return importlib.metadata.version("numba")
    except importlib.metadata.PackageNotFoundError:   # a numba package without its metadata
        return "of unknown version"


def describe():
    """One line for ``xpnet info``: whether the kernels run, and why not (this loads them, so that
    a numba that cannot be imported here says so)."""
    if not INSTALLED:
        return "off (numba not installed: pip install 'xpnet[compiled]'; NumPy's passes run)"
    version = _numba_version()
    if not ENABLED:
        return f"off (XPNET_COMPILED=0; numba {version} installed)"
    if kernels() is None:
        return f"off (numba {version} is installed but cannot be imported: {_unusable}; NumPy's passes run)"
    spectral = "on" if products() is not None else f"off: {_no_products}; NumPy's passes run"
    return f"on (numba {version}; spectral products {spectral}; XPNET_COMPILED=0 turns them off)"


def kernels():
    """The kernels' module, imported on first use (by one thread; the others wait for it), or None
    when numba is installed but cannot be imported here (say, a numba built for another NumPy
    version, which refuses to import): then a warning says why, once, and NumPy's passes run."""
    global _kernels, _unusable
    if _kernels is None and _unusable is None:
        with _loading:
            if _kernels is None and _unusable is None:
                try:
                    from . import compiled_kernels
                except Exception as exc:   # numba's own import errors are ImportError, but not only
                    _unusable = f"{type(exc).__name__}: {exc}"
                    warnings.warn(f"numba is installed but cannot be imported ({_unusable}): max pooling "
                                  "runs NumPy's passes (the same results, slower); pip install -U numba, "
                                  "or XPNET_COMPILED=0 to say so", RuntimeWarning, stacklevel=2)
                else:
                    _kernels = compiled_kernels
    return _kernels


def _kernels_for(full, pooled, k_of):
    """The kernels' module when they take these arrays, else None: numba on and importable, full
    (planes, 3-D, or bands, 4-D) and pooled (3-D) float32 or float64 of one dtype in the machine's
    byte order (numba cannot type another), shaped as ``_fits`` says, a uint8 offset per pooled
    cell, all C-contiguous (the callers' planes and chunks are; anything else takes NumPy's
    passes)."""
    if not (available() and full.dtype.type in DTYPES and full.dtype.isnative and pooled.dtype == full.dtype
            and k_of.dtype == numpy.uint8 and pooled.shape == k_of.shape
            and full.ndim in (3, 4) and pooled.ndim == 3 and _fits(full, pooled)
            and all(a.flags.c_contiguous for a in (full, pooled, k_of))):
        return None
    return kernels()


def _fits(full, pooled):
    """Whether pooled holds the 2x2 windows that tile full: (P, H // 2, W // 2) for planes
    (P, H, W), (R, W // 2, Q) for bands (R, 2, W, Q). The kernels take the windows' count from
    pooled and index without bounds checks, so a larger pooled array would read and write past
    full."""
    if full.ndim == 3:
        count, h, w = full.shape
        return pooled.shape == (count, h // 2, w // 2)
    count, rows, w, width = full.shape
    return rows == 2 and pooled.shape == (count, w // 2, width)


def window_max_2x2(x, m, k_of, bias=None):
    """m, k_of <- each 2x2 window's maximum of x and its offset, for x given as planes (P, H, W)
    with m (P, H // 2, W // 2), or as bands of planes (R, 2, W, Q) (two rows of (W, Q) positions a
    band: the planes layout of layout.py) with m (R, W // 2, Q). ``bias`` (F,) (planes only):
    added to each value first, plane p getting bias[p % F] (a convolution's output with its bias
    not yet added: the same sums as adding it before). False when not done (no numba, another
    dtype, or a NaN in some window: the caller's NumPy passes then give every value; x is never
    written)."""
    k = _kernels_for(x, m, k_of)
    if k is None:
        return False
    if x.ndim == 4:
        return bias is None and not k.band_max_2x2(x, m, k_of)
    if bias is None:
        bias = numpy.empty(0, dtype=x.dtype)
    elif not (bias.dtype == x.dtype and bias.ndim == 1 and bias.shape[0] and x.shape[0] % bias.shape[0] == 0):
        return False
    return not k.window_max_2x2(x, m, k_of, numpy.ascontiguousarray(bias))


def unpool_2x2(k_of, d, x):
    """x <- d at each 2x2 window's offset k_of, 0 * d at the other three, 0 where no window covers;
    x and d shaped as in window_max_2x2. False when not done (no numba or another dtype)."""
    k = _kernels_for(x, d, k_of)
    if k is None:
        return False
    (k.unpool_2x2 if x.ndim == 3 else k.band_unpool_2x2)(k_of, d, x, _picks(d.dtype))
    return True


# Passes over fewer elements (or words) run NumPy's ufuncs: the kernels below save a few hundred
# microseconds on a layer's activations, nothing on small arrays, where they would only import
# numba into processes that need nothing else of it (a dense model's dropout, a weight draw).
MIN_ELEMENTWISE = 1 << 16


def _elementwise(floats, bools):
    """The kernels' module when they take these 1-D arrays (float32 or float64 of one dtype in the
    machine's byte order, bool masks, one length, C-contiguous, at least MIN_ELEMENTWISE), else
    None."""
    x = floats[0]
    if not (available() and x.size >= MIN_ELEMENTWISE and x.dtype.type in DTYPES and x.dtype.isnative
            and all(a.dtype == x.dtype for a in floats) and all(b.dtype == numpy.bool_ for b in bools)
            and all(a.ndim == 1 and a.shape == x.shape and a.flags.c_contiguous for a in floats + bools)):
        return None
    return kernels()


def dropout(x, keep, scale, y):
    """y <- x * (scale where keep else 0, in x's dtype), in one pass over 1-D C-contiguous arrays
    (keep bool): the bits of NumPy's two multiplies (the bools cast to 1 or 0 times scale, then x
    times that), without their casts and their pass over a mask of x's dtype. False when not done
    (no numba, small, another dtype, or not contiguous: the caller's NumPy passes run)."""
    k = _elementwise((x, y), (keep,))
    if k is None:
        return False
    k.dropout(x, keep.view(numpy.uint8), x.dtype.type(scale), y)
    return True


def relu(x, y, mask):
    """y <- numpy.maximum(x, 0) (NaN kept, +0.0 for -0.0), mask <- y > 0, in one pass over 1-D
    C-contiguous arrays: the bits of NumPy's two passes. False when not done (as dropout)."""
    k = _elementwise((x, y), (mask,))
    if k is None:
        return False
    k.relu(x, y, mask.view(numpy.uint8))
    return True


def relu_dropout(x, keep, scale, y, mask):
    """y <- dropout(relu(x)) and mask <- relu(x) > 0 in one pass over 1-D C-contiguous arrays:
    the bits of relu then dropout, without relu(x) written and read between them. False when not
    done (as dropout)."""
    k = _elementwise((x, y), (keep, mask))
    if k is None:
        return False
    k.relu_dropout(x, keep.view(numpy.uint8), x.dtype.type(scale), y, mask.view(numpy.uint8))
    return True


def relu_dropout_grad(g, keep, scale, mask, out):
    """out <- dropout(g, keep, scale) * mask in one pass over 1-D C-contiguous arrays: the bits of
    dropout then multiply_mask. False when not done (as dropout)."""
    k = _elementwise((g, out), (keep, mask))
    if k is None:
        return False
    k.relu_dropout_grad(g, keep.view(numpy.uint8), g.dtype.type(scale), mask.view(numpy.uint8), out)
    return True


def multiply_mask(a, keep, out):
    """out <- a * keep for a bool ``keep`` (NumPy casts it to 1 or 0 and multiplies: -0.0 for a
    negative value dropped, NaN for an infinite one), in one pass without the cast's buffers.
    False when not done (as dropout)."""
    k = _elementwise((a, out), (keep,))
    if k is None:
        return False
    k.multiply_mask(a, keep.view(numpy.uint8), out)
    return True


def splitmix64(start, first, out):
    """out[i] <- random.py's word for position first + i of a draw starting at ``start`` (a uint64:
    splitmix64 of (first + i) * GOLDEN + start), the bits of random._finish's NumPy passes in one
    compiled pass over 1-D C-contiguous uint64 ``out`` (of any size: the caller, which splits a
    draw into pieces, decides from the whole draw's). False when not done (no numba, another
    array, or ``start`` an array: a device counter's (1,) start)."""
    if not (available() and numpy.ndim(start) == 0 and out.dtype == numpy.uint64
            and out.dtype.isnative and out.ndim == 1 and out.flags.c_contiguous):
        return False
    k = kernels()
    if k is None:
        return False
    k.splitmix64(numpy.uint64(start), int(first), out)
    return True


@functools.lru_cache(maxsize=None)
def _picks(dtype):
    """The scatter's table: row k holds the four factors of a window whose offset is k (1 at k, 0
    at the others; all 0 for k >= 4, as NumPy's ``k_of == offset`` masks give), one row per uint8
    value, so a stray offset reads a row and not past the table. A factor looked up rather than made
    from ``k == offset``: numba's LLVM turns the latter into a branch per value, and the winners of
    real data are random enough that about every other branch is mispredicted (the scatter for the
    3x3 CNN's first layer at batch 128 took 9.3-9.9 ms on one thread with random offsets, 1.8 ms
    with all offsets 0, 1.3 ms with the table for either)."""
    table = numpy.zeros((256, 4), dtype=dtype)
    table[numpy.arange(4), numpy.arange(4)] = 1
    return table


def products():
    """compiled_products.KERNELS, imported on first use, or None: numba unusable (``kernels()``
    warns), or NumPy's BLAS not the one those kernels call (said by ``describe()``, no warning:
    NumPy's path gives the same results)."""
    global _products, _no_products
    if _products is None and _no_products is None and kernels() is not None:
        with _loading:
            if _products is None and _no_products is None:
                try:
                    from .compiled_products import KERNELS
                except ImportError as exc:
                    _no_products = str(exc)
                else:
                    _products = KERNELS
    return _products


def _gemm_shapes(kind, n, c, f, gauss):
    """(rows, columns) of each GEMM the kernel of ``kind`` makes for a bin: NumPy's matmul takes
    a GEMV or a dot where one has a single row or column (other bits), so those stay NumPy's."""
    if kind == "forward":
        return [(n, f)] if gauss else [(2 * n, f)]
    return [(c, f), (n, c)] if gauss else [(2 * c, f), (2 * n, 2 * c)]


def bin_products(kind, arrays, gauss, need_dx=True, need_g=True):
    """A function (b0, b1) that makes the spectral route's products of the frequency bins b0:b1
    in one compiled call without the GIL (compiled_products.py: the bits of ops/spectral.py's
    NumPy path), or None where that path must run (numba or its BLAS not here, another dtype,
    arrays not C-contiguous, a product with one row or column). ``kind`` "forward": arrays (S, K,
    Y), Y (bins, 2N, F) <- S (bins, 2N, C) times K (bins, 2C, F); "backward": (S, DY, K, G, DX),
    G (bins, 2C, F) when ``need_g`` (else None) and DX (bins, 2N, C) when ``need_dx`` (else None).
    ``gauss``: three real GEMMs a complex product instead of the real form's one
    (spectral.three_multiply)."""
    if not available():
        return None
    first = arrays[0]
    given = [a for a in arrays if a is not None]
    if not (first.dtype.type in DTYPES and first.dtype.isnative and first.ndim == 3
            and all(a.dtype == first.dtype and a.ndim == 3 and a.flags.c_contiguous for a in given)):
        return None
    bins, n2, c = first.shape
    n = n2 // 2
    if kind == "forward":
        S, K, Y = arrays
        f = K.shape[2]
        fits = K.shape == (bins, 2 * c, f) and Y.shape == (bins, n2, f)
    else:
        S, DY, K, G, DX = arrays
        f = DY.shape[2]
        fits = (DY.shape == (bins, n2, f) and K.shape == (bins, 2 * c, f) and (need_g or need_dx)
                and (G is None if not need_g else G is not None and G.shape == (bins, 2 * c, f))
                and (DX is None if not need_dx else DX is not None and DX.shape == (bins, n2, c)))
    if not (fits and n2 == 2 * n and min(n, c) >= 1
            and all(min(shape) > 1 for shape in _gemm_shapes(kind, n, c, f, gauss))):
        return None
    table = products()
    if table is None:
        return None
    kernel = table[kind][1 if gauss else 0]
    if kind == "forward":
        return lambda b0, b1: kernel(S, K, Y, max(b0, 0), min(b1, bins))
    none = numpy.empty((0, 0, 0), dtype=first.dtype)
    G, DX = (G if need_g else none), (DX if need_dx else none)
    return lambda b0, b1: kernel(S, DY, K, G, DX, max(b0, 0), min(b1, bins), need_dx, need_g)


def affine_warp(x, k, uv, fill, nearest):
    """augment._warp_centred's warp in one compiled pass: x (N, C, H, W) float32 or float64 sampled
    bilinearly at the grid of the maps k (N, 2, 3) (the image centre added to the shifts) over the
    centred pixel coordinates ``uv`` (2, H * W), neighbours outside the image reading ``fill``,
    the grid clipped to the image first when ``nearest``. The bits of NumPy's passes (the same
    operations in the same order on each value; tests/test_compiled_warp.py); some 25 NumPy passes
    over the pixels, each with its temporaries, become one that reads each image once: 64 MNIST
    images in about 0.2 ms against 0.5 ms (one thread, AMD EPYC Zen 4, 2026-12-03). The new array,
    or None when not done (no numba, another dtype or layout, no pixels, or maps so large or not
    finite that a grid value could be NaN or inf: the caller's NumPy passes then give every
    value)."""
    if not (available() and x.dtype.type in DTYPES and x.dtype.isnative and x.ndim == 4 and x.size
            and k.dtype == uv.dtype == x.dtype and k.shape == (x.shape[0], 2, 3)
            and uv.shape == (2, x.shape[2] * x.shape[3]) and x.flags.c_contiguous):
        return None
    h, w = x.shape[2:]
    # |k1 v + k0 u + k2| <= max|k| ((H - 1) / 2 + (W - 1) / 2 + 1): no value overflows under this
    # (and NaN or inf in k fails the test)
    if not float(numpy.abs(k).max(initial=0.0)) * (h + w + 2) < float(numpy.finfo(x.dtype).max):
        return None
    kernel = kernels()
    if kernel is None:
        return None
    t = x.dtype.type
    inf = t(numpy.inf)
    bounds = (t(0), t(w - 1), t(0), t(h - 1)) if nearest else (-inf, inf, -inf, inf)
    out = numpy.empty_like(x)
    u, v = numpy.ascontiguousarray(uv[0, :w]), numpy.ascontiguousarray(uv[1, ::w])
    kernel.affine_warp(x, numpy.ascontiguousarray(k), u, v, t(fill), *bounds, out)
    return out
