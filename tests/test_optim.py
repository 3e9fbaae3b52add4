"""Optimizers: torch.optim parity, inverse-time decay, clipping, checkpoints, no host syncs."""
import re

import numpy as np
import pytest

from xpnet import optim
from xpnet.backends import get_backend
from xpnet.backends.strict_backend import COUNTERS
from xpnet.errors import ConfigError, ShapeError, TrainingError

torch = pytest.importorskip("torch")

SHAPES = {"dense.W": (4, 3), "dense.b": (3,), "conv2d.W": (2, 1, 3, 3)}
STEPS = 6


def _start(seed=0):
    r = np.random.default_rng(seed)
    params = {k: r.standard_normal(s) for k, s in SHAPES.items()}
    grads = [{k: r.standard_normal(s) * (1 + i) for k, s in SHAPES.items()} for i in range(STEPS)]
    return params, grads


def _dev(backend, host):
    """A device copy (the numpy backend's asarray would alias the host array)."""
    return {k: backend.asarray(np.array(v, copy=True)) for k, v in host.items()}


def _host(backend, a):
    """A host copy (the numpy backend's to_numpy would alias the device array)."""
    return np.array(backend.to_numpy(a), copy=True)


def _rel(a, b):
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-300)


CASES = {
    "sgd": (lambda: optim.SGD(lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd_momentum": (lambda: optim.SGD(lr=0.05, momentum=0.9),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    "sgd_nesterov": (lambda: optim.SGD(lr=0.05, momentum=0.8, nesterov=True),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, nesterov=True)),
    "sgd_weight_decay": (lambda: optim.SGD(lr=0.05, momentum=0.5, weight_decay=0.1),
                         lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5, weight_decay=0.1)),
    "sgd_weight_decay_no_momentum": (lambda: optim.SGD(lr=0.05, weight_decay=0.2),
                                     lambda p: torch.optim.SGD(p, lr=0.05, weight_decay=0.2)),
    "adam": (lambda: optim.Adam(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    "adam_l2": (lambda: optim.Adam(lr=0.02, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1),
                lambda p: torch.optim.Adam(p, lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    "adamw": (lambda: optim.AdamW(lr=0.01), lambda p: torch.optim.AdamW(p, lr=0.01)),
    "adamw_strong": (lambda: optim.AdamW(lr=0.03, weight_decay=0.2),
                     lambda p: torch.optim.AdamW(p, lr=0.03, weight_decay=0.2)),
    "rmsprop": (lambda: optim.RMSprop(lr=0.01), lambda p: torch.optim.RMSprop(p, lr=0.01)),
    "rmsprop_centered": (lambda: optim.RMSprop(lr=0.01, alpha=0.9, centered=True),
                         lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9, centered=True)),
    "rmsprop_momentum": (lambda: optim.RMSprop(lr=0.01, momentum=0.7, eps=1e-6),
                         lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.7, eps=1e-6)),
    "rmsprop_centered_momentum": (
        lambda: optim.RMSprop(lr=0.005, momentum=0.5, centered=True, weight_decay=0.01),
        lambda p: torch.optim.RMSprop(p, lr=0.005, momentum=0.5, centered=True, weight_decay=0.01)),
}


def _torch_run(make_torch, params, grads, clip=None, decay=None):
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    opt = make_torch(list(tparams.values()))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1.0 + decay * t)) if decay else None
    history = []
    for g in grads:
        for k, t in tparams.items():
            t.grad = None if g[k] is None else torch.tensor(g[k])
        if clip:
            clip(list(tparams.values()))
        opt.step()
        if sched:
            sched.step()
        history.append({k: t.detach().numpy().copy() for k, t in tparams.items()})
    return history


def _xp_run(backend, opt, params, grads):
    dev = _dev(backend, params)
    history = []
    for g in grads:
        opt.step(dev, {k: None if v is None else backend.asarray(v) for k, v in g.items()})
        history.append({k: _host(backend, v) for k, v in dev.items()})
    return history


def _assert_same(ours, ref):
    for step, (a, b) in enumerate(zip(ours, ref)):
        for k in b:
            assert _rel(a[k], b[k]) < 1e-6, f"step {step + 1}, {k}: rel err {_rel(a[k], b[k]):.2e}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_steps_match_torch(backend, case):
    make, make_torch = CASES[case]
    params, grads = _start()
    ours = _xp_run(backend, make(), params, grads)
    _assert_same(ours, _torch_run(make_torch, params, grads))
    assert _rel(ours[-1]["dense.W"], params["dense.W"]) > 1e-3  # the parameters did move


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_parameter_without_gradient_keeps_its_own_step_count_like_torch(backend, case):
    """A parameter whose gradient is None on some steps (frozen for a while) is skipped there, as
    torch skips grad None: its moments stay and its own step count (Adam's bias correction) lags
    the optimizer's iterations; the inverse-time decay still follows iterations."""
    make, make_torch = CASES[case]
    params, grads = _start(6)
    for i in (0, 1, 4):
        grads[i]["dense.b"] = None
    opt = make()
    opt.decay = 0.2
    ours = _xp_run(backend, opt, params, grads)
    _assert_same(ours, _torch_run(make_torch, params, grads, decay=0.2))
    np.testing.assert_array_equal(ours[1]["dense.b"], params["dense.b"])
    assert opt.steps == {"dense.W": STEPS, "dense.b": STEPS - 3, "conv2d.W": STEPS}
    assert opt.iterations == STEPS


@pytest.mark.parametrize("case", sorted(CASES))
def test_flat_steps_after_skipped_gradients_match_torch(backend, case, monkeypatch):
    """The flat update (bind_flat, fit's path) after steps where some gradients were None: while
    the parameters' step counts differ the step must go per parameter, and once they are equal
    again (here 2, after 3 iterations) the flat step must take the bias correction from the step
    count and the inverse-time decay from the iterations, as torch does; a step with no gradient
    at all (iterations move, the device's copy of them does not) is noticed by the next flat one."""
    make, make_torch = CASES[case]
    params, grads = _start(8)
    grads[0]["dense.b"] = None                                 # counts 1, 0, 1: per parameter
    grads[2]["dense.W"] = grads[2]["conv2d.W"] = None          # counts 2, 2, 2 after 3 iterations
    grads += [{k: None for k in SHAPES}, {k: v * -0.5 for k, v in grads[1].items()}]
    flat = backend.asarray(np.concatenate([v.reshape(-1) for v in params.values()]))
    dev, offset = {}, 0
    for k, v in params.items():
        dev[k] = flat[offset:offset + v.size].reshape(v.shape)
        offset += v.size
    opt = make()
    opt.decay = 0.3
    opt.bind_flat(flat, dev)
    calls, update = [], backend.flat_update
    monkeypatch.setattr(backend, "flat_update", lambda *a: calls.append(1) or update(*a))
    ours = []
    for g in grads:
        opt.step(dev, {k: None if v is None else backend.asarray(v) for k, v in g.items()})
        ours.append({k: _host(backend, v) for k, v in dev.items()})
    assert len(calls) == 4  # steps 4-6 and 8 went flat, steps 1-3 per parameter, step 7 nowhere
    assert opt.steps == {k: STEPS for k in params} and opt.iterations == STEPS + 2
    _assert_same(ours, _torch_run(make_torch, params, grads, decay=0.3))


@pytest.mark.parametrize("case", ["sgd_momentum", "adam", "adamw", "rmsprop_centered_momentum"])
def test_inverse_time_decay_matches_torch_lambda_lr(backend, case):
    make, make_torch = CASES[case]
    params, grads = _start(1)
    opt = make()
    opt.decay = 0.3
    ours = _xp_run(backend, opt, params, grads)
    _assert_same(ours, _torch_run(make_torch, params, grads, decay=0.3))


def test_current_lr_formula():
    opt = optim.SGD(lr=0.2, decay=0.5)
    params = {"w": np.ones(3)}
    rates = []
    for t in range(5):
        rates.append(opt.current_lr())
        before = params["w"].copy()
        opt.step(params, {"w": np.ones(3)})
        assert np.allclose(before - params["w"], rates[-1])  # plain SGD moves by current_lr * 1
    assert rates == pytest.approx([0.2 / (1 + 0.5 * t) for t in range(5)])
    assert opt.iterations == 5 and opt.lr == 0.2
    opt.lr = 0.1  # a schedule changes the base rate; decay still applies
    assert opt.current_lr() == pytest.approx(0.1 / (1 + 0.5 * 5))


def test_clip_functions_match_torch(backend):
    _, grads = _start(2)
    g = grads[0]
    for max_norm in (0.5, 1e6):
        tg = {k: torch.tensor(v, requires_grad=True) for k, v in g.items()}
        for t in tg.values():
            t.grad = t.detach().clone()
        norm = torch.nn.utils.clip_grad_norm_(list(tg.values()), max_norm)
        xp = backend.xp
        dev = _dev(backend, g)
        out = optim.clip_by_global_norm(dev, max_norm, xp)
        assert float(backend.to_numpy(optim.global_norm(dev, xp))) == pytest.approx(norm.item(), rel=1e-12)
        for k in g:
            assert _rel(backend.to_numpy(out[k]), tg[k].grad.numpy()) < 1e-12
            np.testing.assert_array_equal(backend.to_numpy(dev[k]), g[k])  # inputs untouched
        # a None gradient (a frozen parameter) is kept as None and left out of the norm, as
        # torch's clip_grad_norm_ leaves out parameters whose grad is None
        frozen = optim.clip_by_global_norm({**dev, "frozen": None}, max_norm, xp)
        assert frozen["frozen"] is None
        for k in g:
            np.testing.assert_array_equal(backend.to_numpy(frozen[k]), backend.to_numpy(out[k]))
    tg = {k: torch.tensor(v, requires_grad=True) for k, v in g.items()}
    for t in tg.values():
        t.grad = t.detach().clone()
    torch.nn.utils.clip_grad_value_(list(tg.values()), 0.7)
    out = optim.clip_by_value({k: backend.asarray(v) for k, v in g.items()}, 0.7)
    for k in g:
        np.testing.assert_array_equal(backend.to_numpy(out[k]), tg[k].grad.numpy())
        assert np.abs(backend.to_numpy(out[k])).max() == 0.7
    assert optim.clip_by_value({"frozen": None}, 0.7) == {"frozen": None}


@pytest.mark.parametrize("clipnorm,clipvalue", [(1.0, None), (None, 0.5), (2.0, 0.8)])
def test_optimizer_clipping_matches_torch(backend, clipnorm, clipvalue):
    params, grads = _start(3)

    def clip(ps):
        if clipvalue is not None:
            torch.nn.utils.clip_grad_value_(ps, clipvalue)
        if clipnorm is not None:
            torch.nn.utils.clip_grad_norm_(ps, clipnorm)

    opt = optim.Adam(lr=0.01, clipnorm=clipnorm, clipvalue=clipvalue)
    ours = _xp_run(backend, opt, params, grads)
    _assert_same(ours, _torch_run(lambda p: torch.optim.Adam(p, lr=0.01), params, grads, clip=clip))


def test_sgd_step_moves_along_minus_gradient(backend):
    r = np.random.default_rng(4)
    a = r.standard_normal((5, 5))
    A = a @ a.T + 5 * np.eye(5)
    b = r.standard_normal(5)
    w0 = r.standard_normal(5)
    f = lambda w: 0.5 * w @ A @ w - b @ w  # noqa: E731
    grad = A @ w0 - b
    eps = 1e-6  # the analytic gradient agrees with central differences
    num = np.array([(f(w0 + eps * e) - f(w0 - eps * e)) / (2 * eps) for e in np.eye(5)])
    np.testing.assert_allclose(num, grad, rtol=1e-7)
    lr = 1e-3
    params = _dev(backend, {"w": w0})
    optim.SGD(lr=lr).step(params, {"w": backend.asarray(grad)})
    w1 = backend.to_numpy(params["w"])
    np.testing.assert_allclose(w1, w0 - lr * grad, rtol=1e-14)
    assert f(w1) < f(w0)
    assert (f(w1) - f(w0)) == pytest.approx(-lr * grad @ grad, rel=1e-2)  # first-order decrease


ROUND_TRIP = ["sgd_momentum", "adam_l2", "adamw", "rmsprop_centered_momentum"]


@pytest.mark.parametrize("case", ROUND_TRIP)
def test_state_dict_round_trip(backend, case):
    make, _ = CASES[case]
    params, grads = _start(5)

    def fresh():
        opt = make()
        opt.decay = 0.1
        return opt

    def steps(opt, dev, grads):
        for g in grads:
            opt.step(dev, {k: backend.asarray(v) for k, v in g.items()})

    ref, dev = fresh(), _dev(backend, params)
    steps(ref, dev, grads[:3])
    ref.lr = ref.lr * 0.5  # as a schedule leaves it after step 3: the checkpoint must carry it
    steps(ref, dev, grads[3:])
    straight = {k: _host(backend, v) for k, v in dev.items()}
    first = fresh()
    dev = _dev(backend, params)
    steps(first, dev, grads[:3])
    first.lr = first.lr * 0.5
    state = first.state_dict()
    assert state["iterations"] == 3 and state["lr"] == first.lr == fresh().lr * 0.5
    assert all(isinstance(v, (int, float)) or hasattr(v, "shape") for v in state.values())
    host = {k: _host(backend, v) if hasattr(v, "shape") else v for k, v in state.items()}  # a checkpoint
    saved = {k: _host(backend, v) for k, v in dev.items()}
    for g in grads[3:]:  # the state_dict is a copy: later steps must not change it
        first.step(dev, {k: backend.asarray(v) for k, v in g.items()})
    assert all(np.array_equal(backend.to_numpy(state[k]), host[k]) for k in state if hasattr(state[k], "shape"))

    second = fresh()
    second.load_state_dict(host)
    assert second.iterations == 3 and second.lr == first.lr
    dev = _dev(backend, saved)
    for g in grads[3:]:
        second.step(dev, {k: backend.asarray(v) for k, v in g.items()})
    for k in params:
        np.testing.assert_array_equal(backend.to_numpy(dev[k]), straight[k])


@pytest.mark.parametrize("case", ROUND_TRIP)
def test_loaded_state_takes_the_parameters_dtype(backend, case):
    """Moments saved from float64 parameters and loaded for float32 ones become float32 buffers,
    as fresh ones would be (not float64 buffers that make every later step float64 and the
    next checkpoint float64), holding the loaded values."""
    make, _ = CASES[case]
    params, grads = _start(7)
    saved_by, dev = make(), _dev(backend, params)
    for g in grads[:2]:
        saved_by.step(dev, {k: backend.asarray(v) for k, v in g.items()})
    host = {k: _host(backend, v) if hasattr(v, "shape") else v for k, v in saved_by.state_dict().items()}
    assert {v.dtype for v in host.values() if hasattr(v, "shape")} == {np.dtype(np.float64)}
    loaded = make()
    loaded.load_state_dict(host)
    dev32 = {k: backend.asarray(_host(backend, v).astype(np.float32)) for k, v in dev.items()}
    g = {k: v.astype(np.float32) for k, v in grads[2].items()}
    loaded.step(dev32, {k: backend.asarray(v) for k, v in g.items()})
    saved_by.step(dev, {k: backend.asarray(v.astype(np.float64)) for k, v in g.items()})
    for slot, buffers in loaded.state.items():
        assert set(buffers) == set(params)
        for k, v in buffers.items():
            assert v.dtype == np.float32, f"{slot}:{k} is {v.dtype}"
            assert _rel(_host(backend, v), _host(backend, saved_by.state[slot][k])) < 1e-5
    assert all(v.dtype == np.float32 for v in dev32.values())


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_step_does_not_sync(case, flat):
    """flat: the parameters as views of one buffer (bind_flat), the update fit() runs, where the
    rate and step count are device scalars; without it a host read of the rate in an update
    (float(lr)) synced on every step of fit unseen."""
    backend = get_backend("strict")
    make, _ = CASES[case]
    params, grads = _start()
    opt = make()
    opt.decay, opt.clipnorm, opt.clipvalue = 1e-3, 1.0, 2.0
    dev = {k: backend.asarray(v.astype(np.float32)) for k, v in params.items()}
    if flat:
        buffer = backend.xp.concatenate([p.reshape(-1) for p in dev.values()])
        views, offset = {}, 0
        for k, p in dev.items():
            views[k] = buffer[offset:offset + p.size].reshape(p.shape)
            offset += p.size
        dev = views
        opt.bind_flat(buffer, views)
    dev_grads = [{k: backend.asarray(v.astype(np.float32)) for k, v in g.items()} for g in grads]
    before = COUNTERS["syncs"]
    for g in dev_grads:
        opt.step(dev, g)
    assert COUNTERS["syncs"] == before
    assert (getattr(opt, "_device", None) is not None) == flat  # the flat step ran (or did not)
    assert all(v.dtype == np.float32 for v in dev.values())  # float32 stays float32
    assert all(v.dtype == np.float32 for buffers in opt.state.values() for v in buffers.values())


def test_updates_in_place_and_skips_missing_gradients(backend):
    params, grads = _start()
    dev = _dev(backend, params)
    arrays = dict(dev)
    opt = optim.Adam(lr=0.1)
    opt.step(dev, {"dense.W": backend.asarray(grads[0]["dense.W"]), "dense.b": None})
    assert all(dev[k] is arrays[k] for k in dev)
    assert not np.allclose(backend.to_numpy(arrays["dense.W"]), params["dense.W"])
    np.testing.assert_array_equal(backend.to_numpy(arrays["dense.b"]), params["dense.b"])
    assert set(opt.state["m"]) == {"dense.W"} and opt.steps == {"dense.W": 1}


def test_bad_step_inputs(backend):
    p = {"w": backend.asarray(np.zeros((2, 3)))}
    with pytest.raises(ShapeError, match=r"'w'.*\(3, 2\).*\(2, 3\)"):
        optim.SGD(0.1).step(p, {"w": backend.asarray(np.zeros((3, 2)))})
    with pytest.raises(ConfigError, match="unknown parameter 'v'"):
        optim.SGD(0.1).step(p, {"v": backend.asarray(np.zeros((2, 3)))})
    opt = optim.Adam()
    opt.load_state_dict({"iterations": 1, "lr": 0.001, "m:w": np.zeros(4), "v:w": np.zeros(4), "step:w": 1})
    with pytest.raises(TrainingError, match=r"'m:w'.*\(4,\).*\(2, 3\)"):
        opt.step(p, {"w": backend.asarray(np.zeros((2, 3)))})
    with pytest.raises(ConfigError, match="unexpected entry 'momentum:w'"):
        optim.Adam().load_state_dict({"iterations": 1, "momentum:w": np.zeros(3)})
    with pytest.raises(ConfigError, match="iterations"):
        optim.SGD(0.1).load_state_dict({"lr": 0.1})


@pytest.mark.parametrize("make,words", [(make, re.escape(words)) for make, words in [
    (lambda: optim.SGD(lr=-0.1), "SGD: lr must be a finite number >= 0, got -0.1"),
    (lambda: optim.Adam(lr=float("nan")), "Adam: lr must be a finite number >= 0, got nan"),
    (lambda: optim.SGD(lr="0.1"), "SGD: lr must be a finite number >= 0, got str '0.1'"),
    (lambda: optim.SGD(lr=0.1, momentum=1.0), "SGD: momentum must be a finite number in [0, 1), got 1.0"),
    (lambda: optim.SGD(lr=0.1, momentum=-0.1), "SGD: momentum must be a finite number in [0, 1), got -0.1"),
    (lambda: optim.RMSprop(momentum=1.5), "RMSprop: momentum must be a finite number in [0, 1), got 1.5"),
    (lambda: optim.SGD(lr=0.1, nesterov=True), "SGD: nesterov=True needs momentum > 0"),
    (lambda: optim.SGD(lr=0.1, momentum=0.9, nesterov="yes"),
     "SGD: nesterov must be True or False, got str 'yes'"),
    (lambda: optim.Adam(beta1=1.0), "Adam: beta1 must be a finite number in [0, 1), got 1.0"),
    (lambda: optim.Adam(beta2=-0.5), "Adam: beta2 must be a finite number in [0, 1), got -0.5"),
    (lambda: optim.AdamW(weight_decay=-1), "AdamW: weight_decay must be a finite number >= 0, got -1"),
    (lambda: optim.RMSprop(alpha=2), "RMSprop: alpha must be a finite number in [0, 1), got 2"),
    (lambda: optim.SGD(0.1, decay=-1e-3), "SGD: decay must be a finite number >= 0, got -0.001"),
    (lambda: optim.SGD(0.1, clipnorm=0), "SGD: clipnorm must be a finite number > 0, got 0"),
    (lambda: optim.SGD(0.1, clipvalue=-1), "SGD: clipvalue must be a finite number > 0, got -1"),
    (lambda: optim.get("adagrad"), "unknown optimizer 'adagrad'; expected an Optimizer object or one of: "
                                   "adam, adamw, rmsprop, sgd"),
    (lambda: optim.get(optim.SGD(0.1), lr=0.2), "optimizer object and extra arguments ['lr']"),
]] + [(lambda: optim.get("sgd", lr=0.1, betas=(0.9, 0.99)), r"bad arguments for optimizer SGD: .*'betas'")])
def test_bad_config_raises_config_error(make, words):
    with pytest.raises(ConfigError, match=words):
        make()


def test_lr_setter_validates():
    opt = optim.SGD(0.1)
    opt.lr = 0.05
    assert opt.lr == 0.05 and opt.current_lr() == 0.05
    with pytest.raises(ConfigError, match="lr must be"):
        opt.lr = -1


def test_get_and_config_round_trip():
    assert isinstance(optim.get("ADAM"), optim.Adam)
    sgd = optim.get("sgd", lr=0.3, momentum=0.9, decay=1e-4)
    assert (sgd.lr, sgd.momentum, sgd.decay) == (0.3, 0.9, 1e-4)
    assert optim.get(sgd) is sgd
    for opt in (sgd, optim.AdamW(lr=0.002, clipnorm=1.0), optim.RMSprop(centered=True, momentum=0.5)):
        again = optim.get(opt.get_config())
        assert type(again) is type(opt) and again.get_config() == opt.get_config()
    assert optim.AdamW().weight_decay == 0.01 and optim.RMSprop().lr == 0.01
