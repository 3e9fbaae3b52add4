"""Weight initializers. Each takes a CounterRandom, so the same seed gives the same weights on
every backend. Fans follow the public layouts: Dense W (in, out), Conv2D W (F, C, kh, kw)."""
import math

from .errors import ConfigError


def fans(shape):
    """(fan_in, fan_out) for a weight of the given public layout."""
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 4:
        receptive = shape[2] * shape[3]
        return shape[1] * receptive, shape[0] * receptive
    n = math.prod(shape)
    return n, n


def zeros(rng, shape, dtype):
    return rng.xp.zeros(shape, dtype=dtype)


def ones(rng, shape, dtype):
    return rng.xp.ones(shape, dtype=dtype)


def uniform(rng, shape, dtype):
    """Uniform in [-0.5, 0.5], as in the first seed report."""
    return rng.uniform(-0.5, 0.5, shape, dtype)


def glorot_uniform(rng, shape, dtype):
    fan_in, fan_out = fans(shape)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape, dtype)


def glorot_normal(rng, shape, dtype):
    fan_in, fan_out = fans(shape)
    return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), shape, dtype)


def he_normal(rng, shape, dtype):
    fan_in, _ = fans(shape)
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), shape, dtype)


def he_uniform(rng, shape, dtype):
    fan_in, _ = fans(shape)
    limit = math.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, shape, dtype)


def lecun_normal(rng, shape, dtype):
    fan_in, _ = fans(shape)
    return rng.normal(0.0, math.sqrt(1.0 / fan_in), shape, dtype)


def lecun_uniform(rng, shape, dtype):
    fan_in, _ = fans(shape)
    limit = math.sqrt(3.0 / fan_in)
    return rng.uniform(-limit, limit, shape, dtype)


INITIALIZERS = {f.__name__: f for f in (zeros, ones, uniform, glorot_uniform, glorot_normal,
                                        he_normal, he_uniform, lecun_normal, lecun_uniform)}
INITIALIZERS.update(xavier_uniform=glorot_uniform, xavier_normal=glorot_normal)


def get(name):
    """An initializer by name (or a callable ``f(rng, shape, dtype)`` returned unchanged)."""
    if callable(name):
        return name
    try:
        return INITIALIZERS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown initializer {name!r}; expected one of: "
                          + ", ".join(sorted(INITIALIZERS))) from None
