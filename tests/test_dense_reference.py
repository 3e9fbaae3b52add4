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


def test_dense_one_sample_weight_gradient_has_the_gemm_bits(backend, rng):
    """A batch of one takes a broadcast multiply for dW; its bits are the GEMM's, signed zeros
    included (x = 0 against a negative gradient gives -0.0 in a multiply, +0.0 in the GEMM)."""
    layer = build([Dense(9)], (40,), backend).layers[0]
    x = rng.standard_normal((1, 40))
    x[0, ::3] = 0.0
    x[0, 1] = -0.0
    layer.forward(backend.asarray(x), training=True)
    grad = rng.standard_normal((1, 9))
    grad[0, 2] = 0.0
    layer.backward(backend.asarray(grad))
    got = backend.to_numpy(layer.grads["W"])
    want = backend.to_numpy(backend.asarray(x).T @ backend.asarray(grad))
    assert got.shape == want.shape == (40, 9)
    assert np.signbit(want).sum() < np.signbit(x.T * grad).sum()   # the case is exercised
    np.testing.assert_array_equal(got.view(np.uint64 if got.itemsize == 8 else np.uint32),
                                  want.view(np.uint64 if want.itemsize == 8 else np.uint32))


def test_numpy_outer_over_blocks_and_threads_has_the_gemm_bits(rng):
    """NumpyBackend.outer in several row blocks and on two threads: the GEMM's bits. Two threads
    cut the rows in pieces smaller than a block (one block a piece), so one thread runs too: only
    there does a part run through several blocks."""
    from xpnet.backends.numpy_backend import FLAT_PIECE, NumpyBackend
    nb, one = NumpyBackend(), NumpyBackend()
    nb.set_threads(2)
    one.set_threads(1)
    n = 300
    m = 5 * (FLAT_PIECE // n) + 7            # five whole blocks and a part
    a = rng.standard_normal((1, m)).astype(np.float32)
    a[0, ::4] = 0.0
    b = rng.standard_normal((1, n)).astype(np.float32)
    b[0, 3] = -0.0
    want = a.T @ b
    for got in (nb.outer(a, b), one.outer(a, b)):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
