"""The CuPy backend's fused kernels (backends/cupy_kernels.py) against the pure-xp reference.

They run the kernels on a CUDA GPU: on a machine without one these tests are skipped. That every
kernel compiles needs no GPU (only the CuPy and NVRTC wheels): tests/test_cupy_compile.py, which
CI runs after `make test` (.ci/run).
"""
import numpy as np
import pytest

from xpnet import optim
from xpnet.backends import Backend, get_backend

pytestmark = pytest.mark.gpu


@pytest.fixture
def gpu():
    from xpnet.backends.cupy_backend import gpu_available
    if not gpu_available():
        pytest.skip("no usable CUDA GPU / CuPy on this machine: these tests run the fused kernels on "
                    "the device (tests/test_cupy_compile.py compiles them without one)")
    return get_backend("cupy")


def data(gpu, shape=(64, 33), seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal(shape).astype(np.float32)
    x.reshape(-1)[:3] = [np.nan, 0.0, -0.0]
    return gpu.xp.asarray(x)


def same(gpu, a, b):
    return np.array_equal(gpu.to_numpy(a), gpu.to_numpy(b), equal_nan=True)


def test_relu_forward_equals_the_reference(gpu):
    x = data(gpu)
    (y, mask), (ry, rmask) = gpu.relu_forward(x), Backend.relu_forward(gpu, x)
    assert same(gpu, y, ry) and same(gpu, mask, rmask)


def test_dropout_equals_the_reference(gpu):
    x = data(gpu)
    keep = gpu.rng(3).bernoulli_mask(0.7, x.shape)
    assert same(gpu, gpu.dropout(x, keep, 1 / 0.7), Backend.dropout(gpu, x, keep, 1 / 0.7))


def test_splitmix64_words_equal_the_reference(gpu):
    fused, plain = gpu.rng(5, 2), get_backend("cupy").rng(5, 2)
    plain._fused = None
    for n in (1, 7, 1000):
        assert same(gpu, fused._bits(n), plain._bits(n))
    fused.device_counter(True)
    plain.device_counter(True)
    assert same(gpu, fused.random((9, 4)), plain.random((9, 4)))


@pytest.mark.parametrize("make", [lambda: optim.Adam(0.01, decay=0.01),
                                  lambda: optim.Adam(0.01, weight_decay=0.01),
                                  lambda: optim.AdamW(0.01, weight_decay=0.1)])
def test_the_fused_adam_update_equals_the_reference(gpu, make, monkeypatch):
    shapes = [(5, 3), (3,), (4, 2, 2)]
    results = []
    for fused in (True, False):
        r = np.random.default_rng(1)
        if not fused:
            monkeypatch.setattr(type(gpu), "adam_update", None)
        opt = make().bind(gpu)
        params = {f"p{i}": gpu.xp.asarray(r.standard_normal(s).astype(np.float32)) for i, s in enumerate(shapes)}
        flat = gpu.xp.concatenate([p.reshape(-1) for p in params.values()])
        views, offset = {}, 0
        for k, p in params.items():
            views[k] = flat[offset:offset + p.size].reshape(p.shape)
            offset += p.size
        opt.bind_flat(flat, views)
        g = np.random.default_rng(2)
        for _ in range(5):
            opt.step(views, {k: gpu.xp.asarray(g.standard_normal(p.shape).astype(np.float32))
                             for k, p in views.items()})
        results.append(gpu.to_numpy(flat))
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-7)


def test_bias_relu_equals_the_reference(gpu):
    y = data(gpu, (8, 5, 3, 4))
    b = gpu.xp.asarray(np.linspace(-1, 1, 5).astype(np.float32))
    for got, want in zip(gpu.bias_relu(y, b, 1), Backend.bias_relu(gpu, y, b, 1)):
        assert same(gpu, got, want)


@pytest.mark.parametrize("pool, stride, shape", [((2, 2), (2, 2), (3, 4, 9, 8)),
                                                 ((3, 3), (2, 2), (2, 3, 9, 9)),
                                                 ((2, 3), (3, 1), (2, 2, 8, 7))])
def test_max_pooling_equals_the_reference(gpu, pool, stride, shape):
    r = np.random.default_rng(4)
    x = r.integers(-3, 3, shape).astype(np.float32)  # ties: the first maximum takes the gradient
    x.reshape(-1)[5] = np.nan
    x = gpu.xp.asarray(x)
    (y, cache), (ry, rcache) = gpu.maxpool2d_forward(x, pool, stride), Backend.maxpool2d_forward(gpu, x, pool, stride)
    assert same(gpu, y, ry)
    dy = gpu.xp.asarray(r.standard_normal(tuple(y.shape)).astype(np.float32))
    assert same(gpu, gpu.maxpool2d_backward(dy, cache), Backend.maxpool2d_backward(gpu, dy, rcache))


@pytest.mark.parametrize("mode", ["nearest", "constant"])
def test_the_affine_warp_and_keras_matrices_equal_the_reference(gpu, mode):
    u = gpu.rng(7).random((5, 6), "float64")
    m, rm = (gpu.keras_affine_matrices(u, 0.4, 5.6, 5.6, 0.2),
             Backend.keras_affine_matrices(gpu, u, 0.4, 5.6, 5.6, 0.2))
    np.testing.assert_allclose(gpu.to_numpy(m), gpu.to_numpy(rm), rtol=1e-14, atol=1e-13)  # CUDA cos/sin
    x = gpu.xp.asarray(np.random.default_rng(8).random((6, 2, 28, 28), dtype=np.float32))
    got, want = gpu.affine_warp(x, rm, 0.5, mode), Backend.affine_warp(gpu, x, rm, 0.5, mode)
    np.testing.assert_allclose(gpu.to_numpy(got), gpu.to_numpy(want), rtol=0, atol=1e-6)


def test_softmax_with_labels_and_its_gradient_equal_the_reference(gpu):
    z = data(gpu, (64, 10))[1:]  # the first row holds the NaN
    labels = gpu.xp.asarray(np.random.default_rng(9).integers(0, 10, 63))
    (p, picked), (rp, rpicked) = gpu.softmax_labels(z, labels), Backend.softmax_labels(gpu, z, labels)
    np.testing.assert_allclose(gpu.to_numpy(p), gpu.to_numpy(rp), rtol=1e-6, atol=1e-7)  # sum order
    np.testing.assert_allclose(gpu.to_numpy(picked), gpu.to_numpy(rpicked), rtol=1e-6, atol=1e-6)
    assert same(gpu, gpu.softmax_labels_grad(rp, labels, 63), Backend.softmax_labels_grad(gpu, rp, labels, 63))


@pytest.mark.parametrize("shape", [(64, 10), (16, 6, 5, 7)])
def test_batch_normalisation_equals_the_reference(gpu, shape):
    r = np.random.default_rng(10)
    x = gpu.xp.asarray(r.standard_normal(shape).astype(np.float32) * 3 + 1)
    c = shape[1]
    gamma, beta = (gpu.xp.asarray(r.standard_normal(c).astype(np.float32)) for _ in range(2))
    stats = [[gpu.xp.zeros(c, np.float32), gpu.xp.ones(c, np.float32)] for _ in range(2)]
    got = gpu.batchnorm_train(x, gamma, beta, *stats[0], 0.9, 1e-3)
    want = Backend.batchnorm_train(gpu, x, gamma, beta, *stats[1], 0.9, 1e-3)
    for a, b in list(zip(got, want)) + list(zip(*stats)):  # sums in another order: float rounding
        np.testing.assert_allclose(gpu.to_numpy(a), gpu.to_numpy(b), rtol=1e-5, atol=1e-5)
    dy = gpu.xp.asarray(r.standard_normal(shape).astype(np.float32))
    count = x.size // c
    for a, b in zip(gpu.batchnorm_grad(dy, want[1], want[2], gamma, count),
                    Backend.batchnorm_grad(gpu, dy, want[1], want[2], gamma, count)):
        np.testing.assert_allclose(gpu.to_numpy(a), gpu.to_numpy(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_with_transposed_stacks_equals_the_reference(gpu, trans_a, trans_b):
    r = np.random.default_rng(11)
    a = gpu.xp.asarray(r.standard_normal((4, 6, 5) if trans_a else (4, 5, 6)).astype(np.float32))
    b = gpu.xp.asarray(r.standard_normal((4, 7, 6) if trans_b else (4, 6, 7)).astype(np.float32))
    got, want = gpu.matmul_t(a, b, trans_a, trans_b), Backend.matmul_t(gpu, a, b, trans_a, trans_b)
    assert got.shape == want.shape == (4, 5, 7)
    np.testing.assert_allclose(gpu.to_numpy(got), gpu.to_numpy(want), rtol=1e-5, atol=1e-5)


def test_the_spectral_matrices_equal_the_reference(gpu):
    spec = gpu.xp.asarray(np.random.default_rng(12).standard_normal((2, 7, 3, 4)).astype(np.float32))
    assert same(gpu, gpu.spectral_matrices(spec), Backend.spectral_matrices(gpu, spec))
