"""Fast convolution and pooling, written against ``xp`` only (NumPy, the strict backend, CuPy).

This module is the ``fast`` implementation behind the ``ops`` facade: it checks arguments, asks
``choose`` (chooser.py) for one of two exact convolution methods per call, and keeps the cache
that routes the backward pass to the same method.

Which method runs is autotune.py's call: the FLOP estimate (chooser.py) on the CPU backends, a
measurement once per shape on a GPU.

* ``spectral`` (spectral.py): DFTs as GEMMs on the zero-padded frame, a batched GEMM over
  frequency bins for the channel mixing; 3-4x fewer FLOPs than direct convolution for 5x5 kernels
  on 14x14 to 28x28 images with tens of channels.
* ``columns`` (columns.py): im2col and a GEMM per block of images, in batch chunks; few input
  channels, 3x3 and 1x1 kernels, large strides.
* ``columns+pool`` (conv_pool.py, the CPU only): the columns route and the max pooling after it
  in one pass over bands of images (``conv2d_pool_forward``, for Sequential's link of
  a convolution to its pooling); the same bits as the two apart.

Pooling (pooling.py) works on strided views and reshaped windows. Convolution geometry (output
sizes, padding, window slices) is in geometry.py, shared with the reference ops and the layers.
Arrays keep the input dtype throughout.
"""
from ..errors import ConfigError, ShapeError
from . import autotune, columns, conv_pool, spectral
from .chooser import choose
from .geometry import padded_hw
from .pooling import avgpool2d_backward, avgpool2d_forward, maxpool2d_backward, maxpool2d_forward


def _check_conv(x, W, b, stride, padding):
    if getattr(x, "ndim", 0) != 4 or getattr(W, "ndim", 0) != 4:
        raise ShapeError(f"conv2d expects x (N, C, H, W) and W (F, C, kh, kw), got shapes "
                         f"{tuple(getattr(x, 'shape', ()))} and {tuple(getattr(W, 'shape', ()))}")
    if x.shape[1] != W.shape[1]:
        raise ShapeError(f"conv2d: x has {x.shape[1]} channels but W expects {W.shape[1]} "
                         f"(x {tuple(x.shape)}, W {tuple(W.shape)})")
    if x.shape[0] == 0 or 0 in W.shape[:2]:   # the routes' blocks and DFT frames need one of each
        raise ShapeError(f"conv2d needs at least one image, channel and filter, got x {tuple(x.shape)} "
                         f"and W {tuple(W.shape)}")
    if b is not None and tuple(b.shape) != (W.shape[0],):
        raise ShapeError(f"conv2d: bias must have shape ({W.shape[0]},), got {tuple(b.shape)}")
    hp, wp = padded_hw(x.shape[2:], padding)
    if hp < W.shape[2] or wp < W.shape[3]:
        raise ShapeError(f"conv2d: kernel {tuple(W.shape[2:])} is larger than the padded input {(hp, wp)}")
    if min(stride) < 1 or min(padding) < 0:
        raise ShapeError(f"conv2d: stride must be >= 1 and padding >= 0, got {stride} and {padding}")


def conv2d_forward(xp, x, W, b, stride, padding, method=None, planes_out=False):
    """y (N, F, Ho, Wo) = cross-correlation of zero-padded x with W, plus b; cache for backward.
    ``method`` ("spectral" or "columns") forces one; by default autotune.method_for picks it.
    ``planes_out``: the spectral route may return y as the NCHW view of its (Ho, Wo, N, F) planes
    (layout.py; for a max pooling next, which pools planes)."""
    stride, padding = tuple(int(s) for s in stride), tuple(int(p) for p in padding)
    _check_conv(x, W, b, stride, padding)
    W = W if W.dtype == x.dtype else W.astype(x.dtype)
    if method is None:
        method = autotune.method_for(xp, x, W, stride, padding)
    elif method not in ("spectral", "columns"):
        raise ConfigError(f"conv2d method must be 'spectral' or 'columns', got {method!r}")
    if method == "spectral":
        y, kept = spectral.forward(xp, x, W, b, stride, padding, planes_out=planes_out)
    else:
        y, kept = columns.forward(xp, x, W, b, stride, padding)
    return y, dict(impl="fast", method=method, x_shape=tuple(x.shape), w_shape=tuple(W.shape),
                   stride=stride, padding=padding, y_shape=tuple(y.shape), dtype=x.dtype,
                   has_bias=b is not None, **kept)


def conv2d_pool_forward(xp, x, W, b, stride, padding, pool, relu=False):
    """(y, cache) of the convolution, the max pooling with windows ``pool`` (ph, pw) that tile its
    output (stride == pool, no padding) and, with ``relu``, the ReLU of the pooled values, in one
    pass (conv_pool.py), when the convolution takes the columns route and the pass applies
    (conv_pool.applies: the backend's launches cheap); None otherwise (then the
    layers run apart). ``conv2d_backward`` takes the cache with the pooled output's gradient."""
    stride, padding, pool = (tuple(int(v) for v in t) for t in (stride, padding, pool))
    _check_conv(x, W, b, stride, padding)
    from ..backends import backend_of
    if not conv_pool.applies(x, W, pool, backend_of(x)):
        return None
    W = W if W.dtype == x.dtype else W.astype(x.dtype)
    if autotune.method_for(xp, x, W, stride, padding) != "columns":
        return None
    y, kept = conv_pool.forward(xp, x, W, b, stride, padding, pool, relu)
    return y, dict(impl="fast", method="columns+pool", x_shape=tuple(x.shape), w_shape=tuple(W.shape),
                   stride=stride, padding=padding, y_shape=tuple(y.shape), dtype=x.dtype,
                   has_bias=b is not None, **kept)


def conv2d_backward(xp, dy, cache, need_dx=True):
    """(dx or None, dW, db or None) for the cache of ``conv2d_forward`` of this module."""
    if not isinstance(cache, dict) or cache.get("impl") != "fast":
        raise ShapeError("conv2d_backward (fast) got a cache from another implementation; "
                         "switch ops before the forward pass, not between forward and backward")
    if tuple(dy.shape) != cache["y_shape"]:
        raise ShapeError(f"conv2d_backward: dy has shape {tuple(dy.shape)}, expected {cache['y_shape']}")
    dy = dy if dy.dtype == cache["dtype"] else dy.astype(cache["dtype"])
    if cache["method"] == "spectral":
        return spectral.backward(xp, dy, cache, need_dx)
    if cache["method"] == "columns+pool":
        return conv_pool.backward(xp, dy, cache, need_dx)
    dx, dW = columns.backward(xp, dy, cache, need_dx)
    return dx, dW, dy.sum(axis=(0, 2, 3)) if cache["has_bias"] else None


__all__ = ["choose", "conv2d_forward", "conv2d_pool_forward", "conv2d_backward", "maxpool2d_forward",
           "maxpool2d_backward", "avgpool2d_forward", "avgpool2d_backward"]
