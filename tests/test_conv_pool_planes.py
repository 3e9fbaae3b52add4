"""A Conv2D whose output goes only to a max pooling (stride == pool, no padding) hands it on as the
NCHW view of its spectral route's planes on the NumPy backend (xpnet/model.py, _link_conv_pool;
xpnet/ops/layout.py): the pooling works on planes and sends its gradient back as planes, which the
convolution's backward reads without a transpose. Everything must keep the bits of the NCHW path:
the pooling on its own (ties, -0.0, NaN, infinities, odd sizes, several threads), and whole models'
outputs, input gradients and weight gradients."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import xpnet
from xpnet.backends import get_backend
from xpnet.layers import BatchNorm, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from xpnet.ops import autotune, layout, pooling

from .helpers import assert_fits_alike, assert_steps_alike
from .test_pool_winners import SETTINGS, special_values, tiny_chunks  # noqa: F401  (a fixture)


def as_planes_view(x):
    """x (N, C, H, W) as the NCHW view of a contiguous (H, W, N, C) array."""
    return np.ascontiguousarray(x.transpose(2, 3, 0, 1)).transpose(2, 3, 0, 1)


def test_planes_of_knows_the_views_and_nothing_else():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    v = as_planes_view(x)
    assert layout.planes_of(x) is None and layout.planes_of(x[:, :, ::2]) is None
    assert layout.planes_of(x.transpose(0, 1, 3, 2)) is None
    p = layout.planes_of(v)
    assert p is not None and p.flags.c_contiguous and p.shape == (4, 5, 2, 3)
    # the convolution's backward takes a planes view as it is: the same memory, no transpose
    q = layout.to_planes(np, v)
    assert np.shares_memory(q, v) and np.array_equal(q, x.transpose(2, 3, 0, 1))
    assert not np.shares_memory(layout.to_planes(np, x), x)


@SETTINGS
@given(ph=st.integers(1, 3), pw=st.integers(1, 3), n=st.integers(1, 3), c=st.integers(1, 4),
       extra_h=st.integers(0, 7), extra_w=st.integers(0, 7), dtype=st.sampled_from(["float16", "float32", "float64"]),
       negative=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_pooling_planes_gives_the_bits_of_pooling_nchw(tiny_chunks, ph, pw, n, c, extra_h, extra_w, dtype,  # noqa: F811
                                                       negative, seed):
    rng = np.random.default_rng(seed)
    x = special_values(rng, (n, c, ph + extra_h, pw + extra_w), dtype, negative)
    dy = special_values(rng, (n, c, (ph + extra_h) // ph, (pw + extra_w) // pw), dtype)
    xv = as_planes_view(x)
    y, cache = pooling.maxpool2d_forward(np, x, (ph, pw), (ph, pw))
    yp, cache_p = pooling.maxpool2d_forward(np, xv, (ph, pw), (ph, pw))
    # one image of one channel is contiguous in both layouts: the NCHW path takes it
    assert cache_p[0].planes == (n * c > 1 and layout.planes_of(xv) is not None) and not cache[0].planes
    assert yp.flags.c_contiguous and yp.dtype == y.dtype and yp.tobytes() == y.tobytes()
    dx = pooling.maxpool2d_backward(np, dy, cache)
    dxp = pooling.maxpool2d_backward(np, dy, cache_p)
    # planes in, planes back (the convolution's backward reads them without a transpose), else NCHW
    assert (layout.planes_of(dxp) is not None) == cache_p[0].planes
    assert cache_p[0].planes or dxp.flags.c_contiguous
    assert dxp.shape == dx.shape and np.ascontiguousarray(dxp).tobytes() == dx.tobytes()


def models(layers_fn, input_shape, seed=3):
    """The planes link on and off; the columns route's fused pass (tests/test_conv_pool_fused.py)
    off in both, so that the poolings run as layers of their own."""
    linked = xpnet.Sequential(layers_fn(), input_shape=input_shape, seed=seed)
    plain = xpnet.Sequential(layers_fn(), input_shape=input_shape, seed=seed)
    for model in (linked, plain):
        for layer in model.layers:
            if isinstance(layer, Conv2D):
                layer.pool_link = None
                layer.planes_out = layer.planes_out and model is linked
    return linked, plain


@pytest.mark.parametrize("method", ["spectral", "columns"])   # the columns route ignores the link
@pytest.mark.parametrize("size", [12, 13, 16])   # 13: the last row and column of each pooling uncovered
def test_models_give_the_same_bits_with_the_planes_link(monkeypatch, size, method):
    monkeypatch.setattr(autotune, "method_for", lambda *args: method)   # these small shapes would take columns
    def layers():
        return [Conv2D(6, 5, padding=2), ReLU(), MaxPool2D(2), Dropout(0.25),
                Conv2D(8, 5, padding=2), MaxPool2D(2),                 # no ReLU between
                Conv2D(7, 3), ReLU(), Flatten(), Dense(5)]
    linked, plain = models(layers, (3, size, size))
    convs = [layer for layer in linked.layers if isinstance(layer, Conv2D)]
    assert [c.planes_out for c in convs] == [True, True, False]
    rng = np.random.default_rng(0)
    x = special_values(rng, (6, 3, size, size), "float32")
    x[np.isnan(x) | np.isinf(x)] = 0.5   # NaN/inf through two convolutions would fill everything
    grad = lambda shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    assert_steps_alike(linked, plain, x, grad, rng)
    pools = [layer for layer in linked.layers if isinstance(layer, MaxPool2D)]
    assert all(p.cache[0].planes == (method == "spectral") for p in pools)   # used, not only set
    assert not any(p.cache[0].planes for p in plain.layers if isinstance(p, MaxPool2D))
    assert all(c.cache["method"] == method for c in convs)


def test_which_convolutions_hand_on_planes():
    m = xpnet.Sequential([Conv2D(4, 5, padding=2), ReLU(), MaxPool2D(2),           # yes (the ReLU is the pooling's)
                          Conv2D(4, 5, padding=2), MaxPool2D(2),                    # yes
                          Conv2D(4, 3, padding=1), BatchNorm(), MaxPool2D(2),       # no: BatchNorm reads it
                          Conv2D(4, 2), MaxPool2D(2, padding="same"),               # no: padded pooling (3x3)
                          Conv2D(4, 1), MaxPool2D(2, strides=1),                    # no: overlapping windows
                          Conv2D(4, 1), Flatten(), Dense(2)],
                         input_shape=(1, 32, 32))
    assert [layer.planes_out for layer in m.layers if isinstance(layer, Conv2D)] == \
        [True, True, False, False, False, False]
    for name in ("strict",):   # launches cost there (as on a GPU): NCHW everywhere
        s = xpnet.Sequential([Conv2D(4, 5, padding=2), ReLU(), MaxPool2D(2)], input_shape=(1, 8, 8), device=name)
        assert not s.layers[0].planes_out


def test_a_fit_gives_the_same_weights_with_the_planes_link(monkeypatch):
    monkeypatch.setattr(autotune, "method_for", lambda *args: "spectral")
    def layers():
        return [Conv2D(4, 5, padding=2), ReLU(), MaxPool2D(2), Conv2D(6, 5, padding=2), ReLU(),
                MaxPool2D(2), Flatten(), Dense(3)]
    linked, plain = models(layers, (1, 12, 12))
    assert_fits_alike(linked, plain, (1, 12, 12))
    assert get_backend("cpu").few_launches is False
