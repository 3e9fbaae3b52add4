"""The NumPy backend's threaded ops (stacked GEMMs, wide products in column pieces, the plane
transposes, max pooling, the spectral weight gradient) give the same bits on 1, 2 and 3 threads:
a training step's outputs and gradients do not depend on the thread count. And those bits are the
reference ops' numbers: the same wrong answer on every thread count fails too."""
import types

import numpy as np
import pytest

import xpnet.backends.numpy_kernels as nk
from xpnet.backends import get_backend
from xpnet.ops import fast, gemm, layout, reference


@pytest.fixture
def small_splits(monkeypatch):
    """Split even small arrays, so that the test shapes take every threaded path."""
    monkeypatch.setattr(nk, "MIN_ELEMENTS", 1)
    monkeypatch.setattr(nk, "ADAPTIVE", False)   # every pass through the pool, gain or not
    monkeypatch.setattr(nk, "MIN_MACS", 1)
    monkeypatch.setattr(gemm, "PIECE_COLUMNS", 64)
    monkeypatch.setattr(gemm, "MIN_MACS", 1)
    monkeypatch.setattr(layout, "TO_PLANES_BLOCK", 4)   # several blocks of planes, one uneven
    backend = get_backend("cpu")
    kept = backend._kernels.threads
    yield backend
    backend._kernels.threads = kept


def inputs(dtype):
    """x, W, b and dy of a "same" 5x5 convolution, and the output gradients of the two poolings of
    its output (2x2 stride 2; 3x3 stride 2, overlapping): the same draws on every call."""
    rng = np.random.default_rng(7)
    shapes = (6, 5, 14, 13), (7, 5, 5, 5), (7,), (6, 7, 14, 13), (6, 7, 7, 6), (6, 7, 6, 6)
    return [rng.standard_normal(shape).astype(dtype) for shape in shapes]


def run_ops(backend, threads, method, dtype):
    backend._kernels.threads = threads
    x, W, b, dy, dp_out, dq_out = inputs(dtype)
    y, cache = fast.conv2d_forward(np, x, W, b, (1, 1), (2, 2, 2, 2), method=method)
    dx, dW, db = fast.conv2d_backward(np, dy, cache, need_dx=True)
    p, pcache = fast.maxpool2d_forward(np, y, (2, 2), (2, 2))
    dp = fast.maxpool2d_backward(np, dp_out, pcache)
    q, qcache = fast.maxpool2d_forward(np, y, (3, 3), (2, 2))          # overlapping windows
    dq = fast.maxpool2d_backward(np, dq_out, qcache)
    return [y, dx, dW, db, p, dp, q, dq]


def reference_ops(y, dtype):
    """run_ops' arrays by xpnet.ops.reference in float64, from the same draws. The poolings pool
    ``y``, run_ops' convolution output: pooling the reference's own y, a near-tie rounded the other
    way in float32 would move a window's winner, an error of order one that is no bug."""
    x, W, b, dy, dp_out, dq_out = (a.astype(np.float64) for a in inputs(dtype))
    y_r, cache = reference.conv2d_forward(np, x, W, b, (1, 1), (2, 2, 2, 2))
    dx, dW, db = reference.conv2d_backward(np, dy, cache)
    y = y.astype(np.float64)
    p, pcache = reference.maxpool2d_forward(np, y, (2, 2), (2, 2))
    q, qcache = reference.maxpool2d_forward(np, y, (3, 3), (2, 2))
    return [y_r, dx, dW, db, p, reference.maxpool2d_backward(np, dp_out, pcache),
            q, reference.maxpool2d_backward(np, dq_out, qcache)]


@pytest.mark.parametrize("method", ["spectral", "columns"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ops_give_the_same_bits_on_any_thread_count(small_splits, method, dtype):
    """The same bits on 1-3 threads, and the reference's numbers: the same wrong answer on every
    thread count fails too (1e-3 added to y or dW did, which passed the bits alone). To 1e-12 of
    each array's largest value in float64, 3e-6 in float32: the routes' rounding is under 1e-6
    here (largest 7.4e-7 with OpenBLAS's SkylakeX kernels, 5.0e-7 Haswell and Zen, 6.6e-7
    SandyBridge, float32 dW), 1e-3 on dW is 1e-5 of it."""
    one = run_ops(small_splits, 1, method, dtype)
    for threads in (2, 3):
        for a, b in zip(one, run_ops(small_splits, threads, method, dtype)):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
    tolerance = 1e-12 if dtype == "float64" else 3e-6
    names = "y", "dx", "dW", "db", "p", "dp", "q", "dq"
    for name, got, want in zip(names, one, reference_ops(one[0], dtype)):
        assert got.shape == want.shape, name
        error = np.abs(got - want).max() / np.abs(want).max()
        assert error < tolerance, (name, error)


def test_wide_matmul_pieces_depend_on_the_shape_only(small_splits):
    """Five column pieces (the last uneven) on 1-3 threads: a @ b's numbers, the same bits on any
    thread count. (Without small_splits' MIN_MACS, 34 x 28 x 2563 multiply-adds were under the
    threshold and ran as one a @ b: a first piece one column short passed.) The pieces' widths are
    checked too: OpenBLAS gives this product the same bits for other column splits, so pieces
    that followed the thread count (2 + threads of them) passed the bits."""
    assert gemm.column_pieces(100) == 1 and gemm.column_pieces(10 ** 6) == gemm.MAX_PIECES
    rng = np.random.default_rng(0)
    a = rng.standard_normal((34, 28)).astype("float32")
    b = rng.standard_normal((28, 5 * gemm.PIECE_COLUMNS + 3)).astype("float32")
    assert gemm.column_pieces(b.shape[1]) == 5 and a.size * b.shape[1] >= gemm.MIN_MACS  # split
    width, outs = -(-b.shape[1] // 5), []   # 65 columns a piece, the last 63
    for threads in (1, 2, 3):
        small_splits._kernels.threads = threads
        widths = []
        spy = types.SimpleNamespace(empty=np.empty, result_type=np.result_type,
                                    matmul=lambda x, y, out: widths.append(y.shape[1]) or np.matmul(x, y, out=out))
        outs.append(gemm.wide_matmul(spy, a, b))
        assert sorted(widths) == [b.shape[1] - 4 * width] + [width] * 4
        np.testing.assert_allclose(outs[-1], a @ b, rtol=1e-5, atol=1e-5)
        assert outs[-1].flags.c_contiguous and outs[-1].dtype == np.float32
        np.testing.assert_array_equal(outs[-1], outs[0])


@pytest.mark.parametrize("shape, kernel, stride, padding, bias", [
    ((7, 3, 9, 8), (5, 3, 3, 3), (1, 1), (1, 1, 1, 1), True),      # dx by whole rows (C*kh*kw > F)
    ((7, 2, 9, 8), (9, 2, 3, 2), (2, 1), (0, 2, 1, 0), False),     # dx by col2im
    ((11, 1, 10, 10), (6, 1, 5, 5), (1, 1), (2, 2, 2, 2), True)])  # one input channel
def test_columns_blocks_give_the_same_bits_on_any_thread_count_and_layout(small_splits, monkeypatch, shape,
                                                                           kernel, stride, padding, bias):
    """The columns route in blocks of several images (the last one partly empty), several groups of
    blocks per thread, in one batch chunk or several: the same bits on 1, 2 and 3 threads, in any
    grouping, and with the few-launch layout (one gather, batched GEMMs) that GPUs and the strict
    backend use. (Chunks, fixed by the shape and COLUMN_BYTES, order the sum of dW: compared per
    chunking.)"""
    from xpnet.backends.numpy_backend import NumpyBackend
    from xpnet.ops import columns, reference
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape)
    W = rng.standard_normal(kernel)
    b = rng.standard_normal(kernel[0]) if bias else None
    g = columns.Shape(shape, kernel, stride, padding)
    monkeypatch.setattr(columns, "BLOCK_COLUMNS", 2 * g.p)                 # blocks of 2 images
    assert g.blocks(shape[0]) == (-(-shape[0] // 2), 2)
    dy = rng.standard_normal((shape[0], kernel[0], g.ho, g.wo))
    runs = []
    for few, threads, group_bytes, column_bytes in [(False, 1, 1 << 30, 1 << 30), (False, 2, 1, 1 << 30),
                                                    (False, 3, 3 * g.k * 2 * g.p * 8, 1 << 30),
                                                    (False, 2, 1, 5 * g.image_bytes(8)), (True, 1, 1, 1 << 30),
                                                    (True, 1, 1, 5 * g.image_bytes(8))]:
        monkeypatch.setattr(NumpyBackend, "few_launches", few)
        monkeypatch.setattr(columns, "GROUP_BYTES", group_bytes)
        monkeypatch.setattr(columns, "COLUMN_BYTES", column_bytes)
        small_splits._kernels.threads = threads
        y, cache = columns.forward(np, x, W, b, stride, padding)
        cache.update(stride=stride, padding=padding)
        runs.append((column_bytes, (y,) + columns.backward(np, dy, cache, True)))
    monkeypatch.setattr(NumpyBackend, "few_launches", False)
    y_r, cache_r = reference.conv2d_forward(np, x, W, b, stride, padding)
    dx_r, dW_r, _ = reference.conv2d_backward(np, dy, cache_r)
    for chunking, run in runs:
        for got, want in zip(run, (y_r, dx_r, dW_r)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        first = next(r for c, r in runs if c == chunking)
        for a, c in zip(first, run):
            assert np.array_equal(a, c)


def test_columns_half_precision_sums_the_blocks_in_float32(monkeypatch):
    """float16: each block's dW and their sum stay float32 and are rounded once, as one GEMM over
    the batch would; here each image's dW is +-40000 (beyond half of float16's 65504), so summing
    rounded float16 blocks would overflow to inf where the batch's sum is 0."""
    from xpnet.ops import columns
    monkeypatch.setattr(columns, "BLOCK_COLUMNS", 1)                  # one image per block
    x = np.ones((4, 1, 3, 3), dtype=np.float16)
    W = np.ones((1, 1, 3, 3), dtype=np.float16)
    dy = np.array([40000, 40000, -40000, -40000], dtype=np.float16).reshape(4, 1, 1, 1)
    y, cache = columns.forward(np, x, W, None, (1, 1), (0, 0, 0, 0))
    assert columns.Shape(x.shape, W.shape, (1, 1), (0, 0, 0, 0)).blocks(4) == (4, 1)
    cache.update(stride=(1, 1), padding=(0, 0, 0, 0))
    dx, dW = columns.backward(np, dy, cache, True)
    assert y.dtype == dW.dtype == dx.dtype == np.float16
    np.testing.assert_array_equal(dW, np.zeros((1, 1, 3, 3), np.float16))
    np.testing.assert_array_equal(dx, np.broadcast_to(dy, x.shape))


def _spectral_products_of_z_whole(backend, seed, dtype):
    """(S, K, DY, [Y, G, DX]): a spectrum S (bins, 2N, C), kernel spectrum K and output gradient
    DY, and the per-bin products made with the real form Z whole, as a GPU makes them."""
    from xpnet.backends.base import Backend
    rng = np.random.default_rng(seed)
    bins, n, c, f = 23, 6, 5, 7
    S = rng.standard_normal((bins, 2 * n, c)).astype(dtype)
    K = rng.standard_normal((bins, 2 * c, f)).astype(dtype)
    DY = rng.standard_normal((bins, 2 * n, f)).astype(dtype)
    Z = Backend.spectral_matrices(backend, S.reshape(bins, 2, n, c)[:, ::-1].transpose(1, 0, 2, 3))
    Q = np.matmul(DY, K.transpose(0, 2, 1))
    return S, K, DY, [np.matmul(Z, K), np.matmul(Z.transpose(0, 2, 1), DY),
                      np.concatenate([Q[:, :n, c:] - Q[:, n:, :c], Q[:, :n, :c] + Q[:, n:, c:]], axis=1)]


@pytest.mark.parametrize("compiled", [0, 1])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("need_dx", [True, False])
def test_spectral_chunks_of_z_give_the_bits_of_z_whole(small_splits, monkeypatch, dtype, need_dx, compiled):
    """On the CPU the spectral route builds the real form Z chunk by chunk of bins (forward: Y = Z K;
    backward: G = Z^T DY beside dX's Q = DY K^T) instead of once whole, as a GPU does: the same
    bits as the products of Z whole, with chunks that do not divide the bins, on 1-3 threads, with
    NumPy's passes and with the compiled calls (where numba runs: tests/test_compiled_products.py)."""
    from xpnet.ops import spectral
    monkeypatch.setattr(spectral, "COMPILED_PRODUCTS", compiled)
    backend = small_splits
    S, K, DY, want = _spectral_products_of_z_whole(backend, 3, dtype)
    n, c = S.shape[1] // 2, S.shape[2]
    monkeypatch.setattr(spectral, "Z_CHUNK_BYTES", 4 * (2 * n) * (2 * c) * S.itemsize)  # 4 bins a chunk
    assert spectral._z_chunks(S) == (4, 6)
    for threads in (1, 2, 3):
        backend._kernels.threads = threads
        G, DX = spectral._cpu_backward_products(np, S, DY, K, need_dx)
        got = [spectral._cpu_forward_product(np, S, K), G] + ([DX] if need_dx else [])
        assert DX is None or need_dx
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("compiled", [0, 1])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("need_dx", [True, False])
def test_three_multiply_products_give_the_same_bits_on_any_thread_count_and_chunking(small_splits, monkeypatch,
                                                                                     dtype, need_dx, compiled):
    """From GAUSS_MIN_BATCH images the CPU's per-bin products take three real GEMMs (Gauss): the
    same bits on 1-3 threads and in chunks that do or do not divide the bins, the numbers of the
    real form Z whole (four GEMMs, what GPUs keep) to rounding, and not its bits (the three-GEMM
    path really ran); one image under the threshold, the bits of Z whole again. With NumPy's
    passes and with the compiled calls (where numba runs)."""
    from xpnet.ops import spectral
    monkeypatch.setattr(spectral, "COMPILED_PRODUCTS", compiled)
    backend = small_splits
    S, K, DY, whole = _spectral_products_of_z_whole(backend, 4, dtype)
    bins, n, c = S.shape[0], S.shape[1] // 2, S.shape[2]
    whole = whole[:3 if need_dx else 2]

    def products(threads):
        backend._kernels.threads = threads
        G, DX = spectral._cpu_backward_products(np, S, DY, K, need_dx)
        return [spectral._cpu_forward_product(np, S, K), G] + ([DX] if need_dx else [])

    monkeypatch.setattr(spectral, "GAUSS_MIN_BATCH", n)
    runs = []
    for chunk_bins in (4, bins):
        monkeypatch.setattr(spectral, "Z_CHUNK_BYTES", chunk_bins * (2 * n) * (2 * c) * S.itemsize)
        runs += [products(threads) for threads in (1, 2, 3)]
    tolerance = 1e-12 if dtype == "float64" else 1e-5
    for run in runs:
        for got, first, want in zip(run, runs[0], whole):
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, first)
            assert np.abs(got - want).max() < tolerance * np.abs(want).max()
    assert not any(np.array_equal(got, want) for got, want in zip(runs[0], whole))
    monkeypatch.setattr(spectral, "GAUSS_MIN_BATCH", n + 1)
    for got, want in zip(products(2), whole):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("gauss_from", [1, 10 ** 9])
def test_the_cpu_products_are_array_agnostic(monkeypatch, gauss_from):
    """The CPU's chunked products (both forms) written against ``xp``: run on the strict backend's
    arrays (which refuse NumPy calls), the same bits as on NumPy's. Nothing else runs them there:
    the strict backend, like a GPU, keeps Z whole."""
    from xpnet.ops import spectral
    strict = get_backend("strict")
    rng = np.random.default_rng(2)
    bins, n, c, f = 5, 4, 3, 2
    S, K, DY = (rng.standard_normal(s) for s in ((bins, 2 * n, c), (bins, 2 * c, f), (bins, 2 * n, f)))
    monkeypatch.setattr(spectral, "GAUSS_MIN_BATCH", gauss_from)
    want = [spectral._cpu_forward_product(np, S, K), *spectral._cpu_backward_products(np, S, DY, K, True)]
    xs = [strict.asarray(a) for a in (S, K, DY)]
    got = [spectral._cpu_forward_product(strict.xp, xs[0], xs[1]),
           *spectral._cpu_backward_products(strict.xp, xs[0], xs[2], xs[1], True)]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(strict.to_numpy(a), b)
