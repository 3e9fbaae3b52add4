"""The columns (im2col) convolution route of ``ops.fast``.

im2col with one strided slice per kernel offset and one GEMM, in batch chunks that keep the column
buffer small. Used when the spectral route costs more (few input channels, 1x1 kernels, large
strides). Backward adds the column gradients back with one slice per kernel offset (no scatter).
"""
from ..backends import backend_of
from .gemm import wide_matmul
from .geometry import out_size, pad, padded_hw, window

# Largest im2col buffer per batch chunk on the CPU. The GEMM is already large at this size (C*kh*kw
# rows by thousands of columns), so bigger chunks gain nothing; smaller ones bound the memory of a
# large batch. Backward rebuilds the columns per chunk unless a single chunk held the whole batch, so
# a backend with memory to spare sets a larger ``column_bytes`` (CuPy: backends/cupy_backend.py).
COLUMN_BYTES = 32 * 2 ** 20


def _chunk(n, per_image, like):
    limit = getattr(backend_of(like), "column_bytes", None) or COLUMN_BYTES
    return max(1, min(n, limit // max(1, per_image)))


_OFFSETS = {}  # (backend, geometry) -> the flat input position of every (kernel offset, output)


def _offsets(xp, backend, hp, wp, kh, kw, ho, wo, sh, sw):
    """(kh*kw*Ho*Wo,) positions in a flattened (Hp, Wp) frame, made on the device once per shape."""
    key = (backend.name, hp, wp, kh, kw, ho, wo, sh, sw)
    if key not in _OFFSETS:
        i = xp.arange(kh, dtype=xp.int64).reshape(kh, 1, 1, 1)
        j = xp.arange(kw, dtype=xp.int64).reshape(1, kw, 1, 1)
        r = xp.arange(ho, dtype=xp.int64).reshape(1, 1, ho, 1) * sh
        q = xp.arange(wo, dtype=xp.int64).reshape(1, 1, 1, wo) * sw
        _OFFSETS[key] = ((i + r) * wp + (j + q)).reshape(-1)
    return _OFFSETS[key]


def _columns(xp, xpad, kh, kw, ho, wo, sh, sw):
    """(C*kh*kw, N*Ho*Wo) columns of a padded (N, C, Hp, Wp) chunk: one strided slice per kernel
    offset, or, where launches cost more (``backend.few_launches``), one gather by cached offsets."""
    n, c, hp, wp = xpad.shape
    backend = backend_of(xpad)
    if backend.few_launches:
        idx = _offsets(xp, backend, hp, wp, kh, kw, ho, wo, sh, sw)
        cols = xpad.reshape(n, c, hp * wp)[:, :, idx].reshape(n, c * kh * kw, ho * wo)
        return xp.ascontiguousarray(cols.transpose(1, 0, 2)).reshape(c * kh * kw, n * ho * wo)
    cols = xp.empty((c, kh, kw, n, ho, wo), dtype=xpad.dtype)

    def offsets(s):   # kernel offsets s, on the backend's threads
        for o in range(kh * kw)[s]:
            i, j = divmod(o, kw)
            cols[:, i, j] = xpad[window(i, j, ho, wo, sh, sw)].transpose(1, 0, 2, 3)

    backend.split(offsets, kh * kw, cols.size)
    return cols.reshape(c * kh * kw, n * ho * wo)


def forward(xp, x, W, b, stride, padding):
    """(y, what backward needs: the inputs, the weights, and the columns when one chunk held them)."""
    n, c, h, w = x.shape
    f, _, kh, kw = W.shape
    (sh, sw), (top, bottom, left, right) = stride, padding
    hp, wp = padded_hw((h, w), padding)
    ho, wo = out_size(hp, kh, sh), out_size(wp, kw, sw)
    wm = W.reshape(f, c * kh * kw)
    y = xp.empty((n, f, ho, wo), dtype=x.dtype)
    step = _chunk(n, c * kh * kw * ho * wo * x.itemsize, x)
    for s in range(0, n, step):
        cols = _columns(xp, pad(xp, x[s:s + step], padding), kh, kw, ho, wo, sh, sw)
        y[s:s + step] = wide_matmul(xp, wm, cols).reshape(f, -1, ho, wo).transpose(1, 0, 2, 3)
    if b is not None:
        y += b.astype(x.dtype).reshape(1, f, 1, 1)
    kept = cols if step >= n else None   # one chunk: backward reuses its columns
    return y, {"inputs": x, "weights": W, "columns": kept}


def backward(xp, dy, cache, need_dx):
    """(dx or None, dW) from the cache of ``forward`` (kept by ops.fast)."""
    x, W = cache["inputs"], cache["weights"]
    n, c, h, w = x.shape
    f, _, kh, kw = W.shape
    (sh, sw), (top, bottom, left, right) = cache["stride"], cache["padding"]
    ho, wo = dy.shape[2], dy.shape[3]
    wm = W.reshape(f, c * kh * kw)
    dW = xp.zeros((f, c * kh * kw), dtype=dy.dtype)
    dx = xp.empty((n, c, h, w), dtype=dy.dtype) if need_dx else None
    step = _chunk(n, c * kh * kw * ho * wo * dy.itemsize, dy)
    for s in range(0, n, step):
        part = pad(xp, x[s:s + step], cache["padding"])
        m = part.shape[0]
        g = dy[s:s + step].transpose(1, 0, 2, 3).reshape(f, m * ho * wo)
        cols = cache["columns"] if step >= n and cache["columns"] is not None \
            else _columns(xp, part, kh, kw, ho, wo, sh, sw)
        dW += g @ cols.T
        if need_dx:
            dcols = wide_matmul(xp, wm.T, g).reshape(c, kh, kw, m, ho, wo)
            dpad = xp.zeros(part.shape, dtype=dy.dtype)

            def images(r, dcols=dcols, dpad=dpad):   # images r of the chunk, on the backend's threads
                for i in range(kh):
                    for j in range(kw):
                        dpad[r][window(i, j, ho, wo, sh, sw)] += dcols[:, i, j, r].transpose(1, 0, 2, 3)

            backend_of(dy).split(images, m, dcols.size)
            dx[s:s + step] = dpad[:, :, top:top + h, left:left + w]
    return dx, dW.reshape(f, c, kh, kw)
