"""Fast max and average pooling (``ops.fast``), written against ``xp`` only.

Max pooling is an elementwise maximum over one strided view per window offset; its backward, and
average pooling, work on reshaped windows when stride == pool (the usual case). On the NumPy
backend, max pooling with stride == pool stores each window's winning offset (a uint8) in forward
and its backward writes one strided view of dx per offset (``_winners_forward``); an input that is
the NCHW view of a convolution's planes (layout.py) is pooled as planes, and its gradient goes back
as planes (``_planes_forward``). Max-pool ties send
the gradient to the first maximum in row-major window order, as the reference and PyTorch do; a NaN
counts as the maximum. Arrays keep the input dtype throughout.
"""
from ..backends import backend_of
from ..errors import ShapeError
from .geometry import out_size, window
from .layout import from_planes, planes_of, to_planes


def check_pool(x, pool, stride, what):
    if getattr(x, "ndim", 0) != 4:
        raise ShapeError(f"{what} expects x (N, C, H, W), got shape {tuple(getattr(x, 'shape', ()))}")
    if min(pool) < 1 or min(stride) < 1:
        raise ShapeError(f"{what}: pool and stride must be >= 1, got {pool} and {stride}")
    if x.shape[2] < pool[0] or x.shape[3] < pool[1]:
        raise ShapeError(f"{what}: window {pool} is larger than the input {tuple(x.shape[2:])}")


def _tiled(x, pool, stride):
    """For stride == pool: (N, C, Ho, ph, Wo, pw) view of the covered part of x, else None."""
    (ph, pw), (sh, sw) = pool, stride
    if (ph, pw) != (sh, sw):
        return None
    n, c, h, w = x.shape
    ho, wo = h // ph, w // pw
    return x[:, :, :ho * ph, :wo * pw].reshape(n, c, ho, ph, wo, pw)


def _untile(xp, d, x_shape):
    """(N, C, Ho, ph, Wo, pw) gradient -> (N, C, H, W), zeros on rows/columns no window covers."""
    n, c, ho, ph, wo, pw = d.shape
    d = d.reshape(n, c, ho * ph, wo * pw)
    if (ho * ph, wo * pw) == tuple(x_shape[2:]):
        return d
    dx = xp.zeros(x_shape, dtype=d.dtype)
    dx[:, :, :ho * ph, :wo * pw] = d
    return dx


def pooled_shape(x_shape, pool, stride):
    """(N, C, Ho, Wo) of a pooling without padding."""
    n, c, h, w = x_shape
    return (n, c, out_size(h, pool[0], stride[0]), out_size(w, pool[1], stride[1]))


def check_pool_grad(dy, y):
    if tuple(dy.shape) != tuple(y.shape):
        raise ShapeError(f"maxpool2d_backward: dy has shape {tuple(dy.shape)}, expected {tuple(y.shape)}")


def maxpool2d_forward(xp, x, pool, stride, planes_out=False):
    """(y, cache): the backend's max pooling (one fused kernel on a GPU; the reference below on the
    CPU backends). ``planes_out``: an input that is the NCHW view of planes may give its output as
    such a view too (for a spectral convolution after it, through ReLU and Dropout: model.py)."""
    return backend_of(x).maxpool2d_forward(x, pool, stride, planes_out)


def maxpool2d_backward(xp, dy, cache):
    """dx for the cache of ``maxpool2d_forward`` (the backend's; see maxpool2d_backward_xp)."""
    return backend_of(dy).maxpool2d_backward(dy, cache)


def maxpool2d_forward_xp(xp, x, pool, stride, planes_out=False):
    """Max over each (ph, pw) window: ``maximum`` of one strided view per window offset.

    ``maximum`` propagates NaN, so a window holding a NaN yields NaN. No argmax is stored: the
    backward pass finds the first maximum again from (x, y). On the NumPy backend, windows that
    tile the input (stride == pool) take ``_winners_forward`` instead, which stores it.
    """
    pool, stride = tuple(int(p) for p in pool), tuple(int(s) for s in stride)
    check_pool(x, pool, stride, "maxpool2d")
    (ph, pw), (sh, sw) = pool, stride
    backend = backend_of(x)
    if (ph, pw) == (sh, sw) and not backend.few_launches:
        return _winners_forward(xp, backend, x, ph, pw, planes_out)
    ho, wo = out_size(x.shape[2], ph, sh), out_size(x.shape[3], pw, sw)
    y = xp.empty(x.shape[:2] + (ho, wo), dtype=x.dtype)

    def part(s):   # images s, on the backend's threads
        xs, ys = x[s], y[s]
        ys[...] = xs[window(0, 0, ho, wo, sh, sw)]
        for i in range(ph):
            for j in range(pw):
                if i or j:
                    xp.maximum(ys, xs[window(i, j, ho, wo, sh, sw)], out=ys)

    backend.split(part, x.shape[0], x.size)
    return y, (x, y, pool, stride)


# -- stride == pool on the CPU: the winning offset stored in forward -----------------------------
# NumPy runs an operation on a strided view (every window offset is one) element by element with a
# call per short row, about ten times slower than on contiguous memory. So each offset's view is
# copied once into a contiguous buffer (a copy is NumPy's cheapest strided loop) and everything else
# runs on contiguous arrays, a few hundred KiB of planes at a time so that they stay in the cache.
# of x per chunk (measured: 256 KiB-4 MiB within 10 % on one thread, 32 KiB 3x slower). 2 MiB
# rather than 1: the step of the 3x3 CNN at batch 128 took 0.955-0.973x as long on two threads
# (fewer, longer NumPy calls for the two threads to interleave), 0.98-1.00x at 64, the big,
# medium and LeNet-5 steps 0.98-1.01x (benchmarks/ab_setting.py, 2026-12-01, AVX-512 EPYC;
# benchmarks/results/2026-12-01-s10-pool-chunk-ab.log)
CHUNK_BYTES = 2 << 20


class Winners:
    """The cache of ``_winners_forward``: per window the row-major offset i * pw + j of its first
    maximum (uint8 while ph * pw <= 256), the input's shape, and the window. ``planes``: the index
    is laid out (Ho, Wo, N*C), as the input was (layout.py), else (N, C, Ho, Wo)."""

    def __init__(self, index, x_shape, pool, planes=False):
        self.index, self.x_shape, self.pool, self.planes = index, tuple(x_shape), pool, planes


def _chunks(s, length, per):
    """Sub-slices of at most ``per`` planes covering the slice ``s`` of range(length)."""
    start, stop, _ = s.indices(length)
    return [slice(a, min(a + per, stop)) for a in range(start, stop, per)]


def _fold(xp, m, k_of, view, count, scratch):
    """m, k_of <- the maximum over ``count`` window offsets and the offset of its first maximum:
    an offset replaces the current winner only when strictly greater, so ties keep the earliest; a
    NaN is handled after the fold, only where there is one: the winner is the window's first NaN.
    ``view(k)`` is offset k's values (shaped like m); scratch (buf, gt, later): buf None to compare
    the views as they are, else an array each view is copied into first (NumPy's ufuncs on a
    strided view loop element by element; a copy is its cheapest strided loop)."""
    buf, gt, later = scratch
    m[...] = view(0)
    k_of[...] = 0
    for k in range(1, count):
        v = view(k)
        if buf is not None:
            xp.copyto(buf, v)
            v = buf
        xp.greater(v, m, out=gt)
        xp.maximum(m, v, out=m)
        # k is larger than every offset before it: max(k_of, k * gt) sets k where gt, without
        # the branch per element of a masked copy (slow on random masks); gt read as its bytes
        # (0 or 1): a bool operand costs a cast loop, 3x the time of the uint8 product
        xp.multiply(gt.view(xp.uint8), k_of.dtype.type(k), out=later)
        xp.maximum(k_of, later, out=k_of)
    if xp.isnan(m).any():   # a host check: these paths run on the NumPy backend only
        for k in reversed(range(count)):
            xp.copyto(k_of, k, where=xp.isnan(view(k)))


def _scratch(xp, kept, name, make, like):
    """A scratch array for NumPy's passes: the one ``kept`` (a dict one thread keeps across its
    chunks) holds under ``name`` when shaped like ``like``, else ``make()``, kept there. Made only
    where NumPy's passes run, not where a compiled pass did the work."""
    arrays = kept.get(name)
    if arrays is None or arrays[0].shape != like.shape:
        arrays = kept[name] = make()
    return arrays


def _fold_windows(xp, backend, m, k_of, planes, pool, kept, bias=None):
    """``_fold`` over the windows of planes (P, H, W) that tile them: one compiled pass for 2x2
    windows where the backend has one (backends/compiled.py: the same bits), else _fold's passes
    (their scratch from ``kept``: see _scratch). ``bias`` (F, 1) or None: a convolution's bias not
    yet added to its output planes, plane p getting bias[p % F] first (in the compiled pass, else
    one NumPy pass as the convolution's)."""
    flat_bias = None if bias is None else bias.reshape(-1)
    if tuple(pool) == (2, 2) and backend.window_max_2x2(planes, m, k_of, flat_bias):
        return
    if bias is not None:
        outputs = planes.reshape(-1, bias.shape[0], planes.shape[1] * planes.shape[2])
        outputs += bias
    ho, wo = m.shape[1], m.shape[2]
    scratch = _scratch(xp, kept, "fold", lambda: (xp.empty_like(m), xp.empty(m.shape, dtype=bool),
                                                   xp.empty_like(k_of)), m)
    _fold(xp, m, k_of, lambda k: _offset_view(planes, k, pool, ho, wo), pool[0] * pool[1], scratch)


def _winners_forward(xp, backend, x, ph, pw, planes_out=False):
    """(y, cache) for stride == pool: y as in maxpool2d_forward_xp (the same ``maximum`` calls in
    the same order, so the same bits), plus the first maximum's offset: an offset replaces the
    current winner only when strictly greater, so ties keep the earliest. A NaN is handled after
    the fold, only in chunks that have one: the winner is the window's first NaN. An input that is
    the NCHW view of planes is pooled as planes (``_planes_forward``; with ``planes_out`` its
    output stays planes too)."""
    planes = planes_of(x)
    if planes is not None:
        return _planes_forward(xp, backend, planes, ph, pw, planes_out)
    n, c, h, w = x.shape
    ho, wo = h // ph, w // pw
    planes = x.reshape(n * c, h, w)
    y = xp.empty((n * c, ho, wo), dtype=x.dtype)
    index = xp.empty((n * c, ho, wo), dtype=xp.uint8 if ph * pw <= 256 else xp.int32)
    per = max(1, CHUNK_BYTES // (h * w * x.dtype.itemsize))

    def part(s):   # planes s, on the backend's threads
        kept = {}
        for t in _chunks(s, n * c, per):
            _fold_windows(xp, backend, y[t], index[t], planes[t], (ph, pw), kept)

    backend.split(part, n * c, x.size)
    y = y.reshape(n, c, ho, wo)
    return y, (Winners(index.reshape(n, c, ho, wo), x.shape, (ph, pw)), y, (ph, pw), (ph, pw))


def _offset_view(planes, k, pool, ho, wo):
    """Window offset k's values of every window of ``planes`` (P, H, W), shaped (P, Ho, Wo)."""
    ph, pw = pool
    i, j = divmod(k, pw)
    return planes[:, i:ho * ph:ph, j:wo * pw:pw]


def _unpool(xp, backend, k_of, d, planes, pool, kept):
    """planes (P, H, W) <- the gradient d (P, Ho, Wo) at each window's winning offset k_of (see
    _scatter), and 0 on the rows and columns that no window covers: one compiled pass for 2x2
    windows where the backend has one (backends/compiled.py: the same bits), else _scatter's passes
    (their scratch from ``kept``: see _scratch)."""
    if tuple(pool) == (2, 2) and backend.unpool_2x2(k_of, d, planes):
        return
    ph, pw = pool
    ho, wo = d.shape[1], d.shape[2]
    eq = _scratch(xp, kept, "eq", lambda: (xp.empty(k_of.shape, dtype=bool),), k_of)[0]
    _scatter(xp, k_of, d, lambda i, j: _offset_view(planes, i * pw + j, pool, ho, wo), pool, eq)
    if ho * ph < planes.shape[1]:
        planes[:, ho * ph:, :] = 0
    if wo * pw < planes.shape[2]:
        planes[:, :ho * ph, wo * pw:] = 0


def _scatter(xp, k_of, d, target, pool, eq):
    """target(i, j) <- d * (k_of == i * pw + j) for every window offset (i, j) of ``pool``; eq: a
    bool scratch shaped like k_of."""
    ph, pw = pool
    for k in range(ph * pw):
        xp.equal(k_of, k, out=eq)
        xp.multiply(d, eq, out=target(*divmod(k, pw)))


def _winners_backward(xp, backend, dy, winners):
    """dx for ``_winners_forward``'s cache: per window offset k, dy * (index == k) written into
    that offset's strided view of dx (the product, not a select, as the other paths: a non-winning
    cell gets 0 * dy, so -0.0 for a negative dy and NaN for a NaN one); cells no window covers get 0."""
    if winners.planes:
        return _planes_backward(xp, backend, dy, winners)
    n, c, h, w = winners.x_shape
    ph, pw = winners.pool
    ho, wo = dy.shape[2], dy.shape[3]
    dx = xp.empty((n * c, h, w), dtype=dy.dtype)
    dys = dy.reshape(n * c, ho, wo)
    index = winners.index.reshape(n * c, ho, wo)
    per = max(1, CHUNK_BYTES // (h * w * dy.dtype.itemsize))

    def part(s):   # planes s, on the backend's threads
        kept = {}
        for t in _chunks(s, n * c, per):
            _unpool(xp, backend, index[t], dys[t], dx[t], (ph, pw), kept)

    backend.split(part, n * c, dx.size)
    return dx.reshape(n, c, h, w)


# -- the same on planes (H, W, N*C): each window offset of a band of output rows is a slice whose
# rows are N*C long and contiguous, so no copy is needed and every pass streams
def _planes_forward(xp, backend, planes, ph, pw, planes_out=False):
    """``_winners_forward`` for an input given as planes (H, W, N, C): the same ``maximum`` and
    ``greater`` of the same values in the same offset order, so the same y and index bits; y comes
    back as a contiguous NCHW array (with ``planes_out``: as the NCHW view of its planes, for a
    spectral convolution after it), the index stays in planes order."""
    h, w, n, c = planes.shape
    ho, wo, nc = h // ph, w // pw, n * c
    bands = planes[:ho * ph].reshape(ho, ph, w, nc)
    y = xp.empty((ho, wo, nc), dtype=planes.dtype)
    index = xp.empty((ho, wo, nc), dtype=xp.uint8 if ph * pw <= 256 else xp.int32)
    per = max(1, CHUNK_BYTES // (ph * w * nc * planes.dtype.itemsize))

    def view(t, k):   # window offset k of the output rows t: (rows, Wo, N*C), rows contiguous
        i, j = divmod(k, pw)
        return bands[t, i, j:wo * pw:pw]

    def part(s):   # output rows s, on the backend's threads
        scratch = None
        for t in _chunks(s, ho, per):
            if (ph, pw) == (2, 2) and backend.window_max_2x2(bands[t], y[t], index[t]):
                continue   # one compiled pass (backends/compiled.py: the same bits)
            if scratch is None or scratch[1].shape != y[t].shape:
                scratch = (None, xp.empty(y[t].shape, dtype=bool), xp.empty_like(index[t]))
            _fold(xp, y[t], index[t], lambda k, t=t: view(t, k), ph * pw, scratch)

    backend.split(part, ho, planes.size)
    out = from_planes(xp, y.reshape(ho, wo, n, c), view=planes_out)
    return out, (Winners(index, (n, c, h, w), (ph, pw), planes=True), out, (ph, pw), (ph, pw))


def _planes_backward(xp, backend, dy, winners):
    """``_winners_backward`` for a planes index: dx is written as planes (the same products of the
    same values) and returned as their NCHW view, which the convolution before reads as planes."""
    n, c, h, w = winners.x_shape
    ph, pw = winners.pool
    ho, wo, nc = dy.shape[2], dy.shape[3], n * c
    dys = to_planes(xp, dy).reshape(ho, wo, nc)
    dx = xp.empty((h, w, nc), dtype=dy.dtype)
    bands = dx[:ho * ph].reshape(ho, ph, w, nc)
    index = winners.index
    per = max(1, CHUNK_BYTES // (ph * w * nc * dy.dtype.itemsize))

    def part(s):   # output rows s, on the backend's threads
        eq = None
        for t in _chunks(s, ho, per):
            if (ph, pw) == (2, 2) and backend.unpool_2x2(index[t], dys[t], bands[t]):
                continue   # one compiled pass, the uncovered columns included
            if eq is None or eq.shape != index[t].shape:
                eq = xp.empty(index[t].shape, dtype=bool)
            _scatter(xp, index[t], dys[t], lambda i, j, t=t: bands[t, i, j:wo * pw:pw], (ph, pw), eq)
            if wo * pw < w:
                bands[t, :, wo * pw:] = 0

    backend.split(part, ho, dx.size)
    if ho * ph < h:
        dx[ho * ph:] = 0
    return dx.reshape(h, w, n, c).transpose(2, 3, 0, 1)


def maxpool2d_backward_xp(xp, dy, cache):
    """dx: each window's gradient goes to its first maximum in row-major window order."""
    x, y, (ph, pw), (sh, sw) = cache
    check_pool_grad(dy, y)
    if isinstance(x, Winners):
        return _winners_backward(xp, backend_of(dy), dy, x)
    if (ph, pw) == (sh, sw):
        backend = backend_of(dy)
        if backend.few_launches:
            return _maxpool_tiled_backward(xp, x, y, dy, ph, pw)
        dx = xp.empty(x.shape, dtype=dy.dtype)

        def part(s):   # images s, on the backend's threads
            dx[s] = _maxpool_tiled_backward(xp, x[s], y[s], dy[s], ph, pw)

        backend.split(part, x.shape[0], x.size)
        return dx
    ho, wo = dy.shape[2], dy.shape[3]
    zero = xp.zeros((), dtype=dy.dtype)
    dx = xp.zeros(x.shape, dtype=dy.dtype)       # overlapping or gapped windows: accumulate
    free = None                                  # windows whose maximum is not found yet
    for i in range(ph):
        for j in range(pw):
            win = window(i, j, ho, wo, sh, sw)
            v = x[win]
            hit = v == y
            hit |= v != v                        # a NaN input is the window's (NaN) maximum
            if free is None:
                free = ~hit
            else:
                hit &= free
                free &= ~hit
            dx[win] += xp.where(hit, dy, zero)
    return dx


def _maxpool_tiled_backward(xp, x, y, dy, ph, pw):
    """Backward when stride == pool: rows of windows as (N, C, Ho, ph, Wo*pw) views, with y and dy
    repeated along W so that every whole-array pass runs over long contiguous rows."""
    n, c, ho, wo = y.shape
    rows = x[:, :, :ho * ph, :wo * pw].reshape(n, c, ho, ph, wo * pw)
    hit = rows == xp.repeat(y, pw, axis=3)[:, :, :, None, :]
    hit |= rows != rows                          # a NaN input is the window's (NaN) maximum
    seen = None                                  # first maximum wins: clear later hits
    for i in range(ph):
        for j in range(pw):
            h = hit[:, :, :, i, j::pw]
            if seen is None:
                seen = h.copy()
            else:
                h &= ~seen
                if (i, j) != (ph - 1, pw - 1):
                    seen |= h
    if (ho * ph, wo * pw) == tuple(x.shape[2:]):
        d = hit * xp.repeat(dy, pw, axis=3)[:, :, :, None, :]
        return d.reshape(x.shape)
    # rows or columns that no window covers (odd sizes): write the covered part in place and
    # zero only the rest, instead of a zeroed array and a copy of the whole gradient into it
    dx = xp.empty(x.shape, dtype=dy.dtype)
    xp.multiply(hit, xp.repeat(dy, pw, axis=3)[:, :, :, None, :],
                out=dx[:, :, :ho * ph, :wo * pw].reshape(n, c, ho, ph, wo * pw))
    dx[:, :, ho * ph:, :] = 0
    dx[:, :, :ho * ph, wo * pw:] = 0
    return dx


def avgpool2d_forward(xp, x, pool, stride):
    """Mean over each (ph, pw) window."""
    pool, stride = tuple(int(p) for p in pool), tuple(int(s) for s in stride)
    check_pool(x, pool, stride, "avgpool2d")
    (ph, pw), (sh, sw) = pool, stride
    t = _tiled(x, pool, stride)
    if t is not None:
        y = t.mean(axis=(3, 5), dtype=x.dtype)
        return y, (tuple(x.shape), pool, stride)
    ho, wo = out_size(x.shape[2], ph, sh), out_size(x.shape[3], pw, sw)
    y = xp.zeros((x.shape[0], x.shape[1], ho, wo), dtype=x.dtype)
    for i in range(ph):
        for j in range(pw):
            y += x[window(i, j, ho, wo, sh, sw)]
    y *= 1.0 / (ph * pw)
    return y, (tuple(x.shape), pool, stride)


def avgpool2d_backward(xp, dy, cache):
    """dx: each window's gradient spread evenly over its cells."""
    x_shape, (ph, pw), (sh, sw) = cache
    share = dy * (1.0 / (ph * pw))
    if (ph, pw) == (sh, sw):
        n, c, ho, wo = dy.shape
        d = xp.broadcast_to(share[:, :, :, None, :, None], (n, c, ho, ph, wo, pw))
        return _untile(xp, xp.ascontiguousarray(d), x_shape)
    ho, wo = dy.shape[2], dy.shape[3]
    dx = xp.zeros(x_shape, dtype=dy.dtype)
    for i in range(ph):
        for j in range(pw):
            dx[window(i, j, ho, wo, sh, sw)] += share
    return dx
