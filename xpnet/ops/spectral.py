"""The spectral convolution route of ``ops.fast``.

The 2-D DFT of the zero-padded frame, computed with dense DFT matrices (xpnet.ops.dft) so that
every step is a GEMM. With X, Wh the spectra of the padded input
and of the kernel, Y = sum_c X[c] * conj(Wh[f, c]) per frequency bin (a batched GEMM over bins), and
y is the inverse transform sampled at the strided output positions. Backward reuses X: dX = sum_f
DY[f] * Wh[f, c] and dW = inverse(sum_n conj(DY) * X) on the kernel window. For 5x5 kernels on 14x14
to 28x28 images with tens of channels this needs 3-4x fewer FLOPs than direct convolution. Layout
inside: spatial axes first, (H, W, C, N), so the transforms are left-multiplications of large
contiguous blocks; NCHW only at the edges.
"""
from ..backends import backend_of
from . import dft
from .gemm import wide_matmul
from .geometry import out_size, padded_hw

TRANSPOSE_BLOCK = 64   # spatial positions per block when going back to NCHW


def _to_planes(xp, x):
    """(N, C, H, W) -> (H, W, C, N), the layout of the transforms: one strided copy, in pieces of
    rows on the backend's threads."""
    n, c, h, w = x.shape
    out = xp.empty((h, w, c, n), dtype=x.dtype)

    def part(s):
        out[s] = x[:, :, s].transpose(2, 3, 1, 0)

    backend_of(x).split(part, h, x.size)
    return out


def _from_planes(xp, a):
    """(H, W, C, N) -> (N, C, H, W). On the CPU a blocked 2-D transpose to (C, N, H*W), then a swap
    of C and N (whole contiguous rows), several times faster than one 4-D strided copy; where
    launches cost more than strided copies (``backend.few_launches``: GPUs) one strided copy."""
    if backend_of(a).few_launches:
        return xp.ascontiguousarray(a.transpose(3, 2, 0, 1))
    h, w, c, n = a.shape
    backend = backend_of(a)
    cols = a.reshape(h * w, c * n)
    out = xp.empty((c * n, h * w), dtype=a.dtype)

    def blocks(s):   # blocks of positions s, on the backend's threads
        for b in range(0, h * w, TRANSPOSE_BLOCK)[s]:
            out[:, b:b + TRANSPOSE_BLOCK] = cols[b:b + TRANSPOSE_BLOCK].T

    backend.split(blocks, -(-h * w // TRANSPOSE_BLOCK), a.size)
    planes = out.reshape(c, n, h, w)
    y = xp.empty((n, c, h, w), dtype=a.dtype)

    def swap(s):     # images s
        y[s] = planes[:, s].transpose(1, 0, 2, 3)

    backend.split(swap, n, a.size)
    return y


def _kernel_matrices(xp, W, dt, hp, wp):
    """The kernel spectrum as one real matrix per frequency bin, M = [[Wr, Wi], [-Wi, Wr]]
    (bins, 2F, 2C), so that Y = M @ [Xr; Xi]: one GEMM, then the backend's spectral_matrices
    (one fused kernel on a GPU, four block copies on the CPU)."""
    f, c, kh, kw = W.shape
    bins = (hp // 2 + 1) * wp
    spec_w = wide_matmul(xp, dft.kernel_forward(xp, dt, kh, kw, hp, wp),
                         W.reshape(f * c, kh * kw).T).reshape(2, bins, f, c)
    return backend_of(W).spectral_matrices(spec_w)


def forward(xp, x, W, b, stride, padding):
    """(y, what backward needs: the input spectrum X and the per-bin kernel matrices M)."""
    n, c, h, w = x.shape
    f, _, kh, kw = W.shape
    (sh, sw), (top, bottom, left, right) = stride, padding
    hp, wp = padded_hw((h, w), (top, bottom, left, right))
    ho, wo = out_size(hp, kh, sh), out_size(wp, kw, sw)
    dt, khalf = x.dtype, hp // 2 + 1
    bins = khalf * wp
    M = _kernel_matrices(xp, W, dt, hp, wp)                                      # (bins, 2F, 2C)
    planes = _to_planes(xp, x)                                                   # (H, W, C, N)
    X = dft.spectrum(xp, planes, dft.forward_h(xp, dt, h, top, 1, hp),
                     dft.forward_w(xp, dt, w, left, 1, wp), hp, wp)              # (Kh, Wp, 2, C, N)
    X = X.reshape(bins, 2 * c, n)
    Y = backend_of(X).matmul(M, X)                                               # (bins, 2F, N)
    if b is not None:   # a constant adds hp*wp times itself to the real part of the zero bin
        zero_bin = Y[0, :f]
        xp.add(zero_bin, (b if b.dtype == dt else b.astype(dt)).reshape(f, 1) * (hp * wp), out=zero_bin)
    out = dft.image(xp, Y.reshape(khalf, wp, 2, f, n), dft.inverse_w(xp, dt, wo, 0, sw, wp),
                    dft.inverse_h(xp, dt, ho, 0, sh, hp, wp), ho, wo)            # (Ho, Wo, F, N)
    y = _from_planes(xp, out)
    return y, {"X": X, "M": M}


def backward(xp, dy, cache, need_dx):
    """(dx or None, dW, db or None) from the cache of ``forward`` (kept by ops.fast)."""
    n, c, h, w = cache["x_shape"]
    f, _, kh, kw = cache["w_shape"]
    (sh, sw), (top, bottom, left, right) = cache["stride"], cache["padding"]
    hp, wp = padded_hw((h, w), (top, bottom, left, right))
    ho, wo = dy.shape[2], dy.shape[3]
    dt, khalf = dy.dtype, hp // 2 + 1
    bins = khalf * wp
    planes = _to_planes(xp, dy)                                                  # (Ho, Wo, F, N)
    DY = dft.spectrum(xp, planes, dft.forward_h(xp, dt, ho, 0, sh, hp),
                      dft.forward_w(xp, dt, wo, 0, sw, wp), hp, wp).reshape(bins, 2 * f, n)
    # db: the zero-frequency bin of DY is the sum of dy over positions
    db = DY[0, :f].sum(axis=1) if cache["has_bias"] else None
    # dW: G = sum_n conj(DY) * X, then the inverse transform on the kernel window
    backend = backend_of(dy)  # its matmul_t multiplies by a transposed stack without copying it
    P = backend.matmul_t(DY, cache["X"], trans_b=True)                           # (bins, 2F, 2C)
    G = xp.empty((2, bins, f, c), dtype=dt)

    def spectrum_w(s):   # bins s, on the backend's threads
        xp.add(P[s, :f, :c], P[s, f:, c:], out=G[0, s])
        xp.subtract(P[s, :f, c:], P[s, f:, :c], out=G[1, s])

    backend.split(spectrum_w, bins, P.size)
    g = wide_matmul(xp, dft.kernel_inverse(xp, dt, kh, kw, hp, wp), G.reshape(2 * bins, f * c))  # (kh*kw, F*C)
    dW = xp.ascontiguousarray(g.T.reshape(f, c, kh, kw))
    if not need_dx:
        return None, dW, db
    DX = backend.matmul_t(cache["M"], DY, trans_a=True)                          # (bins, 2C, N)
    out = dft.image(xp, DX.reshape(khalf, wp, 2, c, n), dft.inverse_w(xp, dt, w, left, 1, wp),
                    dft.inverse_h(xp, dt, h, top, 1, hp, wp), h, w)              # (H, W, C, N)
    return _from_planes(xp, out), dW, db
