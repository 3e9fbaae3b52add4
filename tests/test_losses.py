"""Losses: finite-difference gradients, PyTorch parity, shapes, target checks, no host syncs."""
import numpy as np
import pytest

from xpnet import losses
from xpnet.backends.strict_backend import COUNTERS
from xpnet.errors import ConfigError, DataError, ShapeError, TrainingError

N, K = 5, 4


def _log_softmax(x):
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _case(name, seed=0):
    """(loss, output, target) as host float64 / int64 arrays for a named case."""
    r = np.random.default_rng(seed)
    x = r.standard_normal((N, K)) * 2.0
    labels = r.integers(0, K, N)
    probs = np.exp(_log_softmax(r.standard_normal((N, K))))
    onehot = np.eye(K)[labels]
    return {
        "mse": (losses.MSE(), x, r.standard_normal((N, K))),
        "l1": (losses.L1Loss(), x, x + r.choice([-1.0, 1.0], (N, K)) * r.uniform(0.1, 1.0, (N, K))),
        "ce_labels": (losses.CrossEntropy(), x, labels),
        "ce_labels_smooth": (losses.CrossEntropy(label_smoothing=0.2), x, labels),
        "ce_onehot": (losses.CrossEntropy(), x, onehot),
        "ce_probs_smooth": (losses.CrossEntropy(label_smoothing=0.15), x, probs),
        # rows summing to 1 - 5e-4 (check_targets allows 1e-3): on rows summing to 1 the gradient
        # p * sum(q) - q is p - q, and a backward that dropped sum(q) passed every case
        "ce_probs_near": (losses.CrossEntropy(), x, probs * (1 - 5e-4)),
        "nll_labels": (losses.NLL(), _log_softmax(x), labels),
        "nll_probs": (losses.NLL(), _log_softmax(x), probs),
    }[name]


CASES = ["mse", "l1", "ce_labels", "ce_labels_smooth", "ce_onehot", "ce_probs_smooth", "ce_probs_near",
         "nll_labels", "nll_probs"]


def _value(backend, loss, x, t):
    return float(backend.to_numpy(loss.forward(backend.asarray(x), backend.asarray(t))))


@pytest.mark.parametrize("case", CASES)
def test_gradient_matches_finite_differences(backend, case):
    loss, x, t = _case(case)
    out = loss.forward(backend.asarray(x), backend.asarray(t))
    assert tuple(out.shape) == ()
    grad = backend.to_numpy(loss.backward())
    assert grad.shape == x.shape and grad.dtype == np.float64
    eps = 1e-6
    num = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp_, xm = x.copy(), x.copy()
        xp_[idx] += eps
        xm[idx] -= eps
        num[idx] = (_value(backend, loss, xp_, t) - _value(backend, loss, xm, t)) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)
    assert np.abs(grad).max() > 1e-3  # a real gradient, not zeros


def _torch_loss(case, tx, t):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    tt = torch.tensor(t)
    if case == "mse":
        return F.mse_loss(tx, tt)
    if case == "l1":
        return F.l1_loss(tx, tt)
    if case.startswith("ce"):
        smoothing = {"ce_labels_smooth": 0.2, "ce_probs_smooth": 0.15}.get(case, 0.0)
        return F.cross_entropy(tx, tt, label_smoothing=smoothing)
    if case == "nll_labels":
        return F.nll_loss(tx, tt)
    return -(tx * tt).sum() / tx.shape[0]  # NLL with probability rows: its definition


@pytest.mark.parametrize("case", CASES)
def test_matches_pytorch(backend, case):
    torch = pytest.importorskip("torch")
    loss, x, t = _case(case, seed=3)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ref = _torch_loss(case, tx, t)
    ref.backward()
    value = float(backend.to_numpy(loss.forward(backend.asarray(x), backend.asarray(t))))
    grad = backend.to_numpy(loss.backward())
    assert abs(value - ref.item()) <= 1e-6 * abs(ref.item())
    ref_grad = tx.grad.numpy()
    assert np.abs(grad - ref_grad).max() <= 1e-6 * np.abs(ref_grad).max()


def test_cross_entropy_is_stable_for_huge_logits(backend):
    x = np.array([[1000.0, 0.0, -1000.0], [-500.0, 500.0, 0.0]])
    loss = losses.CrossEntropy()
    value = float(backend.to_numpy(loss.forward(backend.asarray(x), backend.asarray(np.array([0, 0])))))
    assert value == pytest.approx(500.0)  # row 1 is exact, row 2 costs 1000
    grad = backend.to_numpy(loss.backward())
    assert np.isfinite(grad).all()
    np.testing.assert_allclose(grad, [[0, 0, 0], [-0.5, 0.5, 0]], atol=1e-12)


def test_float32_stays_float32_and_results_are_0d_device_arrays(backend):
    loss, x, t = _case("ce_labels_smooth")
    out = loss.forward(backend.asarray(x.astype(np.float32)), backend.asarray(t))
    assert isinstance(out, backend.xp.ndarray) and out.shape == () and out.dtype == np.float32
    assert loss.backward().dtype == np.float32
    mse = losses.MSE()
    out = mse.forward(backend.asarray(x.astype(np.float32)), backend.asarray(x))  # float64 target
    assert isinstance(out, backend.xp.ndarray) and out.dtype == np.float32


def test_mse_is_mean_over_all_elements(backend):
    x = np.arange(6.0).reshape(2, 3)
    value = _value(backend, losses.MSE(), x, np.zeros((2, 3)))
    assert value == pytest.approx((x ** 2).sum() / 6)


def test_l1_gradient_is_zero_where_output_equals_target(backend):
    """The l1 case keeps output and target apart (finite differences need no kink): where they
    are equal the gradient is 0, as torch's (a backward giving +1/n there passed every test)."""
    torch = pytest.importorskip("torch")
    x = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    t = np.array([[1.0, -1.0, 0.5], [0.0, 2.0, -1.0]])
    loss = losses.L1Loss()
    loss.forward(backend.asarray(x), backend.asarray(t))
    grad = backend.to_numpy(loss.backward())
    tx = torch.tensor(x, requires_grad=True)
    torch.nn.functional.l1_loss(tx, torch.tensor(t)).backward()
    np.testing.assert_array_equal(grad, tx.grad.numpy())
    assert (grad == 0).sum() == 4


@pytest.mark.parametrize("case", CASES)
def test_forward_and_backward_do_not_sync(case):
    from xpnet.backends import get_backend
    backend = get_backend("strict")
    loss, x, t = _case(case)
    x, t = backend.asarray(x), backend.asarray(t)
    before = COUNTERS["syncs"]
    loss.forward(x, t)
    loss.backward()
    assert COUNTERS["syncs"] == before


@pytest.mark.parametrize("loss,out_shape,target,dtype,words", [
    (losses.MSE(), (4, 3), (4, 2), "float64", ["(4, 3)", "(4, 2)"]),
    (losses.L1Loss(), (4, 3), (3, 4), "float64", ["(4, 3)", "(3, 4)"]),
    (losses.CrossEntropy(), (4, 3), (4,), "float64", ["integer", "float64"]),
    (losses.CrossEntropy(), (4, 3), (4, 2), "float64", ["(4, 3)", "(4, 2)"]),
    (losses.CrossEntropy(), (4, 3), (5,), "int64", ["(4, 3)", "(5,)"]),
    (losses.CrossEntropy(), (12,), (12,), "int64", ["(N, K)", "(12,)"]),
    (losses.NLL(), (4, 3, 2), (4,), "int64", ["(N, K)", "(4, 3, 2)"]),
])
def test_bad_shapes_raise_shape_error(backend, loss, out_shape, target, dtype, words):
    out = backend.asarray(np.zeros(out_shape))
    tgt = backend.asarray(np.zeros(target, dtype=dtype))
    with pytest.raises(ShapeError) as info:
        loss.forward(out, tgt)
    for w in words:
        assert w in str(info.value)


def test_check_targets(backend):
    ce = losses.CrossEntropy()
    ce.check_targets(backend.asarray(np.array([0, 3, 2])), num_classes=4)
    with pytest.raises(DataError, match=r"\[0, 4\).*0 to 4"):
        ce.check_targets(backend.asarray(np.array([0, 4, 2])), num_classes=4)
    with pytest.raises(DataError, match="-1"):
        losses.NLL().check_targets(backend.asarray(np.array([-1, 1])), num_classes=4)
    ce.check_targets(backend.asarray(np.eye(3)), num_classes=3)
    with pytest.raises(DataError, match="sum to 1"):
        ce.check_targets(backend.asarray(np.full((2, 3), 0.5)), num_classes=3)
    with pytest.raises(ShapeError, match="3 columns"):
        ce.check_targets(backend.asarray(np.eye(3)), num_classes=10)
    losses.MSE().check_targets(backend.asarray(np.ones((2, 2))))
    with pytest.raises(DataError, match="NaN"):
        losses.MSE().check_targets(backend.asarray(np.array([1.0, np.nan])))


def test_get_names_aliases_and_configs():
    assert isinstance(losses.get("mse"), losses.MSE)
    assert isinstance(losses.get("MAE"), losses.L1Loss) and isinstance(losses.get("l1"), losses.L1Loss)
    for name in ("cross_entropy", "categorical_crossentropy", "sparse_categorical_crossentropy"):
        assert isinstance(losses.get(name), losses.CrossEntropy)
    assert isinstance(losses.get("nll"), losses.NLL)
    ce = losses.CrossEntropy(label_smoothing=0.1)
    assert losses.get(ce) is ce
    again = losses.get(ce.get_config())
    assert isinstance(again, losses.CrossEntropy) and again.label_smoothing == 0.1
    assert losses.get("cross_entropy", label_smoothing=0.3).label_smoothing == 0.3
    with pytest.raises(ConfigError, match="unknown loss 'hinge'.*mse"):
        losses.get("hinge")
    with pytest.raises(ConfigError, match="label_smoothing"):
        losses.CrossEntropy(label_smoothing=1.5)
    with pytest.raises(ConfigError, match="MSE"):
        losses.get("mse", label_smoothing=0.1)


def test_backward_before_forward_is_an_error():
    with pytest.raises(TrainingError, match="before forward"):
        losses.CrossEntropy().backward()
