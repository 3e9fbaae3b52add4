"""xpnet.ops.fast against xpnet.ops.reference and torch.nn.functional (float64), plus float32."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, strategies as st

from xpnet.backends.strict_backend import COUNTERS
from xpnet.errors import ShapeError
from xpnet.ops import autotune, dft, fast, reference as ref

from .helpers import fuzz_settings

SETTINGS = fuzz_settings(max_examples=6, deadline=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture])
METHODS = ("spectral", "columns")


def host(backend, a):
    return None if a is None else np.asarray(backend.to_numpy(a), dtype=np.float64)


def rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.fixture(params=METHODS)
def method(request, monkeypatch):
    """Every convolution of the test takes this route (autotune.method_for is what fast asks), and
    the test fails if none did: the routes' forward passes are counted."""
    monkeypatch.setattr(autotune, "method_for", lambda *a, **k: request.param)
    ran = []
    for name in METHODS:
        module = getattr(fast, name)
        real = module.forward
        monkeypatch.setattr(module, "forward", lambda *a, _real=real, _name=name, **k: ran.append(_name) or _real(*a, **k))
    yield request.param
    assert ran and set(ran) == {request.param}, f"routes that ran: {sorted(set(ran))}"


@st.composite
def conv_case(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pad = tuple(draw(st.integers(0, 3)) for _ in range(4))
    h = draw(st.integers(max(1, kh - pad[0] - pad[1]), 11))
    w = draw(st.integers(max(1, kw - pad[2] - pad[3]), 11))
    n, c, f = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return (n, c, h, w), (f, c, kh, kw), (sh, sw), pad, draw(st.booleans())


def torch_conv(x, W, b, stride, pad, dy):
    """PyTorch's conv2d output and (dx, dW, db) for the loss sum(y * dy)."""
    xt = torch.tensor(x, requires_grad=True)
    Wt = torch.tensor(W, requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)
    top, bottom, left, right = pad
    y = torch.nn.functional.conv2d(torch.nn.functional.pad(xt, (left, right, top, bottom)), Wt, bt,
                                   stride=stride)
    (y * torch.tensor(dy)).sum().backward()
    return y.detach().numpy(), xt.grad.numpy(), Wt.grad.numpy(), None if bt is None else bt.grad.numpy()


def run_fast(backend, x, W, b, stride, pad, dy=None, need_dx=True):
    xp = backend.xp
    y, cache = fast.conv2d_forward(xp, backend.asarray(x), backend.asarray(W),
                                   None if b is None else backend.asarray(b), stride, pad)
    if dy is None:
        return y, cache
    return y, fast.conv2d_backward(xp, backend.asarray(dy), cache, need_dx=need_dx)


@SETTINGS
@given(case=conv_case(), seed=st.integers(0, 2 ** 16))
def test_conv_matches_reference_and_torch_float64(backend, method, case, seed):
    x_shape, w_shape, stride, pad, bias = case
    rng = np.random.default_rng(seed)
    x, W = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0]) if bias else None
    y_t, dx_t, dW_t, db_t = torch_conv(x, W, b, stride, pad, np.zeros(1))
    dy = rng.standard_normal(y_t.shape)
    y_t, dx_t, dW_t, db_t = torch_conv(x, W, b, stride, pad, dy)
    y, (dx, dW, db) = run_fast(backend, x, W, b, stride, pad, dy)
    xp = backend.xp
    y_r, cache_r = ref.conv2d_forward(xp, backend.asarray(x), backend.asarray(W),
                                      None if b is None else backend.asarray(b), stride, pad)
    dx_r, dW_r, db_r = ref.conv2d_backward(xp, backend.asarray(dy), cache_r)
    assert y.dtype == xp.float64 and tuple(y.shape) == y_t.shape
    for mine, theirs, judge in ((y, y_t, y_r), (dx, dx_t, dx_r), (dW, dW_t, dW_r)):
        assert rel(host(backend, mine), theirs) < 1e-10
        assert rel(host(backend, mine), host(backend, judge)) < 1e-10
    if bias:
        assert rel(host(backend, db), db_t) < 1e-12
    else:
        assert db is None


def test_conv_big_model_shapes_float32(backend, method):
    """5x5 "same" convolutions as in the benchmark CNN, float32 in and out, close to float64 torch."""
    rng = np.random.default_rng(3)
    for c, f, h in ((3, 8, 28), (8, 12, 14)):
        x = rng.standard_normal((4, c, h, h))
        W = rng.standard_normal((f, c, 5, 5)) * 0.2
        b = rng.standard_normal(f)
        dy = rng.standard_normal((4, f, h, h))
        y_t, dx_t, dW_t, db_t = torch_conv(x, W, b, (1, 1), (2, 2, 2, 2), dy)
        f32 = lambda a: a.astype(np.float32)  # noqa: E731
        y, (dx, dW, db) = run_fast(backend, f32(x), f32(W), f32(b), (1, 1), (2, 2, 2, 2), f32(dy))
        for a in (y, dx, dW, db):
            assert a.dtype == np.float32
        for mine, theirs in ((y, y_t), (dx, dx_t), (dW, dW_t), (db, db_t)):
            assert rel(host(backend, mine), theirs) < 2e-5


def test_need_dx_false_skips_input_gradient(backend, method):
    rng = np.random.default_rng(1)
    x, W, b = rng.standard_normal((2, 3, 9, 9)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    dy = rng.standard_normal((2, 4, 9, 9))
    _, (dx, dW, db) = run_fast(backend, x, W, b, (1, 1), (1, 1, 1, 1), dy, need_dx=False)
    _, _, dW_t, db_t = torch_conv(x, W, b, (1, 1), (1, 1, 1, 1), dy)
    assert dx is None
    assert rel(host(backend, dW), dW_t) < 1e-10 and rel(host(backend, db), db_t) < 1e-12


def test_conv_never_syncs_with_the_host(method):
    from xpnet.backends import get_backend
    strict = get_backend("strict")
    rng = np.random.default_rng(2)
    x, W = strict.asarray(rng.standard_normal((2, 3, 10, 10))), strict.asarray(rng.standard_normal((5, 3, 5, 5)))
    b, dy = strict.asarray(rng.standard_normal(5)), strict.asarray(rng.standard_normal((2, 5, 10, 10)))
    before = COUNTERS["syncs"]
    for _ in range(2):
        _, cache = fast.conv2d_forward(strict.xp, x, W, b, (1, 1), (2, 2, 2, 2))
        fast.conv2d_backward(strict.xp, dy, cache)
    assert COUNTERS["syncs"] == before


def test_choose_prefers_spectral_for_wide_5x5_and_columns_for_one_channel():
    assert fast.choose((128, 32, 28, 28), (64, 32, 5, 5), (1, 1), (2, 2, 2, 2)) == "spectral"
    assert fast.choose((128, 1, 28, 28), (32, 1, 5, 5), (1, 1), (2, 2, 2, 2)) == "columns"
    assert fast.choose((128, 64, 14, 14), (64, 64, 1, 1), (1, 1), (0, 0, 0, 0)) == "columns"
    # 768 -> 768 channels would need ~1 GB of per-bin kernel matrices and spectra (144 bins of the
    # 16x16 frame); 512 -> 512 needs 0.53 GB there, under the 512 MiB budget (0.66 GB with the
    # 18x18 frame's 180 bins before 2026-12-02)
    assert fast.choose((128, 768, 14, 14), (768, 768, 5, 5), (1, 1), (2, 2, 2, 2)) == "columns"


def test_dft_matrices_match_numpy_fft():
    """The spectrum of a padded frame equals numpy.fft's, so the transforms are the DFT."""
    rng = np.random.default_rng(4)
    h, w, hp, wp = 5, 6, 9, 8
    a = rng.standard_normal((h, w))
    frame = np.zeros((hp, wp))
    frame[2:2 + h, 1:1 + w] = a
    spec = dft.spectrum(np, a.reshape(h, w, 1, 1), dft.forward_h(np, np.dtype("float64"), h, 2, 1, hp),
                        dft.forward_w(np, np.dtype("float64"), w, 1, 1, wp), hp, wp)[..., 0, 0]
    expect = np.fft.fft2(frame)[: hp // 2 + 1]
    assert np.allclose(spec[:, :, 0] + 1j * spec[:, :, 1], expect, atol=1e-12)
    back = dft.image(np, spec.reshape(hp // 2 + 1, wp, 2, 1, 1),
                     dft.inverse_w(np, np.dtype("float64"), w, 1, 1, wp),
                     dft.inverse_h(np, np.dtype("float64"), h, 2, 1, hp, wp), h, w)[..., 0, 0]
    assert np.allclose(back, a, atol=1e-12)


def test_conv_errors_name_the_problem(backend):
    xp = backend.xp
    x, W = xp.zeros((2, 3, 8, 8)), xp.zeros((4, 2, 3, 3))
    with pytest.raises(ShapeError, match="3 channels but W expects 2"):
        fast.conv2d_forward(xp, x, W, None, (1, 1), (0, 0, 0, 0))
    with pytest.raises(ShapeError, match="larger than the padded input"):
        fast.conv2d_forward(xp, x, xp.zeros((4, 3, 9, 9)), None, (1, 1), (0, 0, 0, 0))
    with pytest.raises(ShapeError, match="another implementation"):
        fast.conv2d_backward(xp, xp.zeros((2, 4, 6, 6)), ("not", "ours"))
    # an empty batch (or no channels, no filters): every route failed inside (UnboundLocalError in
    # the columns routes, ZeroDivisionError in the spectral one); now one clear error before
    W3 = xp.zeros((4, 3, 3, 3))
    for method in ("columns", "spectral"):
        with pytest.raises(ShapeError, match=r"at least one image.*x \(0, 3, 8, 8\)"):
            fast.conv2d_forward(xp, xp.zeros((0, 3, 8, 8)), W3, None, (1, 1), (0, 0, 0, 0), method=method)
    with pytest.raises(ShapeError, match="at least one image"):
        fast.conv2d_pool_forward(xp, xp.zeros((0, 3, 8, 8)), W3, None, (1, 1), (0, 0, 0, 0), (2, 2))
    with pytest.raises(ShapeError, match=r"W \(0, 3, 3, 3\)"):
        fast.conv2d_forward(xp, x, xp.zeros((0, 3, 3, 3)), None, (1, 1), (0, 0, 0, 0))
    _, cache = fast.conv2d_forward(xp, x, xp.zeros((4, 3, 3, 3)), None, (1, 1), (0, 0, 0, 0))
    with pytest.raises(ShapeError, match=r"dy has shape \(2, 4, 5, 5\), expected \(2, 4, 6, 6\)"):
        fast.conv2d_backward(xp, xp.zeros((2, 4, 5, 5)), cache)


# -- pooling --------------------------------------------------------------------------------------
@st.composite
def pool_case(draw):
    ph, pw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    tiled = draw(st.booleans())
    sh, sw = (ph, pw) if tiled else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    h, w = draw(st.integers(ph, 9)), draw(st.integers(pw, 9))
    return (draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w), (ph, pw), (sh, sw)


@SETTINGS
@given(case=pool_case(), seed=st.integers(0, 2 ** 16))
def test_pooling_matches_reference_and_torch(backend, case, seed):
    shape, pool, stride = case
    rng = np.random.default_rng(seed)
    x = np.round(rng.standard_normal(shape), 1)   # rounding makes ties in max windows
    x[:, 0] = np.maximum(x[:, 0], 0.0)            # and ReLU-like zero runs
    xp = backend.xp
    for kind, tfn in (("max", torch.nn.functional.max_pool2d), ("avg", torch.nn.functional.avg_pool2d)):
        fwd, bwd = getattr(fast, f"{kind}pool2d_forward"), getattr(fast, f"{kind}pool2d_backward")
        y, cache = fwd(xp, backend.asarray(x), pool, stride)
        dy = rng.standard_normal(tuple(y.shape))
        dx = bwd(xp, backend.asarray(dy), cache)
        y_r, cache_r = getattr(ref, f"{kind}pool2d_forward")(xp, backend.asarray(x), pool, stride)
        dx_r = getattr(ref, f"{kind}pool2d_backward")(xp, backend.asarray(dy), cache_r)
        xt = torch.tensor(x, requires_grad=True)
        yt = tfn(xt, pool, stride)
        (yt * torch.tensor(dy)).sum().backward()
        assert rel(host(backend, y), yt.detach().numpy()) < 1e-12
        assert rel(host(backend, dx), xt.grad.numpy()) < 1e-12
        assert rel(host(backend, y), host(backend, y_r)) < 1e-12
        assert rel(host(backend, dx), host(backend, dx_r)) < 1e-12


def test_maxpool_nan_is_the_maximum_and_takes_the_gradient(backend):
    x = np.array([[[[1.0, np.nan, 2.0, 0.0], [np.nan, 3.0, 0.0, 0.0]]]])
    xp = backend.xp
    y, cache = fast.maxpool2d_forward(xp, backend.asarray(x), (2, 2), (2, 2))
    dx = fast.maxpool2d_backward(xp, backend.asarray(np.array([[[[5.0, 7.0]]]])), cache)
    y_r, cache_r = ref.maxpool2d_forward(xp, backend.asarray(x), (2, 2), (2, 2))
    dx_r = ref.maxpool2d_backward(xp, backend.asarray(np.array([[[[5.0, 7.0]]]])), cache_r)
    assert np.isnan(host(backend, y)[0, 0, 0, 0]) and host(backend, y)[0, 0, 0, 1] == 2.0
    assert np.array_equal(host(backend, dx), host(backend, dx_r))
    assert np.array_equal(host(backend, dx)[0, 0], [[0, 5, 7, 0], [0, 0, 0, 0]])


def test_pooling_keeps_float32_and_uncovered_cells_get_zero(backend):
    rng = np.random.default_rng(5)
    x = backend.asarray(rng.standard_normal((2, 3, 7, 5)).astype(np.float32))
    xp = backend.xp
    for kind in ("max", "avg"):
        y, cache = getattr(fast, f"{kind}pool2d_forward")(xp, x, (2, 2), (2, 2))
        dx = getattr(fast, f"{kind}pool2d_backward")(xp, xp.ones(tuple(y.shape), dtype=xp.float32), cache)
        assert y.dtype == np.float32 and dx.dtype == np.float32 and tuple(dx.shape) == (2, 3, 7, 5)
        d = host(backend, dx)
        assert not d[:, :, 6, :].any() and not d[:, :, :, 4].any()
        assert np.isclose(d.sum(), 2 * 3 * 3 * 2)


def test_pool_errors(backend):
    xp = backend.xp
    with pytest.raises(ShapeError, match="larger than the input"):
        fast.maxpool2d_forward(xp, xp.zeros((1, 1, 2, 2)), (3, 3), (1, 1))
    with pytest.raises(ShapeError, match=r"expects x \(N, C, H, W\)"):
        fast.avgpool2d_forward(xp, xp.zeros((4, 4)), (2, 2), (2, 2))
