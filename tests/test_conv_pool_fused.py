"""A Conv2D on the columns route whose output goes only to a max pooling (stride == pool, no
padding; directly or through the ReLU that the pooling applies) runs with that pooling in one pass
over cache-sized groups of images on the NumPy backend (xpnet/ops/conv_pool.py; Sequential's
link, model._link_conv_pool). Everything must keep the bits of the layers run apart: outputs,
input gradients, weight and bias gradients, in training and inference, with ties, -0.0, NaN and
infinities, uncovered rows and columns, several batch chunks and groups, on 1-3 threads, in
float16 (the op, as mixed precision runs it), float32 and float64, and a whole fit's weights."""
import numpy as np
import pytest

import xpnet
from xpnet import ops
from xpnet.backends import get_backend
from xpnet.backends import numpy_kernels as nk
from xpnet.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from xpnet.ops import autotune, columns, conv_pool, fast, pooling

from .helpers import assert_fits_alike, assert_steps_alike
from .test_pool_winners import special_values


def models(layers_fn, input_shape, dtype="float32", seed=3):
    fused = xpnet.Sequential(layers_fn(), input_shape=input_shape, dtype=dtype, seed=seed)
    apart = xpnet.Sequential(layers_fn(), input_shape=input_shape, dtype=dtype, seed=seed)
    for layer in apart.layers:
        if isinstance(layer, Conv2D):
            layer.pool_link = None
    return fused, apart


def canonical_nan(a):
    """a with every NaN the same NaN: a sum's NaN takes its sign from whichever NaN the additions
    met first (an input's, or 0 * inf's), and the fused pass sums db per image plane first."""
    a = np.array(a, copy=True)
    a[np.isnan(a)] = np.nan
    return a


def same_bias_nan(name, v):
    return canonical_nan(v) if name.endswith(".b") else v


def layers():
    return [Conv2D(9, 3, padding=1), ReLU(), MaxPool2D(2), Dropout(0.25),    # through the ReLU
            Conv2D(12, 1), MaxPool2D((2, 3)),                                 # directly, 2x3 windows
            Conv2D(48, 2), ReLU(), MaxPool2D(3),                              # 3x3, uncovered rows
            Flatten(), Dense(5)]


@pytest.fixture(params=[(1, 1, 0), (1, 40000, 0), (1, 1 << 20, 0), (3, 1, 0), (3, 40000, 0),
                        (1, 40000, 1 << 30), (3, 40000, 1 << 30)])
def threads(request, monkeypatch):
    """One block a group, every pass through the pool on 1 or 3 threads; bands of one group
    (pooling.CHUNK_BYTES 1), of a few (also in the pieces of 3 blocks of 30 images on 3 threads), or
    all of them; or each band one group (conv_pool.BAND_COLUMN_BYTES: its im2col in one call)."""
    count, band, whole = request.param
    monkeypatch.setattr(columns, "GROUP_BYTES", 1)
    monkeypatch.setattr(conv_pool, "BAND_COLUMN_BYTES", whole)
    monkeypatch.setattr(pooling, "CHUNK_BYTES", band)
    monkeypatch.setattr(nk, "MIN_ELEMENTS", 1)
    monkeypatch.setattr(nk, "ADAPTIVE", False)
    backend = get_backend("numpy")
    kept = backend.threads
    backend.set_threads(count)
    yield count
    backend.set_threads(kept)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", [29, 32])   # rows or columns that no window covers in each
@pytest.mark.parametrize("chunk", [None, 1])  # 1: a batch chunk per image, columns built again in backward
def test_models_give_the_same_bits_fused(monkeypatch, threads, dtype, size, chunk):
    monkeypatch.setattr(autotune, "method_for", lambda *args: "columns")
    if chunk is not None:
        monkeypatch.setattr(columns, "COLUMN_BYTES", chunk)
    fused, apart = models(layers, (1, size, size), dtype)
    convs = [layer for layer in fused.layers if isinstance(layer, Conv2D)]
    assert [c.pool_link is not None for c in convs] == [True, True, True]
    assert [c.pool_link[1] for c in convs] == [True, False, True]
    rng = np.random.default_rng(size)
    x = special_values(rng, (30, 1, size, size), dtype)
    x[np.isnan(x) | np.isinf(x)] = 0.5   # NaN/inf through convolutions would fill everything
    # the first layer's output gets ties, zeros, NaN and infinities through its bias
    fused.layers[0].params["b"][:] = apart.layers[0].params["b"][:] = [0, -0.0, np.nan, np.inf, -np.inf, 1, 0, 0, 0]
    grad = lambda shape: special_values(rng, shape, dtype)  # noqa: E731
    assert_steps_alike(fused, apart, x, grad, rng, same_bias_nan)
    # the NaN bias and gradients make every weight and bias gradient NaN, and the biases' NaN are
    # made alike: a db that left out an image passed; again with ties and zeros but nothing else
    for m in (fused, apart):
        m.layers[0].params["b"][:] = [0, -0.0, 0.5, 0.5, -1, 1, 0, 0, 0]
    finite = lambda shape: np.nan_to_num(grad(shape), nan=0.5, posinf=1.5, neginf=-1.5)  # noqa: E731
    assert_steps_alike(fused, apart, x, finite, rng)
    assert all(np.isfinite(v).all() for v in fused.gradients.values())
    assert all(c.cache["method"] == "columns+pool" for c in convs)   # used, not only set
    assert all(c.cache["method"] == "columns" for c in apart.layers if isinstance(c, Conv2D))


def fused_and_apart(x, W, b, relu):
    """The fused op's (y, cache) on x and W (valid 3x3, 2x2 pooling), and the ops apart: the pooled
    output, the pooling's and the convolution's caches, and the ReLU's mask (None without it)."""
    done = fast.conv2d_pool_forward(np, x, W, b, (1, 1), (0, 0, 0, 0), (2, 2), relu)
    assert done is not None and done[1]["method"] == "columns+pool"
    full, conv_cache = fast.conv2d_forward(np, x, W, b, (1, 1), (0, 0, 0, 0), method="columns")
    pooled, pool_cache = fast.maxpool2d_forward(np, full, (2, 2), (2, 2))
    mask = None
    if relu:
        pooled, mask = get_backend("numpy").relu_forward(pooled)
    return done[0], done[1], pooled, pool_cache, conv_cache, mask


@pytest.mark.parametrize("relu", [False, True])
def test_the_op_gives_the_bits_of_the_ops_apart_in_float16(threads, relu):
    rng = np.random.default_rng(7)
    x = special_values(rng, (4, 1, 11, 11), "float16")
    x[np.isnan(x) | np.isinf(x)] = 0.5
    W = (rng.standard_normal((9, 1, 3, 3)) * 0.3).astype(np.float16)
    b = np.array([0, -0.0, np.nan, np.inf, 2, 0, 0, 0, 0], np.float16)
    y, cache, pooled, pool_cache, conv_cache, mask = fused_and_apart(x, W, b, relu)
    assert y.dtype == np.float16 and y.tobytes() == pooled.tobytes()
    dy = special_values(rng, y.shape, "float16")
    # a NaN in dy makes nearly every weight and bias gradient NaN (the biases' NaN made alike): a
    # db that left out an image passed; so a NaN-free dy too
    for dy in (dy, np.nan_to_num(dy, nan=0.5, posinf=1.5, neginf=-1.5)):
        got = fast.conv2d_backward(np, dy, cache, need_dx=True)
        d = dy * mask if relu else dy
        want = fast.conv2d_backward(np, fast.maxpool2d_backward(np, d, pool_cache), conv_cache, need_dx=True)
        assert [a.dtype for a in got] == [np.float16] * 3
        assert [a.tobytes() for a in got[:2]] == [a.tobytes() for a in want[:2]]
        assert canonical_nan(got[2]).tobytes() == canonical_nan(want[2]).tobytes()
    assert np.isfinite(got[1]).all() and np.isfinite(got[2]).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("relu", [False, True])
def test_the_op_gives_the_bits_of_the_ops_apart_with_a_partial_last_block(threads, dtype, relu):
    """29 images in 6 blocks of 5 (10x11 outputs, a column no window covers): the last block has
    4 images and zero columns for the fifth, at the end of a band of its own, of a band's groups or
    of a whole-band group (conv_pool.BAND_COLUMN_BYTES), on 1 or 3 threads; the ops' bits."""
    rng = np.random.default_rng(11)
    x = np.round(rng.standard_normal((29, 2, 12, 13)), 1).astype(dtype)
    W = np.round(rng.standard_normal((5, 2, 3, 3)), 1).astype(dtype)
    b = np.array([0, -0.0, 0.5, 1, -1], dtype)
    assert columns.Shape(x.shape, W.shape, (1, 1), (0, 0, 0, 0)).blocks(29) == (6, 5)   # 30 places
    y, cache, pooled, pool_cache, conv_cache, mask = fused_and_apart(x, W, b, relu)
    assert y.tobytes() == pooled.tobytes()
    assert cache["winners"].index.tobytes() == pool_cache[0].index.tobytes()
    dy = np.round(rng.standard_normal(y.shape), 1).astype(dtype)
    got = fast.conv2d_backward(np, dy, cache, need_dx=True)
    want = fast.conv2d_backward(np, fast.maxpool2d_backward(np, dy * mask if relu else dy, pool_cache),
                                conv_cache, need_dx=True)
    assert [a.tobytes() for a in got] == [a.tobytes() for a in want]


def test_fused_gradients_match_finite_differences():
    m = xpnet.Sequential([Conv2D(9, 3), ReLU(), MaxPool2D(2), Conv2D(36, 2, padding=1), MaxPool2D(2),
                          Flatten(), Dense(3)], input_shape=(1, 9, 9), dtype="float64", seed=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 9, 9))
    m.forward(x, training=True)
    assert [layer.cache["method"] for layer in m.layers if isinstance(layer, Conv2D)] == ["columns+pool"] * 2
    from xpnet.testing import gradcheck_model
    gradcheck_model(m, x, training=True)


def test_which_convolutions_are_fused():
    m = xpnet.Sequential([Conv2D(9, 3), ReLU(), MaxPool2D(2),                       # yes
                          Conv2D(4, 1), MaxPool2D(2),                               # yes, few filters too
                          Conv2D(9, 1), Dropout(0.5), MaxPool2D(2),                 # no: dropout reads it
                          Conv2D(9, 1), MaxPool2D(2, strides=1),                    # no: overlapping windows
                          Conv2D(4, 1), ReLU(), Flatten(), Dense(2)],
                         input_shape=(1, 32, 32))
    convs = [layer for layer in m.layers if isinstance(layer, Conv2D)]
    assert [c.pool_link is not None for c in convs] == [True, True, False, False, False]
    m.forward(np.zeros((2, 1, 32, 32), np.float32))
    assert [c.cache["method"] for c in convs] == ["columns+pool"] * 2 + ["columns"] * 3
    s = xpnet.Sequential([Conv2D(4, 3), ReLU(), MaxPool2D(2)], input_shape=(1, 8, 8), device="strict")
    assert s.layers[0].pool_link is None   # launches cost there (as on a GPU): the layers apart
    assert fast.conv2d_pool_forward(np, np.zeros((1, 1, 34, 34), np.float32), np.zeros((1, 1, 1, 1), np.float32),
                                    None, (1, 1), (0, 0, 0, 0), (17, 17)) is None   # 289 offsets > 256


def test_the_spectral_route_and_the_reference_ops_run_the_layers_apart(monkeypatch):
    m = xpnet.Sequential([Conv2D(25, 5, padding=2), ReLU(), MaxPool2D(2)], input_shape=(1, 12, 12))
    x = np.ones((2, 1, 12, 12), np.float32)
    monkeypatch.setattr(autotune, "method_for", lambda *args: "spectral")
    m.forward(x)
    assert m.layers[0].cache["method"] == "spectral" and m.layers[2].cache is not None   # pooled apart
    monkeypatch.undo()
    m.forward(x)
    assert m.layers[0].cache["method"] == "columns+pool"   # these shapes take columns by themselves
    ops.use("reference")
    try:
        assert m.layers[0].forward_pooled(x) is None
        m.layers[2].cache = None
        m.forward(x)
        assert not isinstance(m.layers[0].cache, dict) and m.layers[2].cache is not None
    finally:
        ops.use("fast")


def test_a_fit_gives_the_same_weights_fused(monkeypatch):
    monkeypatch.setattr(autotune, "method_for", lambda *args: "columns")

    def net():
        return [Conv2D(9, 3), ReLU(), MaxPool2D(2), Conv2D(81, 3, padding=1), ReLU(), MaxPool2D(2),
                Flatten(), Dense(3)]
    fused, apart = models(net, (1, 14, 14))
    assert_fits_alike(fused, apart, (1, 14, 14))
    assert fused.layers[0].cache["method"] == fused.layers[3].cache["method"] == "columns+pool"


def test_bad_gradients_are_refused_by_shape():
    m = xpnet.Sequential([Conv2D(9, 3), MaxPool2D(2)], input_shape=(1, 8, 8))
    m.forward(np.zeros((2, 1, 8, 8), np.float32), training=True)
    assert m.layers[0].cache["method"] == "columns+pool"
    with pytest.raises(xpnet.errors.ShapeError, match=r"expected \(2, 9, 3, 3\)"):
        fast.conv2d_backward(np, np.zeros((2, 9, 6, 6), np.float32), m.layers[0].cache)


def test_a_loaded_pool_lays_the_bands_out_for_one_thread(monkeypatch):
    """While the NumPy backend's pool is loaded (cpu_threads.SplitCheck: every pass on the calling
    thread) conv_pool lays its bands out as for one thread (Backend.split_threads); the bits do not
    depend on it, also when the load comes or goes between the forward and the backward (which
    takes the forward's columns). (With the thread count read as before, the layouts were equal and
    this failed: checked.)"""
    monkeypatch.setattr(pooling, "CHUNK_BYTES", 1 << 20)
    backend = get_backend("numpy")
    check = backend._kernels.check
    kept = backend.threads
    backend.set_threads(3)
    try:
        g = columns.Shape((30, 1, 28, 28), (8, 1, 3, 3), (1, 1), (0, 0, 0, 0))
        monkeypatch.setattr(check, "loaded", False)
        assert backend.split_threads() == 3 and conv_pool._layout(g, 30, 4, backend)[3] == 10
        monkeypatch.setattr(check, "loaded", True)
        assert backend.split_threads() == 1 and conv_pool._layout(g, 30, 4, backend)[3] == 30
        r = np.random.default_rng(8)
        x = r.standard_normal((30, 1, 28, 28)).astype(np.float32)
        W = r.standard_normal((8, 1, 3, 3)).astype(np.float32)
        b = r.standard_normal(8).astype(np.float32)
        results = []
        for forward_loaded, backward_loaded in ((False, False), (True, False), (False, True), (True, True)):
            monkeypatch.setattr(check, "loaded", forward_loaded)
            y, cache = conv_pool.forward(np, x, W, b, (1, 1), (0, 0, 0, 0), (2, 2), True)
            cache.update(stride=(1, 1), padding=(0, 0, 0, 0), has_bias=True)
            monkeypatch.setattr(check, "loaded", backward_loaded)
            dy = np.random.default_rng(9).standard_normal(y.shape).astype(np.float32)
            results.append((y,) + conv_pool.backward(np, dy, cache, True))
        for other in results[1:]:
            for a, c in zip(results[0], other):
                assert a.tobytes() == c.tobytes()
    finally:
        backend.set_threads(kept)
