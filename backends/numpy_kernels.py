"""Multi-threaded element-wise kernels for the NumPy backend.

NumPy runs every element-wise pass on one core while its matrix products use all of them, so on
a multi-core CPU the passes of ReLU and Dropout become a large share of a training step. NumPy
releases the GIL inside ufunc loops: splitting an array along its first axis over a small thread
pool runs the pieces on all cores. Results are bit-identical to the one-pass expressions
(element-wise operations do not depend on how the array is split).

Threads: cpu_threads.thread_count() ($XPNET_NUM_THREADS, else $OMP_NUM_THREADS, else the usable
cores). The same pool splits GEMMs into independent pieces (``matmul``), while the BLAS runs each
piece on one thread (cpu_threads.py says why). They are daemon threads:
a Ctrl-C at any moment (even while the pool starts) never leaves the interpreter waiting for them
at exit, which a ThreadPoolExecutor's workers can (and a second Ctrl-C then prints a traceback).
"""
import collections
import contextlib
import os
import queue
import threading
import time

import numpy

from . import compiled
from .cpu_threads import ALONE, SPLIT, UNTIMED, SplitCheck, split_mode, thread_count  # noqa: F401  (thread_count: the pool's size)

# Smaller passes run in one piece: under load a split costs a hand-off to a worker that may wait
# for a core, worth it only for passes of a millisecond or so (measured beside a busy process:
# LeNet-5 at batch 16 took 1.10x as long on 2 threads as on 1 with 2**17, 0.98x with 2**19).
MIN_ELEMENTS = 1 << 19
MIN_MACS = 1 << 22      # smaller GEMMs (multiply-adds) run in one piece
PIECES_PER_THREAD = 4   # a worker preempted mid-piece holds up at most a quarter of its share
# Whether a split pass gained is checked as it runs, and passes that do not gain run on the calling
# thread (cpu_threads.SplitCheck; $XPNET_SPLIT=always turns it off). Tests that force every path
# through the pool set this to False.
ADAPTIVE = split_mode() == "auto"


class DaemonPool:
    """Daemon workers that help the calling thread through one batch of ``part(piece)`` calls.

    ``run`` puts the pieces in a list of its own and asks up to ``size`` workers to help; the caller
    takes pieces from the same list too, so when a worker is late (its core busy with another
    process) the caller does that worker's share itself and the batch never takes much longer than
    on one thread. A worker waits on a queue (sleeping, not spinning). The first error is re-raised
    in the caller once every piece taken has finished. ``run`` returns the CPU seconds the threads
    spent in the batch and its wall seconds (SplitCheck's measures). ``later`` queues work for
    workers with no batch to help with; ``finish_later`` runs what is left and waits for the rest."""

    def __init__(self, threads):
        self._tasks = queue.SimpleQueue()
        self._later = collections.deque()   # (group, piece) of ``later``: taken when idle
        self._groups = []                   # groups of ``later`` not finished
        self._idle = threading.Condition()  # notified when a group finishes
        self._errors = []                   # the first error of each group that raised
        self.pid = os.getpid()   # a forked child has none of these workers: it makes its own pool
        self.size = 0
        self.grow(threads)

    def grow(self, threads):
        """Start workers until there are ``threads`` of them."""
        for i in range(self.size, threads):
            threading.Thread(target=self._work, name=f"xpnet-elementwise-{i}", daemon=True).start()
        self.size = max(self.size, threads)

    def _work(self):
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:   # no pass to help with: a piece of ``later``'s, else sleep
                if self._run_later():
                    continue
                task = self._tasks.get()
            task()

    def later(self, pieces, then=None):
        """Run the callables ``pieces`` (independent: any order, any thread) and then ``then()``,
        on a worker that has no pass to help with (between passes, while the caller runs Python
        or a pass it keeps alone), or in the caller's ``finish_later``. A pass asked for meanwhile
        waits for at most the piece a worker is in."""
        if not pieces:
            if then is not None:
                then()
            return
        group = _LaterGroup(len(pieces), then)
        with self._idle:
            self._groups.append(group)
        self._later.extend((group, piece) for piece in pieces)
        for _ in range(self.size):   # wake sleeping workers (a busy one takes this as a no-op)
            self._tasks.put(_nothing)

    def _run_later(self):
        """Run one piece of ``later``'s (False when there is none)."""
        try:
            group, piece = self._later.popleft()
        except IndexError:
            return False
        if group.run(piece):
            with self._idle:
                self._groups.remove(group)
                if group.error is not None:
                    self._errors.append(group.error)
                self._idle.notify_all()
        return True

    def finish_later(self):
        """Run the pieces of ``later`` that no worker took, wait for those in progress, and raise
        the first error any of them (or their ``then``) raised."""
        while self._run_later():
            pass
        with self._idle:
            while self._groups:
                self._idle.wait()
            errors, self._errors = self._errors, []
        if errors:
            raise errors[0]

    def run(self, part, pieces, helpers=None):
        """``part(piece)`` for every piece, by the caller and at most ``helpers`` workers (default:
        all of them; fewer when the thread count was set lower after the pool grew)."""
        start = time.perf_counter()
        todo = collections.deque(pieces)
        done = queue.SimpleQueue()
        job = [part]   # emptied when the batch ends: a helper that comes late holds no arrays
        cpu = []       # CPU seconds of each piece, added before the piece is reported done

        def drain():   # take pieces until none are left; a late helper finds none and returns
            mark = time.thread_time()
            while True:
                try:
                    piece = todo.popleft()
                except IndexError:
                    return
                try:
                    job[0](piece)
                    result = None
                except BaseException as exc:  # handed to the caller, who re-raises it
                    result = exc
                now = time.thread_time()
                cpu.append(now - mark)
                mark = now
                done.put(result)

        for _ in range(min(self.size if helpers is None else helpers, len(pieces) - 1)):
            self._tasks.put(drain)
        drain()
        errors = [done.get() for _ in pieces]
        wall = time.perf_counter() - start
        job.clear()
        for exc in errors:
            if exc is not None:
                raise exc
        return sum(cpu), wall


def _nothing():
    """A task that only wakes a sleeping worker (DaemonPool.later)."""


class _LaterGroup:
    """The pieces of one ``DaemonPool.later`` call: counts those left; the thread that finishes the
    last one runs ``then`` (unless a piece raised: the first error is kept)."""

    def __init__(self, count, then):
        self.left, self.then, self.error = count, then, None
        self._lock = threading.Lock()

    def run(self, piece):
        """Run ``piece``; True when it was the group's last (``then`` has then run too)."""
        try:
            piece()
        except BaseException as exc:  # kept for the caller of finish_later, who re-raises it
            self.error = self.error or exc
        with self._lock:
            self.left -= 1
            last = self.left == 0
        if last and self.error is None and self.then is not None:
            try:
                self.then()
            except BaseException as exc:
                self.error = exc
        return last


class Pending:
    """The result of one ``fn()`` that a background thread runs (``Background.start``)."""

    def __init__(self, fn):
        self._fn = fn
        self._done = threading.Event()
        self._value = self._error = None

    def _run(self):
        try:
            self._value = self._fn()
        except BaseException as exc:  # handed to the caller of result(), who re-raises it
            self._error = exc
        finally:
            self._fn = None
            self._done.set()

    def result(self):
        """Wait for fn() and return its value (or raise its error)."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


class Background:
    """One daemon thread that runs jobs in the order they come, beside the caller's work (work
    that would otherwise wait between two steps, such as the next batches' augmentation). It
    is not one of the pool's workers, so the pool's split passes never wait behind a job."""

    def __init__(self):
        self._jobs = queue.SimpleQueue()
        self.pid = os.getpid()   # a forked child has no such thread: it makes its own
        threading.Thread(target=self._work, name="xpnet-background", daemon=True).start()

    def _work(self):
        while True:
            self._jobs.get()._run()

    def start(self, fn):
        job = Pending(fn)
        self._jobs.put(job)
        return job


def in_memory_order(*arrays):
    """The arrays with their axes in the order of their memory, where they all are one permutation
    of C-contiguous arrays (the NCHW views of planes, ops/layout.py: (H, W, N, C) contiguous), so
    that an element-wise pass over pieces of the first axis streams whole rows; else as they are.
    Element-wise, the same values in the same places either way."""
    a = arrays[0]
    if a.flags.c_contiguous or a.ndim < 2:
        return arrays
    order = tuple(sorted(range(a.ndim), key=lambda i: -a.strides[i]))
    views = tuple(v.transpose(order) for v in arrays)
    return views if all(v.flags.c_contiguous for v in views) else arrays


def _small(x, *like):
    """Whether a mask pass over x (and the masks ``like``, of x's shape) runs as NumPy's own
    products in one piece: under the pool's and the kernels' sizes, whose checks cost more than
    the products there (a 16 x 128 gradient: 4 against 11 us), or with a mask of another shape."""
    if x.size < min(MIN_ELEMENTS, compiled.MIN_ELEMENTWISE):
        return True
    for m in like:   # a loop, not any() over a generator: this runs a few times a step on tiny arrays
        if m.shape != x.shape:
            return True
    return False


def _flat(*arrays):
    """1-D views of the arrays where all are C-contiguous (a reshape of any other would be a copy,
    and a kernel writing into it would be lost), else None."""
    return [a.reshape(-1) for a in arrays] if all(a.flags.c_contiguous for a in arrays) else None


class ElementwiseKernels:
    """relu_forward, multiply, dropout, relu_dropout(_grad), matmul: threaded versions of the hottest
    expressions, and ``split`` to run any ``part(slice)`` over pieces of a leading axis."""

    def __init__(self, threads=None):
        self.threads = max(1, int(threads or thread_count()))
        self._pool = None
        self._background = None
        self._local = threading.local()   # depth of ``deferring`` on each thread
        self.check = SplitCheck()

    def background(self, fn):
        """A ``Pending`` for fn() run on the background thread, or None on one thread (where it
        would only take turns with the caller: the caller runs fn itself when it needs it)."""
        if self.threads == 1:
            return None
        if self._background is None or self._background.pid != os.getpid():
            self._background = Background()
        return self._background.start(fn)

    @contextlib.contextmanager
    def deferring(self):
        """Inside it (on this thread) ``can_defer`` is true on more than one thread; on leaving the
        outermost one every piece given to ``later`` has run (its errors are raised). When the
        body itself raised, its error is the one raised (the pieces still finish first, and an
        error of theirs, about work nobody will use, is dropped)."""
        depth = getattr(self._local, "depth", 0)
        self._local.depth = depth + 1
        try:
            yield
        except BaseException:
            self._finish_later(depth, quiet=True)
            raise
        else:
            self._finish_later(depth)

    def _finish_later(self, depth, quiet=False):
        """Leave a ``deferring`` level; at the outermost, run and wait for what ``later`` was given
        (its first error raised, or with ``quiet`` dropped)."""
        self._local.depth = depth
        if depth == 0 and self._pool is not None and self._pool.pid == os.getpid():
            try:
                self._pool.finish_later()
            except BaseException:
                if not quiet:
                    raise

    def can_defer(self):
        """True where ``later`` runs its pieces beside the caller's work (else there is no gain):
        on more than one thread, inside ``deferring``, and while the split passes show that the
        workers get a core (``SplitCheck.loaded``: beside a busy process each wake of a worker
        costs the caller its core)."""
        return self.threads > 1 and getattr(self._local, "depth", 0) > 0 and not self.check.loaded

    def later(self, pieces, then=None):
        """DaemonPool.later: the pieces when a worker is idle, by the end of ``deferring``."""
        self._ensure_pool().later(pieces, then)

    def _ensure_pool(self):
        """The pool, made on first use and again in a forked child (which has none of the
        parent's threads: the caller would do every piece alone, and the pieces' hand-offs would
        pile up in a queue no worker reads)."""
        if self._pool is None or self._pool.pid != os.getpid():
            self._pool = DaemonPool(self.threads - 1)   # the caller is the other thread
        elif self._pool.size < self.threads - 1:
            self._pool.grow(self.threads - 1)
        return self._pool

    def split(self, part, length, size, shape=None):
        """Run ``part(s)`` for slices ``s`` that cover range(length), on the pool when ``size``
        (elements touched) is large enough; the parts must write disjoint outputs. ``shape``
        (hashable) tells apart passes of one function with the same size that run at different
        speeds (a GEMM's operand shapes), for SplitCheck."""
        self._run(part, length, size, shape=shape)

    def _run(self, part, length, size, key_size=None, shape=None):
        if self.threads == 1 or size < MIN_ELEMENTS or length < 2:
            part(slice(None))
            return
        work = int(key_size or size)
        key = (part.__code__, work, shape)
        how = self.check.next_pass(key) if ADAPTIVE else SPLIT
        if how is UNTIMED:
            part(slice(None))
            return
        if how is ALONE:
            start = time.perf_counter()
            part(slice(None))
            self.check.record(key, time.perf_counter() - start, work)
            return
        self._ensure_pool()
        pieces = self.threads * PIECES_PER_THREAD
        # few rows (under two pieces' worth a thread: the stacked products of a DFT over 7-17
        # frequency rows, a few blocks of planes): one row a piece, so that the threads' shares
        # differ by one row at most (10 rows in pieces of 2 gave one thread 3 pieces, the other 2)
        step = 1 if length < 2 * pieces else -(-length // pieces)
        cpu, wall = self._pool.run(part, [slice(i, i + step) for i in range(0, length, step)],
                                   self.threads - 1)
        if ADAPTIVE:
            self.check.record(key, wall, work, cpu)

    def matmul(self, a, b):
        """numpy.matmul(a, b) with a stacked (3-D) operand, split over the stacked axis: each
        stacked product is the same BLAS call as in one numpy.matmul, so the result is bit for bit
        the same (tests/test_numpy_kernels.py). 2-D products run as one call: splitting their rows
        or columns changes OpenBLAS's rounding (measured: 0.3.31 gives different bits for most
        row or column splits, aligned or not)."""
        if a.ndim > 3 or b.ndim > 3 or max(a.ndim, b.ndim) < 3 or min(a.ndim, b.ndim) < 2:
            return numpy.matmul(a, b)
        stacked = a.shape[0] if a.ndim == 3 else b.shape[0]
        m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
        if (a.ndim == b.ndim == 3 and a.shape[0] != b.shape[0]) or b.shape[-2] != k \
                or self.threads == 1 or stacked < 2 or stacked * m * n * k < MIN_MACS:
            return numpy.matmul(a, b)
        out = numpy.empty((stacked, m, n), dtype=numpy.result_type(a, b))

        def part(s):
            numpy.matmul(a[s] if a.ndim == 3 else a, b[s] if b.ndim == 3 else b, out=out[s])

        self._run(part, stacked, MIN_ELEMENTS, stacked * m * n * k, shape=(a.shape, b.shape))
        return out

    def relu_forward(self, x):
        """(maximum(x, 0), maximum(x, 0) > 0), both laid out as x (the NCHW view of planes stays
        one: ops/layout.py)."""
        y = numpy.empty_like(x)
        mask = numpy.empty_like(x, dtype=bool)
        xs, ys, ms = in_memory_order(x, y, mask)

        def part(s):
            flat = _flat(xs[s], ys[s], ms[s])   # one compiled pass, where it can
            if flat is None or not compiled.relu(*flat):
                numpy.maximum(xs[s], 0, out=ys[s])
                numpy.greater(ys[s], 0, out=ms[s])

        self._run(part, len(xs), x.size)
        return y, mask

    def multiply(self, a, b):
        """a * b for two arrays of the same shape (b may be boolean); the result has a's dtype
        and a's layout (a gradient that is the NCHW view of planes stays one)."""
        if a.shape != b.shape or a.ndim == 0:
            return a * b
        out = numpy.empty_like(a, dtype=numpy.result_type(a, b))
        as_, bs, outs = in_memory_order(a, b, out)

        def part(s):
            flat = _flat(as_[s], bs[s], outs[s]) if b.dtype == numpy.bool_ else None
            if flat is None or not compiled.multiply_mask(*flat):   # one compiled pass, where it can
                numpy.multiply(as_[s], bs[s], out=outs[s])

        self._run(part, len(as_), a.size)
        return out

    def dropout(self, x, keep, scale):
        """x * where(keep, scale, 0) (scale in x's dtype) in one threaded pass, laid out as x (give
        ``keep`` laid out so too: Dropout does); the bits of base.Backend.dropout."""
        value = x.dtype.type(scale)
        if _small(x, keep):   # one piece, NumPy's two products
            return numpy.multiply(x, numpy.multiply(keep, value, dtype=x.dtype))
        y = numpy.empty_like(x)
        xs, ks, ys = in_memory_order(x, keep, y)

        def part(s):
            flat = _flat(xs[s], ks[s], ys[s])   # one compiled pass, where it can
            if flat is None or not compiled.dropout(flat[0], flat[1], value, flat[2]):
                numpy.multiply(xs[s], numpy.multiply(ks[s], value, dtype=x.dtype), out=ys[s])

        self._run(part, len(xs), x.size)
        return y

    def relu_dropout(self, x, keep, scale):
        """(dropout(relu(x), keep, scale), relu's mask) in one threaded pass, both laid out as x:
        the bits of relu_forward then dropout, without writing and reading relu(x) between them."""
        if _small(x, keep):
            y, mask = self.relu_forward(x)
            return self.dropout(y, keep, scale), mask
        value = x.dtype.type(scale)
        y = numpy.empty_like(x)
        mask = numpy.empty_like(x, dtype=bool)
        xs, ks, ys, ms = in_memory_order(x, keep, y, mask)

        def part(s):
            flat = _flat(xs[s], ks[s], ys[s], ms[s])   # one compiled pass, where it can
            if flat is None or not compiled.relu_dropout(flat[0], flat[1], value, flat[2], flat[3]):
                numpy.maximum(xs[s], 0, out=ys[s])
                numpy.greater(ys[s], 0, out=ms[s])
                numpy.multiply(ys[s], numpy.multiply(ks[s], value, dtype=x.dtype), out=ys[s])

        self._run(part, len(xs), x.size)
        return y, mask

    def relu_dropout_grad(self, g, keep, scale, mask):
        """dropout(g, keep, scale) * mask in one threaded pass, laid out as g: the gradient through
        a Dropout and the ReLU before it, the bits of the two passes."""
        if _small(g, keep, mask):
            return self.multiply(self.dropout(g, keep, scale), mask)
        value = g.dtype.type(scale)
        out = numpy.empty_like(g)
        gs, ks, ms, outs = in_memory_order(g, keep, mask, out)

        def part(s):
            flat = _flat(gs[s], ks[s], ms[s], outs[s])   # one compiled pass, where it can
            if flat is None or not compiled.relu_dropout_grad(flat[0], flat[1], value, flat[2], flat[3]):
                numpy.multiply(gs[s], numpy.multiply(ks[s], value, dtype=g.dtype), out=outs[s])
                numpy.multiply(outs[s], ms[s], out=outs[s])

        self._run(part, len(gs), g.size)
        return out
