"""A user's own layer (docs/custom_layers.md): the worked example, check_layer and register."""
import importlib.util
import os

import numpy as np
import pytest

import xpnet
import xpnet.layers as xlayers
from xpnet.errors import ConfigError, DataError
from xpnet.layers import Dense, Flatten, Layer
from xpnet.testing import GradientCheckError, check_layer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def example(monkeypatch):
    """examples/custom_layer.py as a module; its @register goes into a throw-away registry."""
    monkeypatch.setattr(xlayers, "LAYERS", dict(xlayers.LAYERS))
    spec = importlib.util.spec_from_file_location("custom_layer", os.path.join(ROOT, "examples",
                                                                               "custom_layer.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_worked_example_runs(example, tmp_path, capsys):
    assert example.main(["--train-images", "256", "--epochs", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    checks = [line for line in out.splitlines() if line.startswith("check_layer Swish")]
    assert len(checks) == 6 and sum(" on strict:" in c for c in checks) == 3
    assert "predicts the same classes" in out
    assert (tmp_path / "swish_cnn.npz").is_file()


def test_swish_matches_its_formula_and_learns_beta(example):
    layer = example.Swish(beta=0.7)
    model = xpnet.Sequential([layer], input_shape=(5,), dtype="float64")
    x = np.linspace(-30, 30, 10).reshape(2, 5)
    np.testing.assert_allclose(model.forward(x), x / (1 + np.exp(-0.7 * x)), rtol=1e-12)
    report = check_layer(example.Swish(beta=0.7), (4, 3), device="strict")
    assert report["params"] == ["beta"] and report["worst_error"] < 1e-6


def test_check_layer_finds_a_wrong_gradient(example):
    class Forgetful(example.Swish):  # drops the beta * x * sigmoid' term of d out / d x
        def backward(self, grad):
            super().backward(grad)
            return grad * self.s

    with pytest.raises(GradientCheckError, match=r"input\(.*finite differences give .* backward gives"):
        check_layer(Forgetful(), (6,))

    class NoBetaGrad(example.Swish):
        def backward(self, grad):
            out = super().backward(grad)
            del self.grads["beta"]
            return out

    with pytest.raises(GradientCheckError, match="no gradient for"):
        check_layer(NoBetaGrad(), (6,))


def test_check_layer_on_strict_finds_a_layer_that_is_not_written_against_xp():
    class HostTanh(Layer):
        def forward(self, x, training=False):
            self.y = np.tanh(x)  # NumPy on a device array: CuPy refuses, and so does strict
            return self.y

        def backward(self, grad):
            return grad * (1 - self.y ** 2)

    assert check_layer(HostTanh(), (4,))["worst_error"] < 1e-6  # fine on NumPy ...
    with pytest.raises(TypeError):
        check_layer(HostTanh(), (4,), device="strict")  # ... but it would not run on a GPU


def test_check_layer_finds_a_wrong_output_shape():
    class Liar(Layer):
        def compute_output_shape(self, input_shape):
            return (1,)

        def forward(self, x, training=False):
            return x

        def backward(self, grad):
            return grad

    with pytest.raises(GradientCheckError, match=r"forward returned shape \(3, 4\), but "
                                                 r"compute_output_shape says \(3, 1\)"):
        check_layer(Liar(), (4,))


def test_register_and_loading_a_model_that_names_a_layer(example, tmp_path, monkeypatch):
    model = xpnet.Sequential([Flatten(), Dense(4), example.Swish()], input_shape=(2, 3), seed=1)
    path = model.save(tmp_path / "m.npz")
    again = xpnet.load(path)
    x = np.random.default_rng(0).standard_normal((2, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(again.predict(x), model.predict(x))
    monkeypatch.delitem(xlayers.LAYERS, "Swish")  # a program that never imported the layer
    with pytest.raises(DataError, match=r"layer 2 has unknown type 'Swish'; model files may only "
                                        r"name registered layers"):
        xpnet.load(path)
    with pytest.raises(ConfigError, match="takes a Layer subclass"):
        xlayers.register(int)
    clash = type("Dense", (Layer,), {})
    with pytest.raises(ConfigError, match="a different layer class is already registered as 'Dense'"):
        xlayers.register(clash)
    assert xlayers.register(example.Swish) is example.Swish
