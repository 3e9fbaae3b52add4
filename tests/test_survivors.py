"""Tests for the mutants that survived the whole suite (issue 16, point 9).

Each test names the behaviour it holds down. They use the public surface (fit, evaluate, predict,
checkpoints, optimizer state dicts, the backends' counters, the ops facade), so a refactor that
keeps the behaviour keeps them green. tools/mutate.py reruns the mutation check.
"""
import copy
import importlib

import numpy as np
import pytest

import xpnet
from xpnet import callbacks, optim
from xpnet.backends import get_backend
from xpnet.checkpoint import checkpoint_path
from xpnet.errors import DataError, TrainingError
from xpnet.layers import BatchNorm, Dense, Dropout, ReLU
from xpnet.ops import reference


def data(n=90, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, 6)).astype(np.float32)
    return x, ((x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 0.8))


def noisy_model(backend, input_shape=(6,), seed=5):
    """Dropout AND BatchNorm: eval mode must differ from training mode in both."""
    m = xpnet.Sequential([Dense(12), BatchNorm(momentum=0.5), ReLU(), Dropout(0.5), Dense(3)],
                         input_shape=input_shape, device=backend, seed=seed)
    return m.compile(optimizer=optim.Adam(0.01))


def state(m):
    out = {"param/" + k: m.backend.to_numpy(v).copy() for k, v in m.parameters.items()}
    out.update({"buffer/" + k: m.backend.to_numpy(v).copy() for k, v in m.buffers.items()})
    return out


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


# -- evaluate() and validation run in eval mode ---------------------------------------------------
def test_evaluate_is_deterministic_and_touches_no_state(backend):
    x, y = data()
    m = noisy_model(backend)
    m.fit(x, y, epochs=1, batch_size=30, verbose=0)   # running statistics away from their start
    before = state(m)
    assert any(k.startswith("buffer/") for k in before)
    first = m.evaluate(x, y, batch_size=32)
    second = m.evaluate(x, y, batch_size=32)
    assert first == second
    assert_same_state(before, state(m))
    # the same numbers as the eval-mode outputs of predict()
    logits = m.predict(x).astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert first["loss"] == pytest.approx(float(-logp[np.arange(len(y)), y].mean()), rel=1e-5)
    assert first["accuracy"] == pytest.approx(float((logits.argmax(axis=1) == y).mean()))


def test_validation_during_fit_touches_no_state(backend):
    x, y = data()
    xv, yv = data(40, seed=1)
    plain, checked = noisy_model(backend), noisy_model(backend)
    plain.fit(x, y, epochs=2, batch_size=30, verbose=0)
    h = checked.fit(x, y, epochs=2, batch_size=30, validation_data=(xv, yv), verbose=0)
    # validation changed neither the weights, the running statistics nor Dropout's generator
    assert_same_state(state(plain), state(checked))
    assert h.history["val_loss"][-1] == pytest.approx(checked.evaluate(xv, yv)["loss"], rel=1e-12)
    assert h.history["val_accuracy"][-1] == checked.evaluate(xv, yv)["accuracy"]


# -- building on the first fit ----------------------------------------------------------------------
def test_model_without_input_shape_is_built_by_fit(backend):
    x, y = data()
    late = noisy_model(backend, input_shape=None)
    assert late.input_shape is None
    late.fit(x, y, epochs=2, batch_size=30, verbose=0)
    assert late.input_shape == (6,) and late.output_shape == (3,)
    early = noisy_model(backend)
    early.fit(x, y, epochs=2, batch_size=30, verbose=0)
    assert_same_state(state(early), state(late))   # same seed, same weights, same run


def test_evaluate_and_predict_build_an_unbuilt_model():
    x, y = data()
    a, b = noisy_model("numpy", input_shape=None), noisy_model("numpy", input_shape=None)
    assert a.predict(x).shape == (len(x), 3)
    assert set(b.evaluate(x, y)) == {"loss", "accuracy"}
    assert_same_state(state(a), state(noisy_model("numpy")))


# -- the strict backend counts every sync and every transfer ---------------------------------------
SYNCS = {
    "item": lambda a: a[0].item(),
    "tolist": lambda a: a.tolist(),
    "get": lambda a: a.get(),
    "tobytes": lambda a: a.tobytes(),
    "float": lambda a: float(a[0]),
    "int": lambda a: int(a[0]),
    "bool": lambda a: bool(a[0]),
    "xp.asnumpy": lambda a: get_backend("strict").xp.asnumpy(a),
}


@pytest.mark.parametrize("name", sorted(SYNCS))
def test_strict_counts_one_sync_per_host_read(name):
    strict = get_backend("strict")
    a = strict.asarray(np.arange(1.0, 4.0))
    before, transfers = strict.syncs, strict.transfers
    SYNCS[name](a)
    assert strict.syncs == before + 1
    assert strict.transfers == transfers


def test_strict_to_numpy_counts_a_sync():
    strict = get_backend("strict")
    a = strict.asarray(np.arange(3.0))
    before = strict.syncs
    host = strict.to_numpy(a)
    assert strict.syncs == before + 1 and np.array_equal(host, [0.0, 1.0, 2.0])
    assert strict.xp.asnumpy(host) is host and strict.syncs == before + 1   # host stays host


UPLOADS = {
    "backend.asarray": lambda s, h: s.asarray(h),
    "xp.asarray": lambda s, h: s.xp.asarray(h),
    "xp.asarray dtype": lambda s, h: s.xp.asarray(h, dtype=np.float64),
    "xp.array": lambda s, h: s.xp.array(h),
    "xp.array copy=False": lambda s, h: s.xp.array(h, copy=False),
}


@pytest.mark.parametrize("name", sorted(UPLOADS))
def test_strict_upload_copies_and_counts_one_transfer(name):
    """CuPy never shares memory between host and device: neither may the strict backend."""
    strict = get_backend("strict")
    host = np.arange(4.0)
    before, syncs = strict.transfers, strict.syncs
    dev = UPLOADS[name](strict, host)
    assert strict.transfers == before + 1 and strict.syncs == syncs
    host[0] = 99.0
    assert strict.to_numpy(dev)[0] == 0.0
    dev[1] = -5.0
    assert host[1] == 1.0


def test_strict_device_to_device_is_no_transfer():
    strict = get_backend("strict")
    dev = strict.asarray(np.arange(4.0))
    before = strict.transfers
    strict.xp.asarray(dev)
    strict.xp.array(dev)
    assert strict.transfers == before


# -- im2col in several batch chunks -----------------------------------------------------------------
def _columns_module():
    """The ops module that holds the im2col route and its chunk limit."""
    for name in ("xpnet.ops.columns", "xpnet.ops.fast"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "COLUMN_BYTES"):
            return module
    raise AssertionError("no ops module defines COLUMN_BYTES")


def _force_columns(monkeypatch):
    """The columns route for every convolution: autotune.method_for is what ops.fast asks."""
    from xpnet.ops import autotune
    monkeypatch.setattr(autotune, "method_for", lambda *a, **k: "columns")


@pytest.mark.parametrize("stride,padding,need_dx", [((1, 1), (1, 1, 1, 1), True),
                                                    ((2, 1), (0, 2, 1, 0), True),
                                                    ((1, 2), (2, 0, 0, 1), False)])
def test_columns_in_several_chunks_match_the_reference(backend, monkeypatch, stride, padding, need_dx):
    from xpnet import ops
    ops.use("fast")
    columns = _columns_module()
    _force_columns(monkeypatch)
    rng = np.random.default_rng(7)
    x, W, b = rng.standard_normal((5, 3, 7, 6)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    ho = (7 + padding[0] + padding[1] - 3) // stride[0] + 1
    wo = (6 + padding[2] + padding[3] - 2) // stride[1] + 1
    per_image = columns.Shape(x.shape, W.shape, stride, padding).image_bytes(x.itemsize)
    assert per_image >= 3 * 3 * 2 * ho * wo * x.itemsize   # at least the columns of one image
    monkeypatch.setattr(columns, "COLUMN_BYTES", 2 * per_image)   # chunks of 2, 2 and 1 images
    built = []
    real = columns._columns
    monkeypatch.setattr(columns, "_columns", lambda *a: built.append(a[1].shape[0]) or real(*a))
    xp = backend.xp
    xd, Wd, bd = backend.asarray(x), backend.asarray(W), backend.asarray(b)
    y, cache = ops.conv2d_forward(xp, xd, Wd, bd, stride, padding)
    assert built == [2, 2, 1]                         # really in chunks
    dy = backend.asarray(rng.standard_normal(tuple(y.shape)))
    dx, dW, db = ops.conv2d_backward(xp, dy, cache, need_dx=need_dx)
    assert built == [2, 2, 1] * 2                     # backward rebuilt every chunk's columns
    y_r, cache_r = reference.conv2d_forward(xp, xd, Wd, bd, stride, padding)
    dx_r, dW_r, db_r = reference.conv2d_backward(xp, dy, cache_r)
    host = backend.to_numpy
    np.testing.assert_allclose(host(y), host(y_r), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(host(dW), host(dW_r), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(host(db), host(db_r), rtol=1e-12, atol=1e-12)
    if need_dx:
        np.testing.assert_allclose(host(dx), host(dx_r), rtol=1e-12, atol=1e-12)
    else:
        assert dx is None


# -- optimizer state straight after load_state_dict ------------------------------------------------
OPTIMIZERS = {
    "sgd": lambda: optim.SGD(0.1, momentum=0.9),
    "adam": lambda: optim.Adam(0.1),
    "rmsprop": lambda: optim.RMSprop(0.01, centered=True, momentum=0.5),
}


def _stepped(make, backend):
    r = np.random.default_rng(0)
    params = {k: backend.asarray(r.standard_normal(s)) for k, s in (("a", (3,)), ("b", (2, 2)))}
    opt = make()
    for _ in range(2):
        opt.step(params, {k: backend.asarray(r.standard_normal(v.shape)) for k, v in params.items()})
    opt.lr = 0.037   # as a schedule or ReduceLROnPlateau leaves it: the state carries it
    return opt, params


def _host_state(backend, sd):
    return {k: backend.to_numpy(v).copy() if hasattr(v, "shape") else v for k, v in sd.items()}


def _assert_same_dict(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_state_dict_after_load_keeps_moments_of_unstepped_parameters(backend, name):
    old, params = _stepped(OPTIMIZERS[name], backend)
    saved = _host_state(backend, old.state_dict())
    new = OPTIMIZERS[name]()
    loaded = {k: v.copy() if hasattr(v, "shape") else v for k, v in saved.items()}
    new.load_state_dict(loaded)
    _assert_same_dict(_host_state(backend, new.state_dict()), saved)      # nothing stepped yet
    for v in loaded.values():        # the optimizer keeps its own copy of what it was given
        if hasattr(v, "shape"):
            v[...] = 7.0
    out = new.state_dict()
    for v in out.values():           # and hands out copies
        if hasattr(v, "shape"):
            v[...] = 9.0
    _assert_same_dict(_host_state(backend, new.state_dict()), saved)
    # one step in which "b" gets no gradient: "b" keeps the loaded moments, and the state equals
    # that of the optimizer which was never saved and loaded
    twin = {k: backend.asarray(backend.to_numpy(v)) for k, v in params.items()}
    new.step(params, {"a": backend.asarray(np.ones(3))})
    old.step(twin, {"a": backend.asarray(np.ones(3))})
    after = _host_state(backend, new.state_dict())
    _assert_same_dict(after, _host_state(backend, old.state_dict()))
    assert all(np.array_equal(after[k], saved[k]) for k in saved if k.endswith(":b"))
    assert after["iterations"] == saved["iterations"] + 1
    # loading into an optimizer that has state of its own replaces that state entirely
    busy, busy_params = _stepped(OPTIMIZERS[name], backend)
    busy.step(busy_params, {k: backend.asarray(np.full(v.shape, 3.0)) for k, v in busy_params.items()})
    busy.load_state_dict(saved)
    _assert_same_dict(_host_state(backend, busy.state_dict()), saved)
    fresh = OPTIMIZERS[name]()
    fresh.load_state_dict(saved)
    twin = {k: backend.asarray(backend.to_numpy(v)) for k, v in busy_params.items()}
    g = {k: backend.asarray(np.ones(v.shape)) for k, v in busy_params.items()}
    busy.step(busy_params, g)
    fresh.step(twin, g)
    _assert_same_dict(_host_state(backend, busy.state_dict()), _host_state(backend, fresh.state_dict()))


def test_resume_then_save_before_any_step_keeps_the_optimizer_state(tmp_path):
    x, y = data()
    first = noisy_model("numpy")
    first.fit(x, y, epochs=1, batch_size=30, checkpoint=tmp_path / "ck", verbose=0)
    expected = _host_state(first.backend, first.optimizer.state_dict())
    again = noisy_model("numpy")
    h = again.fit(x, y, epochs=1, batch_size=30, checkpoint=tmp_path / "ck", resume=True, verbose=0)
    assert h.epoch == [0]                   # nothing left to train: no step after the load
    _assert_same_dict(_host_state(again.backend, again.optimizer.state_dict()), expected)
    again.save(tmp_path / "model.npz")
    back = xpnet.load(tmp_path / "model.npz")
    _assert_same_dict(_host_state(back.backend, back.optimizer.state_dict()), expected)


# -- checkpoints that do not fit the run --------------------------------------------------------------
def _checkpoint(tmp_path, layers, cbs=()):
    x, y = data()
    m = xpnet.Sequential(layers, input_shape=(6,), seed=1).compile()
    m.fit(x, y, epochs=1, batch_size=30, checkpoint=tmp_path, callbacks=list(cbs), verbose=0)
    return x, y


def test_resume_into_a_smaller_model_names_the_extra_arrays(tmp_path):
    x, y = _checkpoint(tmp_path, [Dense(3), BatchNorm(), Dense(3)])
    small = xpnet.Sequential([Dense(3)], input_shape=(6,), seed=1).compile()
    before = state(small)
    with pytest.raises(TrainingError, match=r"arrays this model lacks: buffer/batch_norm\.running_mean.*"
                                            r"param/batch_norm\.gamma.*param/dense_1\.W"):
        small.fit(x, y, epochs=2, checkpoint=tmp_path, resume=True, verbose=0)
    assert_same_state(before, state(small))


def test_resume_from_a_model_file_is_refused(tmp_path):
    x, y = data()
    m = xpnet.Sequential([Dense(3)], input_shape=(6,), seed=1).compile()
    m.fit(x, y, epochs=1, verbose=0)
    m.save(checkpoint_path(tmp_path))     # a model file where the checkpoint should be
    other = xpnet.Sequential([Dense(3)], input_shape=(6,), seed=2).compile()
    before = state(other)
    with pytest.raises(DataError, match=r"last\.npz: not an xpnet training checkpoint"):
        other.fit(x, y, epochs=2, checkpoint=tmp_path, resume=True, verbose=0)
    assert_same_state(before, state(other))


def test_resume_with_other_stateful_callbacks_is_refused(tmp_path):
    stop = callbacks.EarlyStopping(monitor="loss", patience=5)
    x, y = _checkpoint(tmp_path, [Dense(3)], [stop, callbacks.TerminateOnNaN()])
    for cbs, now in (([callbacks.ReduceLROnPlateau(monitor="loss")], "History, ReduceLROnPlateau"),
                     ([], "History"),
                     ([callbacks.EarlyStopping(monitor="loss"), callbacks.ReduceLROnPlateau()],
                      "History, EarlyStopping, ReduceLROnPlateau")):
        m = xpnet.Sequential([Dense(3)], input_shape=(6,), seed=1).compile()
        before = state(m)
        with pytest.raises(TrainingError, match=rf"callbacks History, EarlyStopping but this fit\(\) "
                                                rf"has {now}"):
            m.fit(x, y, epochs=3, checkpoint=tmp_path, resume=True, callbacks=cbs, verbose=0)
        assert_same_state(before, state(m))
    # the same stateful callbacks resume (stateless ones may come and go); their state comes back
    again = callbacks.EarlyStopping(monitor="loss", patience=5)
    m = xpnet.Sequential([Dense(3)], input_shape=(6,), seed=1).compile()
    m.fit(x, y, epochs=1, checkpoint=tmp_path, resume=True, callbacks=[again], verbose=0)
    assert again.best == stop.best and again.best_epoch == stop.best_epoch == 0


# -- messages that name the expected range --------------------------------------------------------
@pytest.mark.parametrize("make,message", [
    (lambda: optim.SGD(0.1, momentum=1.0), r"SGD: momentum must be a finite number in \[0, 1\), got 1\.0"),
    (lambda: optim.Adam(beta2=-0.5), r"Adam: beta2 must be a finite number in \[0, 1\), got -0\.5"),
    (lambda: optim.RMSprop(alpha=1.5), r"RMSprop: alpha must be a finite number in \[0, 1\), got 1\.5"),
    (lambda: optim.SGD(-1.0), r"SGD: lr must be a finite number >= 0, got -1\.0"),
    (lambda: optim.SGD(0.1, clipnorm=0), r"SGD: clipnorm must be a finite number > 0, got 0"),
    (lambda: optim.SGD(0.1).load_state_dict({"iterations": 1, "m:w": np.zeros(2)}),
     r"SGD\.load_state_dict: unexpected entry 'm:w'; this optimizer keeps no buffers"),
    (lambda: optim.Adam().load_state_dict({"iterations": 1, "momentum:w": np.zeros(2)}),
     r"unexpected entry 'momentum:w'; this optimizer keeps m, v"),
])
def test_optimizer_errors_name_the_allowed_values(make, message):
    with pytest.raises(xpnet.ConfigError, match=message):
        make()


def test_validation_split_too_small_for_one_sample_is_named():
    x, y = data(10)
    m = xpnet.Sequential([Dense(3)], input_shape=(6,)).compile()
    with pytest.raises(DataError, match=r"validation_split=1e-18 of 10 samples leaves 0 for "
                                        r"validation and 10 for training"):
        m.fit(x, y, validation_split=1e-18, verbose=0)


def test_a_plain_optimizer_subclass_describes_itself():
    class Plain(optim.Optimizer):
        def _update(self, name, p, g, lr):
            p -= lr * g

    opt = Plain(0.5)
    assert opt.get_config() == {"type": "Plain", "lr": 0.5, "decay": 0.0, "clipnorm": None,
                                "clipvalue": None}
    assert repr(opt) == "Plain(lr=0.5, decay=0.0, clipnorm=None, clipvalue=None)"
    assert repr(optim.SGD(0.1)) == ("SGD(lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0, "
                                    "decay=0.0, clipnorm=None, clipvalue=None)")


# -- checkpoints whose header was tampered with ------------------------------------------------------
def _tamper(tmp_path, change):
    from xpnet.serialization import load_npz, save_npz_atomic
    x, y = _checkpoint(tmp_path, [Dense(3)])
    arrays, meta = load_npz(checkpoint_path(tmp_path))
    change(arrays, meta)
    save_npz_atomic(checkpoint_path(tmp_path), arrays, meta)
    m = xpnet.Sequential([Dense(3)], input_shape=(6,), seed=1).compile()
    return lambda: m.fit(x, y, epochs=2, checkpoint=tmp_path, resume=True, verbose=0)


def _optim_entry(meta, kind):
    """The packed state entry of the first optimizer array (an Adam moment)."""
    return next(v for _, v in meta["optimizer"]["state"]["dict"] if kind in v)


def _retype(entry):
    entry.clear()
    entry["tuple"] = 1


@pytest.mark.parametrize("change,error,message", [
    (lambda a, m: m.update(version=2), DataError, r"checkpoint version 2 is not supported \(expected 1\)"),
    (lambda a, m: a.pop(_optim_entry(m, "array")["array"]), DataError,
     r"refers to a missing array 'optim/0'"),
    (lambda a, m: _optim_entry(m, "array").update(extra=1), DataError, r"malformed state entry"),
    (lambda a, m: _retype(_optim_entry(m, "array")), DataError, r"malformed state entry \{'tuple': 1\}"),
])
def test_tampered_checkpoint_is_refused(tmp_path, change, error, message):
    with pytest.raises(error, match=message):
        _tamper(tmp_path, change)()


# -- the strict backend wraps what NumPy returns, in and out ------------------------------------------
def test_strict_wraps_tuples_lists_and_plain_values():
    strict = get_backend("strict")
    xp = strict.xp
    a = strict.asarray(np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 5.0]]))
    rows, cols = xp.nonzero(a)                       # a tuple of device arrays
    assert type(rows) is xp.ndarray and strict.to_numpy(cols).tolist() == [1, 2, 0, 2]
    parts = xp.split(a, 3, axis=1)                   # a list of device arrays
    assert isinstance(parts, list) and all(type(p) is xp.ndarray for p in parts)
    assert xp.shape(a) == (2, 3) and xp.ndim(a) == 2  # plain Python values pass through
    out = xp.zeros((2, 3))
    xp.add(a, a, out=out)                            # device arrays inside keyword arguments
    assert strict.to_numpy(out)[1].tolist() == [6.0, 0.0, 10.0]
    norm = xp.linalg.norm(a)                         # submodules speak device arrays too
    assert type(norm) is xp.ndarray and float(norm) == pytest.approx(np.sqrt(39.0))
    assert xp.add.nin == 2 and xp.maximum.nout == 1  # plain attributes of ufuncs
    assert not hasattr(xp, "__version__")            # dunders are not forwarded to NumPy
    rows = list(a)                                   # iteration gives device rows
    assert len(rows) == 2 and all(type(r) is xp.ndarray for r in rows)
    assert strict.to_numpy(rows[1]).tolist() == [3.0, 0.0, 5.0]
    for twin in (copy.copy(a), copy.deepcopy(a)):    # copies are device arrays of their own
        assert type(twin) is xp.ndarray
        twin[0, 0] = 42.0
        assert strict.to_numpy(a)[0, 0] == 0.0


def test_checkpoint_keeps_nested_optimizer_state(tmp_path):
    """An Optimizer subclass may keep lists and dicts of numbers and arrays in its state."""
    class Remembering(optim.Adam):
        recent = None

        def state_dict(self):
            return {**super().state_dict(), "recent": [0.5, {"w": np.arange(3.0)}]}

        def load_state_dict(self, state):
            state = dict(state)
            self.recent = state.pop("recent")
            super().load_state_dict(state)

    x, y = data()
    first = xpnet.Sequential([Dense(3)], input_shape=(6,), seed=1).compile(optimizer=Remembering())
    first.fit(x, y, epochs=1, checkpoint=tmp_path, verbose=0)
    again = xpnet.Sequential([Dense(3)], input_shape=(6,), seed=1).compile(optimizer=Remembering())
    again.fit(x, y, epochs=1, checkpoint=tmp_path, resume=True, verbose=0)
    value, arrays = again.optimizer.recent
    assert value == 0.5 and np.array_equal(again.backend.to_numpy(arrays["w"]), [0.0, 1.0, 2.0])


@pytest.mark.parametrize("kwargs,name", [({"momentum": True}, "momentum"), ({"momentum": "0.9"}, "momentum"),
                                         ({"epsilon": "1e-3"}, "epsilon"), ({"epsilon": None}, "epsilon")])
def test_batchnorm_refuses_non_numbers(kwargs, name):
    with pytest.raises(xpnet.ConfigError, match=rf"BatchNorm: {name} must be a number"):
        BatchNorm(**kwargs)


def test_pooling_backward_refuses_a_gradient_of_the_wrong_shape(backend):
    from xpnet import ops
    x = backend.asarray(np.arange(2 * 3 * 6 * 6, dtype=np.float64).reshape(2, 3, 6, 6))
    for forward, backward, pool, stride in ((ops.maxpool2d_forward, ops.maxpool2d_backward, (2, 2), (2, 2)),
                                            (ops.maxpool2d_forward, ops.maxpool2d_backward, (3, 3), (1, 1))):
        y, cache = forward(backend.xp, x, pool, stride)
        bad = backend.xp.ones((2, 3) + tuple(s + 1 for s in y.shape[2:]))
        with pytest.raises(xpnet.ShapeError, match=r"maxpool2d_backward: dy has shape"):
            backward(backend.xp, bad, cache)


def test_batchnorm_checks_initializers_when_made():
    """The layer, the argument and the choices: "nope" alone is the value given back."""
    for kwargs in ({"gamma_initializer": "nope"}, {"beta_initializer": "nope"}):
        (argument,) = kwargs
        with pytest.raises(xpnet.ConfigError, match=rf"^a BatchNorm layer: unknown {argument} 'nope'; "
                                                    r"expected one of: .*ones.*zeros"):
            BatchNorm(**kwargs)


def test_batchnorm_trains_on_two_values_per_channel_but_not_one(backend):
    x, y = data(5)
    m = xpnet.Sequential([Dense(4), BatchNorm(), Dense(3)], input_shape=(6,), device=backend).compile()
    m.fit(x[:4], y[:4], batch_size=2, epochs=1, shuffle=False, verbose=0)
    with pytest.raises(xpnet.ShapeError, match=r"'batch_norm' \(BatchNorm\) needs more than one value"):
        m.forward(backend.asarray(x[:1]), training=True)
    # fit says so before training when the last batch would hold one (tests/test_api_inputs_training.py)
    with pytest.raises(xpnet.ConfigError, match=r"'batch_norm' \(BatchNorm\) needs more than one value"):
        m.fit(x, y, batch_size=2, epochs=1, shuffle=False, verbose=0)   # the last batch holds one


def test_batchnorm_first_layer_skips_the_input_gradient(backend):
    x, _ = data(8)
    m = xpnet.Sequential([BatchNorm(), Dense(3)], input_shape=(6,), device=backend)
    m.layers[0].need_input_grad = False
    out = m.forward(backend.asarray(x), training=True)
    assert m.backward(backend.xp.ones(tuple(out.shape), dtype=out.dtype)) is None
    assert set(m.gradients) == {"batch_norm.gamma", "batch_norm.beta", "dense.W", "dense.b"}


def test_pooling_takes_sizes_as_any_integral_numbers(backend):
    from xpnet import ops
    x = backend.asarray(np.arange(2 * 3 * 6 * 6, dtype=np.float64).reshape(2, 3, 6, 6))
    for forward in (ops.maxpool2d_forward, ops.avgpool2d_forward):
        y, _ = forward(backend.xp, x, (2, 2), (2, 2))
        y2, _ = forward(backend.xp, x, [2.0, np.int64(2)], np.array([2, 2]))
        assert np.array_equal(backend.to_numpy(y), backend.to_numpy(y2))


# -- fit's messages and checks around resume and validation ------------------------------------------
def test_resume_says_where_it_continues_from(tmp_path, capsys):
    x, y = _checkpoint(tmp_path, [Dense(3)])
    m = xpnet.Sequential([Dense(3)], input_shape=(6,), seed=1).compile()
    m.fit(x, y, epochs=2, checkpoint=tmp_path, resume=True, verbose=2)
    assert f"resumed from {checkpoint_path(tmp_path)} after epoch 1" in capsys.readouterr().err


def test_empty_validation_data_is_named():
    x, y = data(10)
    m = xpnet.Sequential([Dense(3)], input_shape=(6,)).compile()
    with pytest.raises(DataError, match="validation data is empty"):
        m.fit(x, y, validation_data=(x[:0], y[:0]), verbose=0)


def test_compile_hands_the_model_backend_to_the_optimizer(backend):
    m = xpnet.Sequential([Dense(3)], input_shape=(6,), device=backend).compile(optimizer=optim.Adam())
    assert m.optimizer.backend is m.backend and m.optimizer.xp is m.xp


@pytest.mark.parametrize("stride,padding", [((0, 1), (0, 0, 0, 0)), ((1, -1), (0, 0, 0, 0)),
                                            ((1, 1), (0, 0, -1, 0))])
def test_conv_refuses_zero_stride_and_negative_padding(backend, stride, padding):
    from xpnet.ops import fast
    x, W = backend.xp.zeros((1, 2, 6, 6)), backend.xp.zeros((3, 2, 3, 3))
    with pytest.raises(xpnet.ShapeError, match=r"stride must be >= 1 and padding >= 0"):
        fast.conv2d_forward(backend.xp, x, W, None, stride, padding)


# -- the optimizer's update over one flat parameter buffer ----------------------------------------------
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_flat_update_equals_the_per_parameter_update(backend, name):
    r = np.random.default_rng(1)
    shapes = {"a": (3,), "b": (2, 2)}
    start = {k: r.standard_normal(s) for k, s in shapes.items()}
    flat = backend.asarray(np.concatenate([v.reshape(-1) for v in start.values()]))
    views, offset = {}, 0
    for k, s in shapes.items():
        views[k] = flat[offset:offset + int(np.prod(s))].reshape(s)
        offset += int(np.prod(s))
    plain = {k: backend.asarray(v) for k, v in start.items()}
    fused, single = OPTIMIZERS[name](), OPTIMIZERS[name]()
    fused.bind_flat(flat, views)

    def grads(keys):
        return {k: backend.asarray(r.standard_normal(shapes[k])) for k in keys}

    # all parameters; then one without a gradient (step counts now differ); then all again
    for keys in (("a", "b"), ("a", "b"), ("a",), ("a", "b"), ("a", "b")):
        g = grads(keys)
        fused.step(views, g)
        single.step(plain, g)
        for k in shapes:
            assert np.array_equal(backend.to_numpy(views[k]), backend.to_numpy(plain[k])), (keys, k)
    _assert_same_dict(_host_state(backend, fused.state_dict()), _host_state(backend, single.state_dict()))
    # a parameter replaced by a new array is updated itself, not the stale view
    fresh = {"a": backend.asarray(backend.to_numpy(views["a"])), "b": views["b"]}
    g = grads(("a", "b"))
    fused.step(fresh, g)
    single.step(plain, g)
    for k in shapes:
        assert np.array_equal(backend.to_numpy(fresh[k]), backend.to_numpy(plain[k])), k


@pytest.mark.parametrize("pool,stride", [((0, 2), (2, 2)), ((2, 2), (2, 0))])
def test_pooling_refuses_empty_windows_and_zero_strides(backend, pool, stride):
    from xpnet import ops
    x = backend.xp.zeros((1, 1, 4, 4))
    for forward in (ops.maxpool2d_forward, ops.avgpool2d_forward):
        with pytest.raises(xpnet.ShapeError, match=r"pool and stride must be >= 1"):
            forward(backend.xp, x, pool, stride)


def test_strict_host_reads_return_the_values():
    strict = get_backend("strict")
    a = strict.asarray(np.array([[1.5, 2.0], [3.0, 4.0]]))
    assert a[0, 0].item() == 1.5 and a.tolist() == [[1.5, 2.0], [3.0, 4.0]]
    assert repr(a).startswith("strictarray([[1.5, 2. ]")
    assert strict.xp.__name__ == "xpnet.strict.numpy" and strict.xp.linalg.__name__ == "xpnet.strict.numpy.linalg"
    idx = strict.asarray(np.array([1, 0]))
    assert strict.to_numpy(a[idx]).tolist() == [[3.0, 4.0], [1.5, 2.0]]   # gather by a device index
