"""Adam's and AdamW's flat update runs over pieces of the buffer on the CPU pool
(NumpyBackend.adam_update): the same bits as the whole-array update (the formula written out here,
independently of backends/base.adam_reference), on 1 and 3 threads with every pass split, for a
model's flat step and for lone parameters (the plain per-parameter path)."""
import numpy as np
import pytest

import xpnet
import xpnet.backends.numpy_kernels as nk
from xpnet.backends import get_backend
from xpnet.optim import Adam, AdamW


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


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("flat_step", [True, False])
@pytest.mark.parametrize("kind, wd", [(Adam, 0.0), (Adam, 0.01), (AdamW, 0.05)])
def test_the_split_update_gives_the_whole_updates_bits(threads, flat_step, kind, wd, monkeypatch):
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
