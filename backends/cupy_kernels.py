"""Fused element-wise CUDA kernels for the CuPy backend (issue 15, point 2).

Each kernel does in one launch what the pure-``xp`` reference (backends/base.py, backends/random.py,
xpnet/ops/pooling.py, xpnet/augment.py) does in several; the reference is what
tests/test_cupy_kernels.py compares them with on a GPU, and what the NumPy and strict backends run.
CuPy compiles them with NVRTC on first use; tests/test_cupy_compile.py compiles every one of them
in CI without a GPU (``SIGNATURES`` names the argument types each is compiled for).
``--fmad=false`` keeps multiply-adds unfused, so the kernels round as the reference's separate
operations do.

    relu_forward        maximum(x, 0) and its mask                        (2 launches -> 1)
    dropout             y = x * where(keep, scale, 0)                      (2 launches -> 1)
    spectral_matrices   M = [[A, B], [-B, A]] per frequency bin             (4-5 launches -> 1)
    bias_relu           relu(y + b) and its mask, b along one axis         (3-4 launches -> 1)
    adam_update         the flat Adam/AdamW update over all parameters     (11 launches -> 1)
    splitmix64[_at]     counter-based random words (device / host start)   (7-8 launches -> 1)
    maxpool2d_forward   max over each window                               (ph*pw launches -> 1)
    maxpool2d_backward  each window's gradient to its first maximum        (8-30 launches -> 1)
    affine_warp         bilinear warp by per-image inverse maps            (about 50 launches -> 1)
    softmax_labels      softmax rows and the label's log-probability      (about 10 launches -> 1)
    softmax_labels_grad (softmax - onehot) / N                             (5 launches -> 1)
    batchnorm_train     batch statistics, running stats, xhat and output   (about 18 launches -> 1)
    batchnorm_grad      dgamma, dbeta and dx                               (about 10 launches -> 1)
    keras_affine_matrices  KerasAffine's inverse maps from its uniforms    (about 22 launches -> 1)

``LAUNCHES`` is how many kernel launches each backend method of the CuPy backend makes (the
strict backend counts a fused method as that many, see strict_backend.fused); allocations
(``cupy.empty``) launch nothing.
"""
OPTIONS = ("--fmad=false",)

LAUNCHES = {"relu_forward": 1, "dropout": 1, "bias_relu": 1, "adam_update": 1,
            "splitmix64": 1, "maxpool2d_forward": 1, "maxpool2d_backward": 1, "affine_warp": 1,
            "keras_affine_matrices": 1, "softmax_labels": 1, "softmax_labels_grad": 1,
            "batchnorm_train": 1, "batchnorm_grad": 1,
            "spectral_matrices": 1}

_POOL_PARAMS = "int32 h, int32 w, int32 ho, int32 wo, int32 ph, int32 pw, int32 sh, int32 sw"

# name -> (in_params, out_params, operation); all ElementwiseKernels
SOURCES = {
    "relu_forward": (
        "T x", "T y, bool mask",
        "y = (x > (T)0 || x != x) ? x : (T)0; mask = y > (T)0;"),
    "dropout": (
        "T x, bool keep, T scale", "T y",
        "y = x * (keep ? scale : (T)0);"),
    # one thread per element of M (bins, 2F, 2C) from spec (2, bins, F, C) = (A, B), C-contiguous
    "spectral_matrices": (
        "raw T spec, int64 f, int64 c, int64 bins", "T M",
        """
        long long s = i % (2 * c), r = (i / (2 * c)) % (2 * f), b = i / (4 * f * c);
        long long q = r / f, p = s / c, at = (b * f + r % f) * c + s % c;
        T a = spec[at], w = spec[bins * f * c + at];
        if (q == p) { M = a; } else if (q == 0) { M = w; } else { M = (T)(-w); }
        """),
    # b (F,) along the axis of y whose inner size (product of the later axes) is ``inner``
    "bias_relu": (
        "T y, raw T b, int64 inner, int64 nb", "T out, bool mask",
        "T z = y + b[(i / inner) % nb]; out = (z > (T)0 || z != z) ? z : (T)0; mask = out > (T)0;"),
    # per element, in the reference's order (backends/base.adam_reference): step = lr / (1 - b1**t)
    # and c2 = sqrt(1 - b2**t) in float64 from the device scalars lr, t, cast to T;
    # [p *= 1 - lr*wd (decoupled) | g += wd*p (L2)]; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g;
    # p -= step * (m / (sqrt(v)/c2 + eps))
    "adam_update": (
        "T g, raw float64 lr, raw float64 t, float64 b1d, T b1, T one_minus_b1, float64 b2d, T b2, "
        "T one_minus_b2, T eps, float64 wd, T wdt, bool decoupled",
        "T p, T m, T v",
        """
        double rate = lr[0], tt = t[0];
        T step = (T)(rate / (1.0 - pow(b1d, tt)));
        T c2 = (T)sqrt(1.0 - pow(b2d, tt));
        T grad = g;
        if (wd != 0.0) {
            if (decoupled) { p = p * (T)(1.0 - rate * wd); } else { grad = grad + wdt * p; }
        }
        m = m * b1; m = m + one_minus_b1 * grad;
        v = v * b2; v = v + one_minus_b2 * (grad * grad);
        T denom = sqrt(v); denom = denom / c2; denom = denom + eps;
        p = p - step * (m / denom);
        """),
    # start: a (1,) device array (the device counter of a captured step) ...
    "splitmix64": (
        "raw uint64 start", "uint64 z",
        """
        unsigned long long s = (unsigned long long)i * 0x9E3779B97F4A7C15ULL + start[0];
        s = s ^ (s >> 30); s = s * 0xBF58476D1CE4E5B9ULL;
        s = s ^ (s >> 27); s = s * 0x94D049BB133111EBULL;
        z = s ^ (s >> 31);
        """),
    # ... or a host scalar, passed as a kernel argument (no fill kernel for it)
    "splitmix64_at": (
        "uint64 start", "uint64 z",
        """
        unsigned long long s = (unsigned long long)i * 0x9E3779B97F4A7C15ULL + start;
        s = s ^ (s >> 30); s = s * 0xBF58476D1CE4E5B9ULL;
        s = s ^ (s >> 27); s = s * 0x94D049BB133111EBULL;
        z = s ^ (s >> 31);
        """),
    # one thread per output; x C-contiguous (N, C, H, W). maximum(y, v) as NumPy: NaN wins
    "maxpool2d_forward": (
        "raw T x, " + _POOL_PARAMS, "T y",
        """
        long long q = i % wo, r = (i / wo) % ho, plane = i / ((long long)wo * ho);
        long long base = (plane * h + r * sh) * w + q * sw;
        T m = x[base];
        for (int a = 0; a < ph; ++a) {
            for (int b = 0; b < pw; ++b) {
                T v = x[base + (long long)a * w + b];
                m = (m != m || m > v) ? m : v;
            }
        }
        y = m;
        """),
    # one thread per input cell: the sum, over the windows holding it (offsets in the
    # reference's order), of dy where this cell is the window's first maximum (or first NaN)
    "maxpool2d_backward": (
        "raw T x, raw T y, raw T dy, " + _POOL_PARAMS, "T dx",
        """
        long long col = i % w, row = (i / w) % h, plane = i / ((long long)w * h);
        long long r_lo = row < ph ? 0 : (row - ph) / sh + 1, q_lo = col < pw ? 0 : (col - pw) / sw + 1;
        long long r_hi = min(row / sh, (long long)ho - 1), q_hi = min(col / sw, (long long)wo - 1);
        T acc = (T)0;
        for (long long r = r_hi; r >= r_lo; --r) {
            for (long long q = q_hi; q >= q_lo; --q) {
                long long o = (plane * ho + r) * wo + q;
                long long base = (plane * h + r * sh) * w + q * sw;
                T m = y[o];
                long long first = -1;
                for (int a = 0; a < ph && first < 0; ++a) {
                    for (int b = 0; b < pw; ++b) {
                        T v = x[base + (long long)a * w + b];
                        if (v == m || v != v) { first = (long long)a * pw + b; break; }
                    }
                }
                acc = acc + ((first == (row - r * sh) * pw + (col - q * sw)) ? dy[o] : (T)0);
            }
        }
        dx = acc;
        """),
    # one thread per output pixel of x (N, C, H, W), C-contiguous; mat (N, 2, 3) inverse maps in
    # centred coordinates; nearest: clip the sample to the image, else read ``fill`` outside
    "affine_warp": (
        "raw T x, raw M mat, int32 c, int32 h, int32 w, T fill, bool nearest", "T out",
        """
        long long col = i % w, row = (i / w) % h, plane = i / ((long long)w * h), img = plane / c;
        const T cx = (T)((w - 1) / 2.0), cy = (T)((h - 1) / 2.0);
        T u = (T)col - cx, v = (T)row - cy;
        const M* k = &mat[img * 6];
        T xs = (T)k[0] * u; xs = xs + (T)k[1] * v; xs = xs + ((T)k[2] + cx);
        T ys = (T)k[3] * u; ys = ys + (T)k[4] * v; ys = ys + ((T)k[5] + cy);
        if (nearest) {
            xs = xs < (T)0 ? (T)0 : xs; xs = xs > (T)(w - 1) ? (T)(w - 1) : xs;
            ys = ys < (T)0 ? (T)0 : ys; ys = ys > (T)(h - 1) ? (T)(h - 1) : ys;
        }
        T x0 = floor(xs), y0 = floor(ys);
        T fx = xs - x0, fy = ys - y0;
        long long xi = (long long)x0, yi = (long long)y0;
        T corner[4];
        for (int a = 0; a < 2; ++a) {
            for (int b = 0; b < 2; ++b) {
                long long yy = yi + a, xx = xi + b;
                bool inside = yy >= 0 && yy < h && xx >= 0 && xx < w;
                corner[2 * a + b] = inside ? x[(plane * h + yy) * w + xx] : fill;
            }
        }
        T top = corner[0] + fx * (corner[1] - corner[0]);
        T bottom = corner[2] + fx * (corner[3] - corner[2]);
        out = top + fy * (bottom - top);
        """),
    # one thread per image j of n; u (5, n) uniforms in [0, 1) (float64), mat (n, 2, 3) float64,
    # in the reference's order of operations (xpnet/augment.keras_matrices_xp)
    "keras_affine_matrices": (
        "raw float64 u, float64 angle, float64 shift_x, float64 shift_y, float64 zoom, int64 n",
        "raw float64 mat",
        """
        double r0 = u[i] * 2.0 - 1.0, r1 = u[n + i] * 2.0 - 1.0, r2 = u[2 * n + i] * 2.0 - 1.0;
        double r3 = u[3 * n + i] * 2.0 - 1.0, r4 = u[4 * n + i] * 2.0 - 1.0;
        double theta = angle * r0, tx = shift_x * r1, ty = shift_y * r2;
        double zx = 1.0 + zoom * r3, zy = 1.0 + zoom * r4;
        double c = cos(theta), s = sin(theta);
        double* m = &mat[i * 6];
        m[0] = c * zx; m[1] = (-s) * zy; m[2] = c * tx - s * ty;
        m[3] = s * zx; m[4] = c * zy; m[5] = s * tx + c * ty;
        """),
    # one thread per row i of z (N, K), C-contiguous: p = softmax, picked = log-softmax at the label
    "softmax_labels": (
        "raw T z, L label, int64 k", "raw T p, T picked",
        """
        const T* row = &z[i * k];
        T m = row[0];
        for (long long j = 1; j < k; ++j) { T v = row[j]; m = (m != m || m > v) ? m : v; }
        T s = (T)0;
        for (long long j = 0; j < k; ++j) { T e = exp(row[j] - m); p[i * k + j] = e; s = s + e; }
        for (long long j = 0; j < k; ++j) { p[i * k + j] = p[i * k + j] / s; }
        picked = (row[label] - m) - log(s);
        """),
    # one thread per element of p (N, K): p - 1 at the label, times 1/N
    "softmax_labels_grad": (
        "T p, raw L label, int64 k, T inv_n", "T grad",
        """
        T g = p;
        if (i % k == label[i / k]) { g = g - (T)1; }
        grad = g * inv_n;
        """),
}

# The argument dtypes each kernel is compiled for in CI (tests/test_cupy_compile.py): the input
# arrays and scalars in order, then the outputs. "T" kernels for float32 and float64, and float16
# for those that run inside a mixed-precision step (xpnet/mixed.py).
_F = ("float32", "float64")
_H = _F + ("float16",)
SIGNATURES = {
    "relu_forward": [((t,), (t, "bool")) for t in _H],
    "dropout": [((t, "bool", t), (t,)) for t in _H],
    "spectral_matrices": [((t, "int64", "int64", "int64"), (t,)) for t in _H],
    "bias_relu": [((t, t, "int64", "int64"), (t, "bool")) for t in _H],
    "adam_update": [((t, "float64", "float64", "float64", t, t, "float64", t, t, t, "float64", t,
                      "bool"), (t, t, t)) for t in _F],
    "splitmix64": [(("uint64",), ("uint64",))],
    "splitmix64_at": [(("uint64",), ("uint64",))],
    "maxpool2d_forward": [((t,) + ("int32",) * 8, (t,)) for t in _H],
    "maxpool2d_backward": [((t, t, t) + ("int32",) * 8, (t,)) for t in _H],
    "softmax_labels": [((t, l, "int64"), (t, t)) for t in _F for l in ("int64", "int32")],
    "softmax_labels_grad": [((t, l, "int64", t), (t,)) for t in _F for l in ("int64", "int32")],
    "keras_affine_matrices": [(("float64",) * 5 + ("int64",), ("float64",))],
    "affine_warp": [((t, m, "int32", "int32", "int32", t, "bool"), (t,)) for t in _F for m in _F],
}


# RawKernels: batch normalisation, one block of BLOCK threads per channel c of x (N, C, S)
# (S the product of the spatial axes, 1 for (N, C) inputs), C-contiguous. The sums over the channel's
# N*S values are block reductions in shared memory (their order is not NumPy's pairwise one: the
# results agree to float rounding). ``real`` is float or double.
BLOCK = 256
_BN_COMMON = r"""
#define BLOCK 256
__device__ real block_sum(real v, real* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int half = BLOCK / 2; half > 0; half >>= 1) {
        if (threadIdx.x < half) shared[threadIdx.x] += shared[threadIdx.x + half];
        __syncthreads();
    }
    real total = shared[0];
    __syncthreads();
    return total;
}
#define AT(k) (((k) / S) * C * S + c * S + (k) % S)
"""
RAW = {
    # mean, biased variance, running stats (momentum, unbias = (1 - momentum) * count / (count - 1)),
    # inv_std = 1 / sqrt(var + eps), xhat, out = xhat * gamma + beta
    "batchnorm_train": _BN_COMMON + r"""
extern "C" __global__ void xpnet_batchnorm_train(
        const real* x, const real* gamma, const real* beta, real* running_mean, real* running_var,
        real* out, real* xhat, real* inv_std_out, long long N, long long C, long long S,
        real momentum, real one_minus_momentum, real unbias, real eps) {
    __shared__ real shared[BLOCK];
    long long c = blockIdx.x, count = N * S;
    real acc = 0;
    for (long long k = threadIdx.x; k < count; k += BLOCK) acc += x[AT(k)];
    real mean = block_sum(acc, shared) / (real)count;
    acc = 0;
    for (long long k = threadIdx.x; k < count; k += BLOCK) { real d = x[AT(k)] - mean; acc += d * d; }
    real var = block_sum(acc, shared) / (real)count;
    real inv_std = (real)1 / sqrt(var + eps);
    if (threadIdx.x == 0) {
        running_mean[c] = momentum * running_mean[c] + one_minus_momentum * mean;
        running_var[c] = momentum * running_var[c] + unbias * var;
        inv_std_out[c] = inv_std;
    }
    real g = gamma[c], b = beta[c];
    for (long long k = threadIdx.x; k < count; k += BLOCK) {
        long long at = AT(k);
        real h = (x[at] - mean) * inv_std;
        xhat[at] = h;
        out[at] = h * g + b;
    }
}
""",
    # dgamma = sum(grad * xhat), dbeta = sum(grad),
    # dx = gamma * inv_std * (grad - dbeta / count - xhat * dgamma / count)
    "batchnorm_grad": _BN_COMMON + r"""
extern "C" __global__ void xpnet_batchnorm_grad(
        const real* grad, const real* xhat, const real* inv_std, const real* gamma,
        real* dgamma, real* dbeta, real* dx, long long N, long long C, long long S, real count) {
    __shared__ real shared[BLOCK];
    long long c = blockIdx.x, n = N * S;
    real a = 0, b = 0;
    for (long long k = threadIdx.x; k < n; k += BLOCK) { long long at = AT(k); a += grad[at] * xhat[at]; b += grad[at]; }
    real gx_sum = block_sum(a, shared), g_sum = block_sum(b, shared);
    if (threadIdx.x == 0) { dgamma[c] = gx_sum; dbeta[c] = g_sum; }
    real scale = gamma[c] * inv_std[c], g_mean = g_sum / count, gx_mean = gx_sum / count;
    for (long long k = threadIdx.x; k < n; k += BLOCK) {
        long long at = AT(k);
        dx[at] = scale * ((grad[at] - g_mean) - xhat[at] * gx_mean);
    }
}
""",
}
REAL = {"float32": "float", "float64": "double"}


def raw_source(name, dtype):
    """The CUDA source of RawKernel ``name`` for float32 or float64 arrays."""
    return f"typedef {REAL[dtype]} real;\n" + RAW[name]


def build(cupy):
    """The kernels as CuPy objects (compilation is deferred to their first call); the RawKernels
    as {(name, dtype): kernel}."""
    kernels = {name: cupy.ElementwiseKernel(i, o, op, "xpnet_" + name, options=OPTIONS)
               for name, (i, o, op) in SOURCES.items()}
    for name in RAW:
        for dtype in REAL:
            kernels[(name, dtype)] = cupy.RawKernel(raw_source(name, dtype), "xpnet_" + name,
                                                    options=OPTIONS)
    return kernels
