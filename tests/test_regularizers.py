"""L1/L2 regularizers: values, gradients, specs, and their use through Dense and the optimizer."""
import numpy as np
import pytest

import xpnet
from xpnet import optim, regularizers as reg
from xpnet.errors import ConfigError
from xpnet.layers import Dense

W = np.array([[0.5, -1.5, 2.0], [-0.25, 0.75, -3.0]])


@pytest.mark.parametrize("r,value", [
    (reg.L1(0.1), 0.1 * np.abs(W).sum()),
    (reg.L2(0.1), 0.1 * (W ** 2).sum()),
    (reg.L1L2(0.01, 0.2), 0.01 * np.abs(W).sum() + 0.2 * (W ** 2).sum()),
])
def test_values_and_gradients(backend, r, value):
    xp = backend.xp
    w = backend.asarray(W)
    out = r(xp, w)
    assert tuple(out.shape) == () and float(backend.to_numpy(out)) == pytest.approx(value, rel=1e-12)
    grad = backend.to_numpy(r.grad(xp, w))
    eps = 1e-6
    num = np.zeros_like(W)
    for idx in np.ndindex(W.shape):
        up, down = W.copy(), W.copy()
        up[idx] += eps
        down[idx] -= eps
        num[idx] = (float(backend.to_numpy(r(xp, backend.asarray(up))))
                    - float(backend.to_numpy(r(xp, backend.asarray(down))))) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=1e-7, atol=1e-9)


def test_conventions(backend):
    xp = backend.xp
    w = backend.asarray(np.array([0.0, 2.0, -3.0]))
    np.testing.assert_array_equal(backend.to_numpy(reg.L2(0.5).grad(xp, w)), [0.0, 2.0, -3.0])  # 2*l*w
    np.testing.assert_array_equal(backend.to_numpy(reg.L1(0.5).grad(xp, w)), [0.0, 0.5, -0.5])  # 0 at 0
    w32 = backend.asarray(np.ones(3, dtype=np.float32))
    assert reg.L1L2(0.1, 0.1)(xp, w32).dtype == np.float32 and reg.L2(0.1).grad(xp, w32).dtype == np.float32


def test_get_specs():
    assert reg.get(None) is None
    l2 = reg.L2(1e-4)
    assert reg.get(l2) is l2
    assert reg.get("l2") == reg.L2(0.01)
    assert reg.get("L2:1e-4") == reg.L2(1e-4)
    assert reg.get("l1:0.003") == reg.L1(0.003)
    assert reg.get("l1l2:1e-5,1e-4") == reg.L1L2(1e-5, 1e-4)
    for r in (reg.L1(0.2), reg.L2(3e-4), reg.L1L2(0.1, 0.2)):
        assert r.get_config()["type"] == type(r).__name__
        assert reg.get(r.get_config()) == r
        # == compares configs: a config that leaves a strength out equals itself, so the penalty too
        assert float(reg.get(r.get_config())(np, W)) == float(r(np, W))
    assert reg.L2(1e-4).get_config() == {"type": "L2", "l": 1e-4}
    assert reg.L1L2(1e-5, 1e-4).get_config() == {"type": "L1L2", "l1": 1e-5, "l2": 1e-4}
    assert float(reg.get("l1l2:1e-5,1e-4")(np, W)) == float(reg.L1L2(1e-5, 1e-4)(np, W))


@pytest.mark.parametrize("spec,words", [
    ("l3", "unknown regularizer 'l3'"),
    ("l2:abc", "must be a number"),
    ("l2:-1", ">= 0"),
    ("l2:1,2", "too many"),
    ({"type": "L4"}, "unknown regularizer type 'L4'"),
    ({"type": "L2", "strength": 1}, "bad regularizer config"),
    (0.01, "cannot make a regularizer"),
])
def test_bad_specs(spec, words):
    with pytest.raises(ConfigError, match=words):
        reg.get(spec)


def test_a_bool_strength_is_refused_not_taken_as_one():
    """L2(True) was a penalty of strength 1.0 (float(True)), swamping the loss without a word."""
    for make in (lambda: reg.L2(True), lambda: reg.L1(np.bool_(True)), lambda: reg.L1L2(l2=True),
                 lambda: reg.get({"type": "L2", "l": True})):
        with pytest.raises(ConfigError, match=r"must be a number >= 0, got bool (np\.)?True"):
            make()
    assert reg.get("l2:1e-4").l == 1e-4 and reg.L2(0).l == 0.0  # strings from specs, zero: still fine


def test_dense_kernel_regularizer_and_torch_weight_decay(backend):
    torch = pytest.importorskip("torch")
    l = 0.05
    model = xpnet.Sequential([Dense(3, kernel_regularizer=f"l2:{l}")], input_shape=(4,),
                             device=backend, dtype="float64", seed=1)
    layer = model.layers[0]
    W0 = np.array(backend.to_numpy(layer.params["W"]), copy=True)
    assert float(backend.to_numpy(model.regularization_loss())) == pytest.approx(l * (W0 ** 2).sum())
    assert layer.get_config()["kernel_regularizer"] == {"type": "L2", "l": l}

    x = np.random.default_rng(0).standard_normal((6, 4))
    g = np.random.default_rng(1).standard_normal((6, 3))
    model.forward(backend.asarray(x), training=True)
    model.backward(backend.asarray(g))
    model.add_regularization_grads()
    optim.SGD(lr=0.1).step(model.parameters, model.gradients)

    # torch: same data gradient, L2 through weight_decay = 2 * l on the kernel only
    tW = torch.tensor(W0, requires_grad=True)
    tW.grad = torch.tensor(x.T @ g)
    torch.optim.SGD([tW], lr=0.1, weight_decay=2 * l).step()
    np.testing.assert_allclose(backend.to_numpy(layer.params["W"]), tW.detach().numpy(), rtol=1e-12)
