"""A capturable training step and fit(..., graph=True), shown on the CPU.

A CUDA graph replays the launches it recorded, with the same shapes and the same scalar arguments,
and runs no Python. The strict backend below emulates that: its capture() returns a replay that
runs the step's Python again but keeps the host's records as they were (a real replay does not
touch them), and traces every operation with its shapes and scalar values. If any per-step value
lived on the host (a learning rate, a step count, a random counter), the replays' traces would
differ and their numbers would repeat instead of advancing; the weights would then differ from an
ordinary run. Neither happens.
"""
import numpy as np
import pytest

import xpnet
from xpnet import callbacks, capture, optim
from xpnet.augment import KerasAffine
from xpnet.backends import strict_backend as sb
from xpnet.backends.strict_backend import StrictBackend
from xpnet.errors import ConfigError
from xpnet.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU


class ReplayingStrict(StrictBackend):
    """The strict backend with a stand-in for CUDA graph capture (see the module docstring)."""

    can_capture = True

    def __init__(self):
        super().__init__()
        self.traces, self.step, self.counts = [], None, []

    def capture(self, fn):
        def replay():
            host = self.step._host_state()
            before = (sb.COUNTERS["syncs"], sb.COUNTERS["h2d"])
            sb.TRACE = []
            try:
                fn()
                self.traces.append(sb.TRACE)
            finally:
                sb.TRACE = None
            self.counts.append((sb.COUNTERS["syncs"] - before[0], sb.COUNTERS["h2d"] - before[1]))
            self.step._restore(host)
        return replay


@pytest.fixture
def replaying(monkeypatch):
    backend = ReplayingStrict()
    init = capture.CapturedStep.__init__

    def register(self, *args):
        init(self, *args)
        backend.step = self
    monkeypatch.setattr(capture.CapturedStep, "__init__", register)
    return backend


def data(n=70, seed=0):
    r = np.random.default_rng(seed)
    x = r.random((n, 1, 8, 8), dtype=np.float32)
    return x, (x.reshape(n, -1)[:, :3].argmax(1)).astype(np.int64)


def model(backend, opt=None):
    m = xpnet.Sequential([Conv2D(4, 3, padding="same"), ReLU(), MaxPool2D(2), Dropout(0.3), Flatten(),
                          Dense(3)], input_shape=(1, 8, 8), device=backend, seed=2)
    return m.compile(optimizer=opt or optim.Adam(0.01, decay=0.01))


def train(m, graph, epochs=3):
    schedule = callbacks.LearningRateScheduler(lambda epoch: 0.01 * 0.5 ** epoch)  # changes between epochs
    return m.fit(*data(), epochs=epochs, batch_size=16, augment=KerasAffine(rotation=20, zoom=0.1),
                 callbacks=[schedule], verbose=0, graph=graph)


def weights(m):
    return {k: m.backend.to_numpy(v) for k, v in m.parameters.items()}


def rng_states(m):
    """The host's records of the fit's and the dropout's generators (what a checkpoint saves)."""
    return [r.get_state() for r in m._training_rngs().values()] + \
        [layer.rng.get_state() for layer in m.layers if isinstance(layer, Dropout)]


@pytest.mark.parametrize("make_opt", [lambda: optim.Adam(0.01, decay=0.01),
                                      lambda: optim.SGD(0.05, momentum=0.9, nesterov=True),
                                      lambda: optim.RMSprop(0.01, centered=True)])
def test_replayed_steps_give_the_numbers_of_ordinary_steps(replaying, make_opt):
    plain, graphed = model("strict", make_opt()), model(replaying, make_opt())
    h0, h1 = train(plain, False), train(graphed, True)
    w0, w1 = weights(plain), weights(graphed)
    assert all(np.array_equal(w0[k], w1[k]) for k in w0)
    assert h0.history["loss"] == h1.history["loss"] and h0.history["lr"] == h1.history["lr"]
    assert graphed.optimizer.state_dict()["iterations"] == plain.optimizer.state_dict()["iterations"] == 15
    assert rng_states(graphed) == rng_states(plain)   # the replays' draws recorded on the host
    # 3 epochs of 4 full batches and a partial one: the first full batch warms up, the second is
    # captured, then 10 replays; the partial batches run as ordinary steps
    assert len(replaying.traces) == 11


def test_every_replay_launches_the_same_operations_with_the_same_constants(replaying):
    train(model(replaying), True)
    # 11 replays, as in the test above: with fewer the comparisons below could prove nothing
    assert len(replaying.traces) == len(replaying.counts) == 11
    first = replaying.traces[0]
    assert len(first) > 100
    assert all(t == first for t in replaying.traces[1:])
    assert all(counts == (0, 0) for counts in replaying.counts)  # no sync, no host-to-device copy


def test_checkpoint_after_graph_training_resumes_like_an_ordinary_run(replaying, tmp_path):
    plain, graphed = model("strict"), model(replaying)
    train(plain, False, epochs=2)
    graphed.fit(*data(), epochs=1, batch_size=16, augment=KerasAffine(rotation=20, zoom=0.1),
                verbose=0, graph=True, checkpoint=tmp_path)
    graphed.fit(*data(), epochs=2, batch_size=16, augment=KerasAffine(rotation=20, zoom=0.1),
                verbose=0, graph=True, checkpoint=tmp_path, resume=True,
                callbacks=[callbacks.LearningRateScheduler(lambda e: 0.01 * 0.5 ** e)])
    w0, w1 = weights(plain), weights(graphed)
    assert all(np.array_equal(w0[k], w1[k]) for k in w0)


def test_graph_flag_on_the_cpu_runs_the_ordinary_step(backend):
    a, b = model(backend), model(backend)
    train(a, False)
    train(b, True)
    wa, wb = weights(a), weights(b)
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_graph_and_distributed_do_not_combine():
    with pytest.raises(ConfigError, match="graph=True does not combine with distributed"):
        model("strict").fit(*data(), graph=True, distributed=object(), verbose=0)
