"""Which convolution method runs, per backend: the FLOP estimate, or measured once per shape.

``chooser.choose`` picks "spectral" or "columns" from a FLOP model whose margin was tuned on a CPU.
A GPU's balance of GEMM speed, memory bandwidth and launch overhead is different, so a backend
whose ``conv_choice`` is "measure" (CuPy's) times both exact methods the first time a convolution
shape is seen (forward and backward, on made-up data of that shape, best of ``REPEATS`` after one
warm-up run that also compiles the kernels) and keeps the faster one for the rest of the process,
as cuDNN's benchmark mode does. Backends whose ``conv_choice`` is "estimate" (NumPy, strict) use
the FLOP model: no timing, and the same choice on every run.

``XPNET_CONV_CHOICE=estimate|measure`` overrides the backend's preference ("auto", the default,
keeps it). Both methods are exact, so the choice changes speed and rounding, not results beyond
float rounding; a measured choice may differ between runs when the two are close, so set
``XPNET_CONV_CHOICE=estimate`` for bit-for-bit repeatable GPU runs. The spectral route's memory
budget (``chooser.spectral_fits``) applies in every mode. ``choices()`` lists what was measured.
With ``fit(..., graph=True)`` the measurement (which synchronizes) happens in the ordinary warm-up
step; the captured step has the same shapes and finds the cached choice, so nothing syncs inside
a capture.
"""
import math
import os
import time

from ..errors import ConfigError
from .chooser import choose, spectral_fits

MODES = ("auto", "estimate", "measure")
REPEATS = 3
_measured = {}  # (backend, x_shape, w_shape, stride, padding, dtype) -> {"method", "seconds"}


def mode(backend):
    """"estimate" or "measure" for ``backend`` under $XPNET_CONV_CHOICE."""
    wanted = os.environ.get("XPNET_CONV_CHOICE", "auto").strip().lower() or "auto"
    if wanted not in MODES:
        raise ConfigError(f"XPNET_CONV_CHOICE must be one of {', '.join(MODES)}, got {wanted!r}")
    if wanted == "auto":
        return getattr(backend, "conv_choice", "estimate")
    return wanted


def method_for(xp, x, W, stride, padding):
    """The method ``fast.conv2d_forward`` runs for x (N, C, H, W) and W (F, C, kh, kw)."""
    from ..backends import backend_of
    x_shape, w_shape = tuple(x.shape), tuple(W.shape)
    estimate = choose(x_shape, w_shape, stride, padding, x.itemsize)
    backend = backend_of(x)
    if mode(backend) != "measure" or not spectral_fits(x_shape, w_shape, padding, x.itemsize, stride):
        return estimate
    key = (backend.name, x_shape, w_shape, tuple(stride), tuple(padding), str(x.dtype))
    if key not in _measured:
        _measured[key] = measure(xp, backend, x_shape, w_shape, stride, padding, x.dtype)
    return _measured[key]["method"]


def measure(xp, backend, x_shape, w_shape, stride, padding, dtype):
    """{"method": the faster, "seconds": {method: best time of forward + backward}}."""
    from . import fast
    x, W, b = _probe(xp, x_shape, dtype, 1), _probe(xp, w_shape, dtype, 2), _probe(xp, w_shape[:1], dtype, 3)
    seconds = {}
    for method in ("spectral", "columns"):
        def step():
            y, cache = fast.conv2d_forward(xp, x, W, b, stride, padding, method=method)
            fast.conv2d_backward(xp, _probe(xp, tuple(y.shape), dtype, 4), cache, need_dx=True)
        step()  # warm-up: compiles kernels, fills the DFT matrix cache
        backend.synchronize()
        best = math.inf
        for _ in range(REPEATS):
            start = time.perf_counter()
            step()
            backend.synchronize()
            best = min(best, time.perf_counter() - start)
        seconds[method] = best
    return {"method": min(seconds, key=seconds.get), "seconds": seconds}


def _probe(xp, shape, dtype, salt):
    """Made-up, non-zero data of ``shape`` (timings on zeros can flatter a method)."""
    n = math.prod(shape)
    values = ((xp.arange(n, dtype=xp.int64) * (2 * salt + 1)) % 17).astype(dtype)
    return ((values - 8) * 0.125).reshape(shape)


def choices():
    """What was measured so far: one dict per (backend, shapes) with the method and the timings."""
    return [{"backend": k[0], "x_shape": list(k[1]), "w_shape": list(k[2]), "stride": list(k[3]),
             "padding": list(k[4]), "dtype": k[5], "method": v["method"], "seconds": v["seconds"]}
            for k, v in _measured.items()]


def forget():
    """Drop the measured choices (tests; or after changing XPNET_CONV_CHOICE)."""
    _measured.clear()
