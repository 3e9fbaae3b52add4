"""The CPU backend: NumPy, with threaded element-wise kernels and GEMMs (numpy_kernels.py) and the
BLAS limited to one thread (cpu_threads.py)."""
import bisect
import itertools

import numpy

from . import compiled
from .base import Backend
from .cpu_threads import limit_blas
from .host_memory import keep_freed_memory
from .numpy_kernels import PIECES_PER_THREAD, ElementwiseKernels
from .random import _GOLDEN as GOLDEN, _finish as mix_splitmix64


# Elements an optimizer's flat update (flat_update) handles in one go: 1 MiB of float32 per buffer,
# so that Adam's four buffers and its temporaries stay in the L3 cache while its passes run over them
# (measured here, 32 MiB L3: Adam over 5.5 million parameters 0.62x the time of whole-buffer passes
# on one thread; 2**16 and 2**17 gained as much for large buffers and lost 5-25 % on small ones).
FLAT_PIECE = 1 << 18


class Parts:
    """A 1-D buffer given as its parts in order (an optimizer's gradient per parameter, flat_update):
    a slice is a view of the one part it lies in, or a join of the few it crosses, so the whole
    buffer is never copied (5.5 million parameters: 22 MB and 3-4 ms a step saved)."""

    def __init__(self, parts):
        if len({p.dtype for p in parts}) > 1:   # a join would promote: join the whole, as the base
            parts = [numpy.concatenate(parts)]
        self.parts = parts
        self.starts = list(itertools.accumulate((p.shape[0] for p in parts), initial=0))
        self.shape = (self.starts[-1],)

    def __getitem__(self, s):
        start, stop = s.start, min(s.stop, self.shape[0])
        i = bisect.bisect_right(self.starts, start) - 1
        pieces = []
        while start < stop:
            end = min(stop, self.starts[i + 1])
            pieces.append(self.parts[i][start - self.starts[i]:end - self.starts[i]])
            start, i = end, i + 1
        return pieces[0] if len(pieces) == 1 else numpy.concatenate(pieces)


class NumpyBackend(Backend):
    name = "numpy"
    few_launches = False  # slices of cache-sized blocks beat one big gather or strided copy here

    def __init__(self):
        super().__init__(numpy)
        self.host_malloc = keep_freed_memory()  # reuse freed blocks: no page faults per step
        self.blas = limit_blas()
        self._kernels = ElementwiseKernels()
        self.warp_constants = {}  # affine_warp's, per batch shape (xpnet/augment.py warp_constants)
        self._golden_steps = {}   # i * GOLDEN per draw size (_splitmix64)

    @property
    def threads(self):
        """Threads of the pool that runs the threaded kernels and ops' split passes."""
        return self._kernels.threads

    def set_threads(self, threads):
        """Use ``threads`` pool threads from now on (results do not depend on the count)."""
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a whole number >= 1, got {threads!r}")
        self._kernels.threads = threads

    # the threaded element-wise kernels of numpy_kernels.py, bit-identical to the base versions
    def relu_forward(self, x):
        return self._kernels.relu_forward(x)

    def multiply(self, a, b):
        return self._kernels.multiply(a, b)

    def dropout(self, x, keep, scale):
        return self._kernels.dropout(x, keep, scale)

    def relu_dropout(self, x, keep, scale):
        return self._kernels.relu_dropout(x, keep, scale)

    def relu_dropout_grad(self, g, keep, scale, mask):
        return self._kernels.relu_dropout_grad(g, keep, scale, mask)

    def rng(self, seed=0, stream=0):
        """The base's generator, its raw words made over pieces on the pool (same bits)."""
        r = super().rng(seed, stream)
        r._fused = self._splitmix64
        return r

    def _splitmix64(self, start, n):
        """random.py's words for i < n (i * GOLDEN + start, mixed by splitmix64), element-wise and
        so split over the pool with the same bits: a large draw in one compiled pass a piece
        (backends/compiled.py), else NumPy's passes with i * GOLDEN kept per size as random.py
        does."""
        out = numpy.empty(n, dtype=numpy.uint64)
        fast = n >= compiled.MIN_ELEMENTWISE and compiled.available()
        steps = None if fast else self._golden_steps.get(n)
        if steps is None and not fast:
            if len(self._golden_steps) >= 8:
                self._golden_steps.pop(next(iter(self._golden_steps)))
            steps = self._golden_steps[n] = numpy.arange(n, dtype=numpy.uint64) * numpy.uint64(GOLDEN)

        def part(s):
            first, stop, _ = s.indices(n)
            if fast and compiled.splitmix64(start, first, out[s]):
                return
            # NumPy's passes (also where numba turned out unusable after all: its i * GOLDEN here)
            numpy.add(numpy.arange(first, stop, dtype=numpy.uint64) * numpy.uint64(GOLDEN) if steps is None
                      else steps[s], start, out=out[s])
            mix_splitmix64(out[s])

        self._kernels.split(part, n, 8 * n)   # eight passes over the words (NumPy's)
        return out

    def flat_update(self, fn, arrays):
        """fn over pieces of the flat buffers: the pool's pieces (when the pool splits the update),
        each run in stretches of at most FLAT_PIECE elements, so that an update's passes (Adam:
        about fifteen, with temporaries) run while a stretch's arrays are in the cache instead of
        each pass streaming whole buffers through memory. Element-wise, so the bits of one call."""
        arrays = [Parts(a) if isinstance(a, list) else a for a in arrays]
        n = arrays[0].shape[0]
        count = max(1, min(n, self.threads * PIECES_PER_THREAD))
        width = -(-n // count)

        def part(s):
            first, end, _ = s.indices(count)
            stop = min(end * width, n)
            for i in range(first * width, stop, FLAT_PIECE):
                at = slice(i, min(i + FLAT_PIECE, stop))
                fn(*(a[at] for a in arrays))

        self._kernels.split(part, count, 3 * n * len(arrays))

    def outer(self, a, b):
        """The base's a.T @ b for one-row a (1, m), b (1, n) as a broadcast multiply, in row blocks
        of at most FLAT_PIECE elements (the "+= 0.0" of a block runs while it is in the cache) on
        the pool: 2-3x faster than OpenBLAS's GEMM with an inner size of 1 (5.5 million elements,
        one thread: 5.3 against 12.7 ms). Each element is one product, as in the GEMM, whose sums
        start from +0.0: adding 0.0 turns the multiply's -0.0 (zero times a negative) into +0.0,
        so the bits are the GEMM's (tests/test_dense_reference.py)."""
        m, n = a.shape[1], b.shape[1]
        out = numpy.empty((m, n), dtype=numpy.result_type(a, b))
        column, rows = a.reshape(m, 1), max(1, FLAT_PIECE // max(n, 1))

        def part(s):
            first, stop, _ = s.indices(m)
            for i in range(first, stop, rows):
                block = out[i:min(i + rows, stop)]
                numpy.multiply(column[i:i + block.shape[0]], b, out=block)
                block += 0.0

        self._kernels.split(part, m, 2 * m * n)
        return out

    def window_max_2x2(self, x, m, k_of, bias=None):
        return compiled.window_max_2x2(x, m, k_of, bias)

    def unpool_2x2(self, k_of, d, x):
        return compiled.unpool_2x2(k_of, d, x)

    def bin_products(self, kind, arrays, gauss, need_dx=True, need_g=True):
        return compiled.bin_products(kind, arrays, gauss, need_dx, need_g)

    def ignore_float_errors(self):
        return numpy.errstate(over="ignore", invalid="ignore")

    def matmul(self, a, b):
        return self._kernels.matmul(a, b)

    def split_threads(self):
        return 1 if self._kernels.check.loaded else self._kernels.threads

    def split(self, part, length, size, shape=None):
        self._kernels.split(part, length, size, shape)

    def background(self, fn):
        """fn() on the kernels' background thread (None on one thread: see Backend.background)."""
        return self._kernels.background(fn)

    def deferring(self):
        return self._kernels.deferring()

    def can_defer(self):
        return self._kernels.can_defer()

    def later(self, pieces, then=None):
        """Pieces for the pool's idle workers (numpy_kernels.DaemonPool.later)."""
        self._kernels.later(pieces, then)

    def matmul_t(self, a, b, trans_a=False, trans_b=False):
        """The base's matmul of the transposed views, split over the stack (same bits)."""
        return self._kernels.matmul(a.transpose(0, 2, 1) if trans_a else a,
                                    b.transpose(0, 2, 1) if trans_b else b)

    def warp_compiled(self, x, k, uv, fill, nearest):
        return compiled.affine_warp(x, k, uv, fill, nearest)

    def affine_warp(self, x, matrices, fill=0.0, mode="constant"):
        """The base's warp, keeping its per-shape constants (pixel grid, gather offsets): same bits."""
        from xpnet.augment import affine_warp_xp
        return affine_warp_xp(numpy, x, matrices, fill, mode, keep=self.warp_constants)

    def asarray(self, array, dtype=None):
        """Host data -> an array the library owns: always a copy, as on a GPU, so that an in-place
        update (an optimizer step, set_weights) never writes into the caller's array."""
        return numpy.array(array, dtype=dtype, copy=True)

    @classmethod
    def owns(cls, array):
        return isinstance(array, (numpy.ndarray, numpy.generic))

    def to_numpy(self, array):
        return numpy.asarray(array)
