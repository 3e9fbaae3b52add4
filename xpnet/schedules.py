"""Learning-rate schedules: ``schedule(epoch) -> lr`` with 0-based epochs.

Every schedule is a pure function of the epoch number, so a resumed run gets the same rates as an
uninterrupted one. ``get_config()`` returns {"type": ..., args...}; ``get(spec)`` rebuilds from a
config dict, a name ("constant"), or returns a schedule object unchanged.
"""
import inspect
import math
import numbers

from . import checks
from .checks import is_bool
from .errors import ConfigError


def _positive(owner, name, value, allow_zero=False):
    """``value`` as a float when it is a finite number > 0 (>= 0 with ``allow_zero``), else
    ConfigError naming the schedule: None, a string or a bool is refused, not converted."""
    want = ">= 0" if allow_zero else "> 0"
    if is_bool(value) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{type(owner).__name__}: {name} must be a number {want}, got "
                          f"{type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{type(owner).__name__}: {name} must be {want}, got {value!r}")
    return value


def _count(owner, name, value, minimum=1):
    """``value`` as an int when it is a whole number >= ``minimum``, else ConfigError."""
    return checks.whole(value, type(owner).__name__, name, minimum)


class Schedule:
    """Base class: subclasses implement ``__call__(epoch)``."""

    def __call__(self, epoch):
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    def values(self, epochs):
        """The rates of epochs 0 .. epochs-1 (handy for plots and tests)."""
        return [self(e) for e in range(epochs)]

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "type")
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    def __init__(self, lr):
        self.lr = _positive(self, "lr", lr)

    def __call__(self, epoch):
        return self.lr

    def get_config(self):
        return {"type": "Constant", "lr": self.lr}


class StepDecay(Schedule):
    """lr * drop ** (epoch // every)."""

    def __init__(self, lr, drop=0.5, every=10):
        self.lr = _positive(self, "lr", lr)
        self.drop = _positive(self, "drop", drop)
        self.every = _count(self, "every", every)

    def __call__(self, epoch):
        return self.lr * self.drop ** (int(epoch) // self.every)

    def get_config(self):
        return {"type": "StepDecay", "lr": self.lr, "drop": self.drop, "every": self.every}


class ExponentialDecay(Schedule):
    """lr * rate ** (epoch // every)  (staircase; ``every=1`` decays each epoch)."""

    def __init__(self, lr, rate, every=1):
        self.lr = _positive(self, "lr", lr)
        self.rate = _positive(self, "rate", rate)
        self.every = _count(self, "every", every)

    def __call__(self, epoch):
        return self.lr * self.rate ** (int(epoch) // self.every)

    def get_config(self):
        return {"type": "ExponentialDecay", "lr": self.lr, "rate": self.rate, "every": self.every}


class InverseTimeDecay(Schedule):
    """lr / (1 + decay * epoch)."""

    def __init__(self, lr, decay):
        self.lr = _positive(self, "lr", lr)
        self.decay = _positive(self, "decay", decay, allow_zero=True)

    def __call__(self, epoch):
        return self.lr / (1.0 + self.decay * int(epoch))

    def get_config(self):
        return {"type": "InverseTimeDecay", "lr": self.lr, "decay": self.decay}


class CosineDecay(Schedule):
    """min_lr + (lr - min_lr) * (1 + cos(pi * epoch / epochs)) / 2, then min_lr after ``epochs``."""

    def __init__(self, lr, epochs, min_lr=0.0):
        self.lr = _positive(self, "lr", lr)
        self.epochs = _count(self, "epochs", epochs)
        self.min_lr = _positive(self, "min_lr", min_lr, allow_zero=True)
        if self.min_lr > self.lr:
            raise ConfigError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")

    def __call__(self, epoch):
        t = min(int(epoch), self.epochs) / self.epochs
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))

    def get_config(self):
        return {"type": "CosineDecay", "lr": self.lr, "epochs": self.epochs, "min_lr": self.min_lr}


class LinearWarmup(Schedule):
    """Rise linearly from ``start_lr`` to ``schedule(warmup_epochs)`` over the first epochs.

    Epoch e < warmup_epochs gets start_lr + (target - start_lr) * e / warmup_epochs; later epochs get
    ``schedule(epoch)`` unchanged.
    """

    def __init__(self, schedule, warmup_epochs, start_lr=0.0):
        self.schedule = get(schedule)
        self.warmup_epochs = _count(self, "warmup_epochs", warmup_epochs, minimum=0)
        self.start_lr = _positive(self, "start_lr", start_lr, allow_zero=True)

    def __call__(self, epoch):
        epoch = int(epoch)
        if epoch >= self.warmup_epochs:
            return self.schedule(epoch)
        target = self.schedule(self.warmup_epochs)
        return self.start_lr + (target - self.start_lr) * epoch / self.warmup_epochs

    def get_config(self):
        return {"type": "LinearWarmup", "schedule": self.schedule.get_config(),
                "warmup_epochs": self.warmup_epochs, "start_lr": self.start_lr}


class WarmupHalving(Schedule):
    """Seed 001's "tunable" scheduler (section 10 of its report), with ``k = halve_after``.

    The report's function is a recurrence on the current rate, epochs counted from 0:
      * epoch 0: lr; epochs 1 .. k-1: lr_e = lr_{e-1} * (1 + 1/e), i.e. (e + 1) * lr (warm-up to k*lr);
      * epochs k .. late_start: halve when epoch % k == 0, except at epoch k itself (the listing
        excludes epoch 5 with k = 5; we read that as "the first epoch after warm-up keeps the peak");
      * after late_start: halve when epoch % late_every == 0;
      * any other epoch keeps the previous rate.
    The printed listing ends in an unconditional ``return lr * 0.5`` ahead of an unreachable
    ``return lr``, which would halve every epoch after warm-up; the report's prose (halve every k
    epochs) and its observation that adding the late rule shortened model 12's training only make
    sense if the last line keeps the rate, so that is what this class does. With lr=1e-3, k=5:
    epochs 0-4: 1, 2, 3, 4, 5 (x1e-3); 5-9: 5e-3; 10-14: 2.5e-3; 15-19: 1.25e-3; 20: 6.25e-4;
    21-23: 3.125e-4; 24-26: 1.5625e-4; ...
    """

    def __init__(self, lr, k=5, late_start=20, late_every=3):
        self.lr = _positive(self, "lr", lr)
        self.k = _count(self, "k", k)
        self.late_start = _count(self, "late_start", late_start, minimum=0)
        self.late_every = _count(self, "late_every", late_every)

    def step(self, lr, epoch):
        """One application of the report's rule: the rate of ``epoch`` from that of ``epoch - 1``."""
        if epoch < self.k:
            return lr if epoch == 0 else lr + lr / epoch
        if epoch <= self.late_start:
            return lr * 0.5 if epoch % self.k == 0 and epoch != self.k else lr
        return lr * 0.5 if epoch % self.late_every == 0 else lr

    def __call__(self, epoch):
        lr = self.lr
        for e in range(int(epoch) + 1):
            lr = self.step(lr, e)
        return lr

    def get_config(self):
        return {"type": "WarmupHalving", "lr": self.lr, "k": self.k, "late_start": self.late_start,
                "late_every": self.late_every}


class WarmupStepDecay(Schedule):
    """Linear warm-up to ``lr``, then step decay: the schedule of seed 001's TensorFlow notebook.

    Epochs 0 .. warmup_epochs-1 get ``lr * (epoch + 1) / warmup_epochs``; later epochs get
    ``lr * drop ** ((epoch - warmup_epochs) // every)``. With lr=5e-4, warmup_epochs=5, drop=0.5,
    every=5: 1e-4, 2e-4, 3e-4, 4e-4, 5e-4 (epochs 0-4), 5e-4 (5-9), 2.5e-4 (10-14), 1.25e-4
    (15-19), ...
    """

    def __init__(self, lr, warmup_epochs=5, drop=0.5, every=5):
        self.lr = _positive(self, "lr", lr)
        self.warmup_epochs = _count(self, "warmup_epochs", warmup_epochs, minimum=0)
        self.drop = _positive(self, "drop", drop)
        self.every = _count(self, "every", every)

    def __call__(self, epoch):
        epoch = int(epoch)
        if epoch < self.warmup_epochs:
            return self.lr * (epoch + 1) / self.warmup_epochs
        return self.lr * self.drop ** ((epoch - self.warmup_epochs) // self.every)

    def get_config(self):
        return {"type": "WarmupStepDecay", "lr": self.lr, "warmup_epochs": self.warmup_epochs,
                "drop": self.drop, "every": self.every}


class EpochBiasCorrection(Schedule):
    """``schedule(epoch)`` times the step-size factor of an Adam whose bias corrections count epochs.

    Adam divides its moment averages by (1 - beta_1**t) and (1 - beta_2**t). Counting t in steps
    (as xpnet's Adam, Keras and PyTorch do) both corrections reach 1 within the first epoch; an Adam
    that sets t to the epoch number (t = epoch + 1 for 0-based epochs, as seed 001's author's code
    does) keeps them small for dozens of epochs, and once its moving averages have settled each step
    is ``sqrt(1 - beta_2**t) / (1 - beta_1**t)`` times the per-step one: 0.32 in the first epoch,
    0.17 in the fifth, 0.15-0.16 in epochs 10-20, 0.22 in the 50th (beta 0.9 and 0.999). This
    schedule multiplies the inner schedule's rate by that factor, so a per-step Adam takes the step
    sizes the author's learning rates were tuned with, without copying his step counter.
    """

    def __init__(self, schedule, beta_1=0.9, beta_2=0.999):
        self.schedule = get(schedule)
        self.beta_1, self.beta_2 = (self._beta(name, value) for name, value in
                                    (("beta_1", beta_1), ("beta_2", beta_2)))

    def _beta(self, name, value):
        value = _positive(self, name, value)
        if not value < 1:
            raise ConfigError(f"EpochBiasCorrection: {name} must be < 1, got {value!r}")
        return value

    def factor(self, epoch):
        """sqrt(1 - beta_2**t) / (1 - beta_1**t) with t = epoch + 1."""
        t = int(epoch) + 1
        return math.sqrt(1.0 - self.beta_2 ** t) / (1.0 - self.beta_1 ** t)

    def __call__(self, epoch):
        return self.schedule(epoch) * self.factor(epoch)

    def get_config(self):
        return {"type": "EpochBiasCorrection", "schedule": self.schedule.get_config(),
                "beta_1": self.beta_1, "beta_2": self.beta_2}


class Lambda(Schedule):
    """Wrap a plain callable ``epoch -> lr``, or Keras's ``(epoch, lr) -> lr`` (not serializable).

    Which one is read from the signature: a callable that can take two positional arguments is
    given the current rate too (``wants_lr``; LearningRateScheduler passes the optimizer's), one
    that takes one is given the epoch alone. What it returns must be a finite number >= 0.
    """

    def __init__(self, fn):
        if not callable(fn):
            raise ConfigError(f"a schedule must be callable epoch -> lr, got {type(fn).__name__}")
        self.fn = fn
        self.wants_lr = _wants_lr(fn)

    def __call__(self, epoch, lr=None):
        if self.wants_lr:
            if lr is None:
                raise ConfigError(f"the schedule {self!r} takes (epoch, lr): give it the current "
                                  f"learning rate too")
            value = self.fn(int(epoch), lr)
        else:
            value = self.fn(int(epoch))
        return check_rate(value, epoch, f"the schedule {self!r}")

    def get_config(self):
        return {"type": "Lambda", "fn": getattr(self.fn, "__name__", repr(self.fn))}


def check_rate(value, epoch, who):
    """``value`` (what a schedule gave for ``epoch``) as a float when it is a finite number >= 0
    (a Python or NumPy number, or a 0-d integer or float array; not a bool or a string), else
    ConfigError naming ``who``, the epoch and the value."""
    number = isinstance(value, numbers.Real) and not is_bool(value)
    if getattr(value, "shape", None) == () and getattr(getattr(value, "dtype", None), "kind", "?") in "iuf":
        number = True
    lr = float(value) if number else math.nan
    if not math.isfinite(lr) or lr < 0:
        got = repr(value) if number else f"{type(value).__name__} {value!r}"
        raise ConfigError(f"{who} gave an invalid learning rate {got} for epoch {int(epoch)} "
                          f"(0-based): it must be a finite number >= 0")
    return lr


def _wants_lr(fn):
    """True when ``fn`` can take (epoch, lr), False when it takes epoch alone; ConfigError when it
    can take neither. A callable whose signature cannot be read is given the epoch alone."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    positional = [p for p in sig.parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())
    required_kw = [p.name for p in sig.parameters.values()
                   if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    if len(required) > 2 or required_kw or (not positional and not varargs):
        raise ConfigError(f"a schedule must take epoch (epoch -> lr) or epoch and lr "
                          f"((epoch, lr) -> lr), got {getattr(fn, '__name__', repr(fn))}{sig}")
    return len(positional) >= 2 or varargs


SCHEDULES = {cls.__name__: cls for cls in (Constant, StepDecay, ExponentialDecay, InverseTimeDecay,
                                           CosineDecay, LinearWarmup, WarmupHalving, WarmupStepDecay,
                                           EpochBiasCorrection)}
_ALIASES = {"constant": "Constant", "const": "Constant", "step": "StepDecay", "step_decay": "StepDecay",
            "exponential": "ExponentialDecay", "exponential_decay": "ExponentialDecay",
            "inverse_time": "InverseTimeDecay", "inverse_time_decay": "InverseTimeDecay",
            "cosine": "CosineDecay", "cosine_decay": "CosineDecay", "linear_warmup": "LinearWarmup",
            "warmup": "LinearWarmup", "warmup_halving": "WarmupHalving", "tunable": "WarmupHalving",
            "warmup_step_decay": "WarmupStepDecay"}


def get(spec, **kwargs):
    """A schedule from an object, a callable, a config dict {"type": ..., ...} or a name plus kwargs."""
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, dict):
        config = dict(spec)
        name = config.pop("type", None)
        if name is None:
            raise ConfigError(f"a schedule config needs a 'type' key, got {spec!r}")
        return get(name, **config, **kwargs)
    if isinstance(spec, str):
        name = _ALIASES.get(spec.lower(), spec)
        if name not in SCHEDULES:
            raise ConfigError(f"unknown schedule {spec!r}; expected one of: "
                              + ", ".join(sorted(SCHEDULES)))
        try:
            return SCHEDULES[name](**kwargs)
        except TypeError as exc:
            raise ConfigError(f"bad arguments for schedule {name}: {exc}") from exc
    if callable(spec):
        return Lambda(spec)
    raise ConfigError(f"cannot make a schedule from {type(spec).__name__} {spec!r}")
