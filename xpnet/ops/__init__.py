"""Convolution and pooling kernels as plain functions of ``xp`` arrays.

Two implementations share one signature, both written against ``xp`` only: ``reference`` (short,
obviously right, the judge in tests) and ``fast`` (the default: spectral or im2col convolution
chosen per shape, reshaped pooling; see fast.py). Layers call the functions below;
``use("reference")`` or XPNET_OPS=reference switches globally.

    conv2d_forward(xp, x, W, b, stride, padding)  -> (y, cache)
        x (N, C, H, W); W (F, C, kh, kw); b (F,) or None; stride (sh, sw);
        padding (top, bottom, left, right) ints.  y (N, F, Ho, Wo).
    conv2d_backward(xp, dy, cache, need_dx=True) -> (dx or None, dW, db or None)
    maxpool2d_forward(xp, x, pool, stride, planes_out=False) -> (y, cache)
        pool, stride: (h, w); no padding. planes_out: an input that is the NCHW view of planes
        may give y so too (ops/layout.py; the reference ignores it).
    maxpool2d_backward(xp, dy, cache) -> dx
    avgpool2d_forward(xp, x, pool, stride) -> (y, cache)
    avgpool2d_backward(xp, dy, cache) -> dx
"""
import importlib
import os

from ..errors import ConfigError

NAMES = ("conv2d_forward", "conv2d_backward", "maxpool2d_forward", "maxpool2d_backward",
         "avgpool2d_forward", "avgpool2d_backward")
_current = None


def implementations():
    """Names of the implementations."""
    return ["reference", "fast"]


def use(name):
    """Switch every layer to the named implementation ("reference" or "fast")."""
    global _current
    if name not in ("reference", "fast"):
        raise ConfigError(f"unknown ops implementation {name!r}; expected 'reference' or 'fast'")
    module = importlib.import_module(f"{__name__}.{name}")
    g = globals()
    for fn in NAMES:
        g[fn] = getattr(module, fn)
    _current = name


def current():
    return _current


def _refusing(message):
    def refused(*args, **kwargs):
        raise ConfigError(message)
    return refused


def _from_environment():
    """$XPNET_OPS's implementation (default "fast"). A bad value is not raised here, at import (a
    traceback before any command could report it, and ``xpnet --help`` broken): every kernel
    raises the ConfigError when a layer first computes, until ``use()`` picks one."""
    global _refused
    name = os.environ.get("XPNET_OPS") or "fast"
    try:
        use(name)
    except ConfigError:
        _refused = f"XPNET_OPS must be 'reference' or 'fast' (or unset), got {name!r}"
        g = globals()
        for fn in NAMES:
            g[fn] = _refusing(_refused)


def check():
    """Raise the ConfigError of a bad $XPNET_OPS now (the command line checks it first thing)."""
    if _current is None and _refused:
        raise ConfigError(_refused)


_refused = None
_from_environment()
