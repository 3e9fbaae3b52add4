"""The NumPy backend's generators make their raw words over pieces on the CPU pool
(NumpyBackend._splitmix64): every draw gives the same numbers as random.py's plain CounterRandom
on 1, 2 and 3 threads, with every pass split however small."""
import numpy as np
import pytest

import xpnet.backends.numpy_backend as nb
import xpnet.backends.numpy_kernels as nk
from xpnet.backends import get_backend
from xpnet.backends.random import CounterRandom


def draws(r):
    return [r.bernoulli_mask(0.7, (5, 33)), r.random((1001,), "float64"), r.random((17, 3)),
            r.normal(0.5, 2.0, (9,)), r.integers(-3, 11, (40,)), r.permutation(50), r.peek(7),
            r.rows(2, 5, 8).bernoulli_mask(0.4, (3, 21)), r.random((1,)), r.bernoulli_mask(0.25, (1,))]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_backends_generator_draws_the_plain_generators_numbers(threads, monkeypatch):
    monkeypatch.setattr(nk, "MIN_ELEMENTS", 1)
    monkeypatch.setattr(nk, "ADAPTIVE", False)
    backend = get_backend("numpy")
    monkeypatch.setattr(backend._kernels, "threads", threads)
    calls, made = [], backend._splitmix64   # per call: the words asked for, the pieces made

    def counted(start, n):
        calls.append((n, []))
        return made(start, n)

    mix = nb.mix_splitmix64
    monkeypatch.setattr(backend, "_splitmix64", counted)
    monkeypatch.setattr(nb, "mix_splitmix64", lambda z: calls[-1][1].append(len(z)) or mix(z))
    fast, plain = backend.rng(2026, 12), CounterRandom(np, 2026, 12)
    assert fast._fused is not None and plain._fused is None
    for _ in range(2):   # the second round reuses the kept i * GOLDEN per size
        for a, b in zip(draws(fast), draws(plain)):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
        assert fast.counter == plain.counter
    child_fast, child_plain = fast.spawn(4), plain.spawn(4)
    assert child_fast._fused is not None   # a layer's generator (Dropout's) makes its words threaded too
    before = len(calls)
    np.testing.assert_array_equal(child_fast.random((300,)), child_plain.random((300,)))
    assert len(calls) == before + 1
    # the words were made over pieces on 2 and 3 threads (in one piece on 1), and all of them
    assert len(calls) == 23 and all(sum(pieces) == n for n, pieces in calls)
    for n, pieces in calls:
        if threads == 1 or n < 2:
            assert pieces == [n]
        else:
            assert len(pieces) >= min(n, 2 * threads), (n, pieces)
