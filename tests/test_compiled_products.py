"""The compiled spectral products (backends/compiled_products.py, numba, optional) give the bits of
ops/spectral.py's NumPy passes: the real form and Gauss's three GEMMs, forward and backward with and
without dx, float32 and float64, on 1-3 threads, with awkward sizes; where NumPy's matmul would
take another BLAS call (a product with one row or one column) or the arrays are not what the kernels
index (another dtype, not C-contiguous, a wrong shape), ``bin_products`` declines and NumPy's
passes run; a convolution really runs them (spied), and they never take the GIL. Without numba
the module skips; the rest of the suite then runs NumPy's passes."""
import threading
import time

import numpy as np
import pytest

pytest.importorskip("numba")

import xpnet.backends.compiled as compiled  # noqa: E402
import xpnet.backends.numpy_kernels as nk  # noqa: E402
from xpnet.backends import get_backend  # noqa: E402
from xpnet.ops import fast, spectral  # noqa: E402

if compiled.products() is None:
    pytest.skip(f"the compiled spectral products do not run here: {compiled.describe()}", allow_module_level=True)

SHAPES = [(23, 6, 5, 7), (9, 2, 2, 2), (40, 3, 1, 4), (7, 17, 9, 3), (5, 100, 2, 2)]   # bins, N, C, F


def draws(shape, dtype, seed=0):
    bins, n, c, f = shape
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in ((bins, 2 * n, c), (bins, 2 * c, f), (bins, 2 * n, f))]


def products(S, K, DY, need_dx, compiled_on, threads=1):
    """[Y, G, DX or None] from spectral's CPU products with the compiled calls on or off."""
    backend = get_backend("cpu")
    kept, spectral.COMPILED_PRODUCTS = spectral.COMPILED_PRODUCTS, compiled_on
    kept_threads, backend._kernels.threads = backend._kernels.threads, threads
    try:
        return [spectral._cpu_forward_product(np, S, K), *spectral._cpu_backward_products(np, S, DY, K, need_dx)]
    finally:
        spectral.COMPILED_PRODUCTS, backend._kernels.threads = kept, kept_threads


@pytest.fixture
def every_split(monkeypatch):
    monkeypatch.setattr(nk, "MIN_ELEMENTS", 1)
    monkeypatch.setattr(nk, "ADAPTIVE", False)


@pytest.fixture
def counted(monkeypatch):
    """The compiled kernels' calls, by (kind, gauss)."""
    calls = []

    def spy(kind, gauss, kernel):
        return lambda *a: calls.append((kind, gauss)) or kernel(*a)
    monkeypatch.setattr(compiled, "_products", {kind: tuple(spy(kind, g, k) for g, k in enumerate(pair))
                                                for kind, pair in compiled.products().items()})
    return calls


@pytest.mark.parametrize("gauss", [False, True])
@pytest.mark.parametrize("need_dx", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_the_compiled_products_give_numpys_bits(monkeypatch, every_split, counted, shape, dtype, need_dx, gauss):
    S, K, DY = draws(shape, dtype)
    monkeypatch.setattr(spectral, "GAUSS_MIN_BATCH", 1 if gauss else 10 ** 9)
    monkeypatch.setattr(spectral, "Z_CHUNK_BYTES", 3 * S[0].nbytes * 2)   # 3 bins a chunk: uneven pieces
    want = products(S, K, DY, need_dx, 0)
    assert not counted
    for threads in (1, 2, 3):
        got = products(S, K, DY, need_dx, 1, threads)
        for a, b in zip(got, want):
            assert (a is None) == (b is None) and (a is None or a.tobytes() == b.tobytes())
    bins, n, c, f = shape
    ran = {kind for kind, g in counted if g == gauss}
    # the real form runs compiled whenever F > 1; Gauss's needs N > 1 and, backward, C > 1
    assert ran == ({"forward", "backward"} if not gauss or c > 1 else {"forward"})
    assert all(g == gauss for _, g in counted)


@pytest.mark.parametrize("images, channels, filters, gauss_from, forward, backward", [
    (1, 3, 4, 1, False, False),       # one image: Gauss's products have one row...
    (1, 3, 4, 10 ** 9, True, True),   # ... the real form's two
    (5, 1, 4, 1, True, False),        # one channel: Gauss's G has one row
    (5, 3, 1, 10 ** 9, False, False),  # one filter: every product has one column
])
def test_products_with_one_row_or_column_stay_numpys(monkeypatch, counted, images, channels, filters, gauss_from,
                                                     forward, backward):
    """NumPy's matmul takes a GEMV or a dot for a product with one row or one column, whose bits
    may differ from the GEMM's: there bin_products declines and NumPy's passes run, with their bits."""
    S, K, DY = draws((11, images, channels, filters), np.float32, seed=3)
    monkeypatch.setattr(spectral, "GAUSS_MIN_BATCH", gauss_from)
    want = products(S, K, DY, True, 0)
    got = products(S, K, DY, True, 1)
    for a, b in zip(got, want):
        assert a.tobytes() == b.tobytes()
    assert {kind for kind, _ in counted} == {kind for kind, on in (("forward", forward), ("backward", backward)) if on}


def test_bin_products_declines_what_the_kernels_cannot_index():
    S, K, DY = draws((6, 3, 2, 4), np.float32)
    Y, G, DX = np.zeros((6, 6, 4), np.float32), np.zeros((6, 4, 4), np.float32), np.zeros((6, 6, 2), np.float32)
    assert compiled.bin_products("forward", (S, K, Y), False) is not None
    assert compiled.bin_products("backward", (S, DY, K, G, DX), True) is not None
    assert compiled.bin_products("backward", (S, DY, K, G, None), True, need_dx=False) is not None
    assert compiled.bin_products("forward", (S, K, Y.astype(np.float64)), False) is None        # dtypes differ
    assert compiled.bin_products("forward", (S.astype(np.float16), K.astype(np.float16), Y.astype(np.float16)),
                                 False) is None                                                 # no float16
    assert compiled.bin_products("forward", (S.byteswap().view(S.dtype.newbyteorder()), K, Y), False) is None
    assert compiled.bin_products("forward", (np.asfortranarray(S), K, Y), False) is None        # not C order
    assert compiled.bin_products("forward", (S, K, np.empty((5, 6, 4), np.float32)), False) is None  # short Y
    assert compiled.bin_products("forward", (S, K[:, :2], Y[:, :, :2].copy()), False) is None    # K not (2C, F)
    assert compiled.bin_products("backward", (S, DY, K, G, None), True, need_dx=True) is None     # dx wanted, no DX
    assert compiled.bin_products("backward", (S, DY, K, G, DX[:5]), True) is None                 # short DX
    assert compiled.bin_products("backward", (S, DY, K, G[:, :3], DX), True) is None              # G not (2C, F)


def test_bin_products_declines_when_switched_off_or_missing(monkeypatch):
    S, K, DY = draws((6, 3, 2, 4), np.float32)
    arrays = (S, K, np.empty((6, 6, 4), np.float32))
    monkeypatch.setattr(compiled, "ENABLED", 0)
    assert compiled.bin_products("forward", arrays, False) is None
    monkeypatch.setattr(compiled, "ENABLED", 1)
    monkeypatch.setattr(compiled, "_products", None)
    monkeypatch.setattr(compiled, "_no_products", "NumPy's BLAS is 'mkl'")
    assert compiled.products() is None and compiled.bin_products("forward", arrays, False) is None
    assert get_backend("strict").bin_products("forward", arrays, False) is None   # the base: NumPy's passes


def test_another_blas_is_refused_with_its_name(monkeypatch):
    """Only the scipy-openblas of NumPy's wheels is called (its GEMM is the one NumPy calls)."""
    import xpnet.backends.compiled_products as cp
    monkeypatch.setitem(np.__config__.CONFIG["Build Dependencies"], "blas",
                        {"name": "mkl", "openblas configuration": None})
    with pytest.raises(ImportError, match="NumPy's BLAS is 'mkl'"):
        cp._numpy_blas()


def test_bin_ranges_cover_each_piece_once():
    assert spectral._bin_ranges(slice(2, 5), 7, 4, 26) == [(8, 20)]
    assert spectral._bin_ranges(slice(5, 7), 7, 4, 26) == [(20, 26)]
    assert spectral._bin_ranges(slice(None), 7, 4, 26) == [(0, 26)]
    assert spectral._bin_ranges(slice(1, None, 3), 7, 4, 26) == [(4, 8), (16, 20)]
    assert spectral._bin_ranges(slice(7, 9), 7, 4, 26) == []


def test_a_convolution_runs_them_with_the_bits_of_numpys_passes(monkeypatch, counted):
    """A spectral convolution's forward and backward (batch 96: Gauss; 95: the real form)."""
    rng = np.random.default_rng(1)
    W, b = rng.standard_normal((6, 3, 5, 5)).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    for n, gauss in ((96, True), (95, False)):
        x = rng.standard_normal((n, 3, 12, 12)).astype(np.float32)
        dy = rng.standard_normal((n, 6, 12, 12)).astype(np.float32)
        runs = []
        for on in (0, 1):
            monkeypatch.setattr(spectral, "COMPILED_PRODUCTS", on)
            y, cache = fast.conv2d_forward(np, x, W, b, (1, 1), (2, 2, 2, 2), method="spectral")
            runs.append([y, *fast.conv2d_backward(np, dy, cache, True)])
        for a, c in zip(*runs):
            assert a.tobytes() == c.tobytes()
        assert {kind for kind, g in counted if g == gauss} == {"forward", "backward"}
        counted.clear()


def test_the_kernels_never_take_the_gil():
    """Compiled with nogil: while one thread is inside one long compiled call, another thread's
    Python keeps running (a kernel that held the GIL would stop it for the whole call)."""
    from xpnet.backends import compiled_products as cp
    for kind, pair in cp.KERNELS.items():
        for kernel in pair:
            assert kernel.targetoptions.get("nogil") is True, (kind, kernel)
    S, K, _ = draws((100, 512, 64, 64), np.float32)
    Y = np.empty((100, 1024, 64), np.float32)
    kernel = cp.KERNELS["forward"][0]
    kernel(S, K, Y, 0, 1)   # compiled before the clock starts
    ticks, done = [], threading.Event()

    def count():
        while not done.is_set():
            ticks.append(time.perf_counter())

    counter = threading.Thread(target=count)
    counter.start()
    try:
        time.sleep(0.01)
        started = time.perf_counter()
        kernel(S, K, Y, 0, 100)
        ended = time.perf_counter()
    finally:
        done.set()
        counter.join()
    # the counter ran through the call: ticks in most of its tenths
    tenths = {int(10 * (t - started) / (ended - started)) for t in ticks if started <= t < ended}
    assert len(tenths) >= 7, (sorted(tenths), ended - started)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, gauss", [(s, g) for s in SHAPES[:4] for g in (False, True)
                                          if not (g and s[2] == 1)])   # Gauss's G with one row: declined
def test_g_alone_and_dx_alone_give_the_bits_of_both_at_once(shape, dtype, gauss):
    """The backward kernels make G, dX or both (spectral._later_dw: dX now, G on an idle worker):
    each alone gives the bits of the call that makes both."""
    S, K, DY = draws(shape, dtype, seed=5)
    bins, n, c, f = shape
    both = np.empty((bins, 2 * c, f), dtype), np.empty((bins, 2 * n, c), dtype)
    alone = np.full_like(both[0], np.nan), np.full_like(both[1], np.nan)
    compiled.bin_products("backward", (S, DY, K, *both), gauss, True, True)(0, bins)
    g_only = compiled.bin_products("backward", (S, DY, K, alone[0], None), gauss, False, True)
    dx_only = compiled.bin_products("backward", (S, DY, K, None, alone[1]), gauss, True, False)
    g_only(0, bins // 2)
    g_only(bins // 2, bins)
    assert np.isnan(alone[1]).all()   # G's calls left DX alone
    dx_only(0, bins)
    assert alone[0].tobytes() == both[0].tobytes() and alone[1].tobytes() == both[1].tobytes()


def test_bin_products_asks_for_the_arrays_of_what_is_made():
    S, K, DY = draws((6, 3, 2, 4), np.float32)
    G, DX = np.zeros((6, 4, 4), np.float32), np.zeros((6, 6, 2), np.float32)
    assert compiled.bin_products("backward", (S, DY, K, None, DX), True, True, False) is not None
    assert compiled.bin_products("backward", (S, DY, K, G, DX), True, True, False) is None      # G given, not made
    assert compiled.bin_products("backward", (S, DY, K, None, DX), True, True, True) is None    # G made, none given
    assert compiled.bin_products("backward", (S, DY, K, None, None), True, False, False) is None  # nothing to make
