"""A user's own layer (docs/custom_layers.md): the worked example, check_layer and register."""
import importlib.util
import os

import numpy as np
import pytest

import xpnet
import xpnet.layers as xlayers
from xpnet.errors import ConfigError, DataError, ShapeError
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
    # ... but it would not run on a GPU: np.tanh refuses the device array (not any TypeError on
    # the way, such as one from the backend before the layer ran)
    with pytest.raises(TypeError, match="'StrictArray' does not support ufuncs"):
        check_layer(HostTanh(), (4,), device="strict")


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
    with pytest.raises(DataError, match=r"; if Swish is a layer class of your own, import it and "
                                        r"register it \(@xpnet.layers.register\) before loading$"):
        xpnet.load(path)  # says how, not only what
    with pytest.raises(ConfigError, match="takes a Layer subclass"):
        xlayers.register(int)
    clash = type("Dense", (Layer,), {})
    with pytest.raises(ConfigError, match="a different layer class is already registered as 'Dense'"):
        xlayers.register(clash)
    assert xlayers.register(example.Swish) is example.Swish


def _tiny_fit(layer, mixed=None, functional=False):
    """One epoch of a Dense -> ``layer`` -> Dense model on 32 random rows."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 8)).astype(np.float32), rng.integers(0, 3, 32)
    if functional:
        inp = xpnet.Input((8,))
        model = xpnet.Model(inp, Dense(3)(layer(Dense(4)(inp))))
    else:
        model = xpnet.Sequential([Dense(4), layer, Dense(3)], input_shape=(8,))
    model.compile(loss="cross_entropy", optimizer="adam", mixed_precision=mixed)
    return model.fit(x, y, epochs=1, batch_size=32, verbose=0)


class _Scale(Layer):
    """x * w with a learned w of shape (4,); subclasses break the backward contract."""

    def create_params(self, ctx):
        self.params["w"] = self.xp.ones((4,), dtype=self.dtype)

    def forward(self, x, training=False):
        self.x = x
        return x * self.params["w"]

    def backward(self, grad):
        self.grads["w"] = (grad * self.x).sum(axis=0)
        return grad * self.params["w"]


@pytest.mark.parametrize("functional", [False, True])
def test_fit_names_a_layer_whose_forward_or_backward_returns_the_wrong_shape(functional):
    class BadInputGrad(_Scale):
        def backward(self, grad):
            return super().backward(grad).sum(axis=0)  # broadcasts in the Dense below: no error there

    class BadOutput(_Scale):
        def forward(self, x, training=False):
            return super().forward(x)[:, :2]

    with pytest.raises(ShapeError, match=r"layer 'bad_input_grad' \(BadInputGrad\): backward returned "
                                         r"an input gradient of shape \(4,\), but its input has shape "
                                         r"\(32, 4\)"):
        _tiny_fit(BadInputGrad(name="bad_input_grad"), functional=functional)
    with pytest.raises(ShapeError, match=r"layer 'bad_output' \(BadOutput\): forward returned shape "
                                         r"\(32, 2\), but compute_output_shape says \(32, 4\)"):
        _tiny_fit(BadOutput(name="bad_output"), functional=functional)


@pytest.mark.parametrize("mixed", [None, "float16"])
def test_fit_names_a_layer_whose_backward_sets_no_or_a_misshapen_parameter_gradient(mixed):
    class NoGrad(_Scale):
        def backward(self, grad):
            out = super().backward(grad)
            del self.grads["w"]
            return out

    class RowGrad(_Scale):  # forgot to sum over the batch: (32, 4) for a (4,) parameter
        def backward(self, grad):
            out = super().backward(grad)
            self.grads["w"] = grad * self.x
            return out

    # mixed precision gathers the gradients into one flat buffer: a misshapen one used to shift
    # every later gradient onto the wrong weights without an error
    with pytest.raises(ConfigError, match=r"layer 'no_grad' \(NoGrad\): backward set no gradient "
                                          r"for its parameter 'w'"):
        _tiny_fit(NoGrad(), mixed)
    with pytest.raises(ShapeError, match=r"layer 'row_grad' \(RowGrad\): backward set grads\['w'\] "
                                         r"of shape \(32, 4\), but params\['w'\] has shape \(4,\)"):
        _tiny_fit(RowGrad(), mixed)
    assert _tiny_fit(_Scale())  # the contract kept: trains


@pytest.mark.parametrize("mixed", [None, "float16"])
@pytest.mark.parametrize("functional", [False, True])
def test_fit_names_a_layer_whose_backward_returns_a_float64_input_gradient(mixed, functional):
    """A float64 input gradient in a float32 model used to turn the Dense below float64 without a
    word (its gradients and the work on them); now fit names the layer and the dtypes."""
    class Wide(_Scale):
        def backward(self, grad):
            return super().backward(grad).astype("float64")

    expected = "float32" if mixed is None else r"float16 or float32 \(mixed precision\)"
    with pytest.raises(ConfigError, match=r"layer 'wide' \(Wide\): backward returned an input "
                                          r"gradient of dtype float64, but the model computes in "
                                          + expected + r": return it in the dtype of the input"):
        _tiny_fit(Wide(), mixed, functional)


def test_a_bottom_layers_input_gradient_is_not_dtype_checked_where_fit_throws_it_away():
    """The first layer's input gradient is not used in fit (need_input_grad is off: nothing below
    it trains), so a float64 one there harms nothing; the dtype check named it all the same and
    stopped a model that trained before the check came."""
    class First(_Scale):   # a float64 zeros gradient, as np.zeros(g.shape) gives
        def backward(self, grad):
            super().backward(grad)
            return np.zeros(self.x.shape)

    rng = np.random.default_rng(0)
    model = xpnet.Sequential([First(), Dense(3)], input_shape=(4,))
    model.compile(loss="cross_entropy", optimizer="adam")
    history = model.fit(rng.standard_normal((32, 4)).astype(np.float32), rng.integers(0, 3, 32),
                        epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_mixed_precision_takes_float16_and_float32_input_gradients_from_user_layers():
    """No false alarm: in mixed precision a user layer computes in float16, and one after a
    Softmax (which returns float32) gets float32 inputs and returns a float32 gradient."""
    from xpnet.layers import Softmax

    class InInputDtype(_Scale):   # as the error advises: the input gradient in x's dtype
        def backward(self, grad):
            return super().backward(grad).astype(self.x.dtype)

    half = InInputDtype()
    assert _tiny_fit(half, "float16") and half.x.dtype == np.float16
    after = InInputDtype()
    rng = np.random.default_rng(0)
    model = xpnet.Sequential([Dense(4), Softmax(), after, Dense(3)], input_shape=(8,))
    model.compile(loss="cross_entropy", optimizer="adam", mixed_precision="float16")
    model.fit(rng.standard_normal((32, 8)).astype(np.float32), rng.integers(0, 3, 32), epochs=1,
              batch_size=32, verbose=0)
    assert after.x.dtype == np.float32


class _Gain(Layer):
    """x * k, k a constructor argument that its get_config() forgets (the base class's)."""

    def __init__(self, k=1.0, name=None):
        super().__init__(name)
        self.k = k

    def forward(self, x, training=False):
        return x * self.k

    def backward(self, grad):
        return grad * self.k


def test_saving_refuses_a_layer_whose_config_would_not_rebuild_it(tmp_path, monkeypatch):
    monkeypatch.setattr(xlayers, "LAYERS", dict(xlayers.LAYERS))

    class Renamed(_Gain):  # a key __init__ does not take: the file would not load
        def get_config(self):
            return {"name": self.name, "gain": self.k}

    class NumpyValue(_Gain):  # np.float32 is not JSON
        def get_config(self):
            return {"name": self.name, "k": np.float32(self.k)}

    for cls, match in ((_Gain, r"layer 'gain' \(_Gain\): its get_config\(\) leaves out the "
                               r"constructor argument k, so loading would rebuild it with the default"),
                       (Renamed, r"layer 'gain' \(Renamed\): its get_config\(\) leaves out the "
                                 r"constructor argument k"),
                       (NumpyValue, r"layer 'gain' \(NumpyValue\): get_config\(\) must return JSON values")):
        xlayers.register(cls)
        model = xpnet.Sequential([Dense(4), cls(k=3.0, name="gain")], input_shape=(2,))
        with pytest.raises(ConfigError, match=match):
            model.save(tmp_path / "m.npz")
        assert not (tmp_path / "m.npz").exists()  # before: written, and loaded as k=1 (or not at all)

    class Own(_Gain):  # a from_config of its own decides what the config needs
        def get_config(self):
            return {"name": self.name, "gain": self.k}

        @classmethod
        def from_config(cls, config):
            return cls(k=config["gain"], name=config["name"])

    class Refused(Own):
        @classmethod
        def from_config(cls, config):
            raise ConfigError("Refused: no")

    def my_init(rng, shape, dtype):  # xpnet's own layers save as before, a callable initializer too
        return np.full(shape, 0.5, dtype)

    model = xpnet.Sequential([Dense(4, kernel_initializer=my_init)], input_shape=(2,))
    assert model.save(tmp_path / "init.npz")

    xlayers.register(Own)
    model = xpnet.Sequential([Dense(4), Own(k=3.0, name="gain")], input_shape=(2,))
    assert xpnet.load(model.save(tmp_path / "own.npz")).layers[1].k == 3.0
    xlayers.register(Refused)
    model = xpnet.Sequential([Dense(4), Refused(k=3.0, name="gain")], input_shape=(2,))
    with pytest.raises(ConfigError, match=r"the file would not load, because Refused.from_config"
                                          r"\(get_config\(\)\) fails: Refused: no"):
        model.save(tmp_path / "refused.npz")


def test_model_checkpoint_refuses_a_layer_it_could_not_save_before_training(tmp_path):
    model = xpnet.Sequential([Dense(4), _Gain(k=3.0), Dense(3)], input_shape=(8,))
    model.compile(loss="cross_entropy", optimizer="sgd")
    x, y = np.zeros((16, 8), np.float32), np.zeros(16, np.int64)
    epochs = []
    tracker = xpnet.callbacks.Callback()
    tracker.on_epoch_end = lambda epoch, logs=None: epochs.append(epoch)
    with pytest.raises(ConfigError, match=r"leaves out the constructor argument k"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[tracker, xpnet.callbacks.ModelCheckpoint(
            str(tmp_path / "m{epoch}.npz"), monitor="loss")])
    assert epochs == []  # refused in on_train_begin, not after the first epoch's work


@pytest.mark.parametrize("device", ["cpu", "strict"])
def test_a_weight_kept_outside_params_warns_when_the_layer_is_built(device):
    """self.w made in create_params was silently never trained and never saved."""
    class Stray(Layer):
        def create_params(self, ctx):
            self.w = self.xp.ones((4,), dtype=self.dtype)
            self.count = 3  # not an array: fine

        def forward(self, x, training=False):
            return x * self.w

        def backward(self, grad):
            return grad * self.w

    with pytest.warns(UserWarning, match=r"layer 'stray' \(Stray\): create_params made self.w, which "
                                         r"is not in self.params or self.buffers, so fit\(\) will not "
                                         r"train it and save\(\) will not keep it"):
        xpnet.Sequential([Dense(4), Stray()], input_shape=(8,), device=device)

    class Fixed(Stray):
        constants = ("w",)

    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xpnet.Sequential([Dense(4), Fixed(), _Scale()], input_shape=(8,), device=device)
        xpnet.Sequential([xpnet.layers.AvgPool2D(3, padding="same")], input_shape=(1, 5, 5),
                         device=device)  # its constant share of real cells is declared


def test_skeleton_mistakes_in_a_layer_are_named():
    """Each was an AttributeError, a bare NotImplementedError() or a TypeError from inside the model."""
    class NoSuper(Layer):
        def __init__(self, k=1.0):  # forgot super().__init__(name)
            self.k = k

    class NoForward(Layer):
        pass

    class NoBackward(Layer):
        def forward(self, x, training=False):
            return x

    class NoShape(Layer):
        def compute_output_shape(self, input_shape):
            pass  # forgot the return

    forgot = r"NoSuper: its __init__ did not call Layer.__init__, .*begin __init__ with super\(\).__init__\(name\)"
    with pytest.raises(ConfigError, match=forgot):
        xpnet.Sequential([Dense(4), NoSuper()], input_shape=(8,))
    inp = xpnet.Input(8)
    with pytest.raises(ConfigError, match=forgot):
        NoSuper()(inp)
    x = np.zeros((2, 8), np.float32)
    with pytest.raises(ConfigError, match=r"layer 'no_forward' \(NoForward\) does not define forward"):
        xpnet.Sequential([NoForward()], input_shape=(8,)).predict(x)
    model = xpnet.Sequential([Dense(4), NoBackward(), Dense(2)], input_shape=(8,)).compile()
    with pytest.raises(ConfigError, match=r"layer 'no_backward' \(NoBackward\) does not define backward"):
        model.fit(x, np.zeros(2, np.int64), verbose=0)
    returned_none = r"compute_output_shape\(\(4,\)\) returned None; it must return the per-sample output shape"
    with pytest.raises(ShapeError, match=r"layer 'no_shape' \(NoShape\): " + returned_none):
        xpnet.Sequential([Dense(4), NoShape()], input_shape=(8,))
    with pytest.raises(ShapeError, match=r"a NoShape layer: " + returned_none):
        NoShape()(Dense(4)(inp))


def test_the_per_step_contract_checks_run_for_user_layers_only(monkeypatch):
    """check_forward/check_backward name a user's layer that breaks the contract; xpnet's own layers
    are tested against it and skip them (about 1.4 us a layer a step, 3 % of a batch-16 MLP step).
    Forward and backward, in a Sequential and in a functional Model: each runs its own loop."""
    import xpnet.graph
    import xpnet.model
    from xpnet.layers.base import user_layer
    seen = []
    for module in (xpnet.model, xpnet.graph):
        monkeypatch.setattr(module, "check_forward",
                            lambda layer, y: seen.append(("forward", type(layer).__name__)))
        monkeypatch.setattr(module, "check_backward",
                            lambda layer, g, *rest: seen.append(("backward", type(layer).__name__)))

    class Twice(xpnet.layers.Dense):   # a user's subclass of a built-in is the user's
        pass

    def step(last):
        """forward and backward of a Sequential, then of a Model, each Flatten -> ``last()``."""
        models = [xpnet.Sequential([xpnet.layers.Flatten(), last()], input_shape=(1, 4, 4))]
        inp = xpnet.Input((1, 4, 4))
        models.append(xpnet.Model(inp, last()(xpnet.layers.Flatten()(inp))))
        for m in models:
            out = m.forward(m.backend.asarray(np.zeros((2, 1, 4, 4), np.float32)), training=True)
            m.backward(m.xp.ones(tuple(out.shape), dtype=out.dtype))
        return models

    built_in = step(lambda: xpnet.layers.Dense(3))
    assert seen == [] and not user_layer(built_in[0].layers[1])
    mine = step(lambda: Twice(3))
    assert seen == [("forward", "Twice"), ("backward", "Twice")] * 2 and user_layer(mine[0].layers[1])
