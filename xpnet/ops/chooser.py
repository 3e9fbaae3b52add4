"""Which exact convolution method ``fast`` uses for a shape: "spectral" or "columns".

The choice compares FLOP estimates of a training step's three convolutions (forward, dW, dx) and
checks that the spectral route's arrays fit a memory budget. Only shapes decide (never values),
so the choice costs no host sync and is the same on every call with the same shapes.

The FLOP model (2 FLOPs per real multiply-add; spectra are kept as real/imaginary pairs, so a
complex product is a real GEMM twice as wide on each side):

* direct (what "columns" executes): ``3 * 2 * N*Ho*Wo * F*C*kh*kw``: one GEMM of that size for each
  of forward, dW and dx.
* spectral (``spectral_flops``): on the route's (Hp, Wp) frame (``geometry.spectral_frame``: the
  input plus the larger of each axis's two paddings) only Kh = Hp//2 + 1 frequencies of
  the H axis are kept (the input is real). ``transform`` is the forward DFT of ``planes`` images
  of nh x nw samples: the real H-transform (2 outputs, re and im, times Kh x nh x nw) then the
  complex W-transform (Kh rows of a (2 Wp) x (2 nw) real-form GEMM). ``inverse`` is the way back.
  ``mix`` is the per-bin channel mixing, a (2F x 2C) by (2C x 1) product per image and bin, or
  three quarters of that where the CPU takes Gauss's three real products instead
  (``spectral.three_multiply``: from 96 images; the strict backend, which keeps the real form,
  is priced the same, as the estimate is the CPU's). A
  step transforms x (C planes) and dy (F planes), inverts y (F planes) and, when dx is needed, dx
  (C planes); it mixes channels twice (y and dW) plus once for dx.
* the spectral route's kernel side (``kernel_side``): work that costs the same whatever the batch
  (the kernel spectrum K and the dW spectrum G, bins x 2C x F each, their transforms and the
  per-bin calls; until 2026-11-30 also the per-bin matrices M and P), priced at KERNEL_PASS_FLOPS
  per element of bins x 2F x 2C. Without it the estimate chose the spectral route for 3x3 kernels
  at batch 16, where it was 1.3-1.9x slower than columns; with both routes as they are now the two
  are level there (docs/benchmarks.md, "Route choice").
"""
from .geometry import out_size, padded_hw, spectral_frame
from .spectral import three_multiply

# The spectral route must need this many times fewer FLOPs than direct convolution to be chosen.
# The model counts only GEMM FLOPs: the spectral route also pays NCHW <-> (H, W, C, N) layout
# copies and reads more memory per FLOP, so a near tie goes to the simpler columns route. A margin
# chosen with the benchmarks (docs/benchmarks.md), not a fitted constant.
SPECTRAL_ADVANTAGE = 1.25

# GEMM FLOPs one element of the spectral route's per-bin kernel matrices costs (see the module doc):
# fitted with benchmarks/conv_routes.py: in two runs of its 42 shapes (3x3 and 5x5 kernels, batch 16
# to 128, 3 to 128 channels), every shape whose routes differ by more than 15 % goes the faster way
# for any value in about 87-104. Rerun with both routes as they are now (2026-11-30 22:50 UTC):
# 0-87. On the AVX-512 AMD EPYC (2026-12-01, OpenBLAS's own kernels, two runs): 0-78, with the
# spectral route 0.62-0.88x the columns route's time for 3x3 kernels on 7x7 to 14x14 frames at
# batch 16. 75 is inside every bound the latest runs of both CPU kinds give
# (benchmarks/results/2026-12-01-s10-conv-routes.log).
KERNEL_PASS_FLOPS = 75

# ... and its per-bin arrays must fit in this many bytes: the kernel spectrum K (bins, 2C, F), the
# input spectrum's real form kept for backward (bins, 2N, 2C; the CPU keeps the spectrum itself,
# half of that, so the budget is an upper bound there) and the output spectrum (bins, 2N, F)
# (spectral.py). Beyond it
# (very large images or batches) columns, whose buffer is chunked, keeps memory bounded.
SPECTRAL_BYTES = 512 * 2 ** 20


def spectral_flops(n, c, f, h, w, ho, wo, hp, wp, need_dx=True, gauss=False):
    """FLOPs of a spectral forward + backward (transforms + per-bin GEMMs); see the module doc.
    ``gauss``: the per-bin products take three real GEMMs, not four."""
    kh = hp // 2 + 1
    bins = kh * wp

    def transform(planes, nh, nw):
        return planes * (2 * 2 * kh * nh * nw + kh * 2 * (2 * wp) * (2 * nw))

    def inverse(planes, nh, nw):
        return planes * (kh * 2 * (2 * nw) * (2 * wp) + 2 * nh * (2 * kh) * nw)

    mix = bins * 2 * (2 * f) * (2 * c) * (3 if gauss else 4) // 4
    total = n * (transform(c, h, w) + inverse(f, ho, wo) + transform(f, ho, wo) + 2 * mix)
    if need_dx:
        total += n * (mix + inverse(c, h, w))
    return total


def kernel_side(c, f, hp, wp):
    """FLOP-equivalent of the spectral route's batch-independent passes over its kernel matrices."""
    return KERNEL_PASS_FLOPS * (hp // 2 + 1) * wp * 4 * f * c


def direct_flops(n, c, f, kh, kw, ho, wo):
    """FLOPs of forward, dW and dx as three GEMMs of N*Ho*Wo x F x C*kh*kw."""
    return 3 * 2 * n * ho * wo * f * c * kh * kw


def spectral_fits(x_shape, w_shape, padding, itemsize=4, stride=(1, 1)):
    """True when the spectral route's per-bin arrays fit in SPECTRAL_BYTES."""
    n, c, h, w = x_shape
    f = w_shape[0]
    hp, wp = spectral_frame((h, w), w_shape[2:], stride, padding)
    bins = (hp // 2 + 1) * wp
    return itemsize * bins * (2 * c * f + 4 * n * c + 2 * n * f) <= SPECTRAL_BYTES


def choose(x_shape, w_shape, stride, padding, itemsize=4):
    """"spectral" or "columns" for this convolution, from the FLOP and memory estimates (the
    choice on the CPU backends; a GPU measures instead, see autotune.py)."""
    n, c, h, w = x_shape
    f, _, kh, kw = w_shape
    hp, wp = padded_hw((h, w), padding)
    ho, wo = out_size(hp, kh, stride[0]), out_size(wp, kw, stride[1])
    if not spectral_fits(x_shape, w_shape, padding, itemsize, stride):
        return "columns"
    fh, fw = spectral_frame((h, w), (kh, kw), stride, padding)   # the frame the spectral route uses
    spectral = (spectral_flops(n, c, f, h, w, ho, wo, fh, fw, gauss=three_multiply(n, itemsize))
                + kernel_side(c, f, fh, fw))
    return "spectral" if SPECTRAL_ADVANTAGE * spectral < direct_flops(n, c, f, kh, kw, ho, wo) else "columns"
