"""ReLU then Dropout in a Sequential runs as one pass each way on the CPU (xpnet/model.py,
_link_relu_dropout; backend.relu_dropout and relu_dropout_grad). Outputs, input gradients, weight
gradients and a whole fit() must be bit for bit those of the two layers apart; in evaluation the
ReLU runs as before; each layer keeps its public behaviour."""
import numpy as np
import pytest

import xpnet
from xpnet.graph import Input, Model
from xpnet.layers import BatchNorm, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU

from .helpers import assert_fits_alike
from .test_pool_winners import special_values
from .test_relu_pool import forward_backward

# NumPy's errstate is per thread: a worker's inf * 0 warns even inside the test's errstate
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


def unlink(model):
    """The layers apart: each ReLU runs itself or in its pooling, each Dropout only drops."""
    for layer in model.layers:
        if isinstance(layer, (ReLU, MaxPool2D)):
            layer.dropout_after = None
    return model


def cnn(backend, dtype="float32", seed=3, filters=4):
    """conv, ReLU, Dropout (planes on to the next conv on the CPU), conv, BatchNorm, ReLU,
    pooling (which applies the ReLU), Dropout, dense, ReLU, Dropout, dense: on the NumPy backend
    three links, the second one the pooling's."""
    return xpnet.Sequential([Conv2D(filters, 3, padding=1), ReLU(), Dropout(0.3),
                             Conv2D(filters, 3, use_bias=False), BatchNorm(), ReLU(), MaxPool2D(2), Dropout(0.25),
                             Flatten(), Dense(6), ReLU(), Dropout(0.5), Dense(3)],
                            input_shape=(2, 16, 16), device=backend, dtype=dtype, seed=seed)


def test_which_relus_are_linked(backend):
    m = xpnet.Sequential([Conv2D(3, 3, padding="same"), ReLU(), Dropout(0.2),   # linked (numpy)
                          BatchNorm(), ReLU(), Dropout(0.2),                      # linked (numpy)
                          ReLU(), Dropout(0.0),                                   # rate 0: nothing to fuse
                          ReLU(), MaxPool2D(2), Dropout(0.2),                     # the pooling takes it
                          Dropout(0.2), ReLU(), Flatten(), Dense(2), ReLU()],
                         input_shape=(1, 12, 12), device=backend)
    links = [getattr(layer, "dropout_after", None) for layer in m.layers]
    assert links[9] is (m.layers[10] if backend.name == "numpy" else None)   # the pooling's ReLU
    cpu = not backend.few_launches   # the NumPy backend; strict and CuPy count launches
    assert cpu == (backend.name == "numpy")
    fused_into_conv = m.layers[0].relu_after is m.layers[1]
    assert fused_into_conv == backend.few_launches
    assert links[1] is (m.layers[2] if cpu else None)
    assert links[4] is (m.layers[5] if cpu else None)
    assert links[6] is None and links[8] is None and links[12] is None and links[15] is None


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_step_gives_the_bits_of_the_layers_apart(backend, dtype, threads):
    """Special values (NaN, +-inf, -0.0) in x and in the gradient; the first block is large enough
    for the compiled one-pass kernels (backends/compiled.py) and, on the NumPy backend, hands planes
    on to the next convolution (model._link_planes)."""
    if threads == 2 and not hasattr(backend, "set_threads"):
        pytest.skip("one thread only on this backend")
    r = np.random.default_rng(5)
    x = special_values(r, (64, 2, 16, 16), dtype)
    g = special_values(r, (64, 3), dtype)
    outs = []
    for linked in (True, False):
        m = cnn(backend, dtype, filters=24)   # 64 x 24 x 16 x 16 and 64 x 24 x 7 x 7 values: the kernels' sizes
        if hasattr(backend, "set_threads"):
            backend.set_threads(threads)
        if not linked:
            unlink(m)
        with np.errstate(all="ignore"):
            outs.append(forward_backward(m, x, g))
    if hasattr(backend, "set_threads"):
        backend.set_threads(1)
    assert outs[0] == outs[1]


def test_the_link_runs_in_training_only(backend, monkeypatch):
    """The one-pass kernels run for each linked pair in a training step (a link that was never
    taken would pass the bit tests above); in evaluation the ReLU runs itself and Dropout is the
    identity."""
    m = cnn(backend)
    calls = {"relu_dropout": 0, "relu_dropout_grad": 0}
    for name in calls:
        real = getattr(backend, name)
        monkeypatch.setattr(backend, name, lambda *a, _r=real, _n=name: calls.__setitem__(_n, calls[_n] + 1) or _r(*a))
    x = np.random.default_rng(1).standard_normal((4, 2, 16, 16)).astype(np.float32)
    g = np.ones((4, 3), dtype=np.float32)
    forward_backward(m, x, g)
    pairs = 3 if backend.name == "numpy" else 0   # strict: the first ReLU is fused into its conv
    assert calls == {"relu_dropout": pairs, "relu_dropout_grad": pairs}
    evaluated = forward_backward(cnn(backend), x, g, training=False)   # BatchNorm's statistics as built
    assert calls == {"relu_dropout": pairs, "relu_dropout_grad": pairs}
    assert evaluated == forward_backward(unlink(cnn(backend)), x, g, training=False)


def test_fit_is_bit_identical(backend):
    assert_fits_alike(cnn(backend), unlink(cnn(backend)), (2, 16, 16), samples=24)


def test_float64_gradients_match_finite_differences():
    """In training, the Dropouts' masks held fixed (gradcheck_model resets their generators before
    every forward)."""
    from .helpers import gradcheck_model
    m = cnn("numpy", dtype="float64")
    assert [getattr(layer, "dropout_after", None) for layer in m.layers] == \
        [None, m.layers[2]] + [None] * 4 + [m.layers[7]] + [None] * 3 + [m.layers[11]] + [None] * 2
    x = np.random.default_rng(1).standard_normal((3, 2, 16, 16))
    assert gradcheck_model(m, x, max_entries=12) < 1e-6


def test_the_layers_keep_their_public_behaviour(backend, tmp_path):
    m = cnn(backend)
    relu, drop = m.layers[10], m.layers[11]
    assert relu.dropout_after is (drop if backend.name == "numpy" else None)   # strict: fused into the dense
    assert m.layers[6].dropout_after is (m.layers[7] if backend.name == "numpy" else None)
    xb = backend.asarray(np.array([[-1.0, 2.0, 3.0, -4.0]], dtype=np.float32))
    assert backend.to_numpy(relu.forward(xb)).tolist() == [[0.0, 2.0, 3.0, 0.0]]   # its own ReLU
    assert backend.to_numpy(drop.forward(xb)).tolist() == [[-1.0, 2.0, 3.0, -4.0]]  # identity
    assert backend.to_numpy(drop.forward(xb, relu=True)).tolist() == [[0.0, 2.0, 3.0, 0.0]]
    y = backend.to_numpy(drop.forward(xb - 1, training=True, relu=True))   # relu(x - 1) dropped, scaled
    kept, want = backend.to_numpy(drop.keep), np.float32([[0, 1, 2, 0]])
    assert y.tolist() == np.where(kept, want * np.float32(2), 0).tolist()   # rate 0.5
    assert backend.to_numpy(drop.backward(backend.asarray(np.ones((1, 4), np.float32)))).tolist() == \
        np.where(kept & (want > 0), np.float32(2), 0).tolist()
    plain = unlink(cnn(backend))
    assert m.get_config() == plain.get_config()
    assert m.summary(print_fn=None) == plain.summary(print_fn=None)
    path = m.save(str(tmp_path / "m.npz"))
    loaded = xpnet.load_model(path, device=backend.name)
    assert loaded.layers[10].dropout_after is (loaded.layers[11] if backend.name == "numpy" else None)
    assert loaded.layers[6].dropout_after is (loaded.layers[7] if backend.name == "numpy" else None)
    x = np.random.default_rng(4).standard_normal((2, 2, 16, 16)).astype(np.float32)
    a = backend.to_numpy(m.forward(backend.asarray(x)))
    assert a.tobytes() == backend.to_numpy(loaded.forward(backend.asarray(x))).tobytes()


def test_a_functional_model_runs_the_layers_in_their_order(backend):
    """The functional Model has no link: ReLU and Dropout run as they are, same values."""
    seq = cnn(backend)
    inp = Input((2, 16, 16))
    h = inp
    for layer in [Conv2D(4, 3, padding=1), ReLU(), Dropout(0.3), Conv2D(4, 3, use_bias=False), BatchNorm(),
                  ReLU(), MaxPool2D(2), Dropout(0.25), Flatten(), Dense(6), ReLU(), Dropout(0.5), Dense(3)]:
        h = layer(h)
    fun = Model(inp, h, device=backend, seed=3)
    fun.set_weights(seq.get_weights())
    assert all(getattr(layer, "dropout_after", None) is None for layer in fun.layers)
    x = np.random.default_rng(6).standard_normal((3, 2, 16, 16)).astype(np.float32)
    g = np.random.default_rng(7).standard_normal((3, 3)).astype(np.float32)
    a, b = forward_backward(seq, x, g, training=False), forward_backward(fun, x, g, training=False)
    assert a[0] == b[0] and a[1] is not None and a[1] == b[1] and a[2] == b[2]


def test_a_convolution_that_pools_and_the_reference_ops_leave_the_dropout_alone(backend):
    """A convolution on the columns route that runs its ReLU and pooling in one pass
    (ops/conv_pool.py) leaves nothing for the Dropout after the pooling to apply; with
    ops.use("reference") the layers run in their own order. The bits of the layers apart, either
    way."""
    from xpnet import ops

    def model():
        return xpnet.Sequential([Conv2D(4, 3), ReLU(), MaxPool2D(2), Dropout(0.3), Flatten(), Dense(3)],
                                input_shape=(1, 12, 12), device=backend, seed=4)

    x = np.random.default_rng(2).standard_normal((6, 1, 12, 12)).astype(np.float32)
    g = np.random.default_rng(3).standard_normal((6, 3)).astype(np.float32)
    m = model()
    assert m.layers[2].dropout_after is (m.layers[3] if backend.name == "numpy" else None)
    linked = forward_backward(m, x, g)
    assert m.layers[3].relu_mask is None   # the convolution's pass applied the ReLU
    assert linked == forward_backward(unlink(model()), x, g)
    try:
        ops.use("reference")
        m = model()
        linked = forward_backward(m, x, g)
        assert m.layers[3].relu_mask is None and m.layers[2].relu_mask is None   # the ReLU ran itself
        assert linked == forward_backward(unlink(model()), x, g)
    finally:
        ops.use("fast")
