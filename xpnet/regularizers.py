"""L1/L2 weight penalties, added to the loss and to the gradients of the weights they watch.

Conventions (the Keras ones):

    L1(l):      penalty  l * sum(|w|)             gradient  l * sign(w)   (0 at w == 0)
    L2(l):      penalty  l * sum(w ** 2)          gradient  2 * l * w
    L1L2(a, b): the sum of L1(a) and L2(b)

Relation to ``weight_decay`` in torch.optim.SGD/Adam, which adds ``wd * w`` to the gradient: that
is the gradient of ``(wd / 2) * sum(w ** 2)``, so ``L2(l)`` equals ``weight_decay = 2 * l`` (for
the gradient; torch does not add the penalty to the reported loss). AdamW's decoupled decay is not
an L2 penalty at all.

Each regularizer is called as ``reg(xp, w) -> 0-d array`` and ``reg.grad(xp, w) -> array``. Layers
keep them in ``layer.regularizers`` ({param name: regularizer}).
"""
import math

from .checks import is_bool
from .errors import ConfigError


def _strength(cls_name, arg, value):
    if is_bool(value):  # float(True) would be a strength of 1
        raise ConfigError(f"{cls_name}: {arg} must be a number >= 0, got bool {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{cls_name}: {arg} must be a number >= 0, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ConfigError(f"{cls_name}: {arg} must be a finite number >= 0, got {value!r}")
    return v


class Regularizer:
    """Base class: a penalty on one weight array."""

    def __call__(self, xp, w):
        raise NotImplementedError

    def grad(self, xp, w):
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "type")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = None


class L1(Regularizer):
    """l * sum(|w|)."""

    def __init__(self, l=0.01):  # noqa: E741  (the conventional name)
        self.l = _strength("L1", "l", l)

    def __call__(self, xp, w):
        return self.l * xp.abs(w).sum()

    def grad(self, xp, w):
        return self.l * xp.sign(w)

    def get_config(self):
        return {"type": "L1", "l": self.l}


class L2(Regularizer):
    """l * sum(w ** 2); equals torch weight_decay = 2 * l."""

    def __init__(self, l=0.01):  # noqa: E741
        self.l = _strength("L2", "l", l)

    def __call__(self, xp, w):
        return self.l * (w * w).sum()

    def grad(self, xp, w):
        return (2.0 * self.l) * w

    def get_config(self):
        return {"type": "L2", "l": self.l}


class L1L2(Regularizer):
    """l1 * sum(|w|) + l2 * sum(w ** 2)."""

    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = _strength("L1L2", "l1", l1)
        self.l2 = _strength("L1L2", "l2", l2)

    def __call__(self, xp, w):
        return self.l1 * xp.abs(w).sum() + self.l2 * (w * w).sum()

    def grad(self, xp, w):
        return self.l1 * xp.sign(w) + (2.0 * self.l2) * w

    def get_config(self):
        return {"type": "L1L2", "l1": self.l1, "l2": self.l2}


REGULARIZERS = {"l1": L1, "l2": L2, "l1l2": L1L2, "l1_l2": L1L2}


def get(spec):
    """A regularizer from an object, a config dict ({"type": "L2", "l": 1e-4}), or a string:
    "l2" (strength 0.01), "l2:1e-4", "l1:1e-5", "l1l2:1e-5,1e-4". None gives None."""
    if spec is None or isinstance(spec, Regularizer):
        return spec
    if isinstance(spec, dict):
        kwargs = dict(spec)
        kind = kwargs.pop("type", None)
        cls = REGULARIZERS.get(str(kind).lower())
        if cls is None:
            raise ConfigError(f"unknown regularizer type {kind!r} in {spec!r}; expected one of "
                              "'L1', 'L2', 'L1L2'")
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"bad regularizer config {spec!r}: {exc}") from None
    if isinstance(spec, str):
        kind, _, args = spec.strip().lower().partition(":")
        cls = REGULARIZERS.get(kind)
        if cls is None:
            raise ConfigError(f"unknown regularizer {spec!r}; expected 'l1', 'l2' or 'l1l2', "
                              "optionally with strengths, e.g. 'l2:1e-4' or 'l1l2:1e-5,1e-4'")
        values = [v for v in args.split(",") if v.strip()] if args else []
        if len(values) > (2 if cls is L1L2 else 1):
            raise ConfigError(f"regularizer {spec!r}: too many strengths for {cls.__name__}")
        return cls(*values)
    raise ConfigError(f"cannot make a regularizer from {type(spec).__name__} {spec!r}; "
                      "pass an L1/L2/L1L2 object, a config dict or a string like 'l2:1e-4'")


__all__ = ["Regularizer", "L1", "L2", "L1L2", "get"]
