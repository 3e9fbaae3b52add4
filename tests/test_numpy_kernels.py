"""The NumPy backend's threaded element-wise kernels equal the one-pass expressions bit for bit."""
import time

import numpy as np
import pytest

import xpnet.backends.numpy_kernels as nk
from xpnet.backends import get_backend
from xpnet.backends.numpy_kernels import MIN_ELEMENTS, ElementwiseKernels
from xpnet.layers import Dropout, ReLU

from .helpers import build, run_forked


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_threaded_kernels_match_plain_numpy(threads, dtype):
    rng = np.random.default_rng(threads)
    k = ElementwiseKernels(threads)
    x = rng.standard_normal((7, 3, 160, 160)).astype(dtype)   # above MIN_ELEMENTS, uneven split
    assert x.size > MIN_ELEMENTS
    x[0, 0, 0, :3] = [np.nan, -0.0, 0.0]
    y, mask = k.relu_forward(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(mask, np.maximum(x, 0) > 0)
    assert y.dtype == x.dtype and mask.dtype == bool
    g = rng.standard_normal(x.shape).astype(dtype)
    np.testing.assert_array_equal(k.multiply(g, mask), g * mask)
    m = rng.random(x.shape).astype(dtype)
    out = k.multiply(g, m)
    np.testing.assert_array_equal(out, g * m)
    assert out.dtype == np.dtype(dtype)
    keep = rng.random(x.shape) < 0.7
    y2 = k.dropout(x, keep, 1 / 0.7)
    np.testing.assert_array_equal(y2, x * np.where(keep, x.dtype.type(1 / 0.7), x.dtype.type(0)))
    assert y2.dtype == x.dtype
    small = x[:1, :1, :2]
    np.testing.assert_array_equal(k.multiply(small, small), small * small)
    np.testing.assert_array_equal(k.multiply(g[0], g[0, 0]), g[0] * g[0, 0])  # broadcasting falls back


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_backend_methods_equal_the_base_backends_plain_xp(dtype):
    """NumpyBackend overrides relu_forward / multiply / dropout with its threaded kernels;
    the base Backend's plain-xp methods (the strict backend uses them) give the same bits."""
    from xpnet.backends.base import Backend
    from xpnet.backends.numpy_backend import NumpyBackend
    from xpnet.backends.strict_backend import StrictBackend
    numpy_backend, plain = get_backend("numpy"), Backend(np)
    for name in ("relu_forward", "multiply", "dropout"):
        assert getattr(NumpyBackend, name) is not getattr(Backend, name)
        # the strict backend runs the base's plain-xp method (counted as the CuPy kernel's launches)
        assert getattr(StrictBackend, name) is getattr(Backend, name) or name in StrictBackend.__dict__
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 5, 150, 150)).astype(dtype)
    assert x.size > MIN_ELEMENTS
    keep = rng.random(x.shape) < 0.6
    for a, b in [(numpy_backend.relu_forward(x), plain.relu_forward(x)),
                 ((numpy_backend.dropout(x, keep, 1 / 0.6),), (plain.dropout(x, keep, 1 / 0.6),)),
                 ((numpy_backend.multiply(x, keep),), (plain.multiply(x, keep),))]:
        for u, v in zip(a, b):
            assert u.dtype == v.dtype
            np.testing.assert_array_equal(u, v)


def test_layers_give_the_same_results_with_and_without_kernels():
    x = np.random.default_rng(0).standard_normal((8, 4, 64, 64)).astype("float32")
    outs = []
    for name in ("numpy", "strict"):
        backend = get_backend(name)
        model = build([ReLU(), Dropout(0.3)], (4, 64, 64), backend, dtype="float32", seed=5)
        y = model.forward(backend.asarray(x), training=True)
        g = model.backward(backend.asarray(x))
        outs.append((backend.to_numpy(y), backend.to_numpy(g)))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_threaded_matmul_equals_one_call(threads, dtype, monkeypatch):
    """The stacked products split over the pool give numpy.matmul's bits exactly (the shapes of the
    spectral route: broadcast 2-D @ 3-D, 3-D @ 3-D, transposed views); 2-D products are one call."""
    import xpnet.backends.numpy_kernels as nk
    monkeypatch.setattr(nk, "MIN_MACS", 1)
    monkeypatch.setattr(nk, "MIN_ELEMENTS", 1)
    monkeypatch.setattr(nk, "ADAPTIVE", False)   # every pass through the pool, gain or not
    rng = np.random.default_rng(threads)
    k = ElementwiseKernels(threads)
    for stacked, m, kk, n in [(17, 64, 56, 769), (544, 128, 64, 16), (5, 3, 300, 7), (2, 1, 1, 1), (33, 56, 34, 96)]:
        a3 = rng.standard_normal((stacked, m, kk)).astype(dtype)
        b3 = rng.standard_normal((stacked, kk, n)).astype(dtype)
        a2 = rng.standard_normal((m, kk)).astype(dtype)
        bt = np.ascontiguousarray(b3.transpose(0, 2, 1))   # a transposed view, as in backward
        for a, b in [(a3, b3), (a2, b3), (a3, b3[0]), (a3, bt.transpose(0, 2, 1)), (a2, b3[0])]:
            out = k.matmul(a, b)
            np.testing.assert_array_equal(out, np.matmul(a, b))
            assert out.dtype == np.dtype(dtype) and out.flags.c_contiguous


def test_few_rows_go_one_a_piece_so_that_the_threads_shares_differ_by_one_row_at_most(monkeypatch):
    """Under two pieces' worth of rows a thread, each row is a piece (10 rows on 2 threads: 10
    pieces, not 5 of 2, which gave one thread 3 and the other 2); more rows keep PIECES_PER_THREAD
    pieces a thread."""
    monkeypatch.setattr(nk, "ADAPTIVE", False)
    k = ElementwiseKernels(2)
    pieces = 2 * nk.PIECES_PER_THREAD
    for length, sizes in [(10, [1] * 10), (5 * pieces, [5] * pieces)]:
        seen = []
        k.split(lambda s: seen.append(len(range(length)[s])), length, MIN_ELEMENTS)
        assert sorted(seen) == sizes


def test_fewer_threads_after_more_use_only_that_many(monkeypatch):
    """The pool keeps the workers it started; set to 2 threads after 4, a pass runs on the caller
    and one worker (before, every worker of the pool helped: threads.py --threads 4,2 timed 4)."""
    import threading
    monkeypatch.setattr(nk, "ADAPTIVE", False)
    k = ElementwiseKernels(4)
    gate = threading.Barrier(4, timeout=10)

    def part(s):   # each piece waits until 4 threads are in: the pool holds 3 workers + caller
        gate.wait()

    k.split(part, 4, MIN_ELEMENTS)
    assert k._pool.size == 3
    k.threads = 2
    names = set()

    def record(s):
        names.add(threading.current_thread().name)
        time.sleep(0.01)   # time for a third thread to join, were it asked

    k.split(record, 40, MIN_ELEMENTS)
    assert len(names) == 2 and threading.current_thread().name in names, names


def test_split_covers_the_axis_once():
    seen = []
    k = ElementwiseKernels(3)
    k.split(lambda s: seen.append(range(10)[s]), 10, MIN_ELEMENTS)
    assert sorted(i for r in seen for i in r) == list(range(10)) and len(seen) == min(10, 3 * nk.PIECES_PER_THREAD)
    seen.clear()
    k.split(lambda s: seen.append(range(10)[s]), 10, MIN_ELEMENTS - 1)   # too small: one piece
    assert [list(r) for r in seen] == [list(range(10))]


def test_the_caller_does_a_late_workers_share():
    """With every worker held up (its core busy elsewhere), a batch still finishes: the calling
    thread takes the pieces itself. With the caller only waiting, this test fails (checked)."""
    import threading
    from xpnet.backends.numpy_kernels import DaemonPool
    pool = DaemonPool(1)
    release, held = threading.Event(), threading.Event()
    pool._tasks.put(lambda: (held.set(), release.wait(30)))
    assert held.wait(10)
    seen = []
    finished = threading.Event()

    def batch():
        pool.run(lambda s: seen.append(s), list(range(5)))
        finished.set()

    threading.Thread(target=batch, daemon=True).start()
    try:
        assert finished.wait(10), "the batch waited for a held-up worker"
        assert sorted(seen) == list(range(5))
    finally:
        release.set()


def test_pool_errors_reach_the_caller():
    from xpnet.backends.numpy_kernels import DaemonPool
    pool = DaemonPool(2)

    def part(i):
        if i == 3:
            raise ZeroDivisionError("piece 3")

    with pytest.raises(ZeroDivisionError, match="piece 3"):
        pool.run(part, list(range(6)))
    pool.run(lambda i: None, list(range(6)))   # the pool still works afterwards


def test_background_jobs_run_beside_the_caller_in_order_and_hand_back_errors():
    """ElementwiseKernels.background: None on one thread (the caller runs the work itself); with
    more, jobs run in the order started on the one "xpnet-background" thread, while the caller
    goes on (a job waits here until the caller lets it finish), and an error reaches result()."""
    import threading
    assert ElementwiseKernels(1).background(lambda: 1) is None
    assert get_backend("strict").background(lambda: 1) is None
    k = ElementwiseKernels(2)
    gate, names = threading.Event(), []

    def first():
        names.append(threading.current_thread().name)
        assert gate.wait(10)
        return "first"

    def second():
        names.append(threading.current_thread().name)
        raise ValueError("second's error")

    a, b = k.background(first), k.background(second)
    assert names in ([], ["xpnet-background"])   # started, and waiting for the gate: the caller goes on
    gate.set()
    assert a.result() == "first"
    with pytest.raises(ValueError, match="second's error"):
        b.result()
    assert names == ["xpnet-background", "xpnet-background"]


def test_a_forked_child_gets_its_own_background_thread():
    """After os.fork the child has none of the parent's threads: a job handed to the parent's
    background thread would never run and result() would wait forever. The child (here: a
    process id that differs from the one the thread was made in) starts a thread of its own."""
    k = ElementwiseKernels(2)
    assert k.background(lambda: 1).result() == 1
    first = k._background
    assert k.background(lambda: 2).result() == 2 and k._background is first   # same process: kept
    first.pid = -1                                                              # as if forked
    assert k.background(lambda: 3).result() == 3 and k._background is not first


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork (POSIX)")
def test_background_work_finishes_in_a_really_forked_child():
    """The same with a real fork: the child's job finishes (an alarm ends the child after 20 s
    if it waits forever)."""
    proc = run_forked(
        "from xpnet.backends.numpy_kernels import ElementwiseKernels\n"
        "k = ElementwiseKernels(2)\n"
        "assert k.background(lambda: 1).result() == 1\n",
        "os._exit(0 if k.background(lambda: 7).result() == 7 else 3)\n")
    assert proc.returncode == 0, (proc.returncode, proc.stderr)


def test_a_forked_child_gets_its_own_pool(monkeypatch):
    """After os.fork the child has none of the pool's workers: every split pass would run on the
    calling thread alone while its hand-offs piled up in a queue nobody reads. The child (here: a
    process id that differs from the one the pool was made in) starts a pool of its own."""
    import threading
    monkeypatch.setattr(nk, "ADAPTIVE", False)
    k = ElementwiseKernels(2)
    names = set()

    def part(s):
        names.add(threading.current_thread().name)
        time.sleep(0.01)   # long enough that the worker takes a piece

    k.split(part, 8, MIN_ELEMENTS)
    first = k._pool
    k.split(part, 8, MIN_ELEMENTS)
    assert k._pool is first and "xpnet-elementwise-0" in names           # same process: kept
    first.pid = -1                                                        # as if forked
    names.clear()
    k.split(part, 8, MIN_ELEMENTS)
    assert k._pool is not first and "xpnet-elementwise-0" in names


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork (POSIX)")
def test_a_really_forked_child_splits_over_workers_of_its_own():
    """The same with a real fork, through a model's training steps (split passes and the work
    left for idle workers): the child's passes run on a worker too and nothing more piles up in
    the parent's queue. Exit codes: 3, no worker ran a piece in the child; 4, hand-offs piled up."""
    proc = run_forked(
        "import threading, numpy as np\n"
        "import xpnet.backends.numpy_kernels as nk\n"
        "from xpnet.backends import get_backend\n"
        "from tests.test_later import _spectral_model, _train_step\n"
        "nk.ADAPTIVE = False\n"
        "nk.MIN_ELEMENTS = 1\n"
        "get_backend('cpu').set_threads(2)\n"
        "x = np.random.default_rng(0).standard_normal((8, 3, 12, 12)).astype(np.float32)\n"
        "y = np.arange(8) % 10\n"
        "model = _spectral_model(True)\n"
        "_train_step(model, x, y)\n"
        "parent = get_backend('cpu')._kernels._pool\n",
        "queued = parent._tasks.qsize()   # the parent's worker may not have read them all\n"
        "names = set()\n"
        "real = nk.DaemonPool.run\n"
        "def spy(self, part, pieces, helpers=None):\n"
        "    def named(p):\n"
        "        names.add(threading.current_thread().name)\n"
        "        part(p)\n"
        "    return real(self, named, pieces, helpers)\n"
        "nk.DaemonPool.run = spy\n"
        "for _ in range(3):\n"
        "    _train_step(model, x, y)\n"
        "if 'xpnet-elementwise-0' not in names:\n"
        "    os._exit(3)\n"
        "os._exit(4 if parent._tasks.qsize() > queued else 0)\n", timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
