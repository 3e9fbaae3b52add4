"""Numerical faults: a diverging run stops with a message naming the epoch, the batch and the last
good checkpoint (which stays finite); gradient clipping keeps the same run finite; float16 data is
cast to the model's dtype, and a float16 model is refused clearly."""
import math

import numpy as np
import pytest

import xpnet
from xpnet import callbacks, optim
from xpnet.errors import ConfigError, DataError, TrainingError
from xpnet.layers import Dense, ReLU
from xpnet.serialization import load_npz


def regression_data():
    """Inputs of scale 30 make plain SGD at lr 0.05 diverge within the first epoch."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 4)) * 30).astype(np.float32)
    y = (x @ rng.standard_normal((4, 2))).astype(np.float32)
    return x, y


def mlp(backend, **opt):
    model = xpnet.Sequential([Dense(8), ReLU(), Dense(2)], input_shape=(4,), device=backend, seed=0)
    return model.compile(loss="mse", optimizer=optim.SGD(**opt), metrics=[])


class Explode(callbacks.Callback):
    """After epoch ``after`` (0-based) the learning rate jumps far too high."""

    def __init__(self, after, lr):
        super().__init__()
        self.after, self.lr = after, lr

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.after:
            self.model.optimizer.lr = self.lr


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_names_epoch_batch_and_last_checkpoint(backend, tmp_path):
    x, y = regression_data()
    x = x / 30  # stable at lr 0.01 until the jump (checked: finite loss in epochs 1-2)
    model = mlp(backend, lr=0.01)
    with pytest.raises(TrainingError) as info:
        model.fit(x, y, epochs=5, batch_size=16, verbose=0, checkpoint=tmp_path,
                  callbacks=[Explode(after=1, lr=1e6)])
    message = str(info.value)
    path = tmp_path / "last.npz"
    assert "in epoch 3" in message and "at batch " in message, message
    assert f"the last good checkpoint is {path} (epoch 2)" in message, message
    arrays, meta = load_npz(path)
    assert meta["epoch"] == 1  # 0-based: the checkpoint holds epoch 2, not the diverged one
    params = {k: v for k, v in arrays.items() if k.startswith("param/")}
    assert sorted(params) == sorted("param/" + k for k in model.parameters)  # every one, not none
    assert all(np.isfinite(v).all() for v in params.values())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_before_any_checkpoint(tmp_path):
    x, y = regression_data()
    model = mlp("cpu", lr=0.05)
    with pytest.raises(TrainingError, match=r"in epoch 1 \(first non-finite at batch \d+\)") as info:
        model.fit(x, y, epochs=3, batch_size=16, verbose=0, checkpoint=tmp_path)
    assert not (tmp_path / "last.npz").exists()
    assert "pass checkpoint=DIR" not in str(info.value), "the run had a checkpoint folder"
    assert "no checkpoint was written" in str(info.value)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_terminate_on_nan_stops_quietly():
    x, y = regression_data()
    model = mlp("cpu", lr=0.05)
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[callbacks.TerminateOnNaN()])
    assert len(history.epoch) == 1 and not math.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("clip", [{"clipnorm": 1.0}, {"clipvalue": 0.5}])
def test_clipping_catches_the_explosion(backend, clip):
    x, y = regression_data()
    model = mlp(backend, lr=0.05, **clip)
    history = model.fit(x, y, epochs=5, batch_size=16, verbose=0)
    losses = history.history["loss"]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    assert all(np.isfinite(backend.to_numpy(p)).all() for p in model.parameters.values())


class SeenDtypes(Dense):
    """A Dense that notes the dtype of each input it gets."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = set()

    def forward(self, x, training=False):
        self.seen.add(str(x.dtype))
        return super().forward(x, training)


def test_float16_inputs_are_cast(backend):
    """The layers see float32: float16 data left as is gives the same numbers here (Dense promotes
    float16 @ float32 to float32), so equal results alone cannot tell that it was cast."""
    rng = np.random.default_rng(1)
    x16 = rng.standard_normal((40, 4)).astype(np.float16)
    x32 = x16.astype(np.float32)  # exact: every float16 is a float32
    y = (x32[:, 0] > 0).astype(np.int64)
    results = []
    for x in (x16, x32):
        model = xpnet.Sequential([SeenDtypes(6), ReLU(), Dense(2)], input_shape=(4,), device=backend, seed=5)
        model.compile(loss="cross_entropy", optimizer="sgd")
        h = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
        results.append((h.history["loss"], model.predict(x), model.evaluate(x, y)["loss"]))
        assert model.layers[0].seen == {"float32"}, model.layers[0].seen  # fit, predict, evaluate
        results[-1] += (backend.to_numpy(model(backend.asarray(x))),)
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert results[0][2] == results[1][2]
    np.testing.assert_array_equal(results[0][3], results[1][3])
    assert results[0][1].dtype == np.float32


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_float16_overflow_is_reported():
    x = np.array([[1.0, 70000.0, 0.0, 0.0]] * 4, dtype=np.float32).astype(np.float16)  # 70000 -> inf
    model = xpnet.Sequential([Dense(2)], input_shape=(4,)).compile(loss="cross_entropy", optimizer="sgd")
    with pytest.raises(DataError, match="NaN or infinite"):
        model.fit(x, np.zeros(4, dtype=np.int64), verbose=0)


@pytest.mark.parametrize("dtype", ["float16", "int32", "bfloat16"])
def test_unsupported_model_dtype_is_refused(dtype):
    with pytest.raises(ConfigError, match="float32' or 'float64'"):
        xpnet.Sequential([Dense(2)], input_shape=(4,), dtype=dtype)
