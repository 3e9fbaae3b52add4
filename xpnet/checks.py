"""Argument checks shared by constructors: a flag that must be a bool, a verbosity of 0 or 1, a
finite number in a range, a whole number >= a minimum. Each raises ConfigError naming the owner,
the argument, what was expected and what it got, so that a typo fails where it was made instead of
being coerced (``bool("no")`` is True, ``float("nan")`` passes every ``<`` test)."""
import math
import numbers

from .errors import ConfigError, ShapeError


def is_bool(value):
    """A Python bool, or a NumPy bool scalar (or 0-d bool array), found without importing NumPy
    (the core gets its array library from a backend)."""
    return isinstance(value, bool) or (getattr(getattr(value, "dtype", None), "kind", None) == "b"
                                       and getattr(value, "shape", None) == ())


def flag(value, owner, name):
    """``value`` as a bool when it is one (Python's or NumPy's), else ConfigError: a string such as
    "no" or "false", a number or None is refused rather than taken for its truth value."""
    if is_bool(value):
        return bool(value)
    raise ConfigError(f"{owner}: {name} must be True or False, got {type(value).__name__} {value!r}")


def verbosity(value, owner, name="verbose"):
    """``value`` as 0 or 1 when it is one of them or a bool, else ConfigError: a callback's
    ``verbose`` is quiet or not, and "yes", 2 or None is refused rather than taken for its truth
    value."""
    if is_bool(value) or (_is_number(value) and value in (0, 1)):
        return int(value)
    raise ConfigError(f"{owner}: {name} must be 0, 1, True or False, got {type(value).__name__} "
                      f"{value!r}")


def _is_number(value):
    return isinstance(value, numbers.Real) and not is_bool(value)


def number(value, owner, name, low=None, high=None, open_low=False, open_high=False, want=None):
    """``value`` as a float when it is a finite real number (not a bool or a string) within the
    bounds (``open_low`` / ``open_high``: the bound itself is excluded), else ConfigError saying
    it must be ``want`` (default: "a finite number in [low, high]" and the like)."""
    if want is not None:
        pass
    elif low is not None and high is not None:
        want = ("(" if open_low else "[") + f"{low:g}, {high:g}" + (")" if open_high else "]")
        want = f"a finite number in {want}"
    elif low is not None:
        want = f"a finite number {'>' if open_low else '>='} {low:g}"
    elif high is not None:
        want = f"a finite number {'<' if open_high else '<='} {high:g}"
    else:
        want = "a finite number"
    if not _is_number(value):
        raise ConfigError(f"{owner}: {name} must be {want}, got {type(value).__name__} {value!r}")
    v = float(value)
    bad = not math.isfinite(v)
    if low is not None:
        bad = bad or v < low or (open_low and v == low)
    if high is not None:
        bad = bad or v > high or (open_high and v == high)
    if bad:
        raise ConfigError(f"{owner}: {name} must be {want}, got {value!r}")
    return v


def whole(value, owner, name, minimum=0):
    """``value`` as an int when it is a whole number >= ``minimum`` (an int, or a float such as 2.0;
    not a bool or a string), else ConfigError."""
    got = f"{type(value).__name__} {value!r}" if not _is_number(value) else repr(value)
    if not _is_number(value) or not math.isfinite(float(value)) or int(value) != value \
            or value < minimum:
        raise ConfigError(f"{owner}: {name} must be an integer >= {minimum}, got {got}")
    return int(value)


def text(value, owner, name):
    """``value`` when it is a non-empty string, else ConfigError."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{owner}: {name} must be a non-empty string, got {type(value).__name__} "
                          f"{value!r}")
    return value


def input_dims(shape, what):
    """An input shape without the batch axis (an int, or a sequence of them) as a tuple of positive
    ints, else ShapeError "``what`` must be a tuple of positive sizes without the batch axis": 6.5,
    "6" and True are refused, not converted."""
    if isinstance(shape, numbers.Integral) and not is_bool(shape):
        shape = (shape,)
    try:
        dims = tuple(int(d) for d in shape)
        whole = all(isinstance(d, numbers.Integral) and not is_bool(d) for d in shape)
    except (TypeError, ValueError):
        dims, whole = (), False
    if not dims or not whole or any(d <= 0 for d in dims):
        raise ShapeError(f"{what} must be a tuple of positive sizes without the batch axis, got {shape!r}")
    return dims
