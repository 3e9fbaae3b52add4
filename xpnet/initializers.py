"""Weight initializers ``f(rng, shape, dtype)``. Each draws from a CounterRandom, so the same seed
gives the same weights on every backend.

Fans follow the public layouts: Dense W (in, out) has fan_in = in, fan_out = out; a convolution
W (F, C, kh, kw) (or (F, C, k) / (F, C, kd, kh, kw)) has fan_in = C * kh * kw and
fan_out = F * kh * kw; a vector of n entries has fan_in = fan_out = n.

    uniform          U(-0.5, 0.5)                          (the first seed report)
    glorot_uniform   U(-a, a), a = sqrt(6 / (fan_in + fan_out))     (alias xavier_uniform)
    glorot_normal    N(0, 2 / (fan_in + fan_out))                    (alias xavier_normal)
    he_uniform       U(-a, a), a = sqrt(6 / fan_in)                  (alias kaiming_uniform)
    he_normal        N(0, 2 / fan_in)                                (alias kaiming_normal)
    lecun_uniform    U(-a, a), a = sqrt(3 / fan_in)
    lecun_normal     N(0, 1 / fan_in)
    zeros, ones

The normal ones are untruncated, as torch.nn.init's xavier_normal_ and kaiming_normal_.
"""
import contextlib
import contextvars
import functools
import inspect
import math

from .errors import ConfigError, DataError


def _shape(shape):
    shape = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise ConfigError(f"initializer: shape must not have negative sizes, got {shape}")
    return shape


def fans(shape):
    """(fan_in, fan_out) of a weight in the public layout (see the module docstring)."""
    shape = _shape(shape)
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) >= 3:
        receptive = math.prod(shape[2:])
        return shape[1] * receptive, shape[0] * receptive
    n = math.prod(shape)
    return n, n


def _fans(name, shape):
    fan_in, fan_out = fans(shape)
    if fan_in <= 0 or fan_out <= 0:
        raise ConfigError(f"{name}: cannot compute fans of an empty weight of shape {tuple(shape)}")
    return fan_in, fan_out


def _checked(fn):
    """The initializer ``fn``, refusing first (check_size) a weight larger than ``file_limit``
    allows: a user's own layer that calls an initializer itself (docs/custom_layers.md), not
    through Layer._initializer, is held to the file's largest parameter array too."""
    @functools.wraps(fn)
    def initializer(rng, shape, dtype):
        check_size(_shape(shape), f"{fn.__name__} weights")
        return fn(rng, shape, dtype)
    return initializer


@_checked
def zeros(rng, shape, dtype):
    """All zeros."""
    return rng.xp.zeros(_shape(shape), dtype=dtype)


@_checked
def ones(rng, shape, dtype):
    """All ones."""
    return rng.xp.ones(_shape(shape), dtype=dtype)


@_checked
def uniform(rng, shape, dtype):
    """Uniform in [-0.5, 0.5)."""
    return rng.uniform(-0.5, 0.5, _shape(shape), dtype)


@_checked
def glorot_uniform(rng, shape, dtype):
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans("glorot_uniform", shape)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, _shape(shape), dtype)


@_checked
def glorot_normal(rng, shape, dtype):
    """N(0, std**2) with std = sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans("glorot_normal", shape)
    return rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), _shape(shape), dtype)


@_checked
def he_normal(rng, shape, dtype):
    """N(0, std**2) with std = sqrt(2 / fan_in)."""
    fan_in, _ = _fans("he_normal", shape)
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), _shape(shape), dtype)


@_checked
def he_uniform(rng, shape, dtype):
    """U(-a, a) with a = sqrt(6 / fan_in)."""
    fan_in, _ = _fans("he_uniform", shape)
    limit = math.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, _shape(shape), dtype)


@_checked
def lecun_normal(rng, shape, dtype):
    """N(0, std**2) with std = sqrt(1 / fan_in)."""
    fan_in, _ = _fans("lecun_normal", shape)
    return rng.normal(0.0, math.sqrt(1.0 / fan_in), _shape(shape), dtype)


@_checked
def lecun_uniform(rng, shape, dtype):
    """U(-a, a) with a = sqrt(3 / fan_in)."""
    fan_in, _ = _fans("lecun_uniform", shape)
    limit = math.sqrt(3.0 / fan_in)
    return rng.uniform(-limit, limit, _shape(shape), dtype)


INITIALIZERS = {f.__name__: f for f in (zeros, ones, uniform, glorot_uniform, glorot_normal,
                                        he_normal, he_uniform, lecun_normal, lecun_uniform)}
INITIALIZERS.update(xavier_uniform=glorot_uniform, xavier_normal=glorot_normal,
                    kaiming_uniform=he_uniform, kaiming_normal=he_normal)


SIGNATURE = "f(rng, shape, dtype)"


def get(name, owner=None, argument="initializer"):
    """An initializer by name (case-insensitive), or a callable ``f(rng, shape, dtype)`` returned
    unchanged once it is seen to take those three arguments. Else ConfigError, starting with
    ``owner`` (e.g. "layer 'd' (Dense)") when given and naming ``argument`` (e.g.
    "kernel_initializer")."""
    start = f"{owner}: " if owner else ""
    if callable(name):
        _check_signature(name, start + argument)
        return name
    key = name.lower() if isinstance(name, str) else name
    try:
        return INITIALIZERS[key]
    except (KeyError, TypeError):
        raise ConfigError(f"{start}unknown {argument} {name!r}; expected one of: "
                          + ", ".join(sorted(INITIALIZERS)) + f", or a callable {SIGNATURE}") from None


def check_result(value, shape, dtype, backend, what):
    """``value``, what the initializer ``what`` returned for a weight of ``shape``, in the layer's
    float ``dtype`` (another float dtype is converted, as assigning to a PyTorch parameter does:
    kept, a float64 weight made the whole model float64 and its file unloadable as float32),
    unless it is not an array of ``backend`` with that shape and a float dtype: then ConfigError
    saying what came back and what was expected (a list, or a wrong shape, failed later and far
    away)."""
    shape = _shape(shape)
    kind = getattr(getattr(value, "dtype", None), "kind", None)
    if backend.owns(value) and tuple(value.shape) == shape and kind == "f":
        return value.astype(dtype, copy=False)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        got = f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
        if not backend.owns(value):
            got += f", not an array of the {backend.name} backend"
    else:
        got = f"{type(value).__name__} {value!r}"[:200]
    raise ConfigError(f"{what} returned {got}; expected an array of the {backend.name} backend "
                      f"(rng.xp) of shape {shape} with a float dtype (the layer's is {dtype})")


def _check_signature(fn, what):
    """ConfigError unless ``fn(rng, shape, dtype)`` binds to ``fn``'s parameters (a callable whose
    signature Python cannot read, such as some built-ins, is taken as it is)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None, None, None)
    except TypeError:
        label = getattr(fn, "__name__", type(fn).__name__)
        raise ConfigError(f"{what} {label}{signature} cannot be called as {SIGNATURE}; expected a "
                          f"callable taking the random generator, the weight's shape and its dtype "
                          f"(Keras's f(shape, dtype) lacks the generator)") from None


__all__ = ["check_result", "fans", "get", "INITIALIZERS", "SIGNATURE"] + sorted(INITIALIZERS)


# While a model file is rebuilt (io._rebuild): (the file's largest parameter array's size, the file)
_FILE_LIMIT = contextvars.ContextVar("xpnet_file_param_limit", default=None)


@contextlib.contextmanager
def file_limit(values, source):
    """While a model file ``source`` is rebuilt: refuse, before allocating it, any parameter of
    more than ``values`` values (the file's largest parameter array). A header with corrupt or
    hostile sizes (``units`` 10**6 where the file holds a 128-unit layer) would otherwise have its
    weights allocated and drawn, gigabytes perhaps, before the arrays are found not to fit."""
    token = _FILE_LIMIT.set((int(values), source))
    try:
        yield
    finally:
        _FILE_LIMIT.reset(token)


def check_size(shape, what):
    """DataError naming the file when a parameter of ``shape`` would exceed ``file_limit``'s."""
    limit = _FILE_LIMIT.get()
    if limit is None:
        return
    values, source = limit
    size = math.prod(int(d) for d in shape)
    if size > values:
        raise DataError(f"{source}: {what} would have shape {tuple(int(d) for d in shape)} ({size:,} values), "
                        f"more than the file's largest parameter array ({values:,} values): corrupt or "
                        f"hostile sizes in the header")
