"""The spectral convolution route of ``ops.fast``.

The 2-D DFT of a zero-padded frame, computed with dense DFT matrices (xpnet.ops.dft) so that
every step is a GEMM. The frame is the input plus the larger of each axis's two paddings
(``geometry.spectral_frame``): a window that runs past its end wraps onto the leading padding's
zeros, which is what the padded input has there, so "same" 5x5 kernels on 14x14 take a 16x16
frame (144 frequency bins), not 18x18 (180). With X, Wh the spectra of the padded input and of
the kernel, Y = sum_c X[c] * conj(Wh[f, c]) per frequency bin (a batched GEMM over bins), and y is
the inverse transform sampled at the strided output positions. Backward reuses X: dX = sum_f DY[f]
* Wh[f, c] and dW = inverse(sum_n conj(DY) * X) on the kernel window. For 5x5 kernels on 14x14 to
28x28 images with tens of channels this needs 3-4x fewer FLOPs than direct convolution.

Layout inside: spatial axes first, (H, W, N, C), so the transforms are left-multiplications of
large contiguous blocks and NCHW <-> planes is one 2-D transpose (layout.py); NCHW only at the edges. Per
frequency bin the images are rows: a spectrum bin is (2N, C), the real parts of the N images over
their imaginary parts. The complex product per bin is one real GEMM whose batch-sized operand
carries the real form, Z = [[Xi, Xr], [-Xr, Xi]] (2N, 2C), against the kernel spectrum as it comes
out of its transform, K = [Im; Re] (2C, F):

    Y  = Z @ K           (2N, F)   rows: real parts of the outputs, then imaginary parts
    G  = Z^T @ DY        (2C, F)   the dW spectrum, [Im; Re] like K
    Q  = DY @ K^T        (2N, 2C)  dX = [Q(:N, C:) - Q(N:, :C); Q(:N, :C) + Q(N:, C:)]

so the only per-bin arrays with 2x2 blocks scale with the batch (Z, Q), and the kernel side is
the transform's output (K) and the dW GEMM's output (G), each (bins, 2C, F), with no copies. On
the CPU neither Z nor Q exists whole: forward builds Z in cache-sized chunks of bins, each chunk
multiplied by K while it is in cache, and keeps the input spectrum (half Z's size) for backward,
which builds the chunks again for G and makes and combines Q chunk by chunk beside them
(``_cpu_forward_product``, ``_cpu_backward_products``). Each bin's GEMMs are the same calls on
the same values as with Z whole, so the bits are the same (tests/test_threaded_ops.py); a GPU
builds Z at once (one fused kernel) and keeps it. From GAUSS_MIN_BATCH images the CPU takes three
real GEMMs a bin instead of Z's four (Gauss's complex product: P1 = Xr Kr, P2 = Xi Ki, P3 = (Xr +
Xi)(Kr - Ki), Re Y = P1 + P2, Im Y = P3 - P1 + P2), which is faster at large batches and agrees
with Z to rounding; chunks and threads still give the same bits among themselves. Where the
backend has them (the NumPy backend with numba: backends/compiled_products.py), a piece of bins is
one compiled call that makes the same BLAS calls and element-wise steps bin by bin without taking
the GIL, so two threads' pieces do not wait for each other between NumPy calls; the same bits
(tests/test_compiled_products.py). Inside the model's backward on more than one thread
(``Backend.deferring``), only dX's products are made at once and G's, with dW's inverse transform,
are left to the pool's idle workers (``_later_dw``, ``LATER_DW``): dW is needed only by the
optimizer, after the whole backward (tests/test_later.py).
"""
import functools

from ..backends import backend_of
from ..backends.base import real_form
from . import dft
from .gemm import wide_matmul
from .geometry import output_hw, padded_hw, spectral_frame
from .layout import from_planes, planes_of, to_planes

# Bytes of Z per chunk of bins on the CPU: 256 KiB-1 MiB within noise here (AMD EPYC, 1 MiB L2 per
# core); the forward product of 544 bins of 256 x 64 (batch 128) took 11 ms instead of 18 ms with
# Z whole on one thread, 7 instead of 15-18 ms on two (docs/benchmarks.md, results of 2026-12-01 18:25)
Z_CHUNK_BYTES = 512 << 10

# 1: the DFT frame is geometry.spectral_frame's, the smallest with no wrap-around into the results
# ("same" 5x5 kernels on 14x14: 16x16, 144 bins); 0: the padded input's (18x18, 180 bins), as
# before 2026-12-02. The results agree to rounding; only speed and the last bits differ. Read per
# forward pass and kept in its cache (backward uses the forward's frame): for
# benchmarks/ab_setting.py's in-process comparison.
TIGHT_FRAME = 1

# Batch size from which the CPU's per-bin complex products take three real GEMMs (Gauss's product)
# instead of the real form's four: 25 % fewer FLOPs, for an element-wise pass over the operands and
# two over the output. The products alone (one thread, the benchmark models' spectral layers) took
# 0.84-1.00x the real form's time at batch 128, 0.85-1.03x at 96, 0.91-1.16x at 64; whole fit()
# steps 0.93-0.97x at 128, 0.96-0.98x at 96, 0.99-1.02x at 64 (benchmarks/results/
# 2026-12-02-s13-gauss-ab.log). Read per call (a huge value turns it off). GPUs and the strict
# backend keep Z whole and its one GEMM (few launches; a bin's three products and their combine
# would be more).
GAUSS_MIN_BATCH = 96

# 1: the CPU's per-bin products run as the backend's compiled calls where it has them
# (Backend.bin_products); 0: NumPy's passes always. The same bits either way; read per call, for
# benchmarks/ab_setting.py's in-process comparison.
COMPILED_PRODUCTS = 1

# 1: inside the model's backward on more than one CPU thread (Backend.deferring), a layer's dW
# products and their inverse transform are left to the pool's idle workers (between passes, while
# the caller runs Python or passes it keeps alone) and only dX's are made at once; 0: both at
# once, as one pass. The same bits either way; read per call, for benchmarks/ab_setting.py.
LATER_DW = 1

# ...for layers whose input spectrum and output-gradient spectrum (what G reads again later) take
# at most this many bytes together. Made beside dX's products, G finds its operands in cache; left
# for later it reads them again, from L3 or memory. In-process A/B on two threads (AMD EPYC Zen 4,
# 32 MB L3; benchmarks/results/2026-12-03-s25-later-dw-ab.log): with every layer deferred the step
# took 0.89-0.96x as long for the medium model at 16 and 64 (layers of 1.4-11.2 MB) and 0.95-0.98x
# for the big one at 16 (2.8-5.6 MB), but 0.98-1.01x at 64 (11-22 MB) and 0.97-1.04x at 128
# (22-45 MB). Read per call, for benchmarks/ab_setting.py.
LATER_MAX_BYTES = 12 << 20

# ...and whose G takes at least this many multiply-adds (bins x 2C x 2N x F; as gemm.MIN_MACS, under
# which a product is not split either): a smaller G is over before a worker has woken for it, and
# the hand-off costs more than it frees. In-process A/B on two threads (session 26,
# benchmarks/results/2026-12-03-s26-later-min.log): LeNet-5 at 16 (G of 0.7 M multiply-adds) took
# 1.097x as long deferred, at 64 (2.8 M) 1.005x, the 3x3 CNN at 16 (11.9 M) 0.940x, the medium
# model at 16 (14-28 M) 0.898x. Read per call, for benchmarks/ab_setting.py.
LATER_MIN_MACS = 1 << 22


def _kernel_spectrum(xp, W, dt, hp, wp):
    """K (bins, 2C, F): the kernel spectrum per frequency bin, imaginary parts over real parts,
    as one GEMM of the kernel transform with W in (kh*kw, C*F) order (a small copy of W)."""
    f, c, kh, kw = W.shape
    taps = xp.ascontiguousarray(W.reshape(f, c, kh * kw).transpose(2, 1, 0)).reshape(kh * kw, c * f)
    K = wide_matmul(xp, dft.kernel_forward(xp, dt, kh, kw, hp, wp), taps)     # (bins*2, C*F)
    return K.reshape((hp // 2 + 1) * wp, 2 * c, f)


def _real_form(xp, S):
    """Z (bins, 2N, 2C) = [[Xi, Xr], [-Xr, Xi]] from a spectrum S (bins, 2N, C) = [Xr; Xi]: the
    backend's spectral_matrices of (Xi, Xr) (one fused kernel on a GPU; the CPU builds Z in
    chunks instead, _build_z)."""
    bins, n2, c = S.shape
    parts = S.reshape(bins, 2, n2 // 2, c)[:, ::-1].transpose(1, 0, 2, 3)     # (2, bins, N, C): Xi, Xr
    # only where launches cost (the CPU builds Z in chunks): the fused kernel reads a contiguous
    # stack, so it is copied here, counted
    return backend_of(S).spectral_matrices(xp.ascontiguousarray(parts))


def _dx_spectrum(xp, DY, K):
    """dX per bin (bins, 2N, C), real parts over imaginary parts, where Z is kept whole (GPUs):
    Q = DY @ K^T (bins, 2N, 2C), one batched product, then [Q(:N, C:) - Q(N:, :C); Q(:N, :C) +
    Q(N:, C:)] in two passes (the CPU makes them chunk by chunk: _cpu_backward_products)."""
    bins, n2, f = DY.shape
    c = K.shape[1] // 2
    n = n2 // 2
    Q = backend_of(DY).matmul_t(DY, K, trans_b=True)
    out = xp.empty((bins, n2, c), dtype=DY.dtype)
    xp.subtract(Q[:, :n, c:], Q[:, n:, :c], out=out[:, :n])
    xp.add(Q[:, :n, :c], Q[:, n:, c:], out=out[:, n:])
    return out


def _z_chunks(S):
    """Bins per chunk of Z on the CPU (Z_CHUNK_BYTES of it) and the number of chunks."""
    bins, n2, c = S.shape
    chunk = max(1, Z_CHUNK_BYTES // (n2 * 2 * c * S.dtype.itemsize))
    return chunk, -(-bins // chunk)


def _build_z(xp, S, b, e, Z):
    """Z (e - b, 2N, 2C) <- the real form [[Xi, Xr], [-Xr, Xi]] of the bins b:e of the spectrum S
    (bins, 2N, C) = [Xr; Xi]: the same four block copies as spectral_matrices (real_form)."""
    n = S.shape[1] // 2
    real_form(xp, S[b:e, n:], S[b:e, :n], Z)


def _z_chunks_built(xp, S, chunk, s):
    """(b, e, Z) for each chunk b:e of bins among the chunks ``s``: Z (e - b, 2N, 2C) the chunk's
    real form, built into one buffer reused from chunk to chunk (each caller keeps its own ``part``,
    so that the pool times the forward and the backward passes apart)."""
    bins, n2, c = S.shape
    Z = None
    for b in range(0, bins, chunk)[s]:
        e = min(b + chunk, bins)
        if Z is None or Z.shape[0] != e - b:
            Z = xp.empty((e - b, n2, 2 * c), dtype=S.dtype)
        _build_z(xp, S, b, e, Z)
        yield b, e, Z


def _bin_ranges(s, count, chunk, bins):
    """(b0, b1) for the bins of the chunks ``s`` (a slice of the ``count`` chunks of ``chunk``
    bins): one range for a run of chunks (the pool's pieces are), else one a chunk."""
    chunks = range(count)[s]
    if chunks.step == 1:
        return [(chunks.start * chunk, min(chunks.stop * chunk, bins))] if chunks else []
    return [(i * chunk, min((i + 1) * chunk, bins)) for i in chunks]


def _split_products(backend, kind, arrays, gauss, need_dx, numpy_part, count, chunk, size, need_g=True):
    """The per-bin products of ``kind`` over the ``count`` chunks of ``chunk`` bins on the
    backend's threads: each piece of chunks one compiled call without the GIL where the backend
    has one (Backend.bin_products: the same bits), else ``numpy_part``'s NumPy passes (backward
    without G: only with the compiled calls, which the caller checked)."""
    compiled = backend.bin_products(kind, arrays, gauss, need_dx, need_g) if COMPILED_PRODUCTS else None
    if compiled is None:
        backend.split(numpy_part, count, size)
        return
    bins = arrays[0].shape[0]

    def part_compiled(s):   # the same products, a piece of chunks in one call
        for b0, b1 in _bin_ranges(s, count, chunk, bins):
            compiled(b0, b1)

    # shape: the forward and backward kernels share this piece function (SplitCheck's sites)
    backend.split(part_compiled, count, size, shape=(kind, need_g))


def _gauss_combine(xp, A, B, T, sign):
    """The last step of a three-multiply complex product: with A = P1, B = P3 and T = P2 in place,
    A <- P1 + sign * P2 and B <- P3 - P1 + sign * P2 (in this order, so every path rounds alike)."""
    combine = xp.add if sign > 0 else xp.subtract
    xp.subtract(B, A, out=B)
    combine(B, T, out=B)
    combine(A, T, out=A)


def three_multiply(n, itemsize):
    """Whether the CPU's per-bin products for a batch of n take three real GEMMs (Gauss): from
    GAUSS_MIN_BATCH images, in float32 or float64 (half precision keeps the real form: Gauss's
    sums and its P3 - P1 + P2 would round in float16's 11 bits). The chooser prices them so."""
    return n >= GAUSS_MIN_BATCH and itemsize >= 4


def _three_multiply(S, *others):
    """three_multiply for the spectrum S (bins, 2N, C) and the other operands of its products (K,
    DY): the narrowest dtype of them all decides (Gauss's sums are made in each operand's dtype)."""
    return three_multiply(S.shape[1] // 2, min(a.dtype.itemsize for a in (S,) + others))


def _cpu_forward_product(xp, S, K):
    """Y = Z @ K per bin (bins, 2N, F) from the spectrum S (bins, 2N, C), chunk by chunk of bins
    on the backend's threads, each chunk's operands made and multiplied while they are in cache.
    From GAUSS_MIN_BATCH images: three real GEMMs a bin, P1 = Xr Kr, P2 = Xi Ki and P3 = (Xr +
    Xi)(Kr - Ki) (K = [Ki; Kr]), then Re Y = P1 + P2 and Im Y = P3 - P1 + P2. Under it: the real
    form Z, built per chunk and never whole (the same per-bin GEMMs on the same values as Z @ K,
    so the same bits)."""
    bins, n2, c = S.shape
    n, f = n2 // 2, K.shape[2]
    Y = xp.empty((bins, n2, f), dtype=xp.result_type(S, K))
    chunk, count = _z_chunks(S)

    def part(s):   # chunks of bins s
        for b, e, Z in _z_chunks_built(xp, S, chunk, s):
            xp.matmul(Z, K[b:e], out=Y[b:e])

    def part_gauss(s):   # chunks of bins s, three GEMMs a bin
        for b in range(0, bins, chunk)[s]:
            e = min(b + chunk, bins)
            xr, xi, ki, kr, re, im = S[b:e, :n], S[b:e, n:], K[b:e, :c], K[b:e, c:], Y[b:e, :n], Y[b:e, n:]
            xp.matmul(xr, kr, out=re)
            t = xp.matmul(xi, ki)
            xp.matmul(xp.add(xr, xi), xp.subtract(kr, ki), out=im)
            _gauss_combine(xp, re, im, t, 1)

    gauss = _three_multiply(S, K)
    _split_products(backend_of(S), "forward", (S, K, Y), gauss, True, part_gauss if gauss else part,
                    count, chunk, bins * (n2 * (3 * c + f) + 2 * c * f))
    return Y


def _cpu_backward_products(xp, S, DY, K, need_dx):
    """(G, DX or None) on the CPU: G = Z^T @ DY per bin (bins, 2C, F) from the spectrum S and, when
    ``need_dx``, dX per bin (bins, 2N, C) from Q = DY @ K^T as in _dx_spectrum, chunk by chunk of
    bins while its DY is in cache. Three GEMMs a product from GAUSS_MIN_BATCH images, as in
    _cpu_forward_product (G: P1 = Xr^T Dr, P2 = Xi^T Di, P3 = (Xr + Xi)^T (Dr - Di), Re = P1 + P2,
    Im = P3 - P1 + P2; dX: P1 = Dr Kr^T, P2 = Di Ki^T, P3 = (Dr + Di)(Kr + Ki)^T, Re = P1 - P2,
    Im = P3 - P1 - P2); under it Z is built again chunk by chunk and Q made and combined beside
    it: the same per-bin GEMMs and combines, so the same bits as with Z whole."""
    bins, n2, c = S.shape
    n, f = n2 // 2, DY.shape[2]
    dt = xp.result_type(S, DY)
    G = xp.empty((bins, 2 * c, f), dtype=dt)
    DX = xp.empty((bins, n2, c), dtype=DY.dtype) if need_dx else None
    chunk, count = _z_chunks(S)

    def part(s):   # chunks of bins s
        for b, e, Z in _z_chunks_built(xp, S, chunk, s):
            xp.matmul(Z.transpose(0, 2, 1), DY[b:e], out=G[b:e])
            if need_dx:
                Q = xp.matmul(DY[b:e], K[b:e].transpose(0, 2, 1))
                xp.subtract(Q[:, :n, c:], Q[:, n:, :c], out=DX[b:e, :n])
                xp.add(Q[:, :n, :c], Q[:, n:, c:], out=DX[b:e, n:])

    def part_gauss(s):   # chunks of bins s, three GEMMs a product
        for b in range(0, bins, chunk)[s]:
            e = min(b + chunk, bins)
            xr, xi, dr, di = S[b:e, :n], S[b:e, n:], DY[b:e, :n], DY[b:e, n:]
            xp.matmul(xr.transpose(0, 2, 1), dr, out=G[b:e, c:])
            t = xp.matmul(xi.transpose(0, 2, 1), di)
            xp.matmul(xp.add(xr, xi).transpose(0, 2, 1), xp.subtract(dr, di), out=G[b:e, :c])
            _gauss_combine(xp, G[b:e, c:], G[b:e, :c], t, 1)
            if need_dx:
                ki, kr = K[b:e, :c], K[b:e, c:]
                xp.matmul(dr, kr.transpose(0, 2, 1), out=DX[b:e, :n])
                t = xp.matmul(di, ki.transpose(0, 2, 1))
                xp.matmul(xp.add(dr, di), xp.add(kr, ki).transpose(0, 2, 1), out=DX[b:e, n:])
                _gauss_combine(xp, DX[b:e, :n], DX[b:e, n:], t, -1)

    gauss = _three_multiply(S, DY, K)
    _split_products(backend_of(S), "backward", (S, DY, K, G, DX), gauss, need_dx, part_gauss if gauss else part,
                    count, chunk, bins * (n2 * (3 * c + 2 * f) + 4 * c * f))
    return G, DX


def _later_dw(xp, S, DY, K, need_dx, inverse, w_shape):
    """Inside the backend's ``deferring`` on the CPU (Backend.can_defer): DX (or None without
    ``need_dx``) made now, and G = Z^T @ DY with dW (``w_shape``, the kernel window of ``inverse``
    times G) left to ``Backend.later``, a piece of bins at a time, by the compiled products (the
    same calls as _cpu_backward_products, so the same bits). (dW, filled by the end of
    ``deferring``; DX), or None where that does not apply (also for layers whose S and DY take more
    than LATER_MAX_BYTES: G is then made beside dX while they are in cache; and for a G of fewer
    than LATER_MIN_MACS multiply-adds, made at once as well)."""
    backend = backend_of(S)
    bins, n2, c = S.shape
    f = DY.shape[2]
    if not (LATER_DW and COMPILED_PRODUCTS and S.nbytes + DY.nbytes <= LATER_MAX_BYTES
            and bins * 2 * c * n2 * f >= LATER_MIN_MACS and backend.can_defer()):
        return None
    G = xp.empty((bins, 2 * c, f), dtype=xp.result_type(S, DY))
    DX = xp.empty((bins, n2, c), dtype=DY.dtype) if need_dx else None
    gauss = _three_multiply(S, DY, K)
    g_only = backend.bin_products("backward", (S, DY, K, G, None), gauss, False, True)
    dx_only = backend.bin_products("backward", (S, DY, K, None, DX), gauss, True, False) if need_dx else None
    if g_only is None or (need_dx and dx_only is None):
        return None
    chunk, count = _z_chunks(S)
    if need_dx:
        _split_products(backend, "backward", (S, DY, K, None, DX), gauss, True, None, count, chunk,
                        bins * (n2 * (2 * c + f) + 2 * c * f), need_g=False)
    dW = _KernelGradient(xp, inverse, G, w_shape)
    pieces = [functools.partial(g_only, b, min(b + chunk, bins)) for b in range(0, bins, chunk)]
    backend.later(pieces, dW.fill)
    return dW.out, DX


class _KernelGradient:
    """dW (F, C, kh, kw) = the kernel window of the inverse transform of G, into ``out``. Left for
    later, ``fill`` runs on whichever thread finishes G's pieces, so its product runs on that one
    thread (``split`` False: the same column pieces as on the pool, so the same bits)."""

    def __init__(self, xp, inverse, G, shape):
        self.xp, self.inverse, self.G = xp, inverse, G
        self.out = xp.empty(shape, dtype=G.dtype)

    def fill(self, split=False):
        xp, (f, c, kh, kw) = self.xp, self.out.shape
        g = wide_matmul(xp, self.inverse, self.G.reshape(-1, c * f), split=split)
        xp.copyto(self.out, g.reshape(kh, kw, c, f).transpose(3, 2, 0, 1))
        self.G = None
        return self.out


def forward(xp, x, W, b, stride, padding, planes_out=False):
    """(y, what backward needs: the real form Z of the input spectrum, or on the CPU the spectrum
    itself, and the kernel spectrum K).
    With ``planes_out`` (on the CPU: launches cheap) y is the NCHW view of the output planes, not
    a copy (layout.py: for a max pooling that reads planes)."""
    n, c, h, w = x.shape
    f, _, kh, kw = W.shape
    (sh, sw), (top, _, left, _) = stride, padding
    ho, wo = output_hw((h, w), (kh, kw), stride, padding, "conv2d")
    hp, wp = spectral_frame((h, w), (kh, kw), stride, padding) if TIGHT_FRAME else padded_hw((h, w), padding)
    dt, khalf = x.dtype, hp // 2 + 1
    bins = khalf * wp
    K = _kernel_spectrum(xp, W, dt, hp, wp)                                      # (bins, 2C, F)
    planes = to_planes(xp, x)                                                   # (H, W, N, C)
    X = dft.spectrum(xp, planes, dft.forward_h(xp, dt, h, top, 1, hp),
                     dft.forward_w(xp, dt, w, left, 1, wp), hp, wp)              # (Kh, Wp, 2, N, C)
    S = X.reshape(bins, 2 * n, c)
    if backend_of(S).few_launches:
        Z = _real_form(xp, S)                                                    # (bins, 2N, 2C)
        Y, kept = backend_of(Z).matmul(Z, K), {"Z": Z, "K": K}                  # (bins, 2N, F)
    else:
        Y, kept = _cpu_forward_product(xp, S, K), {"S": S, "K": K}
    kept["frame"] = (hp, wp)
    # an input given as the NCHW view of planes gets its gradient so too (model._link_planes)
    kept["planes_in"] = planes_of(x) is not None
    if b is not None:   # a constant adds hp*wp times itself to the real part of the zero bin
        zero_bin = Y[0, :n]
        xp.add(zero_bin, (b if b.dtype == dt else b.astype(dt)).reshape(1, f) * (hp * wp), out=zero_bin)
    out = dft.image(xp, Y.reshape(khalf, wp, 2, n, f), dft.inverse_w(xp, dt, wo, 0, sw, wp),
                    dft.inverse_h(xp, dt, ho, 0, sh, hp, wp), ho, wo)            # (Ho, Wo, N, F)
    return from_planes(xp, out, view=planes_out), kept


def backward(xp, dy, cache, need_dx):
    """(dx or None, dW, db or None) from the cache of ``forward`` (kept by ops.fast)."""
    n, c, h, w = cache["x_shape"]
    f, _, kh, kw = cache["w_shape"]
    (sh, sw), (top, _, left, _) = cache["stride"], cache["padding"]
    hp, wp = cache["frame"]
    ho, wo = dy.shape[2], dy.shape[3]
    dt, khalf = dy.dtype, hp // 2 + 1
    bins = khalf * wp
    planes = to_planes(xp, dy)                                                  # (Ho, Wo, N, F)
    DY = dft.spectrum(xp, planes, dft.forward_h(xp, dt, ho, 0, sh, hp),
                      dft.forward_w(xp, dt, wo, 0, sw, wp), hp, wp).reshape(bins, 2 * n, f)
    # db: the zero-frequency bin of DY is the sum of dy over positions
    db = DY[0, :n].sum(axis=0) if cache["has_bias"] else None
    # dW: G = sum_n conj(DY) * X per bin, then the inverse transform on the kernel window
    inverse, dW = dft.kernel_inverse(xp, dt, kh, kw, hp, wp), None
    if "Z" in cache:
        backend = backend_of(dy)  # its matmul_t multiplies by a transposed stack without copying it
        G = backend.matmul_t(cache["Z"], DY, trans_a=True)                       # (bins, 2C, F)
        DX = _dx_spectrum(xp, DY, cache["K"]) if need_dx else None               # (bins, 2N, C)
    else:   # left for idle workers where it can be (the model's backward), else at once
        later = _later_dw(xp, cache["S"], DY, cache["K"], need_dx, inverse, (f, c, kh, kw))
        if later is not None:
            dW, DX = later
        else:
            G, DX = _cpu_backward_products(xp, cache["S"], DY, cache["K"], need_dx)
    if dW is None:
        dW = _KernelGradient(xp, inverse, G, (f, c, kh, kw)).fill(split=True)
    if not need_dx:
        return None, dW, db
    out = dft.image(xp, DX.reshape(khalf, wp, 2, n, c), dft.inverse_w(xp, dt, w, left, 1, wp),
                    dft.inverse_h(xp, dt, h, top, 1, hp, wp), h, w)              # (H, W, N, C)
    return from_planes(xp, out, view=cache.get("planes_in", False)), dW, db
