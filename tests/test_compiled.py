"""The compiled 2x2 max-pooling kernels (backends/compiled.py, numba, optional) give the bits of
NumPy's passes they replace (pooling._fold and pooling._scatter), on both layouts (planes
(P, H, W) and bands of planes (R, 2, W, Q)), with ties, -0.0 beside 0.0, infinities, odd sizes,
float32 and float64; a NaN hands the chunk back to NumPy's passes; and the pooling layers, the
fused convolution + pooling and the planes path really run them (spied) with the same bits as with
them switched off. Without numba the module skips; the rest of the suite then runs NumPy's passes."""
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("numba")

import xpnet.backends.compiled as compiled  # noqa: E402
from xpnet.backends import get_backend  # noqa: E402
from xpnet.ops import conv_pool, pooling  # noqa: E402
from xpnet.ops.layout import to_planes  # noqa: E402

DTYPES = (np.float32, np.float64)


def tied(rng, shape, dtype):
    """Values rounded to one decimal (many ties) with -0.0, 0.0 and +-inf sprinkled in, no NaN."""
    a = np.round(rng.standard_normal(shape), 1)
    r = rng.random(shape)
    a[r < 0.15] = -0.0
    a[(r >= 0.15) & (r < 0.25)] = 0.0
    a[(r >= 0.25) & (r < 0.27)] = -np.inf
    a[(r >= 0.27) & (r < 0.28)] = np.inf
    return a.astype(dtype)


def numpy_fold(x, ho, wo):
    """pooling._fold's passes over planes (P, H, W) or bands (R, 2, W, Q): (m, k_of)."""
    if x.ndim == 3:
        m = np.empty((x.shape[0], ho, wo), x.dtype)
        view = lambda k: pooling._offset_view(x, k, (2, 2), ho, wo)  # noqa: E731
    else:
        m = np.empty((x.shape[0], wo, x.shape[3]), x.dtype)
        view = lambda k: x[:, k // 2, k % 2:wo * 2:2]  # noqa: E731
    k_of = np.empty(m.shape, np.uint8)
    pooling._fold(np, m, k_of, view, 4, (np.empty_like(m), np.empty(m.shape, bool), np.empty_like(k_of)))
    return m, k_of


def numpy_unpool(k_of, d, shape):
    """pooling._scatter's passes (and zeros where no window covers) into planes or bands ``shape``."""
    x = np.full(shape, 7.0, d.dtype)   # not zero: the uncovered cells must be written
    wo = d.shape[1] if x.ndim == 4 else d.shape[2]
    if x.ndim == 3:
        target = lambda i, j: x[:, i:2 * d.shape[1]:2, j:2 * wo:2]  # noqa: E731
        x[:, 2 * d.shape[1]:] = 0
        x[:, :, 2 * wo:] = 0
    else:
        target = lambda i, j: x[:, i, j:2 * wo:2]  # noqa: E731
        x[:, :, 2 * wo:] = 0
    pooling._scatter(np, k_of, d, target, (2, 2), np.empty(k_of.shape, bool))
    return x


SHAPES = [(3, 2, 2), (4, 5, 7), (6, 8, 8), (2, 11, 11), (5, 26, 26)]
BAND_SHAPES = [(1, 2, 2, 1), (3, 2, 5, 6), (4, 2, 8, 33), (2, 2, 11, 64)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + BAND_SHAPES)
def test_window_max_gives_numpy_bits(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    x = tied(rng, shape, dtype)
    if x.ndim == 3:
        ho, wo = shape[1] // 2, shape[2] // 2
        m, k_of = np.empty((shape[0], ho, wo), dtype), np.empty((shape[0], ho, wo), np.uint8)
    else:
        ho, wo = 1, shape[2] // 2
        m, k_of = np.empty((shape[0], wo, shape[3]), dtype), np.empty((shape[0], wo, shape[3]), np.uint8)
    assert compiled.window_max_2x2(x, m, k_of) is True
    want_m, want_k = numpy_fold(x, ho, wo)
    assert m.tobytes() == want_m.tobytes()
    assert k_of.tobytes() == want_k.tobytes()


def test_signed_zero_ties_follow_numpy_maximum():
    """numpy.maximum keeps the later of two equal operands (its value, -0.0 or 0.0), the offset
    stays the first: both spelled out, so a kernel keeping the earlier value fails here."""
    x = np.array([[[-0.0, 0.0], [-0.0, -0.0]], [[0.0, -0.0], [0.0, 0.0]]], np.float32)
    m, k_of = np.empty((2, 1, 1), np.float32), np.empty((2, 1, 1), np.uint8)
    assert compiled.window_max_2x2(x, m, k_of)
    assert list(np.signbit(m).ravel()) == [True, False]   # the last of the window's four values
    assert list(k_of.ravel()) == [0, 0]
    assert (np.signbit(m) == np.signbit(numpy_fold(x, 1, 1)[0])).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + BAND_SHAPES)
def test_unpool_gives_numpy_bits(shape, dtype):
    rng = np.random.default_rng(sum(shape) + 1)
    pooled = (shape[0], shape[1] // 2, shape[2] // 2) if len(shape) == 3 else (shape[0], shape[2] // 2, shape[3])
    k_of = rng.integers(0, 4, pooled).astype(np.uint8)
    stray = rng.random(pooled) < 0.05   # not a fold's offset: NumPy's masks give 0 * d at all four
    k_of[stray] = rng.integers(4, 256, int(stray.sum()))
    d = tied(rng, pooled, dtype)
    d[rng.random(pooled) < 0.05] = np.nan   # 0 * NaN is NaN at the other offsets
    x = np.full(shape, 7.0, dtype)
    assert compiled.unpool_2x2(k_of, d, x) is True
    assert x.tobytes() == numpy_unpool(k_of, d, shape).tobytes()


@pytest.mark.parametrize("shape", [(3, 4, 4), (2, 2, 4, 5)])
def test_a_nan_hands_the_chunk_back(shape):
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    x.flat[5] = np.nan
    pooled = (shape[0], shape[1] // 2, shape[2] // 2) if len(shape) == 3 else (shape[0], shape[2] // 2, shape[3])
    m, k_of = np.empty(pooled, np.float32), np.empty(pooled, np.uint8)
    assert compiled.window_max_2x2(x, m, k_of) is False
    x.flat[5] = 5.0
    assert compiled.window_max_2x2(x, m, k_of) is True


def test_what_the_kernels_do_not_take(monkeypatch):
    x = np.zeros((2, 4, 4), np.float32)
    m, k_of, d = np.empty((2, 2, 2), np.float32), np.empty((2, 2, 2), np.uint8), np.ones((2, 2, 2), np.float32)
    assert compiled.window_max_2x2(x, m, k_of) and compiled.unpool_2x2(k_of, d, x)
    half = x.astype(np.float16)   # numba has no float16 arithmetic
    assert not compiled.window_max_2x2(half, m.astype(np.float16), k_of)
    assert not compiled.unpool_2x2(k_of, d.astype(np.float16), half)
    strided = np.zeros((2, 4, 8), np.float32)[:, :, ::2]
    assert not compiled.window_max_2x2(strided, m, k_of)
    assert not compiled.unpool_2x2(k_of, d, strided)
    assert not compiled.window_max_2x2(x, m, k_of.astype(np.int32))
    monkeypatch.setattr(compiled, "ENABLED", 0)
    assert not compiled.available() and not compiled.window_max_2x2(x, m, k_of)
    assert not compiled.unpool_2x2(k_of, d, x)
    monkeypatch.setattr(compiled, "ENABLED", 1)
    monkeypatch.setattr(compiled, "INSTALLED", False)   # as without the extra installed
    assert not compiled.available() and not compiled.window_max_2x2(x, m, k_of)


def test_another_byte_order_takes_numpys_passes():
    """A big-endian float32 array's dtype.type is float32, but numba refuses to type it (a
    TypingError out of the pooling, where NumPy's passes pool it): the kernels take arrays in the
    machine's byte order only, and the pooling gives the bits it gives native arrays."""
    rng = np.random.default_rng(8)
    x = tied(rng, (3, 2, 6, 7), np.float32)
    dy = tied(rng, (3, 2, 3, 3), np.float32)
    swap = x.dtype.newbyteorder()
    planes = x.reshape(6, 6, 7).astype(swap)
    m, k_of = np.empty((6, 3, 3), swap), np.empty((6, 3, 3), np.uint8)
    assert not compiled.window_max_2x2(planes, m, k_of)
    assert not compiled.unpool_2x2(k_of, m, planes)
    bands = np.zeros((2, 2, 4, 3), swap)
    assert not compiled.window_max_2x2(bands, np.empty((2, 2, 3), swap), np.empty((2, 2, 3), np.uint8))
    y, cache = pooling.maxpool2d_forward(np, x, (2, 2), (2, 2))
    dx = pooling.maxpool2d_backward(np, dy, cache)
    y_s, cache_s = pooling.maxpool2d_forward(np, x.astype(swap), (2, 2), (2, 2))
    dx_s = pooling.maxpool2d_backward(np, dy.astype(swap), cache_s)
    assert y_s.dtype == dx_s.dtype == swap
    assert y_s.astype(np.float32).tobytes() == y.tobytes() and dx_s.astype(np.float32).tobytes() == dx.tobytes()


def test_arrays_shaped_otherwise_are_refused_before_the_kernels_index_them():
    """The kernels index without bounds checks, taking the window count from the pooled array: a
    pooled array with more windows than x holds (or bands of other than two rows) would read and
    write past x. Only (P, H // 2, W // 2) for planes (P, H, W) and (R, W // 2, Q) for bands
    (R, 2, W, Q) are taken; the memory around x stays as it was."""
    memory = np.full(64, 7.0, np.float32)
    x = memory[8:16].reshape(2, 2, 2)   # two planes of one window each, inside a larger buffer
    for pooled in [(2, 2, 1), (2, 1, 2), (3, 1, 1), (1, 1, 1)]:
        d, k_of = np.ones(pooled, np.float32), np.zeros(pooled, np.uint8)
        assert not compiled.window_max_2x2(x, np.empty(pooled, np.float32), k_of), pooled
        assert not compiled.unpool_2x2(k_of, d, x), pooled
    bands = memory[16:40].reshape(2, 2, 2, 3)
    for pooled in [(2, 2, 3), (2, 1, 4), (3, 1, 3)]:
        d, k_of = np.ones(pooled, np.float32), np.zeros(pooled, np.uint8)
        assert not compiled.window_max_2x2(bands, np.empty(pooled, np.float32), k_of), pooled
        assert not compiled.unpool_2x2(k_of, d, bands), pooled
    one_row = memory[16:28].reshape(2, 1, 2, 3)   # bands of one row
    assert not compiled.unpool_2x2(np.zeros((2, 1, 3), np.uint8), np.ones((2, 1, 3), np.float32), one_row)
    assert (memory == 7.0).all()
    assert compiled.unpool_2x2(np.zeros((2, 1, 1), np.uint8), np.ones((2, 1, 1), np.float32), x)   # fits


@pytest.mark.parametrize("shape, pooled", [((0, 4, 5), (0, 2, 2)), ((0, 2, 4, 3), (0, 2, 3)),
                                           ((2, 2, 4, 0), (2, 2, 0))])
def test_empty_arrays_pass_through_the_kernels(shape, pooled):
    """No planes, no bands or bands of no positions: nothing read or written, no error."""
    x, m = np.zeros(shape, np.float32), np.zeros(pooled, np.float32)
    k_of = np.zeros(pooled, np.uint8)
    assert compiled.window_max_2x2(x, m, k_of) is True
    assert compiled.unpool_2x2(k_of, m, x) is True


def test_an_empty_batch_pools_in_both_layouts():
    x = np.zeros((0, 3, 5, 4), np.float32)
    for view in (x, to_planes(np, x).transpose(2, 3, 0, 1)):
        y, cache = pooling.maxpool2d_forward(np, view, (2, 2), (2, 2))
        dx = pooling.maxpool2d_backward(np, np.zeros(y.shape, np.float32), cache)
        assert y.shape == (0, 3, 2, 2) and dx.shape == x.shape


@pytest.fixture
def spied(monkeypatch):
    """The four kernels' calls, by name: each call's arguments and result (the real kernels run;
    a fold's result True is a NaN that handed its chunk back to NumPy's passes)."""
    calls = {}
    module = compiled.kernels()
    for name in ("window_max_2x2", "band_max_2x2", "unpool_2x2", "band_unpool_2x2"):
        real = getattr(module, name)

        def spy(*args, real=real, name=name):
            result = real(*args)
            calls.setdefault(name, []).append((args, result))
            return result

        monkeypatch.setattr(module, name, spy)
    return calls


def switched(monkeypatch, on, fn):
    monkeypatch.setattr(compiled, "ENABLED", on)
    return fn()


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pooling_layers_run_the_kernels_with_the_same_bits(monkeypatch, spied, dtype):
    rng = np.random.default_rng(3)
    x = tied(rng, (4, 5, 9, 11), dtype)
    dy = tied(rng, (4, 5, 4, 5), dtype)

    def nchw():
        y, cache = pooling.maxpool2d_forward(np, x, (2, 2), (2, 2))
        return y, pooling.maxpool2d_backward(np, dy, cache)

    def planes():   # x handed on as the NCHW view of planes (layout.py), as the spectral route does
        view = to_planes(np, x).transpose(2, 3, 0, 1)
        y, cache = pooling.maxpool2d_forward(np, view, (2, 2), (2, 2))
        return y, np.ascontiguousarray(pooling.maxpool2d_backward(np, dy, cache))

    for run, kernels in ((nchw, ("window_max_2x2", "unpool_2x2")), (planes, ("band_max_2x2", "band_unpool_2x2"))):
        off = switched(monkeypatch, 0, run)
        assert not any(spied.get(k) for k in kernels)
        on = switched(monkeypatch, 1, run)
        assert all(spied.get(k) for k in kernels), spied
        assert not any(result for _, result in spied[kernels[0]])   # no chunk handed back
        assert [a.tobytes() for a in on] == [a.tobytes() for a in off]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("size, biased", [(12, False), (26, True)])
def test_fused_convolution_and_pooling_run_the_kernels_with_the_same_bits(monkeypatch, spied, relu, dtype, size,
                                                                          biased):
    """Blocks of several images (10x10 outputs) add the bias in their layout copy; blocks of one
    image (24x25 outputs, a column no window covers) leave it to the fold's pass, which must take
    it (the bias of every filter in each call) and report no NaN."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 1, size, size + 1)).astype(dtype)
    W = rng.standard_normal((8, 1, 3, 3)).astype(dtype)
    b = rng.standard_normal(8).astype(dtype)

    def run():
        y, kept = conv_pool.forward(np, x, W, b, (1, 1), (0, 0, 0, 0), (2, 2), relu)
        kept.update(stride=(1, 1), padding=(0, 0, 0, 0), has_bias=True)
        dy = np.linspace(-1, 1, y.size, dtype=dtype).reshape(y.shape)
        return (y,) + tuple(conv_pool.backward(np, dy, kept, True))

    off = switched(monkeypatch, 0, run)
    assert not spied
    on = switched(monkeypatch, 1, run)
    assert spied.get("window_max_2x2") and spied.get("unpool_2x2")
    folds = spied["window_max_2x2"]
    assert [len(args[3]) for args, _ in folds] == [8 if biased else 0] * len(folds)
    assert not any(result for _, result in folds)   # no chunk handed back
    assert [a.dtype for a in on] == [np.dtype(dtype)] * 4
    assert [a.tobytes() for a in on] == [a.tobytes() for a in off]


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_nan_hands_back_only_its_chunk_of_planes(monkeypatch, spied, dtype):
    """Planes pooled in chunks of one band of rows on 3 threads (odd sizes): the chunk with a NaN
    takes NumPy's passes (the NaN wins), the others stay compiled; the bits of both off."""
    import xpnet.backends.numpy_kernels as nk
    monkeypatch.setattr(pooling, "CHUNK_BYTES", 1)
    monkeypatch.setattr(nk, "MIN_ELEMENTS", 1)
    monkeypatch.setattr(nk, "ADAPTIVE", False)
    backend = get_backend("numpy")
    kept = backend.threads
    backend.set_threads(3)
    rng = np.random.default_rng(9)
    x = tied(rng, (3, 4, 11, 9), dtype)
    x[1, 2, 4, 5] = np.nan   # in the band of output row 2 only
    dy = tied(rng, (3, 4, 5, 4), dtype)

    def run():
        y, cache = pooling.maxpool2d_forward(np, to_planes(np, x).transpose(2, 3, 0, 1), (2, 2), (2, 2))
        return y, cache[0].index, np.ascontiguousarray(pooling.maxpool2d_backward(np, dy, cache))

    try:
        off = switched(monkeypatch, 0, run)
        on = switched(monkeypatch, 1, run)
    finally:
        backend.set_threads(kept)
    assert sorted(result for _, result in spied["band_max_2x2"]) == [False] * 4 + [True]
    assert len(spied["band_unpool_2x2"]) == 5
    assert np.isnan(on[0][1, 2, 2, 2]) and on[1][2, 2, 1 * 4 + 2] == 1   # the NaN (its window's offset 1) wins
    assert [a.tobytes() for a in on] == [a.tobytes() for a in off]


def test_the_switch_from_the_environment():
    code = "import xpnet.backends.compiled as c; print(c.available())"
    env = dict(os.environ, XPNET_COMPILED="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    env["XPNET_COMPILED"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    env["XPNET_COMPILED"] = "yes"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "XPNET_COMPILED must be 0 or 1, got 'yes'" in out.stderr


def test_the_backend_offers_the_kernels_only_on_numpy():
    x, m, k_of = np.zeros((1, 2, 2), np.float32), np.empty((1, 1, 1), np.float32), np.empty((1, 1, 1), np.uint8)
    assert get_backend("numpy").window_max_2x2(x, m, k_of) is True
    strict = get_backend("strict")
    assert strict.window_max_2x2(strict.asarray(x), strict.asarray(m), strict.asarray(k_of)) is False


def test_describe_says_whether_they_run_and_why_not(monkeypatch):
    import numba
    assert compiled.describe() == (f"on (numba {numba.__version__}; spectral products on; "
                                   "XPNET_COMPILED=0 turns them off)")
    monkeypatch.setattr(compiled, "_products", None)
    monkeypatch.setattr(compiled, "_no_products", "NumPy's BLAS is 'mkl'")
    assert compiled.describe() == (f"on (numba {numba.__version__}; spectral products off: NumPy's BLAS is "
                                   "'mkl'; NumPy's passes run; XPNET_COMPILED=0 turns them off)")
    monkeypatch.setattr(compiled, "ENABLED", 0)
    assert compiled.describe() == f"off (XPNET_COMPILED=0; numba {numba.__version__} installed)"
    monkeypatch.setattr(compiled, "INSTALLED", False)
    assert compiled.describe().startswith("off (numba not installed: pip install 'xpnet[compiled]'")



@pytest.mark.parametrize("dtype", DTYPES)
def test_window_max_adds_a_bias_per_filter_first(dtype):
    """A convolution's output planes (images x filters) with the bias still to add: each plane p
    gets bias[p % F] before the fold, the sums NumPy's ``planes += bias`` makes (-0.0 + 0.0 is 0.0,
    inf - inf a NaN that hands the chunk back)."""
    rng = np.random.default_rng(5)
    filters = 3
    x = tied(rng, (4 * filters, 6, 7), dtype)
    bias = np.array([0.0, -0.5, 0.25], dtype)
    m, k_of = np.empty((4 * filters, 3, 3), dtype), np.empty((4 * filters, 3, 3), np.uint8)
    before = x.copy()
    assert compiled.window_max_2x2(x, m, k_of, bias) is True
    assert x.tobytes() == before.tobytes()   # the planes are read, not written
    added = (x.reshape(4, filters, -1) + bias.reshape(filters, 1)).reshape(x.shape)
    want_m, want_k = numpy_fold(added, 3, 3)
    assert m.tobytes() == want_m.tobytes() and k_of.tobytes() == want_k.tobytes()
    x[0, 0, 0] = np.inf
    assert compiled.window_max_2x2(x, m, k_of, np.array([-np.inf, 0, 0], dtype)) is False
    assert compiled.window_max_2x2(x, m, k_of, np.zeros(5, dtype)) is False        # 12 planes, 5 filters
    assert compiled.window_max_2x2(x, m, k_of, bias.astype(np.float16)) is False  # another dtype
    bands = np.zeros((2, 2, 4, 3), dtype)
    assert compiled.window_max_2x2(bands, np.empty((2, 2, 3), dtype), np.empty((2, 2, 3), np.uint8), bias) is False


def test_numba_is_imported_only_when_a_kernel_first_runs():
    """Importing numba takes about 0.3 s: not on every ``import xpnet`` or CLI start."""
    code = ("import sys, numpy as np, xpnet\n"
            "from xpnet.backends import get_backend, compiled\n"
            "b = get_backend('numpy')\n"
            "print('numba' in sys.modules, compiled.available())\n"
            "b.window_max_2x2(np.zeros((1, 2, 2), np.float32), np.empty((1, 1, 1), np.float32),\n"
            "                 np.empty((1, 1, 1), np.uint8))\n"
            "print('numba' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True"]


def _pooled_in_a_child(tmp_path, env_extra, prelude=""):
    """(stdout, stderr) of a child that pools and unpools a fixed array with the NumPy backend and
    prints compiled.describe() and the result's bytes as hex."""
    code = prelude + (
        "import numpy as np\n"
        "from xpnet.ops import pooling\n"
        "from xpnet.backends import compiled\n"
        "x = np.linspace(-3, 3, 2 * 3 * 6 * 8, dtype=np.float32).reshape(2, 3, 6, 8)[:, :, ::-1].copy()\n"
        "y, cache = pooling.maxpool2d_forward(np, x, (2, 2), (2, 2))\n"
        "dx = pooling.maxpool2d_backward(np, np.ones_like(y), cache)\n"
        "print(compiled.available())\n"
        "print(compiled.describe())\n"
        "print(y.tobytes().hex() + dx.tobytes().hex())\n")
    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.splitlines(), out.stderr


def test_a_numba_that_cannot_be_imported_leaves_numpys_passes(tmp_path):
    """numba installed but refusing to import (as a numba built for an older NumPy does): one
    warning saying why, NumPy's passes with the same bits, and `xpnet info`'s line says why."""
    fake = tmp_path / "numba"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("Numba needs NumPy 2.3 or less. Got NumPy 2.4.")\n')
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    (on, line, bits), err = _pooled_in_a_child(tmp_path, {"PYTHONPATH": path})
    (_, _, want), _ = _pooled_in_a_child(tmp_path, {"XPNET_COMPILED": "0"})
    assert bits == want
    assert on == "False"
    assert "is installed but cannot be imported: ImportError: Numba needs NumPy 2.3 or less" in line
    assert err.count("numba is installed but cannot be imported (ImportError: Numba needs NumPy") == 1


def test_without_a_writable_cache_folder_the_kernels_compile_per_process(tmp_path):
    """numba refuses cache=True when it finds no writable folder (a read-only install and home):
    the kernels are then compiled without a disk cache, and run."""
    # numba's own locator list emptied (an internal: the child checks that numba then really
    # refuses cache=True, so that a numba whose internals moved fails here instead of passing)
    (tmp_path / "probe_module.py").write_text("def probe():\n    return 0\n")   # a file numba could cache for
    prelude = ("import sys, numba, numba.core.caching as caching\n"
               "caching.CacheImpl._locator_classes = []\n"
               f"sys.path.insert(0, {str(tmp_path)!r})\n"
               "from probe_module import probe\n"
               "try:\n    numba.njit(cache=True)(probe)\nexcept RuntimeError as exc:\n"
               "    print('refused:', exc, file=sys.stderr)\n")
    (on, line, bits), err = _pooled_in_a_child(tmp_path, {}, prelude)
    assert "refused: cannot cache function 'probe'" in err, err
    (_, _, want), _ = _pooled_in_a_child(tmp_path, {"XPNET_COMPILED": "0"})
    assert on == "True" and line.startswith("on (numba ") and bits == want
