"""Fast convolution and pooling, written against ``xp`` only (NumPy, the strict backend, CuPy).

Convolution picks one of two exact methods per call from a FLOP estimate:

* ``spectral``: the 2-D DFT of the zero-padded frame, computed with dense DFT matrices
  (xpnet.ops.dft) so that every step is a GEMM. With X, Wh the spectra of the padded input and of
  the kernel, Y = sum_c X[c] * conj(Wh[f, c]) per frequency bin (a batched GEMM over bins), and
  y is the inverse transform sampled at the strided output positions. Backward reuses X:
  dX = sum_f DY[f] * Wh[f, c] and dW = inverse(sum_n conj(DY) * X) on the kernel window.
  For 5x5 kernels on 14x14 to 28x28 images with tens of channels this needs 3-4x fewer FLOPs
  than direct convolution. Layout inside: spatial axes first, (H, W, C, N), so the transforms
  are left-multiplications of large contiguous blocks; NCHW only at the edges.
* ``columns``: im2col with one strided slice per kernel offset and one GEMM, in batch chunks
  that keep the column buffer small. Used when the spectral route costs more (few input
  channels, 1x1 kernels, large strides). Backward adds the column gradients back with one slice
  per kernel offset (no scatter).

Max pooling is an elementwise maximum over one strided view per window offset; its backward, and
average pooling, work on reshaped windows when stride == pool (the usual case). Max-pool ties send the gradient to the first maximum in row-major window order, as the
reference and PyTorch do; a NaN counts as the maximum. Arrays keep the input dtype throughout.
"""
from ..errors import ShapeError
from . import dft

COLUMN_BYTES = 32 * 2 ** 20    # largest im2col buffer per batch chunk
SPECTRAL_ADVANTAGE = 1.25      # the spectral route must need this many times fewer FLOPs
SPECTRAL_BYTES = 512 * 2 ** 20  # ... and its per-bin kernel matrices and spectra must fit in this


def _out(size, k, s):
    return (size - k) // s + 1


def _check_conv(x, W, b, stride, padding):
    if getattr(x, "ndim", 0) != 4 or getattr(W, "ndim", 0) != 4:
        raise ShapeError(f"conv2d expects x (N, C, H, W) and W (F, C, kh, kw), got shapes "
                         f"{tuple(getattr(x, 'shape', ()))} and {tuple(getattr(W, 'shape', ()))}")
    if x.shape[1] != W.shape[1]:
        raise ShapeError(f"conv2d: x has {x.shape[1]} channels but W expects {W.shape[1]} "
                         f"(x {tuple(x.shape)}, W {tuple(W.shape)})")
    if b is not None and tuple(b.shape) != (W.shape[0],):
        raise ShapeError(f"conv2d: bias must have shape ({W.shape[0]},), got {tuple(b.shape)}")
    top, bottom, left, right = padding
    hp, wp = x.shape[2] + top + bottom, x.shape[3] + left + right
    if hp < W.shape[2] or wp < W.shape[3]:
        raise ShapeError(f"conv2d: kernel {tuple(W.shape[2:])} is larger than the padded input {(hp, wp)}")
    if min(stride) < 1 or min(padding) < 0:
        raise ShapeError(f"conv2d: stride must be >= 1 and padding >= 0, got {stride} and {padding}")


def _spectral_flops(n, c, f, h, w, ho, wo, hp, wp, need_dx=True):
    """FLOPs of a spectral forward+backward (transforms + per-bin GEMMs)."""
    kh = hp // 2 + 1
    bins = kh * wp

    def fwd(planes, nh, nw):
        return planes * (2 * 2 * kh * nh * nw + kh * 2 * (2 * wp) * (2 * nw))

    def inv(planes, nh, nw):
        return planes * (kh * 2 * (2 * nw) * (2 * wp) + 2 * nh * (2 * kh) * nw)

    mix = bins * 2 * (2 * f) * (2 * c)
    total = n * (fwd(c, h, w) + inv(f, ho, wo) + fwd(f, ho, wo) + 2 * mix)
    if need_dx:
        total += n * (mix + inv(c, h, w))
    return total


def choose(x_shape, w_shape, stride, padding, itemsize=4):
    """"spectral" or "columns" for this convolution, from FLOP and memory estimates."""
    n, c, h, w = x_shape
    f, _, kh, kw = w_shape
    top, bottom, left, right = padding
    hp, wp = h + top + bottom, w + left + right
    ho, wo = _out(hp, kh, stride[0]), _out(wp, kw, stride[1])
    bins = (hp // 2 + 1) * wp
    if itemsize * bins * (4 * f * c + 2 * c * n + 2 * f * n) > SPECTRAL_BYTES:
        return "columns"
    direct = 3 * 2 * n * ho * wo * f * c * kh * kw
    return "spectral" if SPECTRAL_ADVANTAGE * _spectral_flops(n, c, f, h, w, ho, wo, hp, wp) < direct \
        else "columns"


# -- convolution: public entry points --------------------------------------------------------------
def conv2d_forward(xp, x, W, b, stride, padding):
    """y (N, F, Ho, Wo) = cross-correlation of zero-padded x with W, plus b; cache for backward."""
    stride, padding = tuple(int(s) for s in stride), tuple(int(p) for p in padding)
    _check_conv(x, W, b, stride, padding)
    W = W if W.dtype == x.dtype else W.astype(x.dtype)
    if choose(tuple(x.shape), tuple(W.shape), stride, padding, x.itemsize) == "spectral":
        return _spectral_forward(xp, x, W, b, stride, padding)
    return _columns_forward(xp, x, W, b, stride, padding)


def conv2d_backward(xp, dy, cache, need_dx=True):
    """(dx or None, dW, db or None) for the cache of ``conv2d_forward`` of this module."""
    if not isinstance(cache, dict) or cache.get("impl") != "fast":
        raise ShapeError("conv2d_backward (fast) got a cache from another implementation; "
                         "switch ops before the forward pass, not between forward and backward")
    if tuple(dy.shape) != cache["y_shape"]:
        raise ShapeError(f"conv2d_backward: dy has shape {tuple(dy.shape)}, expected {cache['y_shape']}")
    dy = dy if dy.dtype == cache["dtype"] else dy.astype(cache["dtype"])
    if cache["method"] == "spectral":
        return _spectral_backward(xp, dy, cache, need_dx)
    dx, dW = _columns_backward(xp, dy, cache, need_dx)
    return dx, dW, dy.sum(axis=(0, 2, 3)) if cache["has_bias"] else None


def _cache(method, x, W, b, stride, padding, y_shape, **extra):
    return dict(impl="fast", method=method, x_shape=tuple(x.shape), w_shape=tuple(W.shape),
                stride=stride, padding=padding, y_shape=tuple(y_shape), dtype=x.dtype,
                has_bias=b is not None, **extra)


# -- spectral route ----------------------------------------------------------------------------------
TRANSPOSE_BLOCK = 64   # spatial positions per block when going back to NCHW


def _to_planes(xp, x):
    """(N, C, H, W) -> (H, W, C, N), the layout of the transforms (one strided copy)."""
    return xp.ascontiguousarray(x.transpose(2, 3, 1, 0))


def _from_planes(xp, a):
    """(H, W, C, N) -> (N, C, H, W): a blocked 2-D transpose to (C, N, H*W), then swap C and N
    (whole contiguous rows); several times faster on the CPU than one 4-D strided copy."""
    h, w, c, n = a.shape
    cols = a.reshape(h * w, c * n)
    out = xp.empty((c * n, h * w), dtype=a.dtype)
    for s in range(0, h * w, TRANSPOSE_BLOCK):
        out[:, s:s + TRANSPOSE_BLOCK] = cols[s:s + TRANSPOSE_BLOCK].T
    return xp.ascontiguousarray(out.reshape(c, n, h, w).transpose(1, 0, 2, 3))


def _spectral_forward(xp, x, W, b, stride, padding):
    n, c, h, w = x.shape
    f, _, kh, kw = W.shape
    (sh, sw), (top, bottom, left, right) = stride, padding
    hp, wp = h + top + bottom, w + left + right
    ho, wo = _out(hp, kh, sh), _out(wp, kw, sw)
    dt, khalf = x.dtype, hp // 2 + 1
    bins = khalf * wp
    # kernel spectrum -> per-bin real matrix M = [[Wr, Wi], [-Wi, Wr]] (2F, 2C): Y = M @ [Xr; Xi]
    spec_w = (dft.kernel_forward(xp, dt, kh, kw, hp, wp) @ W.reshape(f * c, kh * kw).T).reshape(2, bins, f, c)
    M = xp.empty((bins, 2 * f, 2 * c), dtype=dt)
    M[:, :f, :c] = spec_w[0]
    M[:, :f, c:] = spec_w[1]
    M[:, f:, :c] = -spec_w[1]
    M[:, f:, c:] = spec_w[0]
    planes = _to_planes(xp, x)                                                   # (H, W, C, N)
    X = dft.spectrum(xp, planes, dft.forward_h(xp, dt, h, top, 1, hp),
                     dft.forward_w(xp, dt, w, left, 1, wp), hp, wp)              # (Kh, Wp, 2, C, N)
    X = X.reshape(bins, 2 * c, n)
    Y = xp.matmul(M, X)                                                          # (bins, 2F, N)
    if b is not None:   # a constant adds hp*wp times itself to the real part of the zero bin
        Y[0, :f] += b.astype(dt).reshape(f, 1) * (hp * wp)
    out = dft.image(xp, Y.reshape(khalf, wp, 2, f, n), dft.inverse_w(xp, dt, wo, 0, sw, wp),
                    dft.inverse_h(xp, dt, ho, 0, sh, hp, wp), ho, wo)            # (Ho, Wo, F, N)
    y = _from_planes(xp, out)
    return y, _cache("spectral", x, W, b, stride, padding, y.shape, X=X, M=M)


def _spectral_backward(xp, dy, cache, need_dx):
    n, c, h, w = cache["x_shape"]
    f, _, kh, kw = cache["w_shape"]
    (sh, sw), (top, bottom, left, right) = cache["stride"], cache["padding"]
    hp, wp = h + top + bottom, w + left + right
    ho, wo = dy.shape[2], dy.shape[3]
    dt, khalf = dy.dtype, hp // 2 + 1
    bins = khalf * wp
    planes = _to_planes(xp, dy)                                                  # (Ho, Wo, F, N)
    DY = dft.spectrum(xp, planes, dft.forward_h(xp, dt, ho, 0, sh, hp),
                      dft.forward_w(xp, dt, wo, 0, sw, wp), hp, wp).reshape(bins, 2 * f, n)
    # db: the zero-frequency bin of DY is the sum of dy over positions
    db = DY[0, :f].sum(axis=1) if cache["has_bias"] else None
    # dW: G = sum_n conj(DY) * X, then the inverse transform on the kernel window
    P = xp.matmul(DY, cache["X"].transpose(0, 2, 1))                             # (bins, 2F, 2C)
    G = xp.empty((2, bins, f, c), dtype=dt)
    xp.add(P[:, :f, :c], P[:, f:, c:], out=G[0])
    xp.subtract(P[:, :f, c:], P[:, f:, :c], out=G[1])
    g = dft.kernel_inverse(xp, dt, kh, kw, hp, wp) @ G.reshape(2 * bins, f * c)  # (kh*kw, F*C)
    dW = xp.ascontiguousarray(g.T.reshape(f, c, kh, kw))
    if not need_dx:
        return None, dW, db
    DX = xp.matmul(cache["M"].transpose(0, 2, 1), DY)                            # (bins, 2C, N)
    out = dft.image(xp, DX.reshape(khalf, wp, 2, c, n), dft.inverse_w(xp, dt, w, left, 1, wp),
                    dft.inverse_h(xp, dt, h, top, 1, hp, wp), h, w)              # (H, W, C, N)
    return _from_planes(xp, out), dW, db


# -- column (im2col) route ---------------------------------------------------------------------------
def _window(i, j, ho, wo, sh, sw):
    """Index of the (N, C, Ho, Wo) inputs that kernel offset (i, j) sees in the padded frame."""
    return (slice(None), slice(None), slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw))


def _chunk(n, per_image):
    return max(1, min(n, COLUMN_BYTES // max(1, per_image)))


def _pad(xp, x, padding):
    top, bottom, left, right = padding
    if not any(padding):
        return x
    n, c, h, w = x.shape
    xpad = xp.zeros((n, c, h + top + bottom, w + left + right), dtype=x.dtype)
    xpad[:, :, top:top + h, left:left + w] = x
    return xpad


def _columns(xp, xpad, kh, kw, ho, wo, sh, sw):
    """(C*kh*kw, N*Ho*Wo) columns of a padded (N, C, Hp, Wp) chunk."""
    n, c = xpad.shape[:2]
    cols = xp.empty((c, kh, kw, n, ho, wo), dtype=xpad.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = xpad[_window(i, j, ho, wo, sh, sw)].transpose(1, 0, 2, 3)
    return cols.reshape(c * kh * kw, n * ho * wo)


def _columns_forward(xp, x, W, b, stride, padding):
    n, c, h, w = x.shape
    f, _, kh, kw = W.shape
    (sh, sw), (top, bottom, left, right) = stride, padding
    ho, wo = _out(h + top + bottom, kh, sh), _out(w + left + right, kw, sw)
    wm = W.reshape(f, c * kh * kw)
    y = xp.empty((n, f, ho, wo), dtype=x.dtype)
    step = _chunk(n, c * kh * kw * ho * wo * x.itemsize)
    for s in range(0, n, step):
        cols = _columns(xp, _pad(xp, x[s:s + step], padding), kh, kw, ho, wo, sh, sw)
        y[s:s + step] = (wm @ cols).reshape(f, -1, ho, wo).transpose(1, 0, 2, 3)
    if b is not None:
        y += b.astype(x.dtype).reshape(1, f, 1, 1)
    kept = cols if step >= n else None   # one chunk: backward reuses its columns
    return y, _cache("columns", x, W, b, stride, padding, y.shape, inputs=x, weights=W, columns=kept)


def _columns_backward(xp, dy, cache, need_dx):
    x, W = cache["inputs"], cache["weights"]
    n, c, h, w = x.shape
    f, _, kh, kw = W.shape
    (sh, sw), (top, bottom, left, right) = cache["stride"], cache["padding"]
    ho, wo = dy.shape[2], dy.shape[3]
    wm = W.reshape(f, c * kh * kw)
    dW = xp.zeros((f, c * kh * kw), dtype=dy.dtype)
    dx = xp.empty((n, c, h, w), dtype=dy.dtype) if need_dx else None
    step = _chunk(n, c * kh * kw * ho * wo * dy.itemsize)
    for s in range(0, n, step):
        part = _pad(xp, x[s:s + step], cache["padding"])
        m = part.shape[0]
        g = dy[s:s + step].transpose(1, 0, 2, 3).reshape(f, m * ho * wo)
        cols = cache["columns"] if step >= n and cache["columns"] is not None \
            else _columns(xp, part, kh, kw, ho, wo, sh, sw)
        dW += g @ cols.T
        if need_dx:
            dcols = (wm.T @ g).reshape(c, kh, kw, m, ho, wo)
            dpad = xp.zeros(part.shape, dtype=dy.dtype)
            for i in range(kh):
                for j in range(kw):
                    dpad[_window(i, j, ho, wo, sh, sw)] += dcols[:, i, j].transpose(1, 0, 2, 3)
            dx[s:s + step] = dpad[:, :, top:top + h, left:left + w]
    return dx, dW.reshape(f, c, kh, kw)


# -- pooling -------------------------------------------------------------------------------------------
def _check_pool(x, pool, stride, what):
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


def maxpool2d_forward(xp, x, pool, stride):
    """Max over each (ph, pw) window: ``maximum`` of one strided view per window offset.

    ``maximum`` propagates NaN, so a window holding a NaN yields NaN. No argmax is stored: the
    backward pass finds the first maximum again from (x, y).
    """
    pool, stride = tuple(int(p) for p in pool), tuple(int(s) for s in stride)
    _check_pool(x, pool, stride, "maxpool2d")
    (ph, pw), (sh, sw) = pool, stride
    ho, wo = _out(x.shape[2], ph, sh), _out(x.shape[3], pw, sw)
    y = x[_window(0, 0, ho, wo, sh, sw)].copy()
    for i in range(ph):
        for j in range(pw):
            if i or j:
                xp.maximum(y, x[_window(i, j, ho, wo, sh, sw)], out=y)
    return y, (x, y, pool, stride)


def maxpool2d_backward(xp, dy, cache):
    """dx: each window's gradient goes to its first maximum in row-major window order."""
    x, y, (ph, pw), (sh, sw) = cache
    if tuple(dy.shape) != tuple(y.shape):
        raise ShapeError(f"maxpool2d_backward: dy has shape {tuple(dy.shape)}, expected {tuple(y.shape)}")
    if (ph, pw) == (sh, sw):
        return _maxpool_tiled_backward(xp, x, y, dy, ph, pw)
    ho, wo = dy.shape[2], dy.shape[3]
    zero = xp.zeros((), dtype=dy.dtype)
    dx = xp.zeros(x.shape, dtype=dy.dtype)       # overlapping or gapped windows: accumulate
    free = None                                  # windows whose maximum is not found yet
    for i in range(ph):
        for j in range(pw):
            win = _window(i, j, ho, wo, sh, sw)
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
    d = hit * xp.repeat(dy, pw, axis=3)[:, :, :, None, :]
    return _untile(xp, d.reshape(n, c, ho, ph, wo, pw), x.shape)


def avgpool2d_forward(xp, x, pool, stride):
    """Mean over each (ph, pw) window."""
    pool, stride = tuple(int(p) for p in pool), tuple(int(s) for s in stride)
    _check_pool(x, pool, stride, "avgpool2d")
    (ph, pw), (sh, sw) = pool, stride
    t = _tiled(x, pool, stride)
    if t is not None:
        y = t.mean(axis=(3, 5), dtype=x.dtype)
        return y, (tuple(x.shape), pool, stride)
    ho, wo = _out(x.shape[2], ph, sh), _out(x.shape[3], pw, sw)
    y = xp.zeros((x.shape[0], x.shape[1], ho, wo), dtype=x.dtype)
    for i in range(ph):
        for j in range(pw):
            y += x[_window(i, j, ho, wo, sh, sw)]
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
            dx[_window(i, j, ho, wo, sh, sw)] += share
    return dx
