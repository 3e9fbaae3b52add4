"""The reference conv/pool ops against torch.nn.functional (float64), on every backend."""
import numpy as np
import pytest

from xpnet.ops import reference as ref

torch = pytest.importorskip("torch")
F = torch.nn.functional

CONV_CASES = [  # (N, C, H, W), (F, kh, kw), stride, padding (top, bottom, left, right)
    ((2, 3, 7, 7), (4, 3, 3), (1, 1), (0, 0, 0, 0)),
    ((2, 3, 7, 7), (4, 3, 3), (1, 1), (1, 1, 1, 1)),
    ((2, 2, 9, 8), (3, 3, 2), (2, 3), (1, 2, 0, 1)),
    ((1, 1, 6, 5), (2, 5, 5), (1, 1), (2, 2, 2, 2)),
    ((3, 2, 8, 6), (5, 2, 4), (3, 2), (0, 1, 2, 0)),
    ((2, 3, 5, 5), (2, 1, 1), (2, 2), (0, 0, 0, 0)),
]
POOL_CASES = [  # (N, C, H, W), pool, stride
    ((2, 3, 8, 8), (2, 2), (2, 2)),
    ((2, 2, 7, 9), (3, 2), (2, 1)),
    ((1, 3, 6, 6), (3, 3), (1, 1)),
    ((2, 1, 5, 7), (2, 3), (3, 2)),
]


def rel(a, b):
    b = np.asarray(b)
    return np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b), 1e-300)


def t(a, grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


@pytest.mark.parametrize("x_shape,w_shape,stride,padding", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_matches_torch(backend, rng, x_shape, w_shape, stride, padding, bias):
    f, kh, kw = w_shape
    x = rng.standard_normal(x_shape)
    W = rng.standard_normal((f, x_shape[1], kh, kw))
    b = rng.standard_normal(f) if bias else None
    xp = backend.xp
    y, cache = ref.conv2d_forward(xp, backend.asarray(x), backend.asarray(W),
                                  None if b is None else backend.asarray(b), stride, padding)
    tx, tW = t(x, True), t(W, True)
    tb = t(b, True) if bias else None
    top, bottom, left, right = padding
    ty = F.conv2d(F.pad(tx, (left, right, top, bottom)), tW, tb, stride=stride)
    assert tuple(y.shape) == tuple(ty.shape)
    assert rel(backend.to_numpy(y), ty.detach().numpy()) < 1e-12
    dy = rng.standard_normal(tuple(ty.shape))
    ty.backward(t(dy))
    dx, dW, db = ref.conv2d_backward(xp, backend.asarray(dy), cache)
    assert tuple(dx.shape) == x_shape
    assert rel(backend.to_numpy(dx), tx.grad.numpy()) < 1e-12
    assert rel(backend.to_numpy(dW), tW.grad.numpy()) < 1e-12
    if bias:
        assert rel(backend.to_numpy(db), tb.grad.numpy()) < 1e-12
    else:
        assert db is None
    dx2, dW2, _ = ref.conv2d_backward(xp, backend.asarray(dy), cache, need_dx=False)
    assert dx2 is None and rel(backend.to_numpy(dW2), tW.grad.numpy()) < 1e-12


@pytest.mark.parametrize("bias", [False, True])
def test_conv2d_keeps_float32(backend, rng, bias):
    xp = backend.xp
    x = backend.asarray(rng.standard_normal((1, 2, 5, 5)).astype(np.float32))
    W = backend.asarray(rng.standard_normal((3, 2, 3, 3)).astype(np.float32))
    b = backend.asarray(rng.standard_normal(3).astype(np.float32)) if bias else None
    y, cache = ref.conv2d_forward(xp, x, W, b, (1, 1), (1, 1, 1, 1))
    dx, dW, db = ref.conv2d_backward(xp, xp.ones_like(y), cache)
    assert y.dtype == dx.dtype == dW.dtype == np.float32
    assert (db is None) if not bias else db.dtype == np.float32


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_keeps_float32(backend, rng, kind):
    fwd, bwd = {"max": (ref.maxpool2d_forward, ref.maxpool2d_backward),
                "avg": (ref.avgpool2d_forward, ref.avgpool2d_backward)}[kind]
    x = backend.asarray(rng.standard_normal((2, 3, 7, 6)).astype(np.float32))
    y, cache = fwd(backend.xp, x, (3, 2), (2, 2))
    dx = bwd(backend.xp, backend.xp.ones_like(y), cache)
    assert y.dtype == dx.dtype == np.float32 and tuple(dx.shape) == (2, 3, 7, 6)


@pytest.mark.parametrize("x_shape,pool,stride", POOL_CASES)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_matches_torch(backend, rng, x_shape, pool, stride, kind):
    x = rng.standard_normal(x_shape)
    fwd, bwd = {"max": (ref.maxpool2d_forward, ref.maxpool2d_backward),
                "avg": (ref.avgpool2d_forward, ref.avgpool2d_backward)}[kind]
    torch_fn = F.max_pool2d if kind == "max" else F.avg_pool2d
    y, cache = fwd(backend.xp, backend.asarray(x), pool, stride)
    tx = t(x, True)
    ty = torch_fn(tx, pool, stride)
    assert tuple(y.shape) == tuple(ty.shape)
    assert rel(backend.to_numpy(y), ty.detach().numpy()) < 1e-12
    dy = rng.standard_normal(tuple(ty.shape))
    ty.backward(t(dy))
    dx = bwd(backend.xp, backend.asarray(dy), cache)
    assert rel(backend.to_numpy(dx), tx.grad.numpy()) < 1e-12


def test_maxpool_ties_go_to_first_maximum(backend):
    """Documented behaviour: a tied window sends its whole gradient to its first maximum in
    row-major order, the same element PyTorch's CPU max_pool2d picks."""
    x = np.array([[[[1, 3, 3, 0], [3, 2, 0, 0], [5, 5, 1, 1], [5, 5, 1, 1]]]], dtype=np.float64)
    y, cache = ref.maxpool2d_forward(backend.xp, backend.asarray(x), (2, 2), (2, 2))
    dx = backend.to_numpy(ref.maxpool2d_backward(backend.xp, backend.asarray(np.ones((1, 1, 2, 2))), cache))
    expected = np.array([[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], dtype=np.float64)
    np.testing.assert_array_equal(backend.to_numpy(y)[0, 0], [[3, 3], [5, 1]])
    np.testing.assert_array_equal(dx[0, 0], expected)
    tx = t(x, True)
    F.max_pool2d(tx, 2).sum().backward()
    np.testing.assert_array_equal(dx, tx.grad.numpy())


def test_maxpool_nan_counts_as_the_maximum(backend):
    """Documented behaviour: a NaN in a window is its maximum, so the output is NaN and the
    window's gradient goes to the NaN (not to the largest number), as in PyTorch."""
    nan = np.nan
    x = np.array([[[[1, 9, 3, 0], [nan, 2, 4, 1], [5, 6, 1, 1], [7, 8, 1, nan]]]], dtype=np.float64)
    y, cache = ref.maxpool2d_forward(backend.xp, backend.asarray(x), (2, 2), (2, 2))
    dx = backend.to_numpy(ref.maxpool2d_backward(backend.xp, backend.asarray(np.ones((1, 1, 2, 2))), cache))
    np.testing.assert_array_equal(backend.to_numpy(y)[0, 0], [[nan, 4], [8, nan]])
    expected = np.array([[0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 1]], dtype=np.float64)
    np.testing.assert_array_equal(dx[0, 0], expected)
    tx = t(x, True)
    ty = F.max_pool2d(tx, 2)
    ty.sum().backward()
    np.testing.assert_array_equal(backend.to_numpy(y), ty.detach().numpy())
    np.testing.assert_array_equal(dx, tx.grad.numpy())


def test_maxpool_ties_with_overlapping_windows(backend):
    x = np.zeros((1, 1, 3, 4))
    _, cache = ref.maxpool2d_forward(backend.xp, backend.asarray(x), (2, 2), (1, 1))
    dx = backend.to_numpy(ref.maxpool2d_backward(backend.xp, backend.asarray(np.ones((1, 1, 2, 3))), cache))
    np.testing.assert_array_equal(dx[0, 0], [[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]])
    tx = t(x, True)
    F.max_pool2d(tx, 2, 1).sum().backward()
    np.testing.assert_array_equal(dx, tx.grad.numpy())


def test_ops_dispatcher_can_select_reference():
    from xpnet import ops
    from xpnet.errors import ConfigError
    from xpnet.ops import fast
    before = ops.current()
    try:
        ops.use("reference")
        assert ops.conv2d_forward is ref.conv2d_forward
        assert ops.maxpool2d_backward is ref.maxpool2d_backward
        assert ops.current() == "reference"
        assert len(ops.NAMES) == 6 and all(getattr(ops, n) is getattr(ref, n) for n in ops.NAMES)
        ops.use("fast")
        assert ops.current() == "fast"
        assert all(getattr(ops, n) is getattr(fast, n) is not getattr(ref, n) for n in ops.NAMES)
        with pytest.raises(ConfigError, match="unknown ops implementation 'slow'"):
            ops.use("slow")
        assert ops.current() == "fast" and ops.conv2d_forward is fast.conv2d_forward
    finally:
        if before:
            ops.use(before)
