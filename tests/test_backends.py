import numpy as np
import pytest

import xpnet
from xpnet.backends import get_backend
from xpnet.backends.strict_backend import COUNTERS, StrictArray


def test_names_and_aliases():
    assert get_backend("cpu") is get_backend("numpy")
    assert get_backend("strict").name == "strict"
    assert get_backend("auto").name in ("numpy", "cupy")


def test_unknown_backend_message():
    with pytest.raises(xpnet.BackendError, match=r"unknown backend 'tpu'.*cpu.*gpu.*strict"):
        get_backend("tpu")


def test_missing_gpu_names_the_extra():
    from xpnet.backends.cupy_backend import gpu_available
    if gpu_available():
        pytest.skip("a GPU is present here")
    with pytest.raises(xpnet.BackendError, match=r"pip install -e '\.\[cuda12\]'"):
        get_backend("gpu")


def test_strict_refuses_implicit_conversion():
    xp = get_backend("strict").xp
    a = xp.arange(6, dtype=xp.float32).reshape(2, 3)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.mean(a)
    # NumPy's operators defer to ours (__array_ufunc__ = None), which refuse the NumPy operand as CuPy does
    with pytest.raises(TypeError, match="Unsupported type.*numpy.ndarray"):
        a + np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match="Unsupported type.*numpy.ndarray"):
        np.ones((2, 3), np.float32) * a
    with pytest.raises(TypeError, match="Unsupported type.*numpy.ndarray"):
        a[np.array([0, 1])]


def test_strict_behaves_like_an_array():
    backend = get_backend("strict")
    xp = backend.xp
    a = xp.arange(6, dtype=xp.float64).reshape(2, 3)
    b = (a * 2 + 1) @ a.T
    assert isinstance(b, StrictArray) and b.shape == (2, 2)
    s = a.sum()
    assert isinstance(s, StrictArray) and s.ndim == 0  # reductions stay on the device, like CuPy
    before = COUNTERS["syncs"]
    assert float(s) == 15.0
    assert COUNTERS["syncs"] == before + 1
    a[0, 1] = 7.0
    a += 1
    np.testing.assert_array_equal(backend.to_numpy(a), [[1, 8, 3], [4, 5, 6]])
    xp.add.at(a, (xp.asarray(np.array([0, 0])), xp.asarray(np.array([0, 0]))), 1.0)
    assert float(a[0, 0]) == 3.0
    row = a[1]  # basic indexing gives a view, as CuPy's does (the optimizer's flat buffer relies on it)
    row += 1
    np.testing.assert_array_equal(backend.to_numpy(a)[1], [5, 6, 7])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_random_is_identical_on_every_backend(dtype):
    """Uniform, integer and permutation draws are integer arithmetic: bit-identical everywhere.
    Normal draws use float64 log1p/cos/sin, which CUDA computes to within 2 ulp where glibc is
    (nearly) correctly rounded: float64 normals agree to NORMAL_ULPS, float32 ones to 1 ulp
    (tests/test_random_tolerance.py derives both bounds)."""
    from tests.test_random_tolerance import NORMAL_ULPS
    outs = []
    for name in xpnet.available_backends():
        b = get_backend(name)
        r = b.rng(42, stream=7)
        outs.append([b.to_numpy(r.random((3, 5), dtype)), b.to_numpy(r.normal(0, 1, (7,), dtype)),
                     b.to_numpy(r.integers(0, 10, (20,))), b.to_numpy(r.permutation(50))])
    for other in outs[1:]:
        for i, (x, y) in enumerate(zip(outs[0], other)):
            if i == 1:
                np.testing.assert_array_max_ulp(x, y, maxulp=NORMAL_ULPS[dtype])
            else:
                np.testing.assert_array_equal(x, y)


def test_random_statistics_and_state():
    b = get_backend("cpu")
    r = b.rng(0)
    u = r.random(200_000)
    assert 0.0 <= u.min() and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.01
    n = r.normal(0, 1, 200_001, "float64")
    assert abs(n.mean()) < 0.01 and abs(n.std() - 1) < 0.01
    assert sorted(r.permutation(100).tolist()) == list(range(100))
    state = r.get_state()
    first = r.random(10)
    r.set_state(state)
    np.testing.assert_array_equal(first, r.random(10))
    assert not np.array_equal(b.rng(0).random(10), b.rng(1).random(10))


def test_backend_of_names_the_owner_of_an_array():
    from xpnet.backends import backend_of
    for name in ("numpy", "strict"):
        b = get_backend(name)
        assert backend_of(b.asarray(np.zeros(3))) is b
        assert backend_of(b.xp.zeros(())) is b
    assert backend_of(np.float64(1.0)) is get_backend("numpy")
    with pytest.raises(xpnet.ShapeError, match=r"expected an array of a backend.*list.*backend\.asarray"):
        backend_of([1.0, 2.0])


def test_out_of_memory_is_recognised_by_the_backends():
    from xpnet.backends import Backend, is_out_of_memory
    from xpnet.backends.cupy_backend import CupyBackend
    oom = type("OutOfMemoryError", (MemoryError,), {})("Out of memory allocating 1,073,741,824 bytes")
    cublas = type("CUBLASError", (RuntimeError,), {"__module__": "cupy_backends.cuda.libs.cublas"})
    assert CupyBackend.is_out_of_memory(oom) and CupyBackend.is_out_of_memory(cublas("CUBLAS_STATUS_ALLOC_FAILED"))
    assert not CupyBackend.is_out_of_memory(cublas("CUBLAS_STATUS_EXECUTION_FAILED"))
    assert not Backend.is_out_of_memory(oom) and not get_backend("numpy").is_out_of_memory(MemoryError())
    assert is_out_of_memory(oom) and not is_out_of_memory(ZeroDivisionError())


@pytest.mark.parametrize("name", ["numpy", "strict"])
def test_compile_hands_the_models_backend_to_loss_and_optimizer(name):
    from xpnet.layers import Dense
    model = xpnet.Sequential([Dense(2)], input_shape=(3,), device=name)
    model.compile(loss="mse", optimizer="sgd")
    assert model.loss.backend is model.backend and model.optimizer.backend is model.backend
    assert model.optimizer.xp is model.backend.xp
