"""Every layer: gradients (finite differences, float64), shapes, errors, configs, backend parity."""
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, strategies as st

from xpnet.backends import get_backend
from xpnet.errors import ConfigError, ShapeError
from xpnet.layers import (LAYERS, AvgPool2D, BatchNorm, Conv2D, Dense, Dropout, Flatten, LeakyReLU,
                          LogSoftmax, MaxPool2D, ReLU, Reshape, Sigmoid, Softmax, Tanh)

from .helpers import build, fuzz_settings, gradcheck_model, pool_window_gap, to_np

IMG = (3, 7, 7)


def x_img(rng, n=2, shape=IMG):
    return rng.standard_normal((n,) + shape)


# -- gradients --------------------------------------------------------------------------------------
CONV_VARIANTS = [
    dict(filters=4, kernel_size=3),
    dict(filters=3, kernel_size=3, padding="same"),
    dict(filters=2, kernel_size=(2, 3), strides=2, padding="same"),
    dict(filters=2, kernel_size=(3, 2), strides=(2, 1), padding=(1, 2)),
    dict(filters=2, kernel_size=4, padding=1, use_bias=False),
    dict(filters=2, kernel_size=5, padding="same", kernel_regularizer="l2:0.01"),
]


@pytest.mark.parametrize("kwargs", CONV_VARIANTS, ids=lambda k: ",".join(f"{a}={v}" for a, v in k.items()))
def test_conv2d_gradients(backend, rng, kwargs):
    model = build([Conv2D(**kwargs)], IMG, backend)
    gradcheck_model(model, x_img(rng))


@pytest.mark.parametrize("layer", [
    lambda: MaxPool2D(), lambda: MaxPool2D(3, strides=2), lambda: MaxPool2D((2, 3), padding="same"),
    lambda: AvgPool2D(), lambda: AvgPool2D(3, strides=1), lambda: AvgPool2D((3, 2), strides=2, padding="same"),
], ids=["max2", "max3s2", "max23same", "avg2", "avg3s1", "avg32s2same"])
def test_pool_gradients(backend, rng, layer):
    model = build([Conv2D(2, 2), layer()], IMG, backend)
    gradcheck_model(model, x_img(rng))


@pytest.mark.parametrize("layer", [ReLU, lambda: LeakyReLU(0.2), Tanh, Sigmoid, Softmax, LogSoftmax,
                                   lambda: Softmax(axis=1), lambda: LogSoftmax(axis=-2)],
                         ids=["relu", "leaky", "tanh", "sigmoid", "softmax", "logsoftmax", "softmax1",
                              "logsoftmax-2"])
def test_activation_gradients(backend, rng, layer):
    model = build([Dense(6), Reshape((2, 3)), layer()], (4,), backend)
    gradcheck_model(model, 2.0 * rng.standard_normal((3, 4)))


def test_shape_layer_gradients(backend, rng):
    model = build([Conv2D(2, 3), Flatten(), Dense(6), Reshape((3, -1)), Flatten(), Dense(2)], IMG, backend)
    gradcheck_model(model, x_img(rng))


@pytest.mark.parametrize("training", [True, False])
def test_dropout_gradients(backend, rng, training):
    model = build([Dense(8), Dropout(0.4), Dense(3)], (5,), backend)
    gradcheck_model(model, rng.standard_normal((4, 5)), training=training)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("conv", [False, True])
def test_batchnorm_gradients(backend, rng, training, conv):
    layers = [Conv2D(3, 3), BatchNorm(momentum=0.5)] if conv else [Dense(5), BatchNorm(momentum=0.5)]
    shape = IMG if conv else (4,)
    model = build(layers + [Tanh()], shape, backend)
    x = rng.standard_normal((4,) + shape)
    bn = model.layers[1]
    model.forward(backend.asarray(x), training=True)  # non-trivial running statistics for eval
    bn.params["gamma"][...] = backend.asarray(rng.uniform(0.5, 1.5, bn.params["gamma"].shape))
    bn.params["beta"][...] = backend.asarray(rng.standard_normal(bn.params["beta"].shape))
    gradcheck_model(model, x, training=training)


@fuzz_settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(4, 8), w=st.integers(4, 8),
       k=st.integers(1, 4), s=st.integers(1, 3), pad=st.sampled_from(["valid", "same", 1, (0, 2)]),
       seed=st.integers(0, 2 ** 16))
def test_conv_pool_random_shapes(backend, n, c, h, w, k, s, pad, seed):
    rng = np.random.default_rng(seed)
    model = build([Conv2D(2, k, strides=s, padding=pad), MaxPool2D(2, strides=1, padding="same")],
                  (c, h, w), backend, seed=seed)
    x = rng.standard_normal((n, c, h, w))
    # the maximum has no derivative where a window's two largest values nearly tie: finite
    # differences there cross the kink (seed 622 with a gap of 2e-9 gave 0.33 against 0.35); exact
    # ties (outputs that see only padding, equal to the bias) move together and stay in
    y = to_np(backend, model.layers[0].forward(backend.asarray(x)))
    assume(pool_window_gap(y, model.layers[1]) > 1e-4)
    gradcheck_model(model, x, max_entries=8)


# -- shapes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer,in_shape,out_shape", [
    (lambda: Conv2D(5, 3), (3, 7, 7), (5, 5, 5)),
    (lambda: Conv2D(5, 3, padding="same"), (3, 7, 7), (5, 7, 7)),
    (lambda: Conv2D(5, 3, strides=2, padding="same"), (3, 7, 7), (5, 4, 4)),
    (lambda: Conv2D(5, 3, strides=2), (3, 7, 7), (5, 3, 3)),
    (lambda: Conv2D(5, (1, 3), padding=(2, 0)), (3, 7, 7), (5, 11, 5)),
    (lambda: Conv2D(32, 5, padding="same"), (1, 28, 28), (32, 28, 28)),
    (lambda: MaxPool2D(), (3, 7, 7), (3, 3, 3)),
    (lambda: MaxPool2D(padding="same"), (3, 7, 7), (3, 4, 4)),
    (lambda: AvgPool2D(3, strides=1), (3, 7, 7), (3, 5, 5)),
    (lambda: Flatten(), (3, 7, 7), (147,)),
    (lambda: Reshape((7, -1)), (3, 7, 7), (7, 21)),
    (lambda: BatchNorm(), (3, 7, 7), (3, 7, 7)),
    (lambda: Softmax(), (10,), (10,)),
])
def test_output_shapes(backend, layer, in_shape, out_shape):
    model = build([layer()], in_shape, backend)
    assert model.output_shape == out_shape
    y = model.forward(backend.asarray(np.zeros((2,) + in_shape)), training=True)
    assert tuple(y.shape) == (2,) + out_shape


@pytest.mark.parametrize("size,k,s,pads", [(8, 3, 2, (0, 1)), (7, 4, 1, (1, 2)), (7, 3, 2, (1, 1)),
                                           (5, 1, 3, (0, 0)), (28, 5, 1, (2, 2))])
def test_same_padding_is_tensorflows(backend, size, k, s, pads):
    model = build([Conv2D(1, k, strides=s, padding="same")], (1, size, size), backend)
    assert model.layers[0].pads == pads + pads
    assert model.output_shape[1] == -(-size // s)


def test_layers_keep_float32(backend, rng):
    model = build([Conv2D(2, 3, padding="same"), BatchNorm(), LeakyReLU(), MaxPool2D(), Dropout(0.5),
                   AvgPool2D(1), Flatten(), Dense(4), Sigmoid(), Tanh(), Softmax(), LogSoftmax()],
                  IMG, backend, dtype="float32")
    y = model.forward(backend.asarray(x_img(rng).astype(np.float32)), training=True)
    assert y.dtype == np.float32
    dx = model.backward(backend.xp.ones_like(y))
    assert dx.dtype == np.float32
    # every parameter's gradient and both BatchNorm buffers: over empty dicts all() proves nothing
    assert set(model.gradients) == set(model.parameters) and len(model.parameters) == 6
    assert all(g.dtype == np.float32 for g in model.gradients.values())
    assert len(model.buffers) == 2 and all(b.dtype == np.float32 for b in model.buffers.values())


# -- values -----------------------------------------------------------------------------------------
def test_activation_values(backend):
    x = np.array([[-800.0, -2.0, 0.0, 3.0, 800.0]])
    xb = backend.asarray(x)

    def run(layer):
        return to_np(backend, build([layer], (5,), backend).forward(xb))

    np.testing.assert_allclose(run(LeakyReLU(0.1)), [[-80.0, -0.2, 0.0, 3.0, 800.0]])
    np.testing.assert_allclose(run(Tanh()), np.tanh(x))
    sig = run(Sigmoid())
    assert np.all(np.isfinite(sig))
    np.testing.assert_allclose(sig, [[0.0, 1 / (1 + np.exp(2)), 0.5, 1 / (1 + np.exp(-3)), 1.0]], atol=1e-300)
    soft = run(Softmax())
    np.testing.assert_allclose(soft, [[0, 0, 0, 0, 1]], atol=1e-300)
    logsoft = run(LogSoftmax())
    np.testing.assert_allclose(logsoft, [[-1600.0, -802.0, -800.0, -797.0, 0.0]], rtol=1e-12)
    y = to_np(backend, build([Softmax()], (5,), backend).forward(backend.asarray(np.array([[1.0, 2, 3, 4, 5]]))))
    e = np.exp(np.arange(1.0, 6.0))
    np.testing.assert_allclose(y, [e / e.sum()], rtol=1e-14)


def test_flatten_order_is_row_major(backend):
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float64).reshape(2, 3, 2, 2)
    y = build([Flatten()], (3, 2, 2), backend).forward(backend.asarray(x))
    np.testing.assert_array_equal(to_np(backend, y), x.reshape(2, 12))


def test_dropout_statistics_and_eval_identity(backend):
    model = build([Dropout(0.25)], (400,), backend)
    x = backend.asarray(np.ones((250, 400)))
    y = to_np(backend, model.forward(x, training=True))
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01  # 100,000 draws: the std of the mean is 0.0014
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    assert abs(y.mean() - 1.0) < 0.015
    dx = to_np(backend, model.backward(backend.asarray(np.full((250, 400), 2.0))))
    np.testing.assert_allclose(dx, 2.0 * y)
    y2 = to_np(backend, model.forward(x, training=True))
    assert (y2 != y).any()  # a fresh mask each step
    np.testing.assert_array_equal(to_np(backend, model.forward(x, training=False)), np.ones((250, 400)))
    g = backend.asarray(np.full((250, 400), 3.0))
    np.testing.assert_array_equal(to_np(backend, model.backward(g)), np.full((250, 400), 3.0))


def test_dropout_rate_zero_is_identity(backend, rng):
    x = rng.standard_normal((3, 4))
    y = build([Dropout(0.0)], (4,), backend).forward(backend.asarray(x), training=True)
    np.testing.assert_array_equal(to_np(backend, y), x)


def test_batchnorm_running_stats_and_eval(backend, rng):
    model = build([BatchNorm(momentum=0.9, epsilon=1e-3)], (3, 4, 5), backend)
    bn = model.layers[0]
    x = rng.normal(2.0, 3.0, (6, 3, 4, 5))
    y = to_np(backend, model.forward(backend.asarray(x), training=True))
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    n = 6 * 4 * 5
    np.testing.assert_allclose(to_np(backend, bn.buffers["running_mean"]), 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(to_np(backend, bn.buffers["running_var"]), 0.9 + 0.1 * var * n / (n - 1),
                               rtol=1e-12)
    expected = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-3)
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)
    # eval: the running statistics, not the batch's
    x2 = rng.standard_normal((2, 3, 4, 5))
    # copies: on NumPy to_np hands back the buffers themselves, which an update in place would move too
    rm, rv = (to_np(backend, bn.buffers[k]).copy() for k in ("running_mean", "running_var"))
    y2 = to_np(backend, model.forward(backend.asarray(x2), training=False))
    np.testing.assert_allclose(y2, (x2 - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-3),
                               rtol=1e-12)
    np.testing.assert_array_equal(to_np(backend, bn.buffers["running_mean"]), rm)  # eval leaves them alone


def test_batchnorm_per_feature_after_dense(backend, rng):
    model = build([BatchNorm(momentum=0.0)], (4,), backend)
    x = rng.normal(5.0, 2.0, (8, 4))
    model.forward(backend.asarray(x), training=True)
    bn = model.layers[0]
    assert bn.params["gamma"].shape == (4,) and bn.buffers["running_var"].shape == (4,)
    np.testing.assert_allclose(to_np(backend, bn.buffers["running_mean"]), x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(to_np(backend, bn.buffers["running_var"]), x.var(axis=0, ddof=1), rtol=1e-12)


# -- parameters, regularizers, need_input_grad ------------------------------------------------------
def test_conv2d_params_and_regularizer(backend, rng):
    model = build([Conv2D(4, (3, 2), kernel_regularizer="l2:0.5")], IMG, backend)
    conv = model.layers[0]
    assert conv.params["W"].shape == (4, 3, 3, 2) and conv.params["b"].shape == (4,)
    assert conv.count_params() == 4 * 3 * 3 * 2 + 4
    np.testing.assert_array_equal(to_np(backend, conv.params["b"]), np.zeros(4))
    W = to_np(backend, conv.params["W"])
    limit = np.sqrt(6 / (3 * 6 + 4 * 6))
    assert np.abs(W).max() <= limit and np.abs(W).max() > 0.5 * limit
    assert abs(float(backend.to_numpy(model.regularization_loss())) - 0.5 * (W ** 2).sum()) < 1e-12
    y = model.forward(backend.asarray(x_img(rng)), training=True)
    model.backward(backend.xp.zeros_like(y))
    model.add_regularization_grads()
    np.testing.assert_allclose(to_np(backend, conv.grads["W"]), W, rtol=1e-12)


def test_need_input_grad_off_skips_dx(backend, rng, monkeypatch):
    from xpnet import ops
    model = build([Conv2D(2, 3), BatchNorm(), MaxPool2D(), Flatten(), Dense(3)], IMG, backend)
    x = backend.asarray(x_img(rng))
    g = backend.asarray(rng.standard_normal((2, 3)))
    model.forward(x, training=True)
    model.backward(g)
    reference = {k: to_np(backend, v) for k, v in model.gradients.items()}
    model.layers[0].need_input_grad = False
    asked, real = [], ops.conv2d_backward

    def spy(*args, need_dx=True):
        asked.append(need_dx)
        return real(*args, need_dx=need_dx)

    monkeypatch.setattr(ops, "conv2d_backward", spy)
    model.forward(x, training=True)
    assert model.backward(g) is None
    # the dx itself is skipped, not computed and dropped: a None returned alone could not tell
    assert asked == [False]
    for k, v in model.gradients.items():
        np.testing.assert_allclose(to_np(backend, v), reference[k], rtol=1e-12)


def test_layers_call_the_ops_dispatcher_at_call_time(backend, rng, monkeypatch):
    from xpnet import ops
    calls = []

    def spy(name):
        real = getattr(ops, name)
        return lambda *a, **k: calls.append(name) or real(*a, **k)

    model = build([Conv2D(2, 3), MaxPool2D(), AvgPool2D(1)], IMG, backend)
    # the convolution and pooling apart: their fused pass on the CPU is the fast ops' own
    # (Conv2D.forward_pooled; it runs the layers apart under the reference ops,
    # tests/test_conv_pool_fused.py)
    model.layers[0].pool_link = None
    for name in ops.NAMES:
        monkeypatch.setattr(ops, name, spy(name))
    y = model.forward(backend.asarray(x_img(rng)), training=True)
    model.backward(backend.xp.ones_like(y))
    assert sorted(calls) == sorted(ops.NAMES)


# -- errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: Conv2D(0, 3), lambda: Conv2D(2.5, 3), lambda: Conv2D(4, 0), lambda: Conv2D(4, (3,)),
    lambda: Conv2D(4, 3, strides=0), lambda: Conv2D(4, 3, padding="full"), lambda: Conv2D(4, 3, padding=-1),
    lambda: Conv2D(4, 3, kernel_initializer="nope"), lambda: MaxPool2D(0), lambda: AvgPool2D(2, padding=1),
    lambda: MaxPool2D(2, strides=(1, 2, 3)), lambda: Reshape((-1, -1)), lambda: Reshape((2, 0)),
    lambda: Reshape("ab"), lambda: Dropout(1.0), lambda: Dropout(-0.1), lambda: Dropout("0.5"),
    lambda: BatchNorm(momentum=1.5), lambda: BatchNorm(epsilon=0), lambda: LeakyReLU(-1),
    lambda: Softmax(axis=0), lambda: LogSoftmax(axis=1.5),
])
def test_invalid_arguments_raise_config_error(make):
    with pytest.raises(ConfigError):
        make()


def test_conv_on_flat_input_names_layer_and_shapes(backend):
    with pytest.raises(ShapeError, match=r"'conv2d'.*Conv2D.*\(batch, C, H, W\).*\(12,\)"):
        build([Conv2D(2, 3)], (12,), backend)


def test_window_larger_than_input(backend):
    with pytest.raises(ShapeError, match=r"'max_pool2d'.*\(3, 3\).*\(2, 2\)"):
        build([MaxPool2D(3)], (1, 2, 2), backend)
    with pytest.raises(ShapeError, match=r"Conv2D.*\(5, 5\)"):
        build([Conv2D(1, 5, name="c")], (1, 4, 4), backend)


def test_reshape_size_mismatch(backend):
    with pytest.raises(ShapeError, match=r"'reshape'.*\(3, 4\).*12 values.*\(5, 2\).*10 values"):
        build([Reshape((5, 2))], (3, 4), backend)
    with pytest.raises(ShapeError, match=r"not a multiple of 5"):
        build([Reshape((5, -1))], (3, 4), backend)


def test_softmax_axis_out_of_range(backend):
    with pytest.raises(ShapeError, match=r"'softmax'.*axis 3"):
        build([Softmax(axis=3)], (4,), backend)
    with pytest.raises(ShapeError, match=r"batch axis"):
        build([Softmax(axis=-2)], (4,), backend)


def test_wrong_input_shape_at_call_names_layer_and_both_shapes(backend):
    model = build([Conv2D(2, 3), Flatten(), Dense(2)], IMG, backend)
    with pytest.raises(ShapeError, match=r"'conv2d'.*\('batch', 3, 7, 7\).*\(2, 3, 7, 8\)"):
        model.forward(backend.asarray(np.zeros((2, 3, 7, 8))))
    flatten = model.layers[1]
    with pytest.raises(ShapeError, match=r"'flatten'.*\('batch', 2, 5, 5\).*\(2, 10\)"):
        flatten(backend.asarray(np.zeros((2, 10))))


def test_batchnorm_needs_two_values_per_channel_in_training(backend):
    model = build([Dense(3), BatchNorm()], (4,), backend)
    with pytest.raises(ShapeError, match=r"'batch_norm'.*more than one value"):
        model.forward(backend.asarray(np.zeros((1, 4))), training=True)
    assert model.forward(backend.asarray(np.zeros((1, 4))), training=False).shape == (1, 3)


# -- configs and backend parity ----------------------------------------------------------------------
ALL_LAYERS = [
    Conv2D(3, (2, 3), strides=(1, 2), padding=(1, 0), use_bias=False, kernel_initializer="he_normal",
           kernel_regularizer="l1:0.001", name="c1"),
    Conv2D(2, 3, padding="same"), MaxPool2D(2, strides=1, padding="same"), AvgPool2D((2, 1)),
    Flatten(), Reshape((2, -1)), Dropout(0.3), BatchNorm(momentum=0.9, epsilon=1e-5), LeakyReLU(0.3),
    Tanh(), Sigmoid(), Softmax(axis=-1), LogSoftmax(axis=1), ReLU(), Dense(3),
]


@pytest.mark.parametrize("layer", ALL_LAYERS, ids=lambda l: type(l).__name__)
def test_get_config_round_trip(layer):
    config = layer.get_config()
    via_json = json.loads(json.dumps(config))
    clone = type(layer)(**via_json)
    assert clone.get_config() == config
    assert LAYERS[type(layer).__name__] is type(layer)


def test_every_layer_is_registered():
    expected = {"Dense", "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "Softmax", "LogSoftmax", "Conv2D",
                "MaxPool2D", "AvgPool2D", "Flatten", "Reshape", "Dropout", "BatchNorm"}
    assert expected <= set(LAYERS)


def _mixed_model(device):
    layers = [Conv2D(3, 3, padding="same"), BatchNorm(), LeakyReLU(), MaxPool2D(), Dropout(0.3),
              Conv2D(2, (2, 1), strides=2), AvgPool2D(1), Flatten(), Dense(5), Tanh(), Dropout(0.2),
              Dense(4), Sigmoid(), Softmax()]
    return build(layers, IMG, get_backend(device), seed=7)


def test_same_seed_same_numbers_on_every_backend(rng):
    x = x_img(rng, n=3)
    g = rng.standard_normal((3, 4))
    results = []
    for device in ("numpy", "strict"):
        model = _mixed_model(device)
        backend = model.backend
        out = model.forward(backend.asarray(x), training=True)
        dx = model.backward(backend.asarray(g))
        results.append((to_np(backend, out), to_np(backend, dx),
                        {k: to_np(backend, v) for k, v in model.parameters.items()},
                        {k: to_np(backend, v) for k, v in model.gradients.items()},
                        {k: to_np(backend, v) for k, v in model.buffers.items()}))
    (o1, d1, p1, g1, b1), (o2, d2, p2, g2, b2) = results
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(d1, d2)
    for a, b in ((p1, p2), (g1, g2), (b1, b2)):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_model_with_every_layer_saves_and_loads(tmp_path, rng):
    import xpnet
    model = _mixed_model("numpy")
    x = x_img(rng)
    model.forward(x, training=True)  # moves the BatchNorm running statistics
    path = model.save(tmp_path / "m.npz")
    loaded = xpnet.load(path)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    for k, v in model.buffers.items():
        np.testing.assert_array_equal(loaded.buffers[k], v)
