"""Device-aware choice of the convolution method (issue 14, point 4): the FLOP estimate on the CPU
backends, a measurement once per shape (cached per backend) where the backend asks for it."""
import time

import numpy as np
import pytest

from xpnet.backends import get_backend
from xpnet.backends.base import Backend
from xpnet.backends.cupy_backend import CupyBackend
from xpnet.errors import ConfigError
from xpnet.ops import autotune, chooser, fast, reference, spectral, columns

# (x, W) shapes where the FLOP model picks spectral, and one where it picks columns
SPECTRAL_SHAPE = ((8, 32, 14, 14), (32, 32, 5, 5))
COLUMNS_SHAPE = ((8, 1, 14, 14), (8, 1, 5, 5))
SAME = (1, 1), (2, 2, 2, 2)


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.delenv("XPNET_CONV_CHOICE", raising=False)
    autotune.forget()
    yield
    autotune.forget()


def arrays(backend, x_shape, w_shape, seed=0):
    r = np.random.default_rng(seed)
    host = [r.standard_normal(x_shape), r.standard_normal(w_shape), r.standard_normal(w_shape[:1])]
    return [backend.asarray(a.astype(np.float64)) for a in host]


def slowed(monkeypatch, module, seconds=0.2):
    """Make one method's forward pass slower by ``seconds``."""
    original = module.forward

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "forward", slow)


def test_backends_declare_how_they_choose():
    assert Backend.conv_choice == "estimate"
    assert get_backend("numpy").conv_choice == "estimate" and get_backend("strict").conv_choice == "estimate"
    assert CupyBackend.conv_choice == "measure"


def test_cpu_backends_use_the_flop_estimate_without_timing(monkeypatch, backend):
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("measured on a CPU backend"))
    for x_shape, w_shape in (SPECTRAL_SHAPE, COLUMNS_SHAPE):
        x, W, b = arrays(backend, x_shape, w_shape)
        _, cache = fast.conv2d_forward(backend.xp, x, W, b, *SAME)
        assert cache["method"] == chooser.choose(x_shape, w_shape, *SAME, x.itemsize)
    assert autotune.choices() == []


@pytest.mark.parametrize("slow, expected", [(spectral, "columns"), (columns, "spectral")])
def test_measure_keeps_the_faster_method_once_per_shape(monkeypatch, slow, expected):
    monkeypatch.setenv("XPNET_CONV_CHOICE", "measure")
    slowed(monkeypatch, slow)
    backend = get_backend("numpy")
    x, W, b = arrays(backend, *SPECTRAL_SHAPE)
    calls = []
    real_measure = autotune.measure
    monkeypatch.setattr(autotune, "measure", lambda *a: calls.append(1) or real_measure(*a))
    for _ in range(3):
        y, cache = fast.conv2d_forward(backend.xp, x, W, b, *SAME)
        assert cache["method"] == expected
    assert len(calls) == 1  # measured on first use, then cached
    (seen,) = autotune.choices()
    assert seen["method"] == expected and seen["backend"] == "numpy"
    assert seen["x_shape"] == list(SPECTRAL_SHAPE[0]) and seen["seconds"][slow.__name__.split(".")[-1]] > 0.2
    # whichever method ran, the result is the exact convolution
    ref, _ = reference.conv2d_forward(backend.xp, x, W, b, *SAME)
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10)
    dy = backend.asarray(np.random.default_rng(1).standard_normal(y.shape))
    got = fast.conv2d_backward(backend.xp, dy, cache)
    want = reference.conv2d_backward(backend.xp, dy, reference.conv2d_forward(backend.xp, x, W, b, *SAME)[1])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-9)


def test_the_cache_is_per_backend_and_shape(monkeypatch):
    monkeypatch.setenv("XPNET_CONV_CHOICE", "measure")
    for name in ("numpy", "strict"):
        b = get_backend(name)
        for x_shape, w_shape in (SPECTRAL_SHAPE, ((4,) + SPECTRAL_SHAPE[0][1:], SPECTRAL_SHAPE[1])):
            x, W, bias = arrays(b, x_shape, w_shape)
            fast.conv2d_forward(b.xp, x, W, bias, *SAME)
    seen = autotune.choices()
    assert sorted((c["backend"], c["x_shape"][0]) for c in seen) == \
        [("numpy", 4), ("numpy", 8), ("strict", 4), ("strict", 8)]
    assert all(c["method"] in ("spectral", "columns") for c in seen)


def test_the_cache_tells_strides_paddings_and_dtypes_apart(monkeypatch):
    """The same shapes under another stride, padding or dtype are measured again (a key of the
    backend and the shapes alone passed every other test)."""
    monkeypatch.setenv("XPNET_CONV_CHOICE", "measure")
    b = get_backend("numpy")
    cases = [(SAME, "float64"), (((2, 2), (2, 2, 2, 2)), "float64"), (((1, 1), (0, 0, 0, 0)), "float64"),
             (SAME, "float32")]
    for (stride, padding), dtype in cases:
        x, W, bias = (a.astype(dtype) for a in arrays(b, *SPECTRAL_SHAPE))
        fast.conv2d_forward(b.xp, x, W, bias, stride, padding)
    seen = [(tuple(c["stride"]), tuple(c["padding"]), c["dtype"]) for c in autotune.choices()]
    assert sorted(seen) == sorted((stride, padding, dtype) for (stride, padding), dtype in cases)


def test_estimate_mode_and_memory_budget_never_measure(monkeypatch):
    monkeypatch.setattr(autotune, "measure", lambda *a, **k: pytest.fail("measured"))
    backend = get_backend("numpy")
    monkeypatch.setenv("XPNET_CONV_CHOICE", "estimate")
    monkeypatch.setattr(type(backend), "conv_choice", "measure")  # the override wins
    x, W, b = arrays(backend, *SPECTRAL_SHAPE)
    assert fast.conv2d_forward(backend.xp, x, W, b, *SAME)[1]["method"] == "spectral"
    monkeypatch.setenv("XPNET_CONV_CHOICE", "auto")
    monkeypatch.setattr(chooser, "SPECTRAL_BYTES", 1024)  # the spectral arrays do not fit
    assert fast.conv2d_forward(backend.xp, x, W, b, *SAME)[1]["method"] == "columns"


def test_auto_follows_the_backend(monkeypatch):
    backend = get_backend("numpy")
    monkeypatch.setattr(type(backend), "conv_choice", "measure")
    x, W, b = arrays(backend, *SPECTRAL_SHAPE)
    fast.conv2d_forward(backend.xp, x, W, b, *SAME)
    assert len(autotune.choices()) == 1


def test_bad_settings_are_refused(monkeypatch):
    backend = get_backend("numpy")
    x, W, b = arrays(backend, *SPECTRAL_SHAPE)
    monkeypatch.setenv("XPNET_CONV_CHOICE", "fastest")
    with pytest.raises(ConfigError, match="XPNET_CONV_CHOICE must be one of auto, estimate, measure"):
        fast.conv2d_forward(backend.xp, x, W, b, *SAME)
    monkeypatch.delenv("XPNET_CONV_CHOICE")
    with pytest.raises(ConfigError, match="method must be 'spectral' or 'columns'"):
        fast.conv2d_forward(backend.xp, x, W, b, *SAME, method="winograd")


def test_small_batches_of_3x3_kernels_go_by_frame_and_channels_and_5x5_stay_spectral():
    """The kernel-side term (chooser.kernel_side): at batch 16 the spectral route's per-bin kernel
    matrices cost more than a 3x3 direct GEMM saves on large frames or few channels, and less on
    small frames with tens of channels (docs/benchmarks.md, "Route choice"; KERNEL_PASS_FLOPS
    from both CPU kinds' runs of benchmarks/conv_routes.py)."""
    valid, same1, same2 = (0, 0, 0, 0), (1, 1, 1, 1), (2, 2, 2, 2)
    assert chooser.choose((16, 32, 26, 26), (64, 32, 3, 3), (1, 1), valid) == "columns"
    assert chooser.choose((16, 3, 32, 32), (32, 3, 3, 3), (1, 1), same1) == "columns"
    assert chooser.choose((16, 16, 28, 28), (32, 16, 3, 3), (1, 1), same1) == "columns"
    # the cnn3x3 benchmark's second layer: 0.83-0.88x of columns' time on the AVX-512 EPYC
    assert chooser.choose((16, 32, 13, 13), (64, 32, 3, 3), (1, 1), valid) == "spectral"
    assert chooser.choose((16, 64, 7, 7), (128, 64, 3, 3), (1, 1), same1) == "spectral"
    assert chooser.choose((128, 64, 11, 11), (64, 64, 3, 3), (1, 1), valid) == "spectral"
    for n in (16, 64, 128):
        assert chooser.choose((n, 6, 14, 14), (16, 6, 5, 5), (1, 1), valid) == "spectral"
        assert chooser.choose((n, 96, 14, 14), (128, 96, 5, 5), (1, 1), same2) == "spectral"
        assert chooser.choose((n, 16, 28, 28), (32, 16, 5, 5), (1, 1), same2) == "spectral"


def test_the_estimate_prices_the_cpus_three_multiply_products(monkeypatch):
    """From spectral.GAUSS_MIN_BATCH images (float32/float64) the CPU's per-bin products take three
    real GEMMs, and the estimate prices the channel mixing at three quarters; below it, and in
    half precision, at four."""
    args = (32, 64, 13, 13, 11, 11, 13, 13)
    for n in (95, 96, 128):
        full, gauss = (chooser.spectral_flops(n, *args, gauss=g) for g in (False, True))
        mix = 3 * n * 91 * 2 * (2 * 64) * (2 * 32)   # 91 bins; y, dW and dx each mix once
        assert full - gauss == mix // 4
    seen = []
    real = chooser.spectral_flops
    monkeypatch.setattr(chooser, "spectral_flops", lambda *a, **k: seen.append(k["gauss"]) or real(*a, **k))
    for n, itemsize in ((95, 4), (96, 4), (128, 8), (128, 2)):
        chooser.choose((n, 32, 13, 13), (64, 32, 3, 3), (1, 1), (0, 0, 0, 0), itemsize)
    assert seen == [False, True, True, False]
