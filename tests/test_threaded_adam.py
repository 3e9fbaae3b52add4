"""An optimizer's flat update runs over cache-sized pieces of the buffers on the CPU pool
(NumpyBackend.flat_update): the same bits as the whole-array update (for Adam and AdamW the formula
written out here, independently of backends/base.adam_reference), on 1 and 3 threads with every
pass split, with stretches of 5 elements (many, uneven: the pool's pieces of this 64-element buffer
are 16 elements wide on 1 thread and 6 on 3, so 5 splits both) and of the default size (one here), for a
model's flat step and for lone parameters (the plain per-parameter path); and for every optimizer,
against the same optimizer's update in one call."""
import numpy as np
import pytest

import xpnet
import xpnet.backends.numpy_backend as nb
import xpnet.backends.numpy_kernels as nk
from xpnet.backends import get_backend
from xpnet.backends.base import Backend
from xpnet.optim import SGD, Adam, AdamW, RMSprop


def reference(p, g, m, v, lr, t, b1, b2, eps, wd, decoupled):
    """The update as one whole-array pass (optim.py before the split), float64 scalars as fit's."""
    if wd:
        if decoupled:
            p *= np.float64(1.0 - lr * wd).astype(p.dtype)
        else:
            g = g + wd * p
    m *= b1
    m += (1.0 - b1) * g
    v *= b2
    v += (1.0 - b2) * (g * g)
    denom = np.sqrt(v)
    denom /= np.sqrt(np.float64(1.0) - b2 ** np.float64(t)).astype(p.dtype)
    denom += eps
    p -= (np.float64(lr) / (1.0 - b1 ** np.float64(t))).astype(p.dtype) * (m / denom)


@pytest.mark.parametrize("piece", [5, nb.FLAT_PIECE])   # 7 split no piece on 3 threads (6 wide)
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("flat_step", [True, False])
@pytest.mark.parametrize("kind, wd", [(Adam, 0.0), (Adam, 0.01), (AdamW, 0.05)])
def test_the_split_update_gives_the_whole_updates_bits(piece, threads, flat_step, kind, wd, monkeypatch):
    monkeypatch.setattr(nb, "FLAT_PIECE", piece)
    monkeypatch.setattr(nk, "MIN_ELEMENTS", 1)
    monkeypatch.setattr(nk, "ADAPTIVE", False)
    backend = get_backend("numpy")
    monkeypatch.setattr(backend._kernels, "threads", threads)
    rng = np.random.default_rng(threads)
    shapes = {"a": (7, 5), "b": (5,), "c": (3, 2, 4)}
    buffer = rng.standard_normal(sum(int(np.prod(s)) for s in shapes.values())).astype(np.float32)
    params, at = {}, 0
    for k, s in shapes.items():
        params[k] = buffer[at:at + int(np.prod(s))].reshape(s)
        at += params[k].size
    opt = kind(lr=0.01, weight_decay=wd).bind(backend)
    if flat_step:
        opt.bind_flat(buffer, params)   # the flat update that fit uses (device scalars lr, t)
    flat = buffer.copy()
    m, v = np.zeros_like(flat), np.zeros_like(flat)
    for t in range(1, 4):
        grads = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
        opt.step(params, grads)
        g = np.concatenate([grads[k].reshape(-1) for k in shapes])
        reference(flat, g, m, v, 0.01, t, 0.9, 0.999, 1e-8, wd, kind is AdamW)
        got = np.concatenate([params[k].reshape(-1) for k in shapes])
        np.testing.assert_array_equal(got, flat)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("make", [lambda: SGD(lr=0.05), lambda: SGD(lr=0.05, momentum=0.8, decay=1e-3),
                                  lambda: SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
                                  lambda: RMSprop(lr=0.01), lambda: Adam(lr=0.01, decay=1e-3),
                                  lambda: AdamW(lr=0.01, weight_decay=0.05)])
def test_every_optimizers_flat_update_over_pieces_equals_one_call(threads, make, monkeypatch):
    """Each optimizer's flat step (the one fit uses) over pieces of 7 elements of a 100-element
    buffer, split over 3 threads, against the same optimizer with the update in one call
    (Backend.flat_update), five steps; the pieces path must really run (counted)."""
    monkeypatch.setattr(nb, "FLAT_PIECE", 7)
    monkeypatch.setattr(nk, "MIN_ELEMENTS", 1)
    monkeypatch.setattr(nk, "ADAPTIVE", False)
    backend = get_backend("numpy")
    monkeypatch.setattr(backend._kernels, "threads", threads)
    calls = []
    pieces = nb.NumpyBackend.flat_update

    def counted(self, fn, arrays):
        calls.append(self)
        pieces(self, fn, arrays)

    monkeypatch.setattr(nb.NumpyBackend, "flat_update", counted)
    shapes = {"w": (9, 10), "b": (10,)}
    results = []
    for one_call in (False, True):
        buffer = np.random.default_rng(6).standard_normal(100).astype(np.float32)
        params = {"w": buffer[:90].reshape(9, 10), "b": buffer[90:]}
        opt = make().bind(backend)
        if one_call:   # this optimizer's update as one call over the whole buffers
            opt.backend = type("OneCall", (), {"xp": np, "flat_update": lambda self, fn, arrays: Backend.flat_update(self, fn, arrays)})()
        opt.bind_flat(buffer, params)
        grads_rng = np.random.default_rng(7)
        for _ in range(5):
            opt.step(params, {k: grads_rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()})
        results.append(buffer.copy())
    assert len(calls) == 5   # the pieces path ran for the first optimizer's five steps
    np.testing.assert_array_equal(results[0], results[1])
    assert not np.array_equal(results[0], np.random.default_rng(6).standard_normal(100).astype(np.float32))


def test_parts_read_the_gradient_without_joining_it():
    """flat_update's gradient as its per-parameter parts (nb.Parts): a stretch inside one part is a
    view of it, one across parts (an empty part among them) has their elements in order, and parts
    of different dtypes are joined whole, as the base's concatenate would (the same promotion)."""
    a, b, c = np.arange(5, dtype=np.float32), np.zeros(0, np.float32), np.arange(5, 12, dtype=np.float32)
    parts = nb.Parts([a, b, c])
    whole = np.concatenate([a, b, c])
    assert parts.shape == (12,)
    inside = parts[slice(6, 9)]
    assert np.shares_memory(inside, c) and np.array_equal(inside, whole[6:9])
    for s in (slice(0, 12), slice(3, 7), slice(4, 6), slice(5, 6), slice(0, 5), slice(10, 20)):
        np.testing.assert_array_equal(parts[s], whole[s])
    mixed = nb.Parts([a, c.astype(np.float64)])
    assert len(mixed.parts) == 1 and mixed[slice(3, 7)].dtype == np.float64
    np.testing.assert_array_equal(mixed[slice(3, 7)], np.concatenate([a, c.astype(np.float64)])[3:7])
