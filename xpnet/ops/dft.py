"""Discrete Fourier transforms as small real matrices, so that every transform is one GEMM.

A convolution with stride 1 on a zero-padded (Hp, Wp) frame is a pointwise product in the 2-D
DFT of size (Hp, Wp), with no wrap-around because Hp >= Ho + kh - 1 (same for W). The transforms
are done here as matrix products (dense DFT matrices, built once per shape and cached) rather
than FFT calls: for the small images of this library the GEMMs are several times faster than
``xp.fft`` on the CPU and run as large batched GEMMs on a GPU.

Spectrum layout: the H axis is transformed first, from real data, so only its Kh = Hp // 2 + 1
non-negative frequencies are kept; the W axis is transformed in full (Wp bins). A spectrum is an
array (Kh, Wp, 2, rows, cols) where axis 2 holds the real and imaginary parts; a strided sample
position ``pos`` (index into the padded frame) is what every matrix is evaluated at, so padding
offsets and strides are folded into the matrices.
"""
import math

from ..backends import backend_of
from .gemm import wide_matmul

_CACHE = {}


def _angles(xp, k, pos, period):
    """2*pi*(k*pos mod period)/period as a (len(k), len(pos)) float64 array (exact integer mod)."""
    ki = xp.asarray(k, dtype="int64") if not hasattr(k, "dtype") else k
    prod = (ki[:, None] * pos[None, :]) % period
    return prod.astype("float64") * (2.0 * math.pi / period)


def _positions(xp, n, start, step):
    return xp.arange(n, dtype="int64") * step + start


def _cached(key, build):
    hit = _CACHE.get(key)
    if hit is None:
        if len(_CACHE) > 256:
            _CACHE.clear()
        hit = _CACHE[key] = build()
    return hit


def forward_h(xp, dtype, n, start, step, hp):
    """(2*Kh, n): real samples at positions start + step*i -> (kb, re/im) of exp(-2*pi*i*kb*pos/hp)."""
    def build():
        kh = hp // 2 + 1
        th = _angles(xp, xp.arange(kh, dtype="int64"), _positions(xp, n, start, step), hp)
        return xp.stack([xp.cos(th), -xp.sin(th)], axis=1).reshape(2 * kh, n).astype(dtype)
    return _cached(("fh", id(xp), str(dtype), n, start, step, hp), build)


def forward_w(xp, dtype, n, start, step, wp):
    """(2*Wp, 2*n): complex samples, rows (kw, re/im), columns (re/im, j); multiplies by exp(-i*phi)."""
    def build():
        ph = _angles(xp, xp.arange(wp, dtype="int64"), _positions(xp, n, start, step), wp)
        c, s = xp.cos(ph), xp.sin(ph)
        m = xp.stack([xp.stack([c, s], axis=1), xp.stack([-s, c], axis=1)], axis=1)  # (wp, 2, 2, n)
        return m.reshape(2 * wp, 2 * n).astype(dtype)
    return _cached(("fw", id(xp), str(dtype), n, start, step, wp), build)


def inverse_w(xp, dtype, n, start, step, wp):
    """(2*n, 2*Wp): rows (re/im, j), columns (kw, re/im); multiplies by exp(+i*psi), no scaling."""
    def build():
        ps = _angles(xp, xp.arange(wp, dtype="int64"), _positions(xp, n, start, step), wp).T  # (n, wp)
        c, s = xp.cos(ps), xp.sin(ps)
        m = xp.stack([xp.stack([c, -s], axis=2), xp.stack([s, c], axis=2)], axis=0)  # (2, n, wp, 2)
        return m.reshape(2 * n, 2 * wp).astype(dtype)
    return _cached(("iw", id(xp), str(dtype), n, start, step, wp), build)


def _half_weights(xp, hp):
    """Weight of each kept H frequency in a real inverse: 1 for 0 (and hp/2 when hp is even), else 2."""
    kh = hp // 2 + 1
    w = xp.full((kh,), 2.0, dtype="float64")
    w[0] = 1.0
    if hp % 2 == 0:
        w[kh - 1] = 1.0
    return w


def inverse_h(xp, dtype, n, start, step, hp, wp):
    """(n, 2*Kh): columns (kb, re/im) -> real samples, including the 1/(hp*wp) normalisation."""
    def build():
        kh = hp // 2 + 1
        ch = _angles(xp, xp.arange(kh, dtype="int64"), _positions(xp, n, start, step), hp).T  # (n, kh)
        w = _half_weights(xp, hp)[None, :] / (hp * wp)
        return xp.stack([w * xp.cos(ch), -w * xp.sin(ch)], axis=2).reshape(n, 2 * kh).astype(dtype)
    return _cached(("ih", id(xp), str(dtype), n, start, step, hp, wp), build)


def _kernel_angles(xp, kh, kw, hp, wp):
    """(bins, kh*kw) angles 2*pi*(kb*p/hp + kw*q/wp) over the kept bins (kb half, kw full)."""
    khalf = hp // 2 + 1
    kb = xp.arange(khalf, dtype="int64")[:, None, None, None]
    kq = xp.arange(wp, dtype="int64")[None, :, None, None]
    p = xp.arange(kh, dtype="int64")[None, None, :, None]
    q = xp.arange(kw, dtype="int64")[None, None, None, :]
    num = (kb * p * wp + kq * q * hp) % (hp * wp)
    return num.reshape(khalf * wp, kh * kw).astype("float64") * (2.0 * math.pi / (hp * wp))


def kernel_forward(xp, dtype, kh, kw, hp, wp):
    """(2*bins, kh*kw): a kh x kw kernel at the frame origin -> its spectrum, rows (bin, im/re):
    the imaginary part of each bin first (the order of spectral.py's per-bin matrices)."""
    def build():
        a = _kernel_angles(xp, kh, kw, hp, wp)
        return xp.stack([-xp.sin(a), xp.cos(a)], axis=1).reshape(-1, kh * kw).astype(dtype)
    return _cached(("kf", id(xp), str(dtype), kh, kw, hp, wp), build)


def kernel_inverse(xp, dtype, kh, kw, hp, wp):
    """(kh*kw, 2*bins): a spectrum, rows (bin, im/re) as kernel_forward's -> the real frame's first
    kh x kw samples."""
    def build():
        a = _kernel_angles(xp, kh, kw, hp, wp)
        w = xp.repeat(_half_weights(xp, hp), wp)[:, None] / (hp * wp)
        return xp.stack([-w * xp.sin(a), w * xp.cos(a)], axis=1).reshape(-1, kh * kw).T.astype(dtype)
    return _cached(("ki", id(xp), str(dtype), kh, kw, hp, wp), build)


_STACKS = {}


def _batched(xp, m, like, count):
    """``m`` (2-D) for a batched product with ``count`` matrices of ``like``'s backend: on backends
    where launches cost (GPUs) a contiguous (count, r, c) stack of copies, cached, so CuPy's matmul
    takes the strided-batched GEMM instead of the pointer-array one that a broadcast 2-D operand
    gets (with three extra kernels to build the pointers); on the CPU ``m`` itself."""
    if not backend_of(like).few_launches:
        return m
    key = (id(m), count)
    hit = _STACKS.get(key)
    if hit is None or hit[0] is not m:
        if len(_STACKS) > 256:
            _STACKS.clear()
        hit = _STACKS[key] = (m, xp.ascontiguousarray(xp.broadcast_to(m, (count,) + tuple(m.shape))))
    return hit[1]


def spectrum(xp, planes, fh, fw, hp, wp):
    """planes (n_h, n_w, rows, cols) real -> (Kh, Wp, 2, rows, cols) with two GEMMs.

    fh: forward_h matrix (2*Kh, n_h); fw: forward_w matrix (2*Wp, 2*n_w).
    """
    nh, nw, rows, cols = planes.shape
    kh = hp // 2 + 1
    t = wide_matmul(xp, fh, planes.reshape(nh, nw * rows * cols)).reshape(kh, 2 * nw, rows * cols)
    return backend_of(t).matmul(_batched(xp, fw, t, kh), t).reshape(kh, wp, 2, rows, cols)


def image(xp, spec, iw, ih, nh, nw):
    """(Kh, Wp, 2, rows, cols) spectrum -> (nh, nw, rows, cols) real samples with two GEMMs."""
    kh, wp, _, rows, cols = spec.shape
    t = backend_of(spec).matmul(_batched(xp, iw, spec, kh), spec.reshape(kh, 2 * wp, rows * cols))  # (Kh, 2*nw, rows*cols)
    return wide_matmul(xp, ih, t.reshape(2 * kh, nw * rows * cols)).reshape(nh, nw, rows, cols)
