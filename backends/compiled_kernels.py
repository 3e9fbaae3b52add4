"""The numba kernels of backends/compiled.py (which says what they compute and why), in a module of
their own: importing numba takes about 0.3 s, so compiled.py imports this only when a kernel first
runs, not with every ``import xpnet``. Compiled on first use per dtype and layout, and cached on
disk where a folder is writable (``_compiled``)."""
import numba
import numpy


def _compiled(fn):
    """fn compiled (GIL released), its machine code cached on disk where numba finds a writable
    folder (beside this file, else its user cache or $NUMBA_CACHE_DIR); where none is (a read-only
    install and home folder), numba refuses to cache and it is compiled afresh in each process."""
    try:
        return numba.njit(nogil=True, cache=True)(fn)
    except RuntimeError:   # "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(fn)


@numba.njit(inline="always")
def _first_max(a, b, e, f):
    """(maximum, offset) of a window's four values in row-major order: the value as numpy.maximum
    takes it offset by offset (the later of two that compare equal: +0.0 and -0.0), the offset of
    the first maximum (it moves only on a strictly greater value)."""
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
    return best, k


@_compiled
def window_max_2x2(planes, m, k_of, bias):   # returns whether some value was NaN
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
                m_row[c], k_row[c] = _first_max(a, b, e, f)
    return nan

@_compiled
def unpool_2x2(k_of, d, planes, pick):   # pick: _picks' table, d's dtype
    count, ho, wo = d.shape
    h, w = planes.shape[1], planes.shape[2]
    zero = d.dtype.type(0)
    for p in range(count):
        for r in range(ho):
            k_row, d_row = k_of[p, r], d[p, r]
            top, bottom = planes[p, 2 * r], planes[p, 2 * r + 1]
            for c in range(wo):
                one, g = pick[k_row[c]], d_row[c]
                top[2 * c], top[2 * c + 1] = g * one[0], g * one[1]
                bottom[2 * c], bottom[2 * c + 1] = g * one[2], g * one[3]
            for c in range(2 * wo, w):
                top[c] = zero
                bottom[c] = zero
        for row in range(2 * ho, h):
            for c in range(w):
                planes[p, row, c] = zero

@_compiled
def band_max_2x2(bands, m, k_of):   # bands (R, 2, W, Q); each window's four values Q apart
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
                m_row[q], k_row[q] = _first_max(a, b, e, f)
    return nan

@_compiled
def band_unpool_2x2(k_of, d, bands, pick):
    count, wo, width = d.shape
    w = bands.shape[2]
    zero = d.dtype.type(0)
    for r in range(count):
        for i in range(2):
            for c in range(wo):
                k_row, d_row = k_of[r, c], d[r, c]
                left, right = bands[r, i, 2 * c], bands[r, i, 2 * c + 1]
                for q in range(width):
                    one, g = pick[k_row[q]], d_row[q]
                    left[q], right[q] = g * one[2 * i], g * one[2 * i + 1]
            for c in range(2 * wo, w):
                bands[r, i, c, :] = zero



@_compiled
def dropout(x, keep, scale, y):   # 1-D; keep: the bool mask's bytes (0 or 1)
    for i in range(x.shape[0]):
        y[i] = x[i] * (scale * x.dtype.type(keep[i]))   # scale * 1 or scale * 0: where(keep, scale, 0)


@_compiled
def splitmix64(start, first, out):   # out[i] <- the word at position first + i (random.py)
    golden = numpy.uint64(0x9E3779B97F4A7C15)
    for i in range(out.shape[0]):
        z = numpy.uint64(first + i) * golden + start
        z ^= z >> numpy.uint64(30)
        z *= numpy.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> numpy.uint64(27)
        z *= numpy.uint64(0x94D049BB133111EB)
        out[i] = z ^ (z >> numpy.uint64(31))


@_compiled
def relu(x, y, mask):   # 1-D; mask: bool bytes
    zero = x.dtype.type(0)
    for i in range(x.shape[0]):
        v = x[i]
        if not (v > zero or v != v):   # numpy.maximum(v, 0): NaN kept, 0 (not -0.0) when equal
            v = zero
        y[i] = v
        mask[i] = v > zero


@_compiled
def relu_dropout(x, keep, scale, y, mask):   # 1-D; keep, mask: bool bytes
    zero = x.dtype.type(0)
    for i in range(x.shape[0]):
        v = x[i]
        if not (v > zero or v != v):   # as relu
            v = zero
        mask[i] = v > zero
        y[i] = v * (scale * x.dtype.type(keep[i]))   # as dropout


@_compiled
def relu_dropout_grad(g, keep, scale, mask, out):   # 1-D; keep, mask: bool bytes
    for i in range(g.shape[0]):
        out[i] = (g[i] * (scale * g.dtype.type(keep[i]))) * g.dtype.type(mask[i])   # dropout, then multiply_mask


@_compiled
def multiply_mask(a, keep, out):   # 1-D; keep: bool bytes
    for i in range(a.shape[0]):
        out[i] = a[i] * a.dtype.type(keep[i])   # as NumPy: the bool cast to 1 or 0, then multiplied


@numba.njit(inline="always")
def _clip(g, lo, hi):
    """numpy.clip(g, lo, hi) of a value that is not NaN as NumPy clips a grid by bounds in an
    array: lo where g compares equal to it (+0.0 for -0.0 with lo 0), hi above it (the grid, and
    the top-left neighbours' clip to the frame)."""
    if g <= lo:
        return lo
    if g > hi:
        return hi
    return g


@_compiled
def affine_warp(x, k, u, v, fill, low_x, high_x, low_y, high_y, out):   # k: no grid value NaN or inf
    n, c, h, w = x.shape
    two = x.dtype.type(-2)
    right, bottom = x.dtype.type(w), x.dtype.type(h)        # the top-left neighbour's limits
    wf = w + 4
    frame = numpy.empty((c, h + 4, wf), dtype=x.dtype)   # the planes in a frame of fill
    frame[:] = fill
    flat = frame.reshape(c, (h + 4) * wf)
    fx, fy = numpy.empty(w, dtype=x.dtype), numpy.empty(w, dtype=x.dtype)   # a row's fractions
    xi, yi = numpy.empty(w, dtype=numpy.int32), numpy.empty(w, dtype=numpy.int32)   # and top-left neighbours
    for i in range(n):
        frame[:, 2:h + 2, 2:w + 2] = x[i]
        kx0, kx1, kx2 = k[i, 0, 0], k[i, 0, 1], k[i, 0, 2]
        ky0, ky1, ky2 = k[i, 1, 0], k[i, 1, 1], k[i, 1, 2]
        for r in range(h):
            row_x, row_y = kx1 * v[r], ky1 * v[r]
            for q in range(w):   # the row's grid (clipped: -inf, inf but for mode nearest), then its samples
                gx = (row_x + kx0 * u[q]) + kx2
                gy = (row_y + ky0 * u[q]) + ky2
                gx, gy = _clip(gx, low_x, high_x), _clip(gy, low_y, high_y)
                x0, y0 = numpy.floor(gx), numpy.floor(gy)
                fx[q], fy[q] = gx - x0, gy - y0
                xi[q], yi[q] = numpy.int32(_clip(x0, two, right)), numpy.int32(_clip(y0, two, bottom))
            for p in range(c):
                plane = flat[p]
                for q in range(w):
                    j = (yi[q] + 2) * wf + xi[q] + 2
                    c00, c01, c10, c11 = plane[j], plane[j + 1], plane[j + wf], plane[j + wf + 1]
                    top = (c01 - c00) * fx[q] + c00
                    low = (c11 - c10) * fx[q] + c10
                    out[i, p, r, q] = (low - top) * fy[q] + top
