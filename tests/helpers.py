"""Test helpers: finite-difference gradient checks and host/device conversion."""
import numpy as np

import xpnet
from xpnet.testing import gradcheck_model  # noqa: F401  (the public checker is the project's own)


def to_np(backend, a):
    return None if a is None else np.asarray(backend.to_numpy(a), dtype=np.float64)


def layer_rngs(model):
    return [layer.rng for layer in model.layers if hasattr(layer, "rng")]


def build(layers, input_shape, backend, dtype="float64", seed=0):
    return xpnet.Sequential(layers, input_shape=input_shape, device=backend, dtype=dtype, seed=seed)


def _step_bytes(model, x, grad, training, same):
    out = model.forward(x, training=training)
    dx = model.backward(grad(out.shape))
    return [out.tobytes(), dx.tobytes()] + [same(name, v).tobytes() for name, v in model.gradients.items()]


def assert_steps_alike(a, b, x, grad, rng, same=lambda name, v: v):
    """One forward (training, then inference) and backward of the models a and b (the same layers
    and seed, built two ways) on x, with the same output gradients grad(shape) drawn from rng:
    outputs, input gradients and every parameter's gradient (through ``same(name, array)``) must
    have the same bits."""
    for training in (True, False):
        state = rng.bit_generator.state
        first = _step_bytes(a, x, grad, training, same)
        rng.bit_generator.state = state
        assert first == _step_bytes(b, x, grad, training, same)


def assert_fits_alike(a, b, input_shape, samples=40, classes=3):
    """Fit the models a and b (the same layers and seed, built two ways) on the same random data,
    Adam, 2 epochs of batch 8, and require the same weights, bit for bit."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((samples,) + tuple(input_shape)).astype(np.float32)
    y = rng.integers(0, classes, samples)
    for m in (a, b):
        m.compile(optimizer="adam")
        m.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        assert wa.tobytes() == wb.tobytes()


class Snapshots(xpnet.callbacks.Callback):
    """Keeps a host copy of every parameter at the end of each epoch."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append({k: self.model.backend.to_numpy(v).copy()
                             for k, v in self.model.parameters.items()})
