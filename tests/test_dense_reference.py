"""The Dense layer and ReLU: the reference pattern every layer test follows."""
import numpy as np

from xpnet.layers import Dense, ReLU

from .helpers import build, gradcheck_model


def test_dense_relu_gradients(backend, rng):
    model = build([Dense(5), ReLU(), Dense(3)], (4,), backend)
    gradcheck_model(model, rng.standard_normal((6, 4)))


def test_dense_shapes(backend):
    model = build([Dense(7)], (3,), backend)
    assert model.layers[0].params["W"].shape == (3, 7)
    assert model.output_shape == (7,)
    y = model.forward(backend.asarray(np.zeros((2, 3))))
    assert y.shape == (2, 7)
