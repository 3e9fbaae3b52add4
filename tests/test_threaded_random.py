"""The NumPy backend's generators make their raw words over pieces on the CPU pool
(NumpyBackend._splitmix64): every draw gives the same numbers as random.py's plain CounterRandom
on 1, 2 and 3 threads, with every pass split however small; and those numbers are random.py's
documented splitmix64 recipe, recomputed here in plain Python."""
import math

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


# -- the numbers themselves, from random.py's documented recipe in plain Python ---------------------
MASK, GOLDEN = (1 << 64) - 1, 0x9E3779B97F4A7C15


def _mix(z):
    """splitmix64's output function."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _key(seed, stream):
    return _mix((_mix((seed + GOLDEN) & MASK) ^ (stream * GOLDEN & MASK)) + GOLDEN & MASK)


def _words(key, first, n):
    """The hashes at positions first..first+n-1: splitmix64 of (position + key) * GOLDEN."""
    return [_mix((p + key) * GOLDEN & MASK) for p in range(first, first + n)]


@pytest.mark.parametrize("make", ["plain", "numpy", "strict"])
def test_the_generators_numbers_are_splitmix64_as_documented(make):
    """The streams checkpoints and recorded runs rely on: float64 uniforms are a hash's top 53
    bits, float32 ones the top 24 bits of each little-endian 32-bit half, a Bernoulli mask compares
    each little-endian 16-bit quarter with round(p * 65536), integers are the hash modulo the span,
    a permutation sorts hashes, normals are Box-Muller; each draw takes the next hashes."""
    r = CounterRandom(np, 2026, 12) if make == "plain" else get_backend(make).rng(2026, 12)
    host = get_backend("strict").to_numpy if make == "strict" else np.asarray
    k = _key(2026, 12)
    w = _words(k, 0, 32)
    np.testing.assert_array_equal(host(r.random((5,), "float64")), [(x >> 11) * 2.0 ** -53 for x in w[:5]])
    halves = [h for x in w[5:9] for h in (x & 0xFFFFFFFF, x >> 32)][:7]
    got = host(r.random((7,)))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array([(h >> 8) * 2.0 ** -24 for h in halves], np.float32))
    quarters = [(x >> (16 * j)) & 0xFFFF for x in w[9:12] for j in range(4)][:9]
    p = (quarters[0] + 0.7) / 65536   # rounds up to the first quarter + 1: it is True
    np.testing.assert_array_equal(host(r.bernoulli_mask(p, (9,))), [q < quarters[0] + 1 for q in quarters])
    np.testing.assert_array_equal(host(r.integers(-3, 11, (6,))), [x % 14 - 3 for x in w[12:18]])
    np.testing.assert_array_equal(host(r.permutation(8)), sorted(range(8), key=lambda i: w[18 + i]))
    u1, u2 = [(x >> 11) * 2.0 ** -53 for x in w[26:29]], [(x >> 11) * 2.0 ** -53 for x in w[29:32]]
    rad = [math.sqrt(-2.0 * math.log1p(-u)) for u in u1]
    z = [a * math.cos(2 * math.pi * b) for a, b in zip(rad, u2)] + \
        [a * math.sin(2 * math.pi * b) for a, b in zip(rad, u2)]
    np.testing.assert_allclose(host(r.normal(0.5, 2.0, (5,), "float64")), [v * 2.0 + 0.5 for v in z[:5]],
                               rtol=1e-13)
    assert r.counter == 32
    np.testing.assert_array_equal(host(r.peek(2)), [(x >> 11) * 2.0 ** -53 for x in _words(k, 32, 2)])
    assert r.counter == 32
    last = [(x >> (16 * j)) & 0xFFFF for x in _words(k, 32, 2) for j in range(4)][:5]
    exact = host(r.bernoulli_mask(last[0] / 65536, (5,)))   # a quarter equal to the threshold: False
    np.testing.assert_array_equal(exact, [q < last[0] for q in last])
    assert not exact[0] and r.counter == 34
    child = _key(2026, _mix((k ^ 4) + GOLDEN & MASK))
    np.testing.assert_array_equal(host(r.spawn(4).random((3,), "float64")),
                                  [(x >> 11) * 2.0 ** -53 for x in _words(child, 0, 3)])
