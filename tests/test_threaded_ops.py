"""The NumPy backend's threaded ops (stacked GEMMs, wide products in column pieces, the plane
transposes, max pooling, the spectral weight gradient) give the same bits on 1, 2 and 3 threads:
a training step's outputs and gradients do not depend on the thread count."""
import numpy as np
import pytest

import xpnet.backends.numpy_kernels as nk
from xpnet.backends import get_backend
from xpnet.ops import fast, gemm


@pytest.fixture
def small_splits(monkeypatch):
    """Split even small arrays, so that the test shapes take every threaded path."""
    monkeypatch.setattr(nk, "MIN_ELEMENTS", 1)
    monkeypatch.setattr(nk, "MIN_MACS", 1)
    monkeypatch.setattr(gemm, "PIECE_COLUMNS", 64)
    monkeypatch.setattr(gemm, "MIN_MACS", 1)
    backend = get_backend("cpu")
    kept = backend._kernels.threads
    yield backend
    backend._kernels.threads = kept


def run_ops(backend, threads, method, dtype):
    backend._kernels.threads = threads
    rng = np.random.default_rng(7)
    x = rng.standard_normal((6, 5, 14, 13)).astype(dtype)
    W = rng.standard_normal((7, 5, 5, 5)).astype(dtype)
    b = rng.standard_normal(7).astype(dtype)
    dy = rng.standard_normal((6, 7, 14, 13)).astype(dtype)
    y, cache = fast.conv2d_forward(np, x, W, b, (1, 1), (2, 2, 2, 2), method=method)
    dx, dW, db = fast.conv2d_backward(np, dy, cache, need_dx=True)
    p, pcache = fast.maxpool2d_forward(np, y, (2, 2), (2, 2))
    dp = fast.maxpool2d_backward(np, rng.standard_normal(p.shape).astype(dtype), pcache)
    q, qcache = fast.maxpool2d_forward(np, y, (3, 3), (2, 2))          # overlapping windows
    dq = fast.maxpool2d_backward(np, rng.standard_normal(q.shape).astype(dtype), qcache)
    return [a for a in (y, dx, dW, db, p, dp, q, dq) if a is not None]


@pytest.mark.parametrize("method", ["spectral", "columns"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ops_give_the_same_bits_on_any_thread_count(small_splits, method, dtype):
    one = run_ops(small_splits, 1, method, dtype)
    for threads in (2, 3):
        for a, b in zip(one, run_ops(small_splits, threads, method, dtype)):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)


def test_wide_matmul_pieces_depend_on_the_shape_only():
    assert gemm.column_pieces(100) == 1 and gemm.column_pieces(10 ** 6) == gemm.MAX_PIECES
    rng = np.random.default_rng(0)
    a = rng.standard_normal((34, 28)).astype("float32")
    b = rng.standard_normal((28, 5 * gemm.PIECE_COLUMNS + 3)).astype("float32")
    out = gemm.wide_matmul(np, a, b)
    np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)
    assert out.flags.c_contiguous and out.dtype == np.float32
