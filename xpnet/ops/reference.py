"""Reference convolution and pooling: short and plainly correct, the judge for ``fast``.

Every op gathers its windows with one slice per kernel offset (kh * kw slices, never a loop over
images or pixels): ``x[:, :, i : i + sh*(Ho-1) + 1 : sh, j : j + sw*(Wo-1) + 1 : sw]`` is the
(N, C, Ho, Wo) block of inputs that kernel position (i, j) sees. Convolution is then one
``tensordot`` over (C, kh, kw), as in PyTorch's ``conv2d`` (cross-correlation, no kernel flip).

Max-pool ties: the whole gradient of a window goes to its FIRST maximal element in row-major
window order (the lowest (i, j)), which is what PyTorch's CPU ``max_pool2d`` does. A NaN in a
window counts as its maximum; with several NaNs the gradient goes to the first of them (PyTorch's
CPU kernel, which updates its maximum on every NaN, picks the last: NaN training has gone wrong
either way).
"""
from .geometry import out_size, pad, window


def _columns(xp, x, kh, kw, sh, sw):
    """im2col: (N, C, H, W) -> (N, C, kh, kw, Ho, Wo)."""
    n, c, h, w = x.shape
    ho, wo = out_size(h, kh, sh), out_size(w, kw, sw)
    cols = [x[window(i, j, ho, wo, sh, sw)] for i in range(kh) for j in range(kw)]
    return xp.stack(cols, axis=2).reshape(n, c, kh, kw, ho, wo)


# -- convolution ---------------------------------------------------------------------------------
def conv2d_forward(xp, x, W, b, stride, padding):
    """y[n, f] = sum_c,i,j W[f, c, i, j] * xpad[n, c, s*h + i, s*w + j] + b[f]."""
    sh, sw = stride
    kh, kw = W.shape[2], W.shape[3]
    xpad = pad(xp, x, padding)
    cols = _columns(xp, xpad, kh, kw, sh, sw)                            # (N, C, kh, kw, Ho, Wo)
    y = xp.tensordot(cols, W, axes=([1, 2, 3], [1, 2, 3]))              # (N, Ho, Wo, F)
    y = y.transpose(0, 3, 1, 2)
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    y = xp.ascontiguousarray(y)
    return y, (cols, W, tuple(x.shape), tuple(xpad.shape), (sh, sw), tuple(padding), b is not None)


def conv2d_backward(xp, dy, cache, need_dx=True):
    cols, W, x_shape, pad_shape, (sh, sw), (top, bottom, left, right), has_bias = cache
    db = dy.sum(axis=(0, 2, 3)) if has_bias else None
    dW = xp.tensordot(dy, cols, axes=([0, 2, 3], [0, 4, 5]))            # (F, C, kh, kw)
    if not need_dx:
        return None, dW, db
    kh, kw = W.shape[2], W.shape[3]
    ho, wo = dy.shape[2], dy.shape[3]
    dcols = xp.tensordot(dy, W, axes=([1], [0]))                         # (N, Ho, Wo, C, kh, kw)
    dxpad = xp.zeros(pad_shape, dtype=dy.dtype)
    for i in range(kh):
        for j in range(kw):
            dxpad[window(i, j, ho, wo, sh, sw)] += dcols[..., i, j].transpose(0, 3, 1, 2)
    h, w = x_shape[2], x_shape[3]
    dx = dxpad[:, :, top:top + h, left:left + w]
    return xp.ascontiguousarray(dx), dW, db


# -- pooling ---------------------------------------------------------------------------------------
def _pool_windows(xp, x, pool, stride):
    ph, pw = pool
    sh, sw = stride
    n, c, h, w = x.shape
    ho, wo = out_size(h, ph, sh), out_size(w, pw, sw)
    wins = xp.stack([x[window(i, j, ho, wo, sh, sw)] for i in range(ph) for j in range(pw)], axis=2)
    return wins, ho, wo                                                 # (N, C, ph*pw, Ho, Wo)


def maxpool2d_forward(xp, x, pool, stride, planes_out=False):   # planes_out: a layout hint, unused here
    wins, ho, wo = _pool_windows(xp, x, pool, stride)
    arg = wins.argmax(axis=2)                                           # first maximum on ties
    y = xp.take_along_axis(wins, arg[:, :, None], axis=2)[:, :, 0]
    return y, (arg, tuple(x.shape), tuple(pool), tuple(stride))


def maxpool2d_backward(xp, dy, cache):
    arg, x_shape, (ph, pw), (sh, sw) = cache
    ho, wo = dy.shape[2], dy.shape[3]
    dx = xp.zeros(x_shape, dtype=dy.dtype)
    for i in range(ph):
        for j in range(pw):
            dx[window(i, j, ho, wo, sh, sw)] += dy * (arg == i * pw + j)
    return dx


def avgpool2d_forward(xp, x, pool, stride):
    wins, ho, wo = _pool_windows(xp, x, pool, stride)
    return wins.mean(axis=2), (tuple(x.shape), tuple(pool), tuple(stride))


def avgpool2d_backward(xp, dy, cache):
    x_shape, (ph, pw), (sh, sw) = cache
    ho, wo = dy.shape[2], dy.shape[3]
    share = dy * (1.0 / (ph * pw))
    dx = xp.zeros(x_shape, dtype=dy.dtype)
    for i in range(ph):
        for j in range(pw):
            dx[window(i, j, ho, wo, sh, sw)] += share
    return dx
