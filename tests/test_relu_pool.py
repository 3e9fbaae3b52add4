"""ReLU then MaxPool2D (strides == pool_size) in a Sequential runs as pooling then ReLU on the CPU
backends (xpnet/model.py, _link_relu_pool): a quarter of the ReLU's elements for 2x2 windows. The
outputs, input gradients, weight gradients and a whole fit() must be bit for bit those of the two
layers in their own order; each layer keeps its public behaviour."""
import numpy as np
import pytest

import xpnet
from xpnet import ops
from xpnet.errors import ConfigError
from xpnet.backends import strict_backend as sb
from xpnet.graph import Input, Model
from xpnet.layers import AvgPool2D, BatchNorm, Conv2D, Dense, Flatten, MaxPool2D, ReLU

from .test_pool_winners import special_values


def unlink(model):
    """The layers apart, in their own order: no ReLU run by the pooling after it, and no
    convolution running its ReLU and pooling in one pass (ops/conv_pool.py), which would apply the
    ReLU after the pooling too."""
    for layer in model.layers:
        if isinstance(layer, ReLU):
            layer.pool_after = None
        if isinstance(layer, Conv2D):
            layer.pool_link, layer.planes_out = None, False
    return model


def forward_backward(model, x, g, training=True):
    b = model.backend
    out = model.forward(b.asarray(x), training=training)
    dx = model.backward(b.asarray(g))
    grads = {k: b.to_numpy(v).tobytes() for k, v in model.gradients.items()}
    return b.to_numpy(out).tobytes(), None if dx is None else b.to_numpy(dx).tobytes(), grads


def cnn(backend, dtype="float32", seed=2):
    return xpnet.Sequential([Conv2D(4, 3), ReLU(), MaxPool2D(2),                      # 8x8 -> 6 -> 3
                             Conv2D(5, 2, use_bias=False), BatchNorm(), ReLU(), MaxPool2D(2, padding="same"),
                             Flatten(), Dense(6), ReLU(), Dense(3)],
                            input_shape=(2, 8, 8), device=backend, dtype=dtype, seed=seed)


def test_which_relus_are_linked(backend):
    m = xpnet.Sequential([Conv2D(3, 3, padding="same"), ReLU(), MaxPool2D(2),       # linked (CPU)
                          BatchNorm(), ReLU(), MaxPool2D(2, padding="same"),          # linked
                          ReLU(), MaxPool2D(3, strides=2),                             # overlapping
                          ReLU(), AvgPool2D(1), ReLU(), Flatten(), Dense(2), ReLU()],
                         input_shape=(1, 12, 12), device=backend)
    links = [getattr(layer, "pool_after", None) for layer in m.layers]
    fused_into_conv = m.layers[0].relu_after is m.layers[1]   # GPU-like backends: bias_relu
    swap = backend.pool_before_relu                            # the CPU backends; not CuPy
    assert swap == (backend.name in ("numpy", "strict"))
    assert links[1] is (m.layers[2] if swap and not fused_into_conv else None)
    assert links[4] is (m.layers[5] if swap else None)
    assert links[6] is None and links[8] is None and links[10] is None and links[13] is None
    assert fused_into_conv == backend.few_launches


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("pool", [(2, 2), (3, 2), (1, 1)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pool_then_relu_gives_the_bits_of_relu_then_pool(backend, padding, pool, dtype):
    """Ties, -0.0/0.0, NaN and +-inf in x and in the gradient, all-negative windows, sizes the
    windows do not cover."""
    outs = []
    for linked in (True, False):
        m = xpnet.Sequential([ReLU(), MaxPool2D(pool, padding=padding)], input_shape=(3, 7, 9),
                             device=backend, dtype=dtype)
        assert (m.layers[0].pool_after is m.layers[1]) == backend.pool_before_relu
        if not linked:
            unlink(m)
        r = np.random.default_rng(5)
        x = special_values(r, (4, 3, 7, 9), dtype)
        x[1] = -np.abs(x[1])
        g = special_values(r, (4,) + m.output_shape, dtype)
        outs.append(forward_backward(m, x, g))
    assert outs[0] == outs[1]


def test_a_model_step_and_fit_are_bit_identical(backend):
    rng = np.random.default_rng(0)
    x = np.round(rng.standard_normal((16, 2, 8, 8)), 1).astype(np.float32)  # ties in the windows
    x[:4, :, :4, :4] = 0.0                                                     # all-zero windows
    g = rng.standard_normal((16, 3)).astype(np.float32)
    linked, plain = cnn(backend), unlink(cnn(backend))
    assert any(getattr(layer, "pool_after", None) for layer in linked.layers) == backend.pool_before_relu
    assert forward_backward(linked, x, g) == forward_backward(plain, x, g)
    y = rng.integers(0, 3, 16)
    for m in (linked, plain):
        m.compile(loss="cross_entropy", optimizer="adam")
        m.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for a, b in zip(linked.get_weights(), plain.get_weights()):
        assert a.tobytes() == b.tobytes()


def test_float64_gradients_match_finite_differences():
    from .helpers import gradcheck_model
    m = cnn("numpy", dtype="float64")
    assert m.layers[1].pool_after is m.layers[2]
    x = np.random.default_rng(1).standard_normal((3, 2, 8, 8))
    assert gradcheck_model(m, x, max_entries=12) < 1e-6


def test_the_layers_keep_their_public_behaviour(backend, tmp_path):
    m = cnn(backend)
    relu, pool = m.layers[1], m.layers[2]
    assert relu.pool_after is (pool if backend.name == "numpy" else None)   # strict: fused into the conv
    xb = backend.asarray(np.array([[[[-1.0, 2.0], [3.0, -4.0]]]], dtype=np.float32))
    assert backend.to_numpy(relu.forward(xb)).tolist() == [[[[0.0, 2.0], [3.0, 0.0]]]]   # its own ReLU
    assert backend.to_numpy(pool.forward(xb)).tolist() == [[[[3.0]]]]                   # no ReLU
    assert backend.to_numpy(pool.forward(-xb, relu=True)).tolist() == [[[[4.0]]]]
    # a negative maximum tells the two apart (a pooling that always applied the ReLU passed the above)
    assert backend.to_numpy(pool.forward(xb - 5)).tolist() == [[[[-2.0]]]]
    assert backend.to_numpy(pool.forward(xb - 5, relu=True)).tolist() == [[[[0.0]]]]
    assert [type(layer).__name__ for layer in m.layers][:3] == ["Conv2D", "ReLU", "MaxPool2D"]
    plain = unlink(cnn(backend))
    assert m.get_config() == plain.get_config()
    assert m.summary(print_fn=None) == plain.summary(print_fn=None)
    path = m.save(str(tmp_path / "m.npz"))
    loaded = xpnet.load_model(path, device=backend.name)
    assert loaded.layers[1].pool_after is (loaded.layers[2] if backend.name == "numpy" else None)
    x = np.random.default_rng(4).standard_normal((2, 2, 8, 8)).astype(np.float32)
    a = backend.to_numpy(m.forward(backend.asarray(x)))
    assert a.tobytes() == backend.to_numpy(loaded.forward(backend.asarray(x))).tobytes()
    assert a.tobytes() == backend.to_numpy(plain.forward(backend.asarray(x))).tobytes()
    with pytest.raises(ConfigError, match="strides equal to pool_size"):
        MaxPool2D(3, strides=2).forward(xb, relu=True)


def test_a_functional_model_runs_the_layers_in_their_order(backend):
    """The functional Model has no link: ReLU and MaxPool2D run as they are, same values."""
    seq = cnn(backend)
    inp = Input((2, 8, 8))
    h = inp
    for layer in [Conv2D(4, 3), ReLU(), MaxPool2D(2), Conv2D(5, 2, use_bias=False), BatchNorm(), ReLU(),
                  MaxPool2D(2, padding="same"), Flatten(), Dense(6), ReLU(), Dense(3)]:
        h = layer(h)
    fun = Model(inp, h, device=backend, seed=2)
    fun.set_weights(seq.get_weights())
    assert all(getattr(layer, "pool_after", None) is None for layer in fun.layers)
    x = np.random.default_rng(6).standard_normal((3, 2, 8, 8)).astype(np.float32)
    g = np.random.default_rng(7).standard_normal((3, 3)).astype(np.float32)
    a, b = forward_backward(seq, x, g), forward_backward(fun, x, g)
    assert a[0] == b[0]
    assert a[1] is not None and a[1] == b[1]   # the input gradients too (unchecked, a wrong one passed)
    assert a[2] == b[2]


def test_reference_ops_run_the_relu_itself(backend, monkeypatch):
    """With ops.use("reference") the layers run in their own order (the reference pooling's
    gradient adds to 0.0, which would turn a -0.0 into 0.0)."""
    m = cnn(backend)
    x = np.random.default_rng(8).standard_normal((2, 2, 8, 8)).astype(np.float32)
    g = np.ones((2, 3), dtype=np.float32)
    try:
        ops.use("reference")
        calls = []
        relu = m.layers[5]
        original = relu.forward
        monkeypatch.setattr(relu, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
        forward_backward(m, x, g)
        assert calls == [1] and m.layers[6].relu_mask is None
    finally:
        ops.use("fast")


def test_no_sync_and_no_extra_launch_on_the_strict_backend():
    """Linked: the ReLU's two launches (relu_forward, its mask product) run on the pooled cells,
    no more of them, and nothing syncs."""
    calls = []
    for linked in (True, False):
        m = cnn("strict")
        assert (m.layers[5].pool_after is m.layers[6]) and m.layers[1].pool_after is None
        if not linked:
            unlink(m)
        x = np.random.default_rng(9).standard_normal((4, 2, 8, 8)).astype(np.float32)
        g = np.ones((4, 3), dtype=np.float32)
        forward_backward(m, x, g)
        xb, gb = m.backend.asarray(x), m.backend.asarray(g)
        syncs, before = sb.COUNTERS["syncs"], sb.LAUNCHES["calls"]
        m.forward(xb, training=True)
        m.backward(gb)
        calls.append(sb.LAUNCHES["calls"] - before)
        assert sb.COUNTERS["syncs"] == syncs
    assert calls[0] == calls[1]
