"""Launch count: the strict backend counts array operations (kernel launches on a GPU), and one
training step of the default model stays under a budget (benchmarks/launches.py is the figure)."""
import os
import sys

import numpy as np
import pytest

from xpnet.backends import get_backend
from xpnet.backends import strict_backend as sb

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import launches  # noqa: E402

from .test_pool_winners import tiny_chunks  # noqa: E402,F401  (a fixture)

# seed001-tf: 725 per step before the flat optimizer update (benchmarks/results/*-launches-before.json),
# 375 with it, the four augmentation corners in one gather, cached splitmix64 steps and the
# few-launch conv layouts (*-launches-fewer-launches.json); 136 with the fused kernels of
# backends/cupy_kernels.py (a fused method counts as the launches its CuPy implementation makes)
BUDGET = 150


def calls(fn):
    before = sb.LAUNCHES["calls"]
    fn()
    return sb.LAUNCHES["calls"] - before


def test_the_counter_counts_operations_and_not_views():
    xp = get_backend("strict").xp
    a = xp.asarray(np.arange(12.0).reshape(3, 4))
    idx = xp.asarray(np.array([0, 2]))
    assert calls(lambda: a + 1.0) == 1
    assert calls(lambda: xp.exp(a)) == 1
    assert calls(lambda: a.sum(axis=0)) == 1
    assert calls(lambda: a[idx]) == 1  # a gather
    assert calls(lambda: a.__setitem__(0, 5.0)) == 1
    assert calls(lambda: a.reshape(4, 3)) == 0
    assert calls(lambda: a[1:, ::2]) == 0
    assert calls(lambda: a.T) == 0
    assert get_backend("strict").calls == sb.LAUNCHES["calls"]


def test_a_default_model_step_is_under_budget_whatever_the_batch_size():
    small, large = launches.count_step("seed001-tf", 8), launches.count_step("seed001-tf", 32)
    assert small["launches"] == large["launches"] < BUDGET
    assert small["syncs"] == 0 and small["transfers"] == 0


def test_the_figure_names_where_the_launches_come_from(tmp_path):
    result = launches.main(["--models", "quick-mlp", "--batch-sizes", "4", "--out", str(tmp_path)])
    row = result["results"][0]
    assert row["launches"] == sum(row["by_function"].values()) > 0
    assert "numpy" in result["machine"] and result["machine"]["cpus"]
    assert len(list(tmp_path.glob("*-launches.json"))) == 1


@pytest.mark.parametrize("shape, kernel, padding", [((3, 1, 12, 12), 5, (2, 2, 2, 2)),
                                                    ((2, 6, 9, 9), 3, (1, 1, 1, 1))])
def test_few_launch_layouts_give_the_same_bits_as_the_cpu_ones(monkeypatch, tiny_chunks, shape, kernel,  # noqa: F811
                                                               padding):
    """Columns by one gather of cached offsets and planes to and from NCHW by one strided copy
    (what GPUs and the strict backend use) against the CPU's slice loops and blocks, on the same
    NumPy arrays; the blocks split over 3 threads (tiny_chunks), as large arrays' are."""
    from xpnet.backends.numpy_backend import NumpyBackend
    from xpnet.ops import columns, layout
    r = np.random.default_rng(0)
    x = r.standard_normal(shape).astype(np.float32)
    W = r.standard_normal((4, shape[1], kernel, kernel)).astype(np.float32)
    planes = r.standard_normal((7, 5, 3, 2)).astype(np.float32)
    z = r.standard_normal((5, 2, 3, 4)).astype(np.float32)
    monkeypatch.setattr(layout, "TO_PLANES_BLOCK", 4)   # the CPU's transpose into planes in blocks
    results = []
    for few in (False, True):
        monkeypatch.setattr(NumpyBackend, "few_launches", few)
        y, cache = columns.forward(np, x, W, None, (1, 1), padding)
        cache.update(stride=(1, 1), padding=padding)
        dx, dW = columns.backward(np, np.ones_like(y), dict(cache, columns=None), True)
        results.append((y, dx, dW, layout.from_planes(np, planes), layout.to_planes(np, x),
                        layout.to_planes(np, x[:, :, ::2]),    # not contiguous: one strided copy
                        layout.to_planes(np, z)))   # 10 planes: blocks of 4, 4 and 2
    assert np.array_equal(results[0][4], x.transpose(2, 3, 0, 1))
    for a, b in zip(*results):
        assert np.array_equal(a, b)


def test_a_fused_method_counts_as_its_cuda_launches_and_runs_the_reference():
    """relu_forward on the strict backend: the reference's two operations (maximum, compare),
    counted as the one launch of the CuPy kernel; the numbers are the reference's."""
    from xpnet.backends import Backend
    from xpnet.backends.cupy_kernels import LAUNCHES
    strict = get_backend("strict")
    x = strict.xp.asarray(np.array([[-1.0, 2.0], [np.nan, 0.0]], dtype=np.float32))
    assert calls(lambda: Backend.relu_forward(strict, x)) == 2
    assert calls(lambda: strict.relu_forward(x)) == LAUNCHES["relu_forward"] == 1
    (y, m), (ry, rm) = strict.relu_forward(x), Backend.relu_forward(strict, x)
    assert np.array_equal(y.get(), ry.get(), equal_nan=True) and np.array_equal(m.get(), rm.get())
    assert calls(lambda: strict.xp.empty((3, 4))) == 0  # an allocation launches nothing


def test_the_spectral_route_gives_the_same_bits_with_gpu_layouts(monkeypatch):
    """What few-launch backends do differently in the spectral route (the DFT matrices as
    contiguous stacks for a strided-batched GEMM, the backward's products with transposed operands
    through Backend.matmul_t) gives the CPU path's bits."""
    from xpnet.backends.numpy_backend import NumpyBackend
    from xpnet.ops import spectral
    r = np.random.default_rng(2)
    x = r.standard_normal((3, 4, 10, 9)).astype(np.float32)
    W = r.standard_normal((5, 4, 3, 3)).astype(np.float32)
    b = r.standard_normal(5).astype(np.float32)
    runs = []
    for few in (False, True):
        monkeypatch.setattr(NumpyBackend, "few_launches", few)
        y, kept = spectral.forward(np, x, W, b, (1, 1), (1, 1, 1, 1))
        cache = dict(kept, x_shape=x.shape, w_shape=W.shape, stride=(1, 1), padding=(1, 1, 1, 1),
                     has_bias=True)
        runs.append((y,) + spectral.backward(np, np.ones_like(y) * 0.5 + y, cache, True))
    for a, c in zip(*runs):
        assert np.array_equal(a, c)


def test_the_im2col_chunk_limit_is_the_backends(monkeypatch):
    from xpnet.backends.numpy_backend import NumpyBackend
    from xpnet.ops import columns
    x = np.zeros((8, 3, 10, 10), dtype=np.float32)
    per_image = 3 * 9 * 64 * 4
    monkeypatch.setattr(columns, "COLUMN_BYTES", 2 * per_image)
    assert columns._chunk(8, per_image, x) == 2                  # the CPU default
    monkeypatch.setattr(NumpyBackend, "column_bytes", 8 * per_image)
    assert columns._chunk(8, per_image, x) == 8                  # the backend's own limit
