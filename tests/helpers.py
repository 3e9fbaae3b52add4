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


class Snapshots(xpnet.callbacks.Callback):
    """Keeps a host copy of every parameter at the end of each epoch."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append({k: self.model.backend.to_numpy(v).copy()
                             for k, v in self.model.parameters.items()})
