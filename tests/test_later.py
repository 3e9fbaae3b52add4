"""Work left for idle workers (``Backend.later`` inside ``Backend.deferring``): every piece runs, on a
worker while the caller is busy elsewhere or in the caller when the context ends, ``then`` after
all of them, errors reach the caller, nested contexts finish at the outermost; the model's backward
leaves its spectral layers' weight-gradient products there, with the bits of making them at once;
a layer's backward called alone defers nothing."""
import threading
import time

import numpy as np
import pytest

from xpnet.backends import get_backend
from xpnet.backends.numpy_kernels import DaemonPool, ElementwiseKernels


def test_pieces_run_on_an_idle_worker_then_then_after_all_of_them():
    k = ElementwiseKernels(2)
    ran, lock = [], threading.Lock()

    def piece(i):
        def run():
            with lock:
                ran.append((i, threading.current_thread().name))
        return run

    with k.deferring():
        assert k.can_defer()
        k.later([piece(i) for i in range(6)], lambda: ran.append(("then", len(ran))))
        deadline = time.monotonic() + 10
        while len(ran) < 7 and time.monotonic() < deadline:   # the caller busy elsewhere
            time.sleep(0.01)
        # the worker ran them all while the caller was not in finish_later
        assert {name for _, name in ran[:6]} == {"xpnet-elementwise-0"}, ran
    assert sorted(i for i, _ in ran[:6]) == list(range(6))
    assert ran[6] == ("then", 6)


def test_the_caller_runs_what_no_worker_took_when_the_context_ends():
    """With the only worker held up, leaving ``deferring`` runs the pieces and ``then`` on the
    caller (and does not wait for the worker)."""
    k = ElementwiseKernels(2)
    pool = k._ensure_pool()
    release, held = threading.Event(), threading.Event()
    pool._tasks.put(lambda: (held.set(), release.wait(30)))
    assert held.wait(10)
    names = []
    try:
        with k.deferring():
            k.later([lambda: names.append(threading.current_thread().name)] * 3,
                    lambda: names.append("then"))
        assert names == [threading.current_thread().name] * 3 + ["then"]
    finally:
        release.set()


def held_piece(done, name):
    """(piece, started, gate): the piece says it started, waits for the gate, then adds ``name``."""
    started, gate = threading.Event(), threading.Event()

    def piece():
        started.set()
        assert gate.wait(10)
        done.append(name)
    return piece, started, gate


def test_leaving_the_context_waits_for_a_piece_in_progress():
    k = ElementwiseKernels(2)
    done = []
    slow, started, gate = held_piece(done, "slow")
    threading.Timer(0.3, gate.set).start()
    with k.deferring():
        k.later([slow], lambda: done.append("then"))
        assert started.wait(10)   # the worker has it
    assert done == ["slow", "then"]


def test_errors_reach_the_caller_and_the_next_context_starts_clean():
    k = ElementwiseKernels(2)
    ran = []

    def bad():
        raise ZeroDivisionError("piece 2")

    with pytest.raises(ZeroDivisionError, match="piece 2"):
        with k.deferring():
            k.later([lambda: ran.append(1), bad, lambda: ran.append(3)], lambda: ran.append("then"))
    assert sorted(ran, key=str) == [1, 3]   # the others ran; ``then`` did not (its input is incomplete)
    with k.deferring():
        k.later([lambda: ran.append(4)], lambda: ran.append("then"))
    assert ran[-2:] == [4, "then"]
    with pytest.raises(KeyError, match="then's"):
        with k.deferring():
            k.later([lambda: None], lambda: {}["then's"])


def test_the_bodys_error_wins_over_a_pieces():
    """A backward that raises while a deferred piece also fails: the caller sees the backward's
    error (what went wrong first), after every piece has finished; the next context starts clean."""
    k = ElementwiseKernels(2)
    done = []
    slow, started, gate = held_piece(done, "slow")

    def bad():
        raise ZeroDivisionError("piece")

    with pytest.raises(ValueError, match="body") as info:
        with k.deferring():
            k.later([slow, bad])
            assert started.wait(10)   # the worker has the slow one
            threading.Timer(0.3, gate.set).start()
            raise ValueError("body")
    assert done == ["slow"]   # finished before the error left the context
    assert info.value.__context__ is None
    with k.deferring():
        k.later([lambda: done.append("next")])
    assert done == ["slow", "next"]


def test_nested_contexts_finish_at_the_outermost():
    """Leaving an inner ``deferring`` does not wait for the pieces (a piece held up until after the
    inner block would otherwise hold it up: checked by making every exit finish)."""
    k = ElementwiseKernels(2)
    done = []
    held, started, gate = held_piece(done, "held")
    with k.deferring():
        with k.deferring():
            k.later([held])
            assert started.wait(10)
        assert done == []   # an inner exit that waited would have failed the piece's wait (10 s)
        gate.set()
    assert done == ["held"]


def test_can_defer_only_inside_the_context_on_this_thread_with_threads():
    one, two = ElementwiseKernels(1), ElementwiseKernels(2)
    assert not two.can_defer()
    seen = []
    with one.deferring():
        assert not one.can_defer()   # one thread: nothing runs beside the caller
    with two.deferring():
        assert two.can_defer()
        other = threading.Thread(target=lambda: seen.append(two.can_defer()))
        other.start()
        other.join()
    assert seen == [False] and not two.can_defer()


def test_nothing_is_deferred_while_the_split_passes_show_load():
    """Beside a busy process (SplitCheck.loaded) each wake of a worker costs the caller its core."""
    two = ElementwiseKernels(2)
    with two.deferring():
        two.check.loaded = True
        assert not two.can_defer()
        two.check.loaded = False
        assert two.can_defer()


def test_a_backend_without_threads_runs_the_pieces_at_once():
    backend, ran = get_backend("strict"), []
    with backend.deferring():
        assert not backend.can_defer()
        backend.later([lambda: ran.append(1), lambda: ran.append(2)], lambda: ran.append("then"))
        assert ran == [1, 2, "then"]


def test_empty_pieces_run_then_at_once():
    pool, ran = DaemonPool(1), []
    pool.later([], lambda: ran.append("then"))
    assert ran == ["then"]
    pool.finish_later()


# -- the spectral layers' weight gradients ------------------------------------------------------

def _spectral_model(first_spectral):
    """Conv - ReLU - Conv - ReLU - Flatten - Dense (spectral convolutions: the caller forces the
    route); with ``first_spectral`` the first layer takes no input gradient (as in fit)."""
    import xpnet
    from xpnet.layers import Conv2D, Dense, Flatten, ReLU
    layers = [Conv2D(6, 5, padding="same"), ReLU(), Conv2D(8, 5, padding="same"), ReLU(), Flatten(), Dense(10)]
    model = xpnet.Sequential(layers, input_shape=(3, 12, 12), device="cpu", seed=3)
    model.layers[0].need_input_grad = not first_spectral
    return model


def _train_step(model, x, y):
    from xpnet.losses import CrossEntropy
    loss = CrossEntropy()
    out = model.forward(x, training=True)
    loss.forward(out, y)
    dx = model.backward(loss.backward())
    return dx, {k: v.copy() for k, v in model.gradients.items()}


@pytest.mark.parametrize("gauss_from, first_spectral, max_bytes, min_macs", [
    (1, True, None, 0), (1, False, None, 0), (10 ** 9, True, None, 0), (10 ** 9, False, None, 0),
    (1, False, 0, 0),   # layers larger than LATER_MAX_BYTES make G at once
    (1, False, None, None),   # so do those whose G is under LATER_MIN_MACS (this model's: 0.1 M)
])
def test_the_models_backward_leaves_dw_to_the_workers_with_the_same_bits(monkeypatch, gauss_from, first_spectral,
                                                                        max_bytes, min_macs):
    pytest.importorskip("numba")
    from xpnet.backends import compiled
    from xpnet.backends import numpy_kernels as nk
    from xpnet.ops import autotune, spectral
    if compiled.products() is None:
        pytest.skip(f"the compiled spectral products do not run here: {compiled.describe()}")
    monkeypatch.setattr(autotune, "method_for", lambda *args: "spectral")
    monkeypatch.setattr(spectral, "GAUSS_MIN_BATCH", gauss_from)
    if max_bytes is not None:
        monkeypatch.setattr(spectral, "LATER_MAX_BYTES", max_bytes)
    if min_macs is not None:
        monkeypatch.setattr(spectral, "LATER_MIN_MACS", min_macs)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 12, 12)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    deferred = []
    real = nk.DaemonPool.later
    monkeypatch.setattr(nk.DaemonPool, "later", lambda self, pieces, then=None: (
        deferred.append(len(pieces)), real(self, pieces, then)))
    runs = []
    for later, threads in ((0, 1), (1, 2), (0, 2)):
        monkeypatch.setattr(spectral, "LATER_DW", later)
        model = _spectral_model(first_spectral)
        model.backend.set_threads(threads)
        try:
            runs.append(_train_step(model, x, y))
        finally:
            model.backend.set_threads(get_backend("cpu")._kernels.threads)
        assert len(deferred) == (2 if later and threads > 1 and max_bytes is None and min_macs == 0 else 0), \
            (later, threads, deferred)
        deferred.clear()
    for dx, grads in runs[1:]:
        assert (dx is None) == first_spectral and (dx is None or dx.tobytes() == runs[0][0].tobytes())
        assert grads.keys() == runs[0][1].keys()
        for key in grads:
            assert grads[key].tobytes() == runs[0][1][key].tobytes(), key


def test_a_layers_backward_called_alone_defers_nothing(monkeypatch):
    """Outside a model's backward nothing waits for the end of a context: dW is whole on return."""
    from xpnet.backends import numpy_kernels as nk
    from xpnet.ops import fast
    monkeypatch.setattr(nk.DaemonPool, "later", lambda *a: pytest.fail("deferred outside deferring"))
    backend = get_backend("cpu")
    kept = backend._kernels.threads
    backend.set_threads(2)
    try:
        rng = np.random.default_rng(1)
        W = rng.standard_normal((6, 3, 5, 5)).astype(np.float32)
        x = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)
        dy = rng.standard_normal((4, 6, 12, 12)).astype(np.float32)
        _, cache = fast.conv2d_forward(np, x, W, None, (1, 1), (2, 2, 2, 2), method="spectral")
        dx, dW, _ = fast.conv2d_backward(np, dy, cache, True)
        assert np.isfinite(dW).all() and np.isfinite(dx).all()
    finally:
        backend.set_threads(kept)
