"""Keras-consistent names (learning_rate, beta_1/beta_2, xpnet.load_model, get_weights/set_weights),
one argument-validation style for layers, and no memory shared with a caller's host arrays."""
import numpy as np
import pytest

import xpnet
from xpnet import optim
from xpnet.errors import ConfigError, ShapeError
from xpnet.layers import BatchNorm, Conv2D, Dense, ReLU


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.AdamW, optim.RMSprop])
def test_learning_rate_is_an_alias_of_lr(cls):
    a, b = cls(learning_rate=0.03), cls(lr=0.03)
    assert a.lr == a.learning_rate == 0.03 and a.get_config() == b.get_config()
    a.learning_rate = 0.5
    assert a.lr == 0.5
    assert cls().lr == cls(lr=None).lr  # the class default when neither is given
    with pytest.raises(ConfigError, match="give lr or learning_rate, not both"):
        cls(lr=0.1, learning_rate=0.2)
    with pytest.raises(ConfigError, match="lr must be a finite number >= 0"):
        cls(learning_rate=-1)
    assert optim.get(type(a).__name__.lower(), learning_rate=0.25).lr == 0.25


@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW])
def test_beta_1_and_beta_2_are_aliases(cls):
    a, b = cls(beta_1=0.8, beta_2=0.95), cls(beta1=0.8, beta2=0.95)
    assert (a.beta1, a.beta2) == (0.8, 0.95) and a.get_config() == b.get_config()
    assert (cls().beta1, cls().beta2) == (0.9, 0.999)
    with pytest.raises(ConfigError, match="give beta2 or beta_2, not both"):
        cls(beta2=0.9, beta_2=0.99)
    with pytest.raises(ConfigError, match="beta1 must be"):
        cls(beta_1=1.0)


def test_load_model_beside_load(tmp_path):
    assert xpnet.load_model is xpnet.load and "load_model" in xpnet.__all__
    m = xpnet.Sequential([Dense(2)], input_shape=(3,), seed=4)
    m.set_weights([w + 0.5 for w in m.get_weights()])   # weights the seed cannot rebuild
    m.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(xpnet.load_model(tmp_path / "m.npz").get_weights()[0], m.get_weights()[0])


@pytest.mark.parametrize("bad", [2.7, "x", True, 0, -3, None])
def test_dense_refuses_bad_units_like_conv2d(bad):
    with pytest.raises(ConfigError, match=r"Dense: units must be a positive integer, got"):
        Dense(bad)
    with pytest.raises(ConfigError, match=r"Conv2D: filters must be a positive integer, got"):
        Conv2D(bad, 3)
    with pytest.raises(ConfigError, match="initializer"):
        Dense(2, kernel_initializer="nope")


def model(device):
    return xpnet.Sequential([Dense(4), BatchNorm(), ReLU(), Dense(2)], input_shape=(3,), device=device,
                            dtype="float64", seed=1)


def test_get_weights_is_keras_ordered_host_copies(backend):
    m = model(backend.name)
    weights = m.get_weights()
    assert [w.shape for w in weights] == [(3, 4), (4,), (4,), (4,), (4,), (4,), (4, 2), (2,)]
    assert all(type(w) is np.ndarray for w in weights)
    before = [backend.to_numpy(v).copy() for v in m.state_arrays().values()]
    for w in weights:
        w += 1.0  # editing the copies does not touch the model
    after = [backend.to_numpy(v) for v in m.state_arrays().values()]
    assert len(before) == len(after) == len(weights)   # zip over empty lists would prove nothing
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_set_weights_copies_and_checks_first(backend):
    m, other = model(backend.name), model(backend.name)
    source = [w + 0.5 for w in other.get_weights()]
    m.set_weights(source)
    kept = [w.copy() for w in source]
    for got, want in zip(m.get_weights(), source):
        np.testing.assert_array_equal(got, want)
    x = backend.asarray(np.ones((5, 3)))
    m.compile(loss="mse", optimizer="sgd").fit(x, backend.asarray(np.zeros((5, 2))), epochs=1, verbose=0)
    for w, k in zip(source, kept):  # training updated the model's arrays in place, not the caller's
        np.testing.assert_array_equal(w, k)
    assert not all(np.array_equal(a, b) for a, b in zip(m.get_weights(), source))
    before = m.get_weights()
    with pytest.raises(ShapeError, match=r"has 8 weight arrays .* got 7"):
        m.set_weights(source[:-1])
    with pytest.raises(ShapeError, match=r"weight 6 \(dense_1\.W\) must have shape \(4, 2\), got \(2, 4\)"):
        m.set_weights(source[:6] + [np.zeros((2, 4)), source[7]])
    for got, want in zip(m.get_weights(), before):
        np.testing.assert_array_equal(got, want)


def test_host_to_device_never_aliases_the_callers_array(backend):
    """backend.asarray is the one host-to-device entry point: a copy on every backend, so an
    optimizer stepping in place on what it returned never writes into the host array."""
    host = np.arange(6.0)
    dev = backend.asarray(host)
    assert not np.shares_memory(backend.to_numpy(dev), host)
    optim.SGD(lr=1.0).step({"w": dev}, {"w": backend.asarray(np.ones(6))})
    np.testing.assert_array_equal(host, np.arange(6.0))
    np.testing.assert_array_equal(backend.to_numpy(dev), np.arange(6.0) - 1.0)
    assert not np.shares_memory(backend.to_numpy(backend.asarray(host, dtype="float64")), host)
