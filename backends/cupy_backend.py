"""The CUDA backend: CuPy. Imported only when asked for, so CPU machines never need CuPy.

CuPy settings that change speed or numbers (read by CuPy from the environment when it is first
imported, so set them before starting Python; ``settings()`` reports them and every GPU run
records them in result.json):
  CUPY_TF32=1              cuBLAS may use TF32 for float32 products (about 1e-3 relative error,
                           several times faster matrix products on Ampere and newer); default off.
  CUPY_GPU_MEMORY_LIMIT    a cap for CuPy's memory pool, bytes or a percentage ("50%").
  CUPY_CACHE_DIR           where compiled kernels are kept (default ~/.cupy/kernel_cache).
CuPy's memory pool keeps freed blocks for reuse; ``memory_info()`` shows what the pool holds
and ``release_memory()`` hands the unused blocks back to the driver.
"""
import ctypes
import os
import sys

from xpnet.errors import BackendError, ConfigError, NoGPUError

from .base import Backend

INSTALL_HINT = (
    "install CuPy for your CUDA version with the matching extra, from the checkout: "
    "pip install -e '.[cuda12]' (CUDA 12.x) or pip install -e '.[cuda13]' (CUDA 13.x), which "
    "bring CuPy with its CUDA libraries (cupy-cuda1Xx[ctk])"
)


CACHE_HINT = (
    "CuPy keeps compiled kernels in $CUPY_CACHE_DIR (default ~/.cupy/kernel_cache), which must be "
    "writable: point CUPY_CACHE_DIR at a writable folder (in a container, a mounted volume keeps "
    "the kernels between runs)"
)


def _import_cupy():
    try:
        import cupy
    except ImportError as exc:
        raise BackendError(f"the 'gpu' backend needs CuPy, which is not installed: {INSTALL_HINT}") from exc
    except OSError as exc:  # e.g. CuPy cannot create its kernel cache folder
        raise BackendError(f"CuPy is installed but failed to import ({exc}); {CACHE_HINT}") from exc
    except Exception as exc:  # a broken installation: mismatched CUDA libraries and the like
        raise BackendError(f"CuPy is installed but failed to import ({type(exc).__name__}: {exc}); "
                           f"{INSTALL_HINT}") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no device, no driver (a container without --gpus), or a broken one
        if getattr(exc, "status", None) == NO_DEVICE or "cudaErrorNoDevice" in str(exc) \
                or _driver_missing():
            raise NoGPUError(f"CuPy is installed but no CUDA GPU is visible ({exc}); {VISIBLE_HINT}") \
                from exc
        raise NoGPUError(f"CuPy is installed but no usable CUDA GPU was found ({exc})",
                         f"use {{cpu}}, or check the NVIDIA driver and {INSTALL_HINT}") from exc
    if count < 1:
        raise NoGPUError(f"CuPy is installed but no CUDA GPU is visible; {VISIBLE_HINT}")
    return cupy


NO_DEVICE = 100  # cudaErrorNoDevice
VISIBLE_HINT = ("nvidia-smi lists the GPUs of this machine, CUDA_VISIBLE_DEVICES may hide them, and a "
                "Docker container sees them only when started with --gpus all")


def _driver_missing():
    """True when the NVIDIA driver's library cannot be loaded (no driver, or a container started
    without --gpus): nothing to reinstall on the CuPy side."""
    try:
        ctypes.CDLL("nvcuda.dll" if os.name == "nt" else "libcuda.so.1")
    except OSError:
        return True
    return False


class CupyBackend(Backend):
    name = "cupy"
    is_gpu = True
    can_capture = True
    conv_choice = "measure"  # a GPU's speeds are not the CPU's that the FLOP model was tuned on
    column_bytes = 256 * 2 ** 20  # whole batches in one im2col chunk: backward reuses the columns
    pool_before_relu = False  # see Backend: the max-pool kernel's gradient differs in -0.0 vs 0.0

    def __init__(self, device_id=0):
        cupy = _import_cupy()
        problem = gpu_problem()
        if problem is not None:
            raise BackendError(problem)
        super().__init__(cupy)
        self.device_id = int(device_id)
        cupy.cuda.Device(self.device_id).use()

    @classmethod
    def owns(cls, array):
        cupy = sys.modules.get("cupy")  # no CuPy array exists before CuPy is imported
        return cupy is not None and isinstance(array, cupy.ndarray)

    @classmethod
    def is_out_of_memory(cls, exc):
        """CuPy's OutOfMemoryError, or a CUDA/cuBLAS error from CuPy reporting an allocation
        failure; matched by name, so CuPy need not be imported."""
        if any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__):
            return True
        module = type(exc).__module__ or ""
        return module.startswith("cupy") and any(s in str(exc) for s in ("OUT_OF_MEMORY", "ALLOC_FAILED"))

    def to_numpy(self, array):
        return self.xp.asnumpy(array)

    # -- fused kernels (backends/cupy_kernels.py; the base class holds the pure-xp reference) ----
    @property
    def _kernels(self):
        if getattr(self, "_kernel_cache", None) is None:
            from .cupy_kernels import build
            self._kernel_cache = build(self.xp)
        return self._kernel_cache

    def relu_forward(self, x):
        return self._kernels["relu_forward"](x)

    def dropout(self, x, keep, scale):
        return self._kernels["dropout"](x, keep, x.dtype.type(scale))

    def spectral_matrices(self, spec):
        _, bins, f, c = (int(v) for v in spec.shape)
        M = self.xp.empty((bins, 2 * f, 2 * c), dtype=spec.dtype)
        self._kernels["spectral_matrices"](self.xp.ascontiguousarray(spec), f, c, bins, M)
        return M

    def bias_relu(self, y, b, axis=1):
        axis = axis % y.ndim
        inner = 1
        for n in y.shape[axis + 1:]:
            inner *= int(n)
        return self._kernels["bias_relu"](y, b.astype(y.dtype, copy=False), inner, int(b.size))

    def adam_update(self, p, g, m, v, b1, b2, eps, lr, t, weight_decay, decoupled):
        """The flat Adam update in one launch (see backends/base.adam_reference); lr and t are
        float64 device scalars, read by the kernel (so a captured step sees their new values)."""
        d, f = p.dtype.type, self.xp.float64
        self._kernels["adam_update"](g, lr.reshape(1), t.reshape(1), f(b1), d(b1), d(1.0 - b1), f(b2),
                                     d(b2), d(1.0 - b2), d(eps), f(weight_decay), d(weight_decay),
                                     bool(decoupled), p, m, v)

    def compute_dtype(self, name):
        """float16 always; bfloat16 where this CuPy computes with it: CuPy 14 takes NumPy's
        bfloat16 extension type from the ml_dtypes package for element-wise kernels, reductions
        and matrix products (not FFTs, which xpnet does not use). A small product and sum are
        tried once; a CuPy without it is refused with the reason."""
        if name != "bfloat16":
            return super().compute_dtype(name)
        if not hasattr(self, "_bfloat16"):
            self._bfloat16 = _probe_bfloat16(self.xp)
        dtype, problem = self._bfloat16
        if dtype is None:
            raise ConfigError(f"mixed precision 'bfloat16' is not available with CuPy "
                              f"{self.xp.__version__} here ({problem}); it needs CuPy 14 or newer "
                              f"and the ml_dtypes package; use 'float16'")
        return dtype

    def matmul_t(self, a, b, trans_a=False, trans_b=False):
        """One cublasGemmStridedBatchedEx with the transposes as cuBLAS operations, no copy.

        Row-major C = op(A) @ op(B) is column-major C^T = op(B)^T @ op(A)^T: cuBLAS gets B first,
        transposed exactly when op(B) is not (a stored row-major matrix reads as its transpose)."""
        from cupy_backends.cuda.api import runtime
        from cupy_backends.cuda.libs import cublas
        xp = self.xp
        if a.ndim != 3 or b.ndim != 3 or a.dtype != b.dtype or a.dtype not in (xp.float32, xp.float64):
            return super().matmul_t(a, b, trans_a, trans_b)
        a, b = xp.ascontiguousarray(a), xp.ascontiguousarray(b)
        batch = int(a.shape[0])
        m, k = (int(a.shape[2]), int(a.shape[1])) if trans_a else (int(a.shape[1]), int(a.shape[2]))
        kb, n = (int(b.shape[2]), int(b.shape[1])) if trans_b else (int(b.shape[1]), int(b.shape[2]))
        if k != kb or int(b.shape[0]) != batch:
            raise ValueError(f"matmul_t: shapes {a.shape} (trans {trans_a}) and {b.shape} "
                             f"(trans {trans_b}) do not match")
        c = xp.empty((batch, m, n), dtype=a.dtype)
        dtype = runtime.CUDA_R_32F if a.dtype == xp.float32 else runtime.CUDA_R_64F
        scalar = ctypes.c_float if a.dtype == xp.float32 else ctypes.c_double
        one, zero = scalar(1.0), scalar(0.0)  # host scalars (cuBLAS's default pointer mode)
        cublas.gemmStridedBatchedEx(
            self.xp.cuda.device.get_cublas_handle(),
            1 if trans_b else 0, 1 if trans_a else 0, n, m, k, ctypes.addressof(one),
            b.data.ptr, dtype, k if trans_b else n, int(b.shape[1]) * int(b.shape[2]),
            a.data.ptr, dtype, m if trans_a else k, int(a.shape[1]) * int(a.shape[2]),
            ctypes.addressof(zero), c.data.ptr, dtype, n, m * n, batch, dtype, cublas.CUBLAS_GEMM_DEFAULT)
        return c

    def _pool_args(self, x, pool, stride, ho, wo):
        i32 = self.xp.int32
        return (i32(x.shape[2]), i32(x.shape[3]), i32(ho), i32(wo), i32(pool[0]), i32(pool[1]),
                i32(stride[0]), i32(stride[1]))

    def maxpool2d_forward(self, x, pool, stride, planes_out=False):   # no planes on a GPU
        from xpnet.ops.pooling import check_pool, pooled_shape
        pool, stride = tuple(int(p) for p in pool), tuple(int(s) for s in stride)
        check_pool(x, pool, stride, "maxpool2d")
        x = self.xp.ascontiguousarray(x)  # the layers' inputs are contiguous: no copy
        shape = pooled_shape(x.shape, pool, stride)
        y = self.xp.empty(shape, dtype=x.dtype)
        self._kernels["maxpool2d_forward"](x, *self._pool_args(x, pool, stride, *shape[2:]), y)
        return y, (x, y, pool, stride)

    def maxpool2d_backward(self, dy, cache):
        from xpnet.ops.pooling import check_pool_grad
        x, y, pool, stride = cache
        check_pool_grad(dy, y)
        dy = self.xp.ascontiguousarray(dy)
        dx = self.xp.empty(x.shape, dtype=dy.dtype)
        self._kernels["maxpool2d_backward"](x, y, dy, *self._pool_args(x, pool, stride, *y.shape[2:]), dx)
        return dx

    def affine_warp(self, x, matrices, fill=0.0, mode="constant"):
        from xpnet.augment import check_warp
        check_warp(x, matrices, mode)
        x = self.xp.ascontiguousarray(x)
        out = self.xp.empty(x.shape, dtype=x.dtype)
        i32 = self.xp.int32
        self._kernels["affine_warp"](x, self.xp.ascontiguousarray(matrices), i32(x.shape[1]),
                                     i32(x.shape[2]), i32(x.shape[3]), x.dtype.type(fill),
                                     mode == "nearest", out)
        return out

    def softmax_labels(self, z, labels):
        z = self.xp.ascontiguousarray(z)
        n, k = (int(v) for v in z.shape)
        p = self.xp.empty((n, k), dtype=z.dtype)
        picked = self.xp.empty((n,), dtype=z.dtype)
        self._kernels["softmax_labels"](z, labels, k, p, picked)
        return p, picked

    def softmax_labels_grad(self, p, labels, n):
        k = int(p.shape[1])
        return self._kernels["softmax_labels_grad"](p, labels, k, p.dtype.type(1.0 / n))

    def _bn_shape(self, x):
        n, c = int(x.shape[0]), int(x.shape[1])
        return n, c, int(x.size) // max(1, n * c)

    def batchnorm_train(self, x, gamma, beta, running_mean, running_var, momentum, epsilon):
        from .cupy_kernels import BLOCK
        xp, t = self.xp, x.dtype.type
        x = xp.ascontiguousarray(x)
        n, c, s = self._bn_shape(x)
        count = n * s
        out, xhat = xp.empty_like(x), xp.empty_like(x)
        inv_std = xp.empty((c,), dtype=x.dtype)
        self._kernels[("batchnorm_train", x.dtype.name)](
            (c,), (BLOCK,), (x, gamma, beta, running_mean, running_var, out, xhat, inv_std,
                             xp.int64(n), xp.int64(c), xp.int64(s), t(momentum), t(1.0 - momentum),
                             t((1.0 - momentum) * (count / (count - 1))), t(epsilon)))
        return out, xhat, inv_std

    def batchnorm_grad(self, grad, xhat, inv_std, gamma, count):
        from .cupy_kernels import BLOCK
        xp = self.xp
        grad = xp.ascontiguousarray(grad)
        n, c, s = self._bn_shape(grad)
        dgamma, dbeta = xp.empty((c,), dtype=grad.dtype), xp.empty((c,), dtype=grad.dtype)
        dx = xp.empty_like(grad)
        self._kernels[("batchnorm_grad", grad.dtype.name)](
            (c,), (BLOCK,), (grad, xhat, inv_std, gamma, dgamma, dbeta, dx, xp.int64(n), xp.int64(c),
                             xp.int64(s), grad.dtype.type(count)))
        return dgamma, dbeta, dx

    def keras_affine_matrices(self, u, angle, shift_x, shift_y, zoom):
        n = int(u.shape[1])
        mat = self.xp.empty((n, 2, 3), dtype=self.xp.float64)
        f = self.xp.float64
        self._kernels["keras_affine_matrices"](self.xp.ascontiguousarray(u, dtype=f), f(angle),
                                               f(shift_x), f(shift_y), f(zoom), n, mat, size=n)
        return mat

    def rng(self, seed=0, stream=0):
        r = super().rng(seed, stream)
        r._fused = self._splitmix64
        return r

    def _splitmix64(self, start, n):
        """splitmix64 words from a (1,) device start or a host scalar, in one launch."""
        if hasattr(start, "shape"):
            return self._kernels["splitmix64"](start, size=n)
        return self._kernels["splitmix64_at"](self.xp.uint64(start), size=n)

    def capture_stream(self):
        """The stream of captured training: capture is not allowed on the legacy default stream,
        and running the work around the replays on the same stream keeps it in order."""
        if getattr(self, "_stream", None) is None:
            self._stream = self.xp.cuda.Stream(non_blocking=True)
        return self._stream

    def capture_memory(self):
        """CuPy's allocator switched to a private MemoryPool (kept for the process): the warm-up
        step fills it, so the capture itself reuses its blocks and calls no cudaMalloc."""
        if getattr(self, "_graph_pool", None) is None:
            self._graph_pool = self.xp.cuda.MemoryPool()
        return self.xp.cuda.using_allocator(self._graph_pool.malloc)

    def capture(self, fn):
        """CUDA graph of ``fn()`` by stream capture (cupy.cuda.Stream.begin_capture/end_capture);
        returns ``replay()`` (Graph.launch on the same stream). The capture records and does not
        run the work, so the caller replays once for the batch it was captured on."""
        stream = self.capture_stream()
        with stream:
            stream.begin_capture()
            try:
                fn()
            finally:
                graph = stream.end_capture()
        return lambda: graph.launch(stream)

    def synchronize(self):
        self.xp.cuda.Device(self.device_id).synchronize()

    def memory_info(self):
        free, total = self.xp.cuda.runtime.memGetInfo()
        pool = self.xp.get_default_memory_pool()
        props = self.xp.cuda.runtime.getDeviceProperties(self.device_id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        return {"gpu": name, "free_bytes": int(free), "total_bytes": int(total),
                "pool_used_bytes": int(pool.used_bytes()), "pool_total_bytes": int(pool.total_bytes()),
                "pool_limit_bytes": int(pool.get_limit()),
                "cuda_runtime": int(self.xp.cuda.runtime.runtimeGetVersion()),
                "cupy": self.xp.__version__}

    def settings(self):
        """The CuPy settings that change speed or numbers (see the module docstring)."""
        return settings_from(os.environ, self.xp)

    def release_memory(self):
        """Give the memory pool's unused blocks back to the driver (e.g. between runs)."""
        self.xp.get_default_memory_pool().free_all_blocks()
        self.xp.get_default_pinned_memory_pool().free_all_blocks()


def _probe_bfloat16(cupy):
    """(dtype, None) when CuPy computes in bfloat16, else (None, why not)."""
    try:
        import ml_dtypes
        dtype = cupy.dtype(ml_dtypes.bfloat16)
        a = cupy.arange(1, 5, dtype=cupy.float32).reshape(2, 2).astype(dtype)
        got = cupy.asnumpy(((a @ a) * 2 + 1).astype(cupy.float32).sum())
    except Exception as exc:  # ml_dtypes missing, or a CuPy without bfloat16 kernels
        return None, f"{type(exc).__name__}: {exc}"
    if float(got) != 112.0:
        return None, f"a bfloat16 test product summed to {float(got)} instead of 112"
    return dtype, None


SETTINGS = ("CUPY_TF32", "CUPY_GPU_MEMORY_LIMIT", "CUPY_CACHE_DIR", "CUPY_ACCELERATORS")


def settings_from(environ, cupy=None):
    """{"tf32": bool, "environment": {name: value or None}, ...} for ``environ`` (and, given the
    cupy module, its memory pool)."""
    env = {name: environ.get(name) for name in SETTINGS}
    out = {"tf32": (env["CUPY_TF32"] or "0").strip() not in ("", "0"), "environment": env}
    if cupy is not None:
        pool = cupy.get_default_memory_pool()
        out["memory_pool"] = ("CuPy's default pool" if cupy.cuda.get_allocator() == pool.malloc
                              else "another allocator")
        out["pool_limit_bytes"] = int(pool.get_limit())  # 0: no limit
    return out


_probe = {}


def gpu_problem():
    """None when the GPU works, else one line saying why not (cached per process).

    "Works" means: CuPy imports, sees a CUDA device, and runs a tiny elementwise kernel (compiled
    by NVRTC) and a matrix product (cuBLAS) with the right answer. A CuPy wheel without its CUDA
    libraries passes the device count but fails here, so ``device="auto"`` falls back to the CPU.
    """
    if "problem" not in _probe:
        _probe["problem"] = _first_kernel()
    return _probe["problem"]


def _first_kernel():
    try:
        cupy = _import_cupy()
    except NoGPUError as exc:
        return exc.reason  # why; the caller says what it does instead (the CPU)
    except BackendError as exc:
        return str(exc)
    try:
        a = cupy.arange(1, 5, dtype=cupy.float32).reshape(2, 2)
        b = (a @ a) * 2 + 1                      # cuBLAS GEMM, then an NVRTC-compiled kernel
        got = [float(v) for v in cupy.asnumpy(b).ravel()]
    except Exception as exc:  # anything CUDA, cuBLAS, NVRTC or CuPy may raise
        return (f"CuPy {getattr(cupy, '__version__', '?')} sees a CUDA device, but its first kernel "
                f"failed ({type(exc).__name__}: {exc}); check that the CUDA libraries match the "
                f"driver, e.g. {INSTALL_HINT}")
    if got != [15.0, 21.0, 31.0, 45.0]:
        return f"the GPU computed a wrong 2x2 matrix product ({got} instead of [15, 21, 31, 45])"
    return None


def gpu_available():
    """True when CuPy imports, sees a CUDA device and runs a kernel and a GEMM correctly."""
    return gpu_problem() is None
