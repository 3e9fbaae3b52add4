"""The spectral route's DFT frame (geometry.spectral_frame): the input plus the larger of each
axis's paddings, not both. Exact against the columns route in float64 for every gradient, and the
smallest such frame: one cell fewer on either axis of any case gives wrong numbers (so these tests
can fail), except on the one axis where the frame keeps more cells than that needs (SLACK).
And the CPU's three-multiply (Gauss) per-bin products, through the whole convolution: exact
against the columns route too, and taken by default from a batch of 96."""
import numpy as np
import pytest

from xpnet.backends import compiled
from xpnet.ops import fast, spectral
from xpnet.ops.geometry import padded_hw, spectral_frame

# (n, c, h, w, f, kh, kw, stride, (top, bottom, left, right)): "same" 5x5 and 3x3, valid, strides,
# lopsided paddings, padding larger than the kernel, one output per axis
CASES = [
    (2, 3, 14, 14, 4, 5, 5, (1, 1), (2, 2, 2, 2)),
    (2, 3, 28, 28, 4, 5, 5, (1, 1), (2, 2, 2, 2)),
    (2, 2, 13, 14, 3, 3, 3, (1, 1), (1, 1, 1, 1)),
    (2, 2, 12, 13, 3, 3, 3, (2, 2), (0, 1, 0, 1)),
    (2, 2, 11, 12, 3, 5, 5, (2, 2), (2, 2, 2, 2)),
    (2, 2, 9, 10, 3, 3, 3, (1, 1), (4, 1, 0, 3)),
    (2, 2, 10, 11, 3, 4, 4, (3, 3), (3, 2, 1, 2)),
    (1, 2, 7, 8, 2, 3, 3, (1, 1), (5, 5, 0, 0)),
    (1, 2, 4, 5, 2, 3, 3, (1, 1), (6, 0, 2, 7)),
    (1, 1, 3, 4, 2, 3, 3, (4, 4), (3, 3, 3, 3)),
]


def _grads(method, case, seed=0):
    n, c, h, w, f, kh, kw, stride, pad = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    W = rng.standard_normal((f, c, kh, kw))
    b = rng.standard_normal(f)
    y, cache = fast.conv2d_forward(np, x, W, b, stride, pad, method=method)
    dy = rng.standard_normal(y.shape)
    return (y,) + tuple(fast.conv2d_backward(np, dy, cache, True)), cache


def _error(got, want):
    return max(float(np.abs(a - e).max() / max(np.abs(e).max(), 1e-300)) for a, e in zip(got, want))


def test_frame_sizes():
    assert spectral_frame((14, 14), (5, 5), (1, 1), (2, 2, 2, 2)) == (16, 16)   # not 18
    assert spectral_frame((28, 28), (5, 5), (1, 1), (2, 2, 2, 2)) == (30, 30)   # not 32
    assert spectral_frame((13, 13), (3, 3), (1, 1), (0, 0, 0, 0)) == (13, 13)   # valid: as before
    assert spectral_frame((9, 10), (3, 3), (1, 1), (4, 1, 0, 3)) == (13, 13)
    assert spectral_frame((12, 13), (3, 3), (2, 2), (0, 1, 0, 1)) == (13, 13)   # not (13, 14)


@pytest.mark.parametrize("case", CASES)
def test_spectral_frame_gives_the_columns_route_numbers(case):
    got, cache = _grads("spectral", case)
    want, _ = _grads("columns", case)
    n, c, h, w, f, kh, kw, stride, pad = case
    assert cache["frame"] == spectral_frame((h, w), (kh, kw), stride, pad)
    assert _error(got, want) < 1e-12


# (case, axis) where one cell fewer is still exact: 5 + 5 padding around 7 rows, a 3-row kernel,
# stride 1 (15 outputs). Wrap-around needs 12 rows (the input after its leading padding, and the
# reads' reach less that padding), but the frame also keeps one row per output position, 15.
SLACK = {((1, 2, 7, 8, 2, 3, 3, (1, 1), (5, 5, 0, 0)), 0)}   # keyed by the case itself, not its place


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("index", range(len(CASES)))
def test_one_cell_less_is_wrong(monkeypatch, index, axis):
    """The frame is the smallest, per case and axis: shrunk by one cell on that axis, the numbers
    go wrong (wrap-around reaches the results). With the exactness above this pins each case's
    frame, so a frame larger than needed (the padded one, say, on strided axes only) fails here,
    and a smaller one fails above."""
    case = CASES[index]
    n, c, h, w, f, kh, kw, stride, pad = case

    def shrunk(hw, kernel, stride, padding):
        frame = list(spectral_frame(hw, kernel, stride, padding))
        frame[axis] -= 1
        return tuple(frame)

    assert all(slack in CASES for slack, _ in SLACK)   # a case edited away leaves no stale entry
    want, _ = _grads("columns", case)
    monkeypatch.setattr(spectral, "spectral_frame", shrunk)
    got, cache = _grads("spectral", case)
    assert cache["frame"] == shrunk((h, w), (kh, kw), stride, pad)   # the route took it
    error = _error(got, want)
    if (case, axis) in SLACK:
        assert error < 1e-12   # a tighter frame fails here: take the case out of SLACK
    else:
        assert error > 1e-3, error


def test_backward_takes_the_forward_frame(monkeypatch):
    """TIGHT_FRAME is read per forward pass; backward uses the frame forward kept, so a switch in
    between (benchmarks/ab_setting.py flips it between steps) cannot mix two frames."""
    case = CASES[0]
    want, _ = _grads("columns", case)
    n, c, h, w, f, kh, kw, stride, pad = case
    for first in (1, 0):
        rng = np.random.default_rng(0)   # the draws of _grads, in its order
        x, W = rng.standard_normal((n, c, h, w)), rng.standard_normal((f, c, kh, kw))
        b = rng.standard_normal(f)
        monkeypatch.setattr(spectral, "TIGHT_FRAME", first)
        y, cache = fast.conv2d_forward(np, x, W, b, stride, pad, method="spectral")
        frame = spectral_frame((h, w), (kh, kw), stride, pad) if first else padded_hw((h, w), pad)
        assert cache["frame"] == frame
        monkeypatch.setattr(spectral, "TIGHT_FRAME", 1 - first)
        got = (y,) + tuple(fast.conv2d_backward(np, rng.standard_normal(y.shape), cache, True))
        assert _error(got, want) < 1e-12


def _spy_gauss(monkeypatch, path, images):
    """(calls, least): a list that grows by one each time the three-GEMM products run on ``path``,
    and how long it must be after a forward and backward pass with dx: NumPy's passes (the compiled
    kernels off; a combine each for Y, G and dX) or the compiled kernels (one call each for the
    forward and the backward products; none for one image, whose products have one row and stay
    NumPy's; skipped where the kernels cannot run)."""
    calls = []
    if path == "numpy":
        monkeypatch.setattr(compiled, "ENABLED", 0)
        real = spectral._gauss_combine
        monkeypatch.setattr(spectral, "_gauss_combine", lambda *a: calls.append(1) or real(*a))
        return calls, 3
    if not compiled.available() or compiled.products() is None:
        pytest.skip("the compiled spectral products do not run here (numba or NumPy's wheels' BLAS missing)")

    def spy(kernel):
        return lambda *a: calls.append(1) or kernel(*a)
    monkeypatch.setattr(compiled, "_products", {kind: (pair[0], spy(pair[1]))
                                                for kind, pair in compiled.products().items()})
    return calls, 2 if images > 1 else 0


@pytest.mark.parametrize("path", ["numpy", "compiled"])
@pytest.mark.parametrize("case", CASES)
def test_three_multiplies_give_the_columns_route_numbers(monkeypatch, case, path):
    monkeypatch.setattr(spectral, "GAUSS_MIN_BATCH", 1)
    calls, least = _spy_gauss(monkeypatch, path, case[0])
    got, _ = _grads("spectral", case)
    want, _ = _grads("columns", case)
    assert len(calls) >= least and (least or not calls)   # three GEMMs a product, where expected
    assert _error(got, want) < 1e-12


def test_a_batch_of_96_takes_three_multiplies_by_default():
    """The default threshold: 96 images take the three-GEMM products, 95 the real form."""
    rng = np.random.default_rng(1)
    W = rng.standard_normal((3, 2, 3, 3))
    for n, gauss in ((96, True), (95, False)):
        x = rng.standard_normal((n, 2, 6, 6))
        y, cache = fast.conv2d_forward(np, x, W, None, (1, 1), (1, 1, 1, 1), method="spectral")
        assert spectral._three_multiply(cache["S"]) is gauss
        dy = rng.standard_normal(y.shape)
        dx, dW, _ = fast.conv2d_backward(np, dy, cache, True)
        y_c, cache_c = fast.conv2d_forward(np, x, W, None, (1, 1), (1, 1, 1, 1), method="columns")
        dx_c, dW_c, _ = fast.conv2d_backward(np, dy, cache_c, True)
        assert _error((y, dx, dW), (y_c, dx_c, dW_c)) < 1e-12
    half = np.zeros((4, 2 * 96, 3), dtype=np.float16)   # half precision keeps the real form
    assert spectral._three_multiply(half.astype(np.float32)) and not spectral._three_multiply(half)
    # ... in any operand: the sums of K's or DY's parts would be made in float16
    assert not spectral._three_multiply(half.astype(np.float32), half, half.astype(np.float64))
