"""Max pooling with stride == pool on the NumPy backend stores each window's winning offset in
forward (xpnet/ops/pooling.py, _winners_forward) instead of finding it again from (x, y) in
backward. It must give the bits of the path it replaced, which the strict backend still runs (the
same xp code the NumPy backend ran before): outputs and gradients compared byte for byte, with
ties, -0.0 beside 0.0, NaN and infinities in x and in dy, all-negative windows, odd sizes whose
last rows/columns no window covers, float16/32/64, and small chunks split over several threads."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, strategies as st

import xpnet.backends.numpy_kernels as nk
from xpnet.backends import get_backend
from xpnet.ops import pooling, reference as ref

from .helpers import fuzz_settings

SETTINGS = fuzz_settings(max_examples=60, deadline=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Chunks of a few planes, split over 3 threads even for small arrays (a test may set 1)."""
    monkeypatch.setattr(pooling, "CHUNK_BYTES", 64)
    monkeypatch.setattr(nk, "MIN_ELEMENTS", 1)
    monkeypatch.setattr(nk, "ADAPTIVE", False)   # every pass through the pool, gain or not
    backend = get_backend("numpy")
    kept = backend.threads
    backend.set_threads(3)
    yield backend
    backend.set_threads(kept)


def special_values(rng, shape, dtype, negative=False):
    """Rounded normals (ties) with -0.0, 0.0, NaN and +-inf sprinkled in."""
    a = np.round(rng.standard_normal(shape), 1)
    r = rng.random(shape)
    a[r < 0.05] = np.nan
    a[(r >= 0.05) & (r < 0.12)] = -0.0
    a[(r >= 0.12) & (r < 0.17)] = 0.0
    a[(r >= 0.17) & (r < 0.19)] = -np.inf
    a[(r >= 0.19) & (r < 0.20)] = np.inf
    if negative:
        a = -np.abs(a)
    return a.astype(dtype)


def both_paths(x, dy, pool):
    """(y, dx) of the NumPy backend's winners path and of the strict backend's xp path."""
    out = []
    for name in ("numpy", "strict"):
        backend = get_backend(name)
        y, cache = pooling.maxpool2d_forward(backend.xp, backend.asarray(x), pool, pool)
        dx = pooling.maxpool2d_backward(backend.xp, backend.asarray(dy), cache)
        out.append((backend.to_numpy(y), backend.to_numpy(dx)))
    return out


@SETTINGS
@given(ph=st.integers(1, 3), pw=st.integers(1, 3), n=st.integers(1, 3), c=st.integers(1, 4),
       extra_h=st.integers(0, 7), extra_w=st.integers(0, 7), dtype=st.sampled_from(["float16", "float32", "float64"]),
       negative=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_winners_path_gives_the_bits_of_the_xp_path(tiny_chunks, ph, pw, n, c, extra_h, extra_w, dtype,
                                                    negative, seed):
    rng = np.random.default_rng(seed)
    x = special_values(rng, (n, c, ph + extra_h, pw + extra_w), dtype, negative)
    dy = special_values(rng, (n, c, (ph + extra_h) // ph, (pw + extra_w) // pw), dtype)
    # 3 threads give each of these at most 12 planes a pool piece of its own (one chunk a piece);
    # 1 thread runs them in one part, in several chunks of CHUNK_BYTES (the last one shorter)
    for threads in (3, 1):
        tiny_chunks.set_threads(threads)
        (y, dx), (y_s, dx_s) = both_paths(x, dy, (ph, pw))
        assert y.dtype == y_s.dtype and dx.dtype == dx_s.dtype and dx.shape == x.shape
        assert y.tobytes() == y_s.tobytes()
        assert dx.tobytes() == dx_s.tobytes()


def test_winners_path_matches_the_reference_and_frees_the_input():
    """The first maximum takes the gradient (here at a later offset than a NaN-free fold would
    keep: NaN at offset 3 after a 5.0), and the cache keeps a uint8 index, not x."""
    rng = np.random.default_rng(3)
    x = np.round(rng.standard_normal((4, 3, 9, 8)), 1)
    x[0, 0, 0, :2], x[0, 0, 1, :2] = [5.0, 1.0], [2.0, np.nan]   # first NaN at the window's offset 3
    x[1, 1, 2:4, 2:4] = 7.0                                       # a four-way tie: offset 0 wins
    x[2, 2] = -np.abs(x[2, 2])                                    # all-negative windows
    y, cache = pooling.maxpool2d_forward(np, x, (2, 2), (2, 2))
    assert isinstance(cache[0], pooling.Winners) and cache[0].index.dtype == np.uint8
    assert cache[0].index[0, 0, 0, 0] == 3 and cache[0].index[1, 1, 1, 1] == 0
    dy = rng.standard_normal(y.shape)
    dx = pooling.maxpool2d_backward(np, dy, cache)
    y_r, cache_r = ref.maxpool2d_forward(np, x, (2, 2), (2, 2))
    np.testing.assert_array_equal(y, y_r)
    np.testing.assert_array_equal(dx, ref.maxpool2d_backward(np, dy, cache_r))
    assert dx[0, 0, 1, 1] == dy[0, 0, 0, 0] and dx[1, 1, 2, 2] == dy[1, 1, 1, 1]


def test_large_windows_use_a_wider_index():
    x = np.random.default_rng(0).standard_normal((1, 2, 17, 17)).astype(np.float32)
    y, cache = pooling.maxpool2d_forward(np, x, (17, 17), (17, 17))
    assert cache[0].index.dtype == np.int32
    dx = pooling.maxpool2d_backward(np, np.ones(y.shape, np.float32), cache)
    flat = x.reshape(2, -1)
    np.testing.assert_array_equal(dx.reshape(2, -1).argmax(axis=1), flat.argmax(axis=1))
    assert dx.sum() == 2.0
