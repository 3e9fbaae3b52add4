"""What every backend provides. A backend is the only place that knows which array library runs."""
import contextlib

from xpnet.errors import ConfigError

from .random import CounterRandom


def adam_reference(xp, p, g, m, v, b1, b2, eps, lr, t, weight_decay, decoupled):
    """The flat Adam/AdamW update in place, operation by operation as optim.Adam._update does it
    (the reference of the CuPy backend's one-launch ``adam_update``). lr and t are float64 device
    scalars; step = lr / (1 - b1**t) and c2 = sqrt(1 - b2**t) are computed in float64 and cast to
    p's dtype; AdamW (decoupled) first scales p by 1 - lr * weight_decay, Adam adds
    weight_decay * p to the gradient."""
    step = (lr / (1.0 - b1 ** t)).astype(p.dtype)
    c2 = xp.sqrt(1.0 - b2 ** t).astype(p.dtype)
    if weight_decay:
        if decoupled:
            p *= (1.0 - lr * weight_decay).astype(p.dtype)
        else:
            g = g + weight_decay * p
    m *= b1
    m += (1.0 - b1) * g
    v *= b2
    v += (1.0 - b2) * (g * g)
    denom = xp.sqrt(v)
    denom /= c2
    denom += eps
    p -= step * (m / denom)


class Backend:
    """One array library. Layers get ``xp`` from here and never import numpy or cupy themselves."""

    name = "base"
    is_gpu = False
    # True where an array operation costs a kernel launch (GPUs, and the strict backend that stands
    # in for them): ops then prefer one gather or strided copy to a loop of cheaper slices.
    few_launches = True
    can_capture = False  # CUDA graph capture of a training step (see capture())
    # How the fast convolution picks spectral vs columns (xpnet/ops/autotune.py): "estimate" from
    # the FLOP model tuned on a CPU, or "measure" both once per shape and keep the faster.
    conv_choice = "estimate"
    # Largest im2col buffer per batch chunk of the columns convolution (xpnet/ops/columns.py);
    # None: that module's CPU default (32 MiB). Backward reuses the forward's columns only when one
    # chunk held the whole batch, so a larger limit saves recomputing them, at the cost of memory.
    column_bytes = None
    # True where max pooling (stride == pool) followed by ReLU gives the bits of ReLU followed by
    # max pooling, outputs and gradients: the CPU backends, whose pooling and ReLU are the code of
    # xpnet/ops/pooling.py and relu_forward. Sequential then pools first and applies the ReLU to a
    # quarter of the elements (xpnet/model.py, _link_relu_pool). The CuPy kernels' backward adds
    # dy to 0.0, which gives 0.0 where the two layers give -0.0: not there.
    pool_before_relu = True
    # A dict where affine_warp keeps its per-shape constants (pixel grid, gather offsets) between
    # calls (xpnet/augment.py warp_constants); None: made per call (the GPU and strict backends).
    warp_constants = None

    def __init__(self, xp):
        self.xp = xp

    # -- moving data --------------------------------------------------------------------------
    def asarray(self, array, dtype=None):
        """Host (or device) array -> this backend's array. Host data is always copied (CuPy copies
        to the device; the NumPy and strict backends copy explicitly), so the library never
        shares memory with a caller's host array."""
        return self.xp.asarray(array, dtype=dtype)

    def to_numpy(self, array):
        """This backend's array -> a NumPy array on the host (a sync on GPUs)."""
        raise NotImplementedError

    def synchronize(self):
        """Wait until all queued device work is done (nothing to do on the CPU)."""

    # -- randomness ---------------------------------------------------------------------------
    def rng(self, seed=0, stream=0):
        """A seeded generator whose numbers are the same on every backend."""
        return CounterRandom(self.xp, seed, stream)

    # -- element-wise kernels: plain ``xp`` here; a backend may override them with faster ones -----
    def relu_forward(self, x):
        """(maximum(x, 0), mask) with mask = result > 0, in one pass; NaN stays NaN."""
        y = self.xp.maximum(x, 0)
        return y, y > 0

    def multiply(self, a, b):
        """a * b (b may be a boolean mask); the result has a's dtype when b is boolean."""
        return a * b

    def dropout(self, x, keep, scale):
        """x * where(keep, scale, 0), the second factor in x's dtype; ``keep`` is boolean, laid out
        as x. Dropout's forward (x: its input) and backward (x: the gradient) both: the layer
        keeps the boolean ``keep``, not a mask of x's dtype."""
        kind = self.xp.dtype(x.dtype).type
        return x * self.xp.where(keep, kind(scale), kind(0))

    def relu_dropout(self, x, keep, scale):
        """(dropout(relu(x)), relu's mask): a ReLU and the Dropout after it in training, as
        relu_forward then dropout give them (model._link_relu_dropout); ``keep`` laid out as x."""
        y, mask = self.relu_forward(x)
        return self.dropout(y, keep, scale), mask

    def relu_dropout_grad(self, g, keep, scale, mask):
        """multiply(dropout(g, keep, scale), mask): the gradient through the Dropout and then the
        ReLU before it (relu_dropout's backward)."""
        return self.multiply(self.dropout(g, keep, scale), mask)

    # -- mixed precision (xpnet/mixed.py) ---------------------------------------------------------
    def compute_dtype(self, name):
        """The array dtype of a mixed-precision compute type, "float16" or "bfloat16", or a
        ConfigError saying why this backend has none. NumPy has no bfloat16, so the NumPy and
        strict backends offer float16 only; the CuPy backend adds bfloat16 where CuPy can."""
        if name == "float16":
            return self.xp.dtype("float16")
        raise ConfigError(f"mixed precision {name!r} is not available on the {self.name} backend: "
                          f"NumPy has no {name} type; use 'float16' (bfloat16 needs the gpu backend "
                          f"with CuPy 14 or newer and the ml_dtypes package)")

    def ignore_float_errors(self):
        """A context in which overflow and invalid operations do not warn (NumPy warns; CuPy never
        does): a mixed-precision step overflows on purpose and the loss scaler handles it."""
        return contextlib.nullcontext()

    def matmul_t(self, a, b, trans_a=False, trans_b=False):
        """a @ b for stacks of matrices (3-D, C-contiguous), either taken transposed in its last two
        axes (``trans_a``, ``trans_b``): the GEMM reads the stored layout (CuPy's matmul would copy a
        transposed operand to contiguous first; NumPy passes the transpose to BLAS)."""
        return self.xp.matmul(a.transpose(0, 2, 1) if trans_a else a,
                              b.transpose(0, 2, 1) if trans_b else b)

    def spectral_matrices(self, spec):
        """M = [[A, B], [-B, A]] (bins, 2F, 2C) from spec (2, bins, F, C) = (A, B): the per-bin
        real matrices of the spectral convolution (xpnet/ops/spectral.py)."""
        _, bins, f, c = spec.shape
        return real_form(self.xp, spec[0], spec[1], self.xp.empty((bins, 2 * f, 2 * c), dtype=spec.dtype))

    def bias_relu(self, y, b, axis=1):
        """(relu(y + b), mask) with b (F,) broadcast along ``axis`` of y: a bias and the ReLU that
        follows it in one pass (one launch on a GPU); NaN stays NaN."""
        shape = [1] * y.ndim
        shape[axis] = -1
        return self.relu_forward(y + b.astype(y.dtype, copy=False).reshape(shape))

    def maxpool2d_forward(self, x, pool, stride, planes_out=False):
        """(y, cache): max over each (ph, pw) window of x (N, C, H, W), no padding; a NaN in a
        window gives NaN (xpnet/ops/pooling.py holds the reference). ``planes_out``: where x is
        the NCHW view of planes, y may be too (ops/layout.py)."""
        from xpnet.ops.pooling import maxpool2d_forward_xp
        return maxpool2d_forward_xp(self.xp, x, pool, stride, planes_out)

    def maxpool2d_backward(self, dy, cache):
        """dx: each window's gradient to its first maximum in row-major window order."""
        from xpnet.ops.pooling import maxpool2d_backward_xp
        return maxpool2d_backward_xp(self.xp, dy, cache)

    def window_max_2x2(self, x, m, k_of, bias=None):
        """m, k_of <- each 2x2 window's maximum of x (plus bias[p % F] on plane p, when given) and
        the offset of its first maximum in one compiled pass, for x as planes (P, H, W) or as bands
        of planes (R, 2, W, Q) (backends/compiled.py), or False: the caller runs ``pooling._fold``'s
        passes (here always; the NumPy backend's compiled kernels give their bits)."""
        return False

    def unpool_2x2(self, k_of, d, x):
        """x <- d at each 2x2 window's offset k_of, 0 * d elsewhere, in one compiled pass, or False:
        the caller runs ``pooling._scatter``'s passes (as window_max_2x2)."""
        return False

    def bin_products(self, kind, arrays, gauss, need_dx=True, need_g=True):
        """A function (b0, b1) that makes the spectral route's per-bin products of the bins b0:b1
        in one compiled call (backends/compiled.py's ``bin_products`` says which), or None: the
        caller runs its own passes (here always; the NumPy backend's compiled calls give their
        bits)."""
        return None

    def warp_compiled(self, x, k, uv, fill, nearest):
        """augment._warp_centred's warp of x by the maps k (the image centre added) in one compiled
        pass (backends/compiled.py's ``affine_warp``), or None: the caller runs its own passes (here
        always; the NumPy backend's compiled pass gives their bits)."""
        return None

    def affine_warp(self, x, matrices, fill=0.0, mode="constant"):
        """Bilinear warp of each image of x (N, C, H, W) by its inverse map (N, 2, 3), in centred
        coordinates (xpnet/augment.py holds the reference and the conventions)."""
        from xpnet.augment import affine_warp_xp
        return affine_warp_xp(self.xp, x, matrices, fill, mode)

    def softmax_labels(self, z, labels):
        """(softmax(z), log_softmax(z)[i, labels[i]]) for logits z (N, K) and int labels (N,):
        the rows shifted by their max, as losses.CrossEntropy does (one launch on a GPU)."""
        xp = self.xp
        z = z - z.max(axis=1, keepdims=True)
        e = xp.exp(z)
        s = e.sum(axis=1, keepdims=True)
        picked = z[xp.arange(z.shape[0]), labels] - xp.log(s[:, 0])
        return e / s, picked

    def softmax_labels_grad(self, p, labels, n):
        """d(mean cross-entropy)/dz = (p - onehot(labels)) / n, in the reference's order."""
        grad = p.copy()
        grad[self.xp.arange(p.shape[0]), labels] -= 1.0
        grad *= 1.0 / n
        return grad

    def batchnorm_train(self, x, gamma, beta, running_mean, running_var, momentum, epsilon):
        """(out, xhat, inv_std) of batch normalisation in training over every axis but 1 of x,
        updating the running statistics in place (unbiased variance), as layers.BatchNorm does."""
        xp = self.xp
        axes = (0,) + tuple(range(2, x.ndim))
        stat = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        count = x.size // x.shape[1]
        mean = x.mean(axis=axes)
        centered = x - mean.reshape(stat)
        var = (centered * centered).mean(axis=axes)
        m = momentum
        running_mean[...] = m * running_mean + (1.0 - m) * mean
        running_var[...] = m * running_var + (1.0 - m) * (count / (count - 1)) * var
        inv_std = 1.0 / xp.sqrt(var + epsilon)
        xhat = centered * inv_std.reshape(stat)
        return xhat * gamma.reshape(stat) + beta.reshape(stat), xhat, inv_std

    def batchnorm_grad(self, grad, xhat, inv_std, gamma, count):
        """(dgamma, dbeta, dx) of batchnorm_train's output for the gradient ``grad``."""
        axes = (0,) + tuple(range(2, grad.ndim))
        stat = (1, grad.shape[1]) + (1,) * (grad.ndim - 2)
        dgamma = (grad * xhat).sum(axis=axes)
        dbeta = grad.sum(axis=axes)
        scale = (gamma * inv_std).reshape(stat)
        g_mean = (dbeta / count).reshape(stat)
        gx_mean = (dgamma / count).reshape(stat)
        return dgamma, dbeta, scale * (grad - g_mean - xhat * gx_mean)

    def keras_affine_matrices(self, u, angle, shift_x, shift_y, zoom):
        """KerasAffine's (N, 2, 3) inverse maps from uniforms u (5, N) (xpnet/augment.py holds the
        reference, keras_matrices_xp)."""
        from xpnet.augment import keras_matrices_xp
        return keras_matrices_xp(self.xp, u, angle, shift_x, shift_y, zoom)

    def matmul(self, a, b):
        """xp.matmul(a, b) (2-D or stacked 3-D); the NumPy backend splits it over its threads."""
        return self.xp.matmul(a, b)

    def outer(self, a, b):
        """a.T @ b for one-row matrices a (1, m) and b (1, n): a Dense layer's weight gradient for
        a batch of one. Here the GEMM; the NumPy backend multiplies (the same bits)."""
        return self.xp.matmul(a.T, b)

    def split_threads(self):
        """How many threads a ``split`` pass may run on now, for callers that lay out their pieces
        for them (conv_pool's bands): here 1; the NumPy backend its pool's threads, or 1 while the
        pool is loaded (cpu_threads.SplitCheck: every pass then runs on the calling thread)."""
        return 1

    def split(self, part, length, size, shape=None):
        """Run ``part(s)`` for slices ``s`` covering range(length) of a leading axis (here: one
        call with slice(None)); ``size`` is the number of elements touched, so a backend with
        threads (NumPy) splits only work worth it, and ``shape`` (hashable, optional) tells its
        check apart passes of one ``part`` with the same size but different speeds (a GEMM's
        operand shapes). The parts must write disjoint outputs."""
        part(slice(None))

    def flat_update(self, fn, arrays):
        """``fn(*arrays)`` for an optimizer's element-wise update of its flat 1-D buffers (the
        parameters, the gradient, the moments): here one call; the NumPy backend runs it over
        cache-sized pieces, on its threads. fn must be element-wise, so that pieces give the bits
        of one call. An entry may be a list of 1-D arrays of one dtype, the parts of a buffer in
        order (the optimizer's gradients, one per parameter): joined here; the NumPy backend reads
        each piece from the parts and never joins the whole."""
        fn(*(self.xp.concatenate(a) if isinstance(a, list) else a for a in arrays))

    def background(self, fn):
        """Start ``fn()`` on a thread beside the caller and return a handle whose ``result()``
        waits for its value, or None where the backend has no thread to spare (here, and the NumPy
        backend on one thread): the caller then runs fn when it needs the value. Only for work
        whose result does not depend on where it runs."""
        return None

    def deferring(self):
        """A context for work whose results are needed only at its end (the model's backward:
        the weight gradients): inside it ``can_defer`` may be true, and on leaving it every piece
        given to ``later`` has run. Here nothing is deferred."""
        return contextlib.nullcontext()

    def can_defer(self):
        """True where ``later`` would run its pieces beside the caller's work (the NumPy backend
        on more than one thread, inside ``deferring``): else a caller does the work at once, in
        the form it has for that."""
        return False

    def later(self, pieces, then=None):
        """Run the callables ``pieces`` (independent of each other: any order, any thread), then
        ``then()``, by the end of the current ``deferring`` context; here at once. For work
        whose result does not depend on where it runs."""
        for piece in pieces:
            piece()
        if then is not None:
            then()

    # -- captured steps (CUDA graphs) -------------------------------------------------------------
    def capture_stream(self):
        """A context in which a captured step and everything around it run (one stream on CUDA,
        so the replays and the surrounding work stay in order); nothing on the CPU."""
        return contextlib.nullcontext()

    def capture_memory(self):
        """A context for the steps before and during a capture whose allocations come from a
        private pool that nothing else uses, so a replay never writes into memory that was handed
        out again after the capture; nothing on the CPU."""
        return contextlib.nullcontext()

    def capture(self, fn):
        """Record ``fn()``'s device work once and return ``replay()``, which runs it again on the
        same buffers; None where the backend cannot capture (the CPU: the caller then calls fn()
        every time). ``fn`` must be capturable: no host sync, no host-to-device copy, no
        allocation whose shape changes, and every per-step value read from device arrays."""
        return None

    # -- what belongs to this backend -----------------------------------------------------------
    @classmethod
    def owns(cls, array):
        """True when ``array`` is one of this backend's arrays (no data is touched)."""
        return False

    @classmethod
    def is_out_of_memory(cls, exc):
        """True when ``exc`` reports that this backend's device ran out of memory (never on the
        CPU backends: a host MemoryError is a plain Python error)."""
        return False

    def memory_info(self):
        """A dict describing device memory (empty on the CPU)."""
        return {}

    def __repr__(self):
        return f"<xpnet backend {self.name!r}>"


def real_form(xp, a, b, out):
    """out (bins, 2F, 2C) <- [[A, B], [-B, A]] for A, B (bins, F, C): four block copies (the
    reference of ``Backend.spectral_matrices``; the CPU's spectral route fills chunks of bins with
    it, xpnet/ops/spectral.py)."""
    f, c = a.shape[1], a.shape[2]
    out[:, :f, :c] = a
    out[:, :f, c:] = b
    xp.negative(b, out=out[:, f:, :c])
    out[:, f:, c:] = a
    return out
