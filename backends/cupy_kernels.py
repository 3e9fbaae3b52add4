"""Fused element-wise CUDA kernels for the CuPy backend (issue 15, point 2).

Each kernel does in one launch what the pure-``xp`` reference in backends/base.py (and optim.py)
does in several; the reference is what tests/test_cupy_kernels.py compares them with on a GPU.
They are compiled by CuPy (NVRTC) on first use. ``--fmad=false`` keeps multiply-adds unfused, so
the kernels round as the reference's separate operations do.

    relu_forward      maximum(x, 0) and its mask                      (2 launches -> 1)
    dropout_forward   mask = where(keep, scale, 0), y = x * mask       (2 launches -> 1)
    adam_update       the flat Adam/AdamW update over all parameters   (11 launches -> 1)
    splitmix64        counter-based random words                       (10 launches -> 1)
"""
OPTIONS = ("--fmad=false",)


def build(cupy):
    """The kernels as CuPy objects (compilation is deferred to their first call)."""
    ek = cupy.ElementwiseKernel
    return {
        "relu_forward": ek(
            "T x", "T y, bool mask",
            "y = (x > (T)0 || x != x) ? x : (T)0; mask = y > (T)0;",
            "xpnet_relu_forward", options=OPTIONS),
        "dropout_forward": ek(
            "T x, bool keep, T scale", "T y, T mask",
            "mask = keep ? scale : (T)0; y = x * mask;",
            "xpnet_dropout_forward", options=OPTIONS),
        # per element, in the reference's order: [p *= 1 - lr*wd (decoupled) | g += wd*p (L2)];
        # m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g; p -= (lr/c1) * (m / (sqrt(v)/c2 + eps))
        # with lr, c1 = 1 - b1**t, c2 = sqrt(1 - b2**t) computed once per step on the device and
        # passed as the float32 scalars the reference casts them to.
        "adam_update": ek(
            "T g, T b1, T one_minus_b1, T b2, T one_minus_b2, T eps, T step, T c2, T decay, "
            "T l2, bool decoupled",
            "T p, T m, T v",
            """
            T grad = g;
            if (decoupled) { p = p * decay; } else if (l2 != (T)0) { grad = grad + l2 * p; }
            m = m * b1; m = m + one_minus_b1 * grad;
            v = v * b2; v = v + one_minus_b2 * (grad * grad);
            T denom = sqrt(v); denom = denom / c2; denom = denom + eps;
            p = p - step * (m / denom);
            """,
            "xpnet_adam_update", options=OPTIONS),
        "splitmix64": ek(
            "raw uint64 start", "uint64 z",
            """
            unsigned long long s = (unsigned long long)i * 0x9E3779B97F4A7C15ULL + start[0];
            s = s ^ (s >> 30); s = s * 0xBF58476D1CE4E5B9ULL;
            s = s ^ (s >> 27); s = s * 0x94D049BB133111EBULL;
            z = s ^ (s >> 31);
            """,
            "xpnet_splitmix64", options=OPTIONS),
    }
