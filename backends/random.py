"""A counter-based random generator written against ``xp``.

The same seed gives bit-identical numbers on NumPy, CuPy and the strict backend, because every
number is a pure function (splitmix64) of (seed, stream, position). Nothing is copied between host
and device: the counter is a Python int that advances by the number of values drawn.
"""
import math

_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def _mix64(z):
    """splitmix64 finalizer on a Python int (used only to derive keys)."""
    z = (z + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _finish(z):
    """splitmix64's mixing of the uint64 array z = i * GOLDEN + start, in place."""
    u64 = z.dtype.type
    z ^= z >> u64(30)
    z *= u64(0xBF58476D1CE4E5B9)
    z ^= z >> u64(27)
    z *= u64(0x94D049BB133111EB)
    z ^= z >> u64(31)
    return z


def splitmix64_reference(xp, start, n):
    """The n words (i * GOLDEN + start, mixed) for i < n; ``start`` a uint64 scalar or (1,) array.
    The reference of the CuPy backend's one-launch splitmix64 kernels."""
    return _finish(xp.arange(n, dtype=xp.uint64) * xp.uint64(_GOLDEN) + start)


class _Draws:
    """The draws both generators derive from their own ``random`` and ``bernoulli_mask``."""

    def uniform(self, low=0.0, high=1.0, shape=(), dtype="float32"):
        u = self.random(shape, dtype)
        return u * (high - low) + low if (low, high) != (0.0, 1.0) else u

    def bernoulli(self, p, shape, dtype="float32", value=1.0):
        """``value`` with probability p, else 0, as an array of ``dtype``."""
        kind = self.xp.dtype(dtype).type
        return self.xp.where(self.bernoulli_mask(p, shape), kind(value), kind(0))


def _unit(xp, words, dtype):
    """Uniform floats in [0, 1) of ``dtype`` from hash words: uint64 words give float64 (top 53
    bits), uint32 words give float32 (top 24 bits)."""
    if words.dtype == xp.uint64:
        return (words >> xp.uint64(11)).astype(xp.float64) * (1.0 / (1 << 53))
    out = (words >> xp.uint32(8)).astype(xp.float32) * xp.float32(1.0 / (1 << 24))
    return out.astype(dtype, copy=False)


class CounterRandom(_Draws):
    """Seeded generator producing arrays of the ``xp`` module it is given."""

    def __init__(self, xp, seed=0, stream=0):
        self.xp = xp
        self.seed = int(seed)
        self.stream = int(stream)
        self.counter = 0
        self._key = _mix64(_mix64(self.seed & _MASK64) ^ (self.stream * _GOLDEN & _MASK64))
        self._device = getattr(self, "_device", None)  # set_state keeps a device counter
        self._fused = getattr(self, "_fused", None)  # a one-launch splitmix64 (the CuPy backend's)

    # -- state, for checkpoints -------------------------------------------------------------
    def get_state(self):
        return {"seed": self.seed, "stream": self.stream, "counter": self.counter}

    def set_state(self, state):
        self.__init__(self.xp, state["seed"], state["stream"])
        self.counter = int(state["counter"])

    def device_counter(self, on=True):
        """Also keep the counter in a device array, read and advanced by the draws themselves, so
        that a captured (CUDA graph) step draws new numbers on every replay. The numbers are the
        same as without it; ``counter`` stays the host's record (see ``advance``)."""
        self._device = [self.xp.zeros((1,), dtype=self.xp.uint64), None] if on else None
        return self

    def advance(self, n):
        """Host bookkeeping of ``n`` values drawn by a replayed step (its device counter moved)."""
        self.counter += int(n)
        if self._device is not None:
            self._device[1] = self.counter

    def rows(self, lo, hi, total):
        """A view that draws rows ``lo:hi`` of what a draw for ``total`` rows would give.

        Data-parallel training: a rank holding samples lo..hi-1 of a global batch of ``total``
        gets exactly the numbers a single process would use for them (Dropout masks), and the
        counter advances as if the whole batch had been drawn, so every rank stays in step.
        """
        return RowSlice(self, lo, hi, total)

    def _span(self, start, stop, total):
        """The hashes at positions start..stop-1 of a draw of ``total``; advances by ``total``."""
        base = self.counter
        self.counter = base + start
        z = self._bits(stop - start)
        self.counter = base + total
        return z

    def spawn(self, stream):
        """An independent generator for a sub-task (a layer, the shuffler, the augmenter)."""
        child = CounterRandom(self.xp, self.seed, _mix64(self._key ^ (int(stream) & _MASK64)))
        child._fused = self._fused
        return child

    # -- raw bits ---------------------------------------------------------------------------
    def _bits(self, n):
        xp = self.xp
        u64 = xp.uint64
        # (i + start) * GOLDEN == i * GOLDEN + start * GOLDEN (mod 2**64): one addition to a cached
        # i * GOLDEN instead of arange, add and multiply
        if self._device is None:
            start = u64(((self.counter + self._key) * _GOLDEN) & _MASK64)
        else:
            counter, known = self._device
            if known != self.counter:  # the host moved it (a new generator, set_state, rows)
                counter[...] = u64(self.counter & _MASK64)
            start = (counter + u64(self._key)) * u64(_GOLDEN)   # (1,) arrays wrap mod 2**64
            counter += u64(n)
            self._device[1] = self.counter + n
        self.counter += n
        if self._fused is not None:  # the same words in one launch (backends/cupy_kernels.py)
            return self._fused(start, n)
        return _finish(self._steps(n) + start)

    def _steps(self, n):
        """i * GOLDEN for i < n as uint64, kept per size (a layer draws the same sizes each step)."""
        cache = self.__dict__.setdefault("_step_cache", {})
        if n not in cache:
            if len(cache) >= 8:
                cache.pop(next(iter(cache)))
            cache[n] = self.xp.arange(n, dtype=self.xp.uint64) * self.xp.uint64(_GOLDEN)
        return cache[n]

    def _bits32(self, n):
        """n uniform 32-bit words: each 64-bit hash gives two (little-endian halves on every backend)."""
        return self._bits((n + 1) // 2).view(self.xp.uint32)[:n]

    # -- distributions ----------------------------------------------------------------------
    def peek(self, n):
        """The next n float64 uniforms in [0, 1), as ``random((n,), "float64")`` would draw them,
        without drawing them: the counter stays where it is (a caller that uses them ``advance``s
        it). Not with a device counter (the numbers would be read from the host's)."""
        if self._device is not None:
            raise ValueError("peek: not available with a device counter")
        at = self.counter
        words = self._bits(int(n))
        self.counter = at
        return _unit(self.xp, words, "float64")

    def random(self, shape, dtype="float32"):
        """Uniform in [0, 1)."""
        xp = self.xp
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        n = math.prod(shape)
        words = self._bits(n) if xp.dtype(dtype) == xp.float64 else self._bits32(n)
        return _unit(xp, words, dtype).reshape(shape)

    def normal(self, mean=0.0, std=1.0, shape=(), dtype="float32"):
        """Gaussian by Box-Muller; float64 arithmetic inside for accuracy."""
        xp = self.xp
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        n = math.prod(shape)
        m = (n + 1) // 2
        u1 = self.random((m,), "float64")
        u2 = self.random((m,), "float64")
        r = xp.sqrt(-2.0 * xp.log1p(-u1))
        t = 2.0 * math.pi * u2
        z = xp.concatenate([r * xp.cos(t), r * xp.sin(t)])[:n]
        return (z * std + mean).astype(dtype).reshape(shape)

    def integers(self, low, high, shape=()):
        """Integers in [low, high) as int64."""
        xp = self.xp
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        span = int(high) - int(low)
        if span <= 0:
            raise ValueError(f"integers: need high > low, got low={low}, high={high}")
        bits = self._bits(math.prod(shape))
        return ((bits % xp.uint64(span)).astype(xp.int64) + int(low)).reshape(shape)

    def permutation(self, n):
        """A random permutation of range(n), computed on the device (argsort of random keys)."""
        return self.xp.argsort(self._bits(int(n)))

    def bernoulli_mask(self, p, shape):
        """A boolean array, True with probability p rounded to a multiple of 2**-16.

        Each 64-bit hash gives four 16-bit words compared with the threshold directly (no floats):
        dropout masks are the largest random draws of a training step, and this keeps them cheap.
        """
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        n = math.prod(shape)
        return _mask(self.xp, self._bits((n + 3) // 4).view(self.xp.uint16)[:n], p, shape)


def _mask(xp, words, p, shape):
    """uint16 words -> a boolean mask, True with probability p (see bernoulli_mask)."""
    if p >= 1.0:
        return xp.ones(shape, dtype=bool)
    threshold = min(max(int(round(float(p) * 65536.0)), 0), 65535)
    return (words < xp.uint16(threshold)).reshape(shape)


class RowSlice(_Draws):
    """Rows lo:hi of a CounterRandom's draws whose first axis is a batch of ``total`` rows.

    Each draw takes a shape whose first axis is hi - lo and returns those rows of the draw of
    (total, ...) the parent would make, advancing the parent's counter by the whole draw.
    bernoulli_mask and random hash only the rows asked for; the other draws make the whole
    batch and slice it.
    """

    def __init__(self, rng, lo, hi, total):
        if not 0 <= lo <= hi <= total:
            raise ValueError(f"rows: need 0 <= lo <= hi <= total, got {lo}, {hi}, {total}")
        self.rng, self.xp = rng, rng.xp
        self.lo, self.hi, self.total = int(lo), int(hi), int(total)

    def _rows(self, shape):
        """(global shape, values per row) for a local ``shape`` whose first axis is hi - lo."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if not shape or shape[0] != self.hi - self.lo:
            raise ValueError(f"a draw for rows {self.lo}:{self.hi} must have {self.hi - self.lo} rows "
                             f"on its first axis, got shape {shape}")
        return shape, (self.total,) + shape[1:], math.prod(shape[1:])

    def _elements(self, per_word, shape):
        """The uint words holding this slice's elements of a draw packing ``per_word`` per hash."""
        shape, full, m = self._rows(shape)
        a, b = self.lo * m, self.hi * m
        w0, w1 = a // per_word, -(-b // per_word)
        total_words = -(-math.prod(full) // per_word)
        bits = self.rng._span(w0, w1, total_words)
        return shape, bits, a - w0 * per_word, b - a

    def bernoulli_mask(self, p, shape):
        shape, bits, skip, n = self._elements(4, shape)
        return _mask(self.xp, bits.view(self.xp.uint16)[skip:skip + n], p, shape)

    def random(self, shape, dtype="float32"):
        xp = self.xp
        if xp.dtype(dtype) == xp.float64:
            shape, bits, skip, n = self._elements(1, shape)
            words = bits[skip:skip + n]
        else:
            shape, bits, skip, n = self._elements(2, shape)
            words = bits.view(xp.uint32)[skip:skip + n]
        return _unit(xp, words, dtype).reshape(shape)

    def normal(self, mean=0.0, std=1.0, shape=(), dtype="float32"):
        _, full, _ = self._rows(shape)
        return self.rng.normal(mean, std, full, dtype)[self.lo:self.hi]

    def integers(self, low, high, shape=()):
        _, full, _ = self._rows(shape)
        return self.rng.integers(low, high, full)[self.lo:self.hi]
