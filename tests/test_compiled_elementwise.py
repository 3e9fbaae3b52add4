"""The compiled element-wise kernels (backends/compiled.py, numba, optional): ReLU's forward, a
gradient times a bool mask, Dropout's forward, a ReLU and its Dropout in one pass each way and the
random generator's splitmix64 words give the
bits of NumPy's passes they replace (compared as bytes: NaN's sign, -0.0), on float32 and float64,
with NaN, infinities, -0.0 and subnormals; the NumPy backend really runs them for large arrays (spied,
on one and two threads, NCHW and the NCHW view of planes), runs NumPy's passes for small or
non-contiguous ones (without loading the kernels), and gives the same bits either way. Without numba
the module skips; the rest of the suite then runs NumPy's passes."""
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("numba")
# NumPy's errstate is per thread: a worker's inf * 0 warns even inside the test's errstate
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

import xpnet.backends.compiled as compiled  # noqa: E402
import xpnet.backends.numpy_kernels as nk  # noqa: E402
from xpnet.backends import get_backend  # noqa: E402
from xpnet.backends.numpy_backend import NumpyBackend  # noqa: E402
from xpnet.backends.random import splitmix64_reference  # noqa: E402
from xpnet.ops.layout import to_planes  # noqa: E402

DTYPES = (np.float32, np.float64)
NAMES = ("relu", "multiply_mask", "dropout", "relu_dropout", "relu_dropout_grad", "splitmix64")


def awkward(rng, n, dtype):
    """Normal values with NaN of both signs, +-inf, +-0.0 and subnormals sprinkled in."""
    a = rng.standard_normal(n).astype(dtype)
    r = rng.random(n)
    tiny = np.finfo(dtype).smallest_subnormal
    for lo, hi, value in [(0.00, 0.05, -0.0), (0.05, 0.10, 0.0), (0.10, 0.12, np.inf), (0.12, 0.14, -np.inf),
                          (0.14, 0.16, np.nan), (0.16, 0.17, tiny), (0.17, 0.18, -tiny)]:
        a[(r >= lo) & (r < hi)] = value
    a[(r >= 0.18) & (r < 0.20)] = -np.abs(np.asarray(np.nan, dtype))   # NaN with its sign bit set
    return a


def same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_kernels_give_numpys_bits(dtype):
    rng = np.random.default_rng(5)
    n = compiled.MIN_ELEMENTWISE + 17
    x = awkward(rng, n, dtype)
    keep = rng.random(n) < 0.7
    scale = dtype(1 / 0.7)
    with np.errstate(all="ignore"):   # NumPy warns of inf * 0; the kernels do not
        y, mask = np.empty_like(x), np.empty(n, bool)
        assert compiled.relu(x, y, mask)
        same_bits(y, np.maximum(x, 0))
        same_bits(mask, np.maximum(x, 0) > 0)
        out = np.empty_like(x)
        assert compiled.multiply_mask(x, keep, out)
        same_bits(out, x * keep)
        y = np.empty_like(x)
        assert compiled.dropout(x, keep, scale, y)
        same_bits(y, x * np.multiply(keep, scale))
        y, mask = np.empty_like(x), np.empty(n, bool)
        assert compiled.relu_dropout(x, keep, scale, y, mask)
        same_bits(y, np.maximum(x, 0) * np.multiply(keep, scale))
        same_bits(mask, np.maximum(x, 0) > 0)
        g = awkward(rng, n, dtype)
        out = np.empty_like(x)
        assert compiled.relu_dropout_grad(g, keep, scale, mask, out)
        same_bits(out, (g * np.multiply(keep, scale)) * mask)
    words = np.empty(n, np.uint64)
    start = np.uint64(0xFEDCBA9876543210)   # i * GOLDEN + start wraps past 2**64
    assert compiled.splitmix64(start, 1000, words)
    same_bits(words, splitmix64_reference(np, start, n + 1000)[1000:])


def test_what_the_kernels_do_not_take(monkeypatch):
    """Small, float16, integer, mixed dtypes, other lengths, non-contiguous or 2-D arrays: False
    (the caller's NumPy passes run), nothing written."""
    n = compiled.MIN_ELEMENTWISE
    x = np.ones(n, np.float32)
    keep = np.ones(n, bool)
    for args in [(x[:-1], np.empty(n - 1, np.float32), np.empty(n - 1, bool)),   # small
                 (x.astype(np.float16), np.empty(n, np.float16), keep),
                 (x.astype(np.int32), np.empty(n, np.int32), keep),
                 (x, np.empty(n, np.float64), keep),
                 (x, np.empty(n + 1, np.float32), keep),
                 (np.ones(2 * n, np.float32)[::2], np.empty(n, np.float32), keep),
                 (x.reshape(2, -1), np.empty((2, n // 2), np.float32), keep.reshape(2, -1)),
                 (x, np.empty(n, np.float32), keep.astype(np.uint8))]:
        before = args[1].copy()
        assert not compiled.relu(*args) and not compiled.multiply_mask(args[0], args[2], args[1])
        assert not compiled.dropout(args[0], args[2], 2.0, args[1])
        assert not compiled.relu_dropout(args[0], args[2], 2.0, args[1], np.empty(args[2].shape, bool))
        assert not compiled.relu_dropout_grad(args[0], args[2], 2.0, np.ones(args[2].shape, bool), args[1])
        assert args[1].tobytes() == before.tobytes()
    assert not compiled.splitmix64(1, 0, np.empty(2 * n, np.uint64)[::2])
    assert not compiled.splitmix64(1, 0, np.empty(n, np.int64))
    monkeypatch.setattr(compiled, "ENABLED", 0)
    assert not compiled.relu(x, np.empty_like(x), np.empty(n, bool))
    assert not compiled.splitmix64(1, 0, np.empty(n, np.uint64))


@pytest.fixture
def spied(monkeypatch):
    """Calls of the kernels by name (the real kernels run)."""
    calls = {name: 0 for name in NAMES}
    module = compiled.kernels()
    for name in NAMES:
        real = getattr(module, name)

        def spy(*args, real=real, name=name):
            calls[name] += 1
            return real(*args)

        monkeypatch.setattr(module, name, spy)
    return calls


def backend_passes(backend, x, keep, grad):
    """The backend's passes on x: relu_forward, multiply by its mask, dropout of x and of grad,
    ReLU and Dropout in one pass each way, and a draw's words (a generator of its own each time, so
    both runs draw the same)."""
    with np.errstate(all="ignore"):
        y, mask = backend.relu_forward(x)
        dx = backend.multiply(grad, mask)
        yd, gd = backend.dropout(x, keep, 1 / 0.6), backend.dropout(grad, keep, 1 / 0.6)
        yrd, mrd = backend.relu_dropout(x, keep, 1 / 0.6)
        grd = backend.relu_dropout_grad(grad, keep, 1 / 0.6, mask)
        # the one-pass pair gives the bits of the two passes apart (NumPy's expressions here)
        factor = np.multiply(keep, x.dtype.type(1 / 0.6), dtype=x.dtype)
        same_bits(yrd, np.multiply(y, factor))
        same_bits(mrd, mask)
        same_bits(grd, np.multiply(np.multiply(grad, factor), mask))
    words = backend.rng(7)._bits(x.size // 4 + 3)
    return y, mask, dx, yd, gd, yrd, grd, words


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout", ["nchw", "planes"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_backend_runs_them_with_numpys_bits(monkeypatch, spied, threads, layout, dtype):
    monkeypatch.setattr(nk, "ADAPTIVE", False)   # split on two threads whatever it gains
    backend = NumpyBackend()
    backend.set_threads(threads)
    rng = np.random.default_rng(11)
    shape = (6, 5, 150, 150)
    x, grad = awkward(rng, np.prod(shape), dtype).reshape(shape), rng.standard_normal(shape).astype(dtype)
    keep = rng.random(shape) < 0.6
    if layout == "planes":   # the NCHW views of (H, W, N, C) planes, as ops/layout.py hands them on
        x, grad, keep = (to_planes(np, a).transpose(2, 3, 0, 1) for a in (x, grad, keep))
        assert not x.flags.c_contiguous
    assert x.size > nk.MIN_ELEMENTS
    on = backend_passes(backend, x, keep, grad)
    assert all(spied[name] >= 1 for name in NAMES), spied
    if threads == 2:
        assert all(spied[name] >= 2 for name in NAMES), spied   # a call a piece
    monkeypatch.setattr(compiled, "MIN_ELEMENTWISE", 1 << 62)   # NumPy's passes, the kernels loaded
    spied.update({name: 0 for name in NAMES})
    off = backend_passes(backend, x, keep, grad)
    assert spied == {name: 0 for name in NAMES}
    for a, b in zip(on, off):
        same_bits(a, b)
    assert all(on[i].strides == x.strides for i in (0, 3, 5, 6))   # laid out as x


def test_small_or_strided_arrays_take_numpys_passes(spied):
    """Under MIN_ELEMENTWISE, or not one permutation of a contiguous array (a reshape would copy, and
    a kernel's writes into a copy be lost): NumPy's passes, with their results."""
    backend = get_backend("numpy")
    rng = np.random.default_rng(2)
    small = rng.standard_normal((4, 3, 20, 20)).astype(np.float32)
    big = rng.standard_normal((6, 5, 150, 300)).astype(np.float32)[..., :150]   # rows apart: no 1-D view
    for x in (small, big):
        keep = rng.random(x.shape) < 0.6
        y, mask, dx, yd, gd, yrd, grd, _ = backend_passes(backend, x, keep, x)
        same_bits(y, np.maximum(x, 0))
        same_bits(dx, x * (np.maximum(x, 0) > 0))
        same_bits(yd, x * np.multiply(keep, np.float32(1 / 0.6)))
        same_bits(gd, yd)
        same_bits(yrd, y * np.multiply(keep, np.float32(1 / 0.6)))
        same_bits(grd, yd * mask)
    assert all(spied[name] == 0 for name in NAMES[:-1]), spied


def test_numpys_passes_where_numba_cannot_be_loaded_or_the_start_is_an_array(monkeypatch, spied):
    """numba installed but its kernels not loadable (``kernels()`` None: a warning said why) after
    the backend chose the compiled path for a draw, or a generator with a device counter (its start
    a (1,) array): NumPy's passes, the same words and passes."""
    backend = NumpyBackend()
    backend.set_threads(2)
    n = compiled.MIN_ELEMENTWISE + 5
    want = backend.rng(3)._bits(n)
    assert spied["splitmix64"] >= 1
    same_bits(backend.rng(3).device_counter()._bits(n), want)
    monkeypatch.setattr(compiled, "kernels", lambda: None)
    spied.update({name: 0 for name in NAMES})
    same_bits(backend.rng(3)._bits(n), want)
    x = awkward(np.random.default_rng(1), 4 * n, np.float32).reshape(4, n)
    y, mask = backend.relu_forward(x)
    same_bits(y, np.maximum(x, 0))
    assert spied == {name: 0 for name in NAMES}


def test_small_models_do_not_import_numba():
    """A small model's draws, ReLU and Dropout stay NumPy's passes and never load numba (0.3 s,
    100 MB a process: a server's or a rank's); a large ReLU loads it."""
    code = ("import sys, numpy as np, xpnet\n"
            "from xpnet.layers import Dense, ReLU, Dropout\n"
            "m = xpnet.Sequential([Dense(64), ReLU(), Dropout(0.5), Dense(3)], input_shape=(20,))\n"
            "m.compile(optimizer='adam', loss='cross_entropy')\n"
            "x = np.random.default_rng(0).standard_normal((256, 20)).astype('float32')\n"
            "m.fit(x, np.arange(256) % 3, epochs=1, batch_size=64, verbose=0)\n"
            "print('numba' in sys.modules)\n"
            "m.backend.relu_forward(np.ones(1 << 17, np.float32))\n"
            "print('numba' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
