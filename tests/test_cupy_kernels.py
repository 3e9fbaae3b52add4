"""The CuPy backend's fused kernels (backends/cupy_kernels.py) against the pure-xp reference.

They need a CUDA GPU (NVRTC compiles them on first use, which needs a device): on a machine
without one these tests are skipped.
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
        pytest.skip("no usable CUDA GPU / CuPy on this machine: the fused kernels cannot be compiled")
    return get_backend("cupy")


def data(gpu, shape=(64, 33), seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal(shape).astype(np.float32)
    x[0, :3] = [np.nan, 0.0, -0.0]
    return gpu.xp.asarray(x)


def same(gpu, a, b):
    return np.array_equal(gpu.to_numpy(a), gpu.to_numpy(b), equal_nan=True)


def test_relu_forward_equals_the_reference(gpu):
    x = data(gpu)
    (y, mask), (ry, rmask) = gpu.relu_forward(x), Backend.relu_forward(gpu, x)
    assert same(gpu, y, ry) and same(gpu, mask, rmask)


def test_dropout_forward_equals_the_reference(gpu):
    x = data(gpu)
    keep = gpu.rng(3).bernoulli_mask(0.8, x.shape)
    (y, mask), (ry, rmask) = gpu.dropout_forward(x, keep, 1.25), Backend.dropout_forward(gpu, x, keep, 1.25)
    assert same(gpu, y, ry) and same(gpu, mask, rmask)


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
