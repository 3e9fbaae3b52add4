"""The optimizer's update over one flat parameter buffer (fit's path) gives the same numbers as the
per-parameter update, and keeps model.params, state_dict and checkpoints as they were."""
import numpy as np
import pytest

import xpnet
from xpnet import optim
from xpnet.backends import strict_backend as sb
from xpnet.layers import BatchNorm, Dense, ReLU

OPTIMIZERS = [lambda: optim.Adam(0.01), lambda: optim.AdamW(0.01, weight_decay=0.1),
              lambda: optim.Adam(0.01, weight_decay=0.01, clipnorm=0.5),
              lambda: optim.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
              lambda: optim.RMSprop(0.01, momentum=0.5, centered=True, clipvalue=0.1)]


def data(n=64, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, 6)).astype(np.float32)
    return x, (x[:, :3].argmax(1)).astype(np.int64)


def model(backend, opt):
    m = xpnet.Sequential([Dense(12), BatchNorm(), ReLU(), Dense(3)], input_shape=(6,),
                         device=backend, seed=3)
    return m.compile(optimizer=opt)


def per_parameter(m):
    m._flat_parameters = lambda: None  # the path fit took before the flat buffer
    return m


def weights(m):
    return {k: m.backend.to_numpy(v) for k, v in m.parameters.items()}


def counted_flat_updates(backend, monkeypatch):
    """A list that grows by one with each backend.flat_update call (the optimizer's flat step)."""
    calls, update = [], backend.flat_update
    monkeypatch.setattr(backend, "flat_update", lambda fn, arrays: (calls.append(fn), update(fn, arrays))[1])
    return calls


@pytest.mark.parametrize("make", OPTIMIZERS)
def test_flat_and_per_parameter_updates_are_identical(backend, make, monkeypatch):
    x, y = data()
    flat, plain = model(backend, make()), per_parameter(model(backend, make()))
    calls, steps = counted_flat_updates(backend, monkeypatch), []
    for m in (flat, plain):
        calls.clear()
        m.fit(x, y, epochs=2, batch_size=16, verbose=0)
        steps.append(len(calls))
    assert getattr(flat, "_flat_views", None) is not None  # the flat path was taken
    assert steps == [8, 0], steps  # by the optimizer's every step, and never by the plain model's
    wf, wp = weights(flat), weights(plain)
    assert list(wf) == list(wp)
    for k in wf:
        assert wf[k].shape == wp[k].shape and np.array_equal(wf[k], wp[k]), k
    sf, sp = flat.optimizer.state_dict(), plain.optimizer.state_dict()
    assert sorted(sf) == sorted(sp)
    for k, v in sf.items():
        if hasattr(v, "shape"):
            assert np.array_equal(backend.to_numpy(v), backend.to_numpy(sp[k])), k
        else:
            assert v == sp[k], k


def test_a_flat_step_is_a_few_operations_not_a_dozen_per_parameter():
    x, y = data()
    m = model("strict", optim.Adam(0.01))
    m.fit(x, y, epochs=1, batch_size=16, verbose=0)
    m.forward(m.backend.asarray(x[:16]), training=True)
    m.backward(m.xp.ones((16, 3), dtype=m.dtype))
    before = sb.LAUNCHES["calls"]
    m._flat_parameters()
    m.optimizer.step(m.parameters, m.gradients)
    # 6 parameters: 78 operations one by one; over the flat buffer without the fused kernel 23 (its
    # 11 element-wise passes and the work on the learning rate and step count, which live on the
    # device so that a captured step can be replayed); with it 3: the join of the gradient's parts,
    # the kernel and the step counts' increment
    assert sb.LAUNCHES["calls"] - before == 3


def test_replaced_or_loaded_parameters_are_picked_up(backend, monkeypatch):
    x, y = data()
    flat, plain = model(backend, optim.Adam(0.01)), per_parameter(model(backend, optim.Adam(0.01)))
    calls, steps = counted_flat_updates(backend, monkeypatch), []
    for m in (flat, plain):
        m.fit(x, y, epochs=1, batch_size=16, verbose=0)
        layer = m.layers[0]
        layer.params["W"] = m.xp.zeros_like(layer.params["W"]) + 0.25  # a new array, not a view
        calls.clear()
        m.fit(x, y, epochs=1, batch_size=16, verbose=0)
        steps.append(len(calls))
    assert steps == [4, 0], steps  # the flat model's steps after the replacement are flat ones
    wf, wp = weights(flat), weights(plain)
    assert all(np.array_equal(wf[k], wp[k]) for k in wf)
    # the flat buffer was rebuilt around the new array: the layer's W is the flat view again
    assert flat.layers[0].params["W"] is flat._flat_views[f"{flat.layers[0].name}.W"]


def test_optimizer_state_loaded_into_a_flat_model_is_used(backend, monkeypatch):
    x, y = data()
    a = model(backend, optim.Adam(0.01))
    a.fit(x, y, epochs=1, batch_size=16, verbose=0)
    state = {k: backend.to_numpy(v) if hasattr(v, "shape") else v
             for k, v in a.optimizer.state_dict().items()}
    # what a load that is ignored gives: no state at all, the step counts without the moments, or
    # the moments without the step counts
    zeroed = {k: np.zeros_like(v) if hasattr(v, "shape") else v for k, v in state.items()}
    unstepped = {k: v for k, v in state.items() if not k.startswith("step:")}
    b, c = model(backend, optim.Adam(0.01)), per_parameter(model(backend, optim.Adam(0.01)))
    none, moments, steps = (model(backend, optim.Adam(0.01)) for _ in range(3))
    # a model that took flat steps of its own (8, a's 4) before the load: its flat moments and its
    # device copies of the step counts must give way to the loaded ones
    stepped = model(backend, optim.Adam(0.01))
    stepped.fit(x, y, epochs=2, batch_size=16, verbose=0)
    calls = counted_flat_updates(backend, monkeypatch)
    for m, loaded in ((b, state), (c, state), (none, None), (moments, zeroed), (steps, unstepped),
                      (stepped, state)):
        for k, v in a.parameters.items():
            m.parameters[k][...] = v
        if loaded is not None:
            m.optimizer.load_state_dict(loaded)
        # seed=3 (the models' own): stepped's shuffler starts again where the fresh models' start
        m.fit(x, y, epochs=1, batch_size=16, verbose=0, seed=3)
        if m is b:
            assert len(calls) == 4, len(calls)  # b's steps were flat ones
    wb, wc = weights(b), weights(c)
    assert all(np.array_equal(wb[k], wc[k]) for k in wb)
    assert all(np.array_equal(wb[k], v) for k, v in weights(stepped).items())
    for other in (none, moments, steps):
        assert not all(np.array_equal(wb[k], v) for k, v in weights(other).items())


def test_parameters_with_different_step_counts_keep_their_own(backend):
    """Loaded step counts that differ between parameters (one trained for fewer steps, as a layer
    frozen for a while) admit no flat step with one count: each parameter steps with its own
    count, as on the per-parameter path."""
    x, y = data()
    a = model(backend, optim.Adam(0.01))
    a.fit(x, y, epochs=1, batch_size=16, verbose=0)
    state = {k: backend.to_numpy(v) if hasattr(v, "shape") else v
             for k, v in a.optimizer.state_dict().items()}
    first = next(k for k in state if k.startswith("step:"))
    state[first] = 1  # the others took 4
    flat, plain = model(backend, optim.Adam(0.01)), per_parameter(model(backend, optim.Adam(0.01)))
    for m in (flat, plain):
        for k, v in a.parameters.items():
            m.parameters[k][...] = v
        m.optimizer.load_state_dict(state)
        m.fit(x, y, epochs=1, batch_size=16, verbose=0)
    wf, wp = weights(flat), weights(plain)
    assert all(np.array_equal(wf[k], wp[k]) for k in wf)
    counts = {k: v for k, v in flat.optimizer.state_dict().items() if k.startswith("step:")}
    assert counts == {k: 5 if k == first else 8 for k in counts}, counts
