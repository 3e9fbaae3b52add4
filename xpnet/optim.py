"""Optimizers (SGD, Adam, AdamW, RMSprop) with torch.optim's update rules, plus gradient clipping.

``step(params, grads)`` updates the parameter arrays IN PLACE. Both dicts are keyed by parameter
name ("dense.W"); the optimizer's state (moment buffers, per-parameter step counts) is keyed by the
same names. A parameter with no gradient (missing or None) is left alone. ``step`` never syncs
with the host: learning rates and bias corrections are Python floats, clipping is computed on the
device.

Names: ``learning_rate`` (Keras) is accepted for ``lr`` and Adam's ``beta_1`` / ``beta_2`` for
``beta1`` / ``beta2``; giving both spellings of one argument is a ConfigError. Configs and files
keep the short names.

Learning rate: ``lr`` is the base rate (schedules and callbacks may set it between steps). Each
step uses the inverse-time decay of the seed reports,

    current_lr() = lr / (1 + decay * iterations)

where ``iterations`` counts the steps already taken (so the first step uses ``lr``). With
``decay=0`` this is ``lr``. It equals torch's LambdaLR(lambda t: 1 / (1 + decay * t)) stepped once
per optimizer step.

Clipping, applied to the gradients before anything else (as torch users clip before ``step``):
``clipvalue`` clamps each entry to [-clipvalue, clipvalue]; then ``clipnorm`` rescales all
gradients together so that their global L2 norm is at most ``clipnorm``
(torch.nn.utils.clip_grad_norm_).
"""
import math

from .backends import backend_of
from . import checks
from .checks import flag
from .errors import ConfigError, ShapeError, TrainingError


# -- gradient clipping ---------------------------------------------------------------------------
def clip_by_value(grads, value):
    """New dict with every gradient clamped to [-value, value] (torch's clip_grad_value_)."""
    value = _number("clip_by_value", "value", value, low=0.0, open_low=True)
    return {k: None if g is None else g.clip(-value, value) for k, g in grads.items()}


def global_norm(grads, xp):
    """sqrt(sum of squares of every gradient) as a 0-d device array (no host sync)."""
    total = None
    for g in grads.values():
        if g is not None:
            s = (g * g).sum()
            total = s if total is None else total + s
    return xp.sqrt(xp.asarray(0.0) if total is None else total)


def clip_by_global_norm(grads, max_norm, xp):
    """New dict with all gradients scaled by min(1, max_norm / (norm + 1e-6)), norm being their
    global L2 norm, as torch.nn.utils.clip_grad_norm_. The scale stays on the device: no sync."""
    max_norm = _number("clip_by_global_norm", "max_norm", max_norm, low=0.0, open_low=True)
    scale = xp.minimum(1.0, max_norm / (global_norm(grads, xp) + 1e-6))
    out = {}
    for k, g in grads.items():
        if g is not None:
            g = g * (scale if scale.dtype == g.dtype else scale.astype(g.dtype))
        out[k] = g
    return out


def _either(owner, name, value, alias, alias_value, default):
    """``value`` or its Keras spelling ``alias_value`` (not both), else ``default``."""
    if alias_value is not None:
        if value is not None:
            raise ConfigError(f"{owner}: give {name} or {alias}, not both (got {value!r} and {alias_value!r})")
        return alias_value
    return default if value is None else value


def _number(owner, name, value, low=None, high=None, open_low=False, open_high=False):
    """``value`` as a finite float within the bounds, else ConfigError naming both (a string or a
    bool is refused, not converted)."""
    return checks.number(value, owner, name, low, high, open_low, open_high)


# -- optimizers ----------------------------------------------------------------------------------
class Optimizer:
    """Base class. Subclasses name their moment buffers in ``slots`` and implement ``_update``."""

    slots = ()
    default_lr = 0.01

    def __init__(self, lr=None, decay=0.0, clipnorm=None, clipvalue=None, learning_rate=None):
        self.lr = _either(self._name, "lr", lr, "learning_rate", learning_rate, self.default_lr)
        self.decay = _number(self._name, "decay", decay, low=0.0)
        self.clipnorm = None if clipnorm is None else \
            _number(self._name, "clipnorm", clipnorm, low=0.0, open_low=True)
        self.clipvalue = None if clipvalue is None else \
            _number(self._name, "clipvalue", clipvalue, low=0.0, open_low=True)
        self.iterations = 0
        self.state = {slot: {} for slot in self.slots}  # slot -> {param name: device array}
        self.steps = {}  # param name -> number of updates it has received
        self._pending = {}  # loaded buffers waiting for the first step to learn the device
        self.backend = self.xp = None  # compile() hands over the model's (bind)

    def bind(self, backend):
        """Keep state on ``backend`` (its ``xp``) from now on; returns self. ``compile()`` calls
        this with the model's backend; an optimizer used on its own takes its parameters'."""
        self.backend, self.xp = backend, backend.xp
        return self

    @property
    def _name(self):
        return type(self).__name__

    @property
    def lr(self):
        """The base learning rate (before inverse-time decay)."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _number(type(self).__name__, "lr", value, low=0.0)
        device = getattr(self, "_device", None)
        if device is not None:  # a fill on the device: a replayed (captured) step reads it
            device[0][0] = self._lr
            device[1][0] = self._lr

    @property
    def learning_rate(self):
        """Keras's name for ``lr``."""
        return self.lr

    @learning_rate.setter
    def learning_rate(self, value):
        self.lr = value

    def current_lr(self):
        """lr / (1 + decay * iterations): the rate the next step will use."""
        return self._lr / (1.0 + self.decay * self.iterations)

    # -- the update -------------------------------------------------------------------------
    def step(self, params, grads, finite=None):
        """Update ``params`` in place from ``grads`` (both {name: array}); no host sync.

        ``finite`` (a 0-d device boolean, from mixed precision's loss scaling) takes the step only
        where it is true: otherwise parameters, moments and the device's step count stay as they
        were, decided on the device (xp.where), and the host's counters are corrected later
        (``uncount``). It needs the flat update (bind_flat)."""
        for k in grads:
            if k not in params:
                raise ConfigError(f"{self._name}: gradient for unknown parameter {k!r}; "
                                  f"parameters are: {', '.join(params)}")
        names = [k for k, p in params.items() if grads.get(k) is not None]
        for k in names:
            if tuple(grads[k].shape) != tuple(params[k].shape):
                raise ShapeError(f"{self._name}: gradient of {k!r} has shape {tuple(grads[k].shape)} "
                                 f"but the parameter has shape {tuple(params[k].shape)}")
        if names and self.backend is None:
            self.bind(backend_of(params[names[0]]))
        grads = {k: grads[k] for k in names}
        if self.clipvalue is not None:
            grads = clip_by_value(grads, self.clipvalue)
        if self.clipnorm is not None and grads:
            grads = clip_by_global_norm(grads, self.clipnorm, self.xp)
        lr = self.current_lr()
        plan = self._flat_plan(params, names)
        if plan is not None:
            self._step_flat(plan, grads, lr, finite)
        elif finite is not None:
            raise TrainingError(f"{self._name}: a step that may be skipped on the device (mixed "
                                f"precision) needs every parameter in one flat buffer with the "
                                f"same step count; got parameters {', '.join(names)}")
        else:
            for k in names:
                p = params[k]
                self._ensure_state(k, p)
                self.steps[k] = self.steps.get(k, 0) + 1
                self._update(p, grads[k], lr, {s: self.state[s][k] for s in self.slots}, self.steps[k])
        self.iterations += 1

    def _update(self, p, g, lr, state, t):
        """Update ``p`` in place from ``g``; ``state`` maps each slot to its buffer, ``t`` is the
        parameter's step count (this step included)."""
        raise NotImplementedError

    # -- one update over a flat parameter buffer ---------------------------------------------
    def bind_flat(self, flat, views):
        """Parameters ``views`` ({name: array}) are views of the 1-D buffer ``flat``, in order.

        While a step's parameters are exactly these arrays, every one has a gradient and all have
        taken the same number of steps, the update runs once over the flat buffer (a few array
        operations instead of a dozen per parameter); the moment buffers are then flat as well,
        and ``state`` keeps views of them per parameter, so state_dict() is unchanged. Anything
        else (a parameter replaced, frozen or added) takes the per-parameter path, with the same
        element-wise arithmetic and so the same numbers."""
        self._flat = (flat, dict(views))

    def _flat_plan(self, params, names):
        bound = getattr(self, "_flat", None)
        if bound is None or not names:
            return None
        flat, views = bound
        if len(names) != len(views) or any(params[k] is not views.get(k) for k in names):
            return None
        counts = {self.steps.get(k, 0) for k in names}
        if len(counts) != 1:
            return None
        return flat, views, counts.pop()

    def _step_flat(self, plan, grads, lr, finite=None):
        """One update of every parameter; the learning rate and the step count are read from
        device scalars, so the step has the same operations and constants every time (it can be
        captured once and replayed). With ``finite``, the buffers are kept where it is false."""
        flat, views, t = plan
        xp = self.xp
        self._ensure_flat_state(flat, views)
        g = [grads[k].reshape(-1) for k in views]   # the flat gradient, as its parts (flat_update)
        for k in views:
            self.steps[k] = t + 1
        d = self._device_scalars(t)
        # float64, as current_lr() computes it on the host (x / 1.0 is x: no operation without decay)
        lr = d[0] / (1.0 + self.decay * d[1]) if self.decay else d[0]
        counts = d[1:]
        xp.add(counts, 1.0, out=counts)            # iterations, t
        self._device[1][1:] = (self.iterations + 1, t + 1)
        buffers = [flat] + [self._flat_state[s][0] for s in self.slots]
        kept = None if finite is None else [b.copy() for b in buffers]
        slots, count = self.slots, d[2]   # the device's step count (``t`` is the host's)

        def update(p, g, *moments):   # element-wise: the backend may run it over pieces
            self._update(p, g, lr, dict(zip(slots, moments)), count)

        self.backend.flat_update(update, [flat, g] + buffers[1:])
        if kept is not None:  # a skipped step: every buffer as it was, the step count too
            for b, old in zip(buffers, kept):
                b[...] = xp.where(finite, b, old)
            d[1:] -= ~finite

    def _device_scalars(self, t):
        """float64 [lr, iterations, t] on the device, refreshed from the host only when the host
        values changed behind the device's back (a loaded state; nothing in a steady run)."""
        host = (self._lr, self.iterations, t)
        device = getattr(self, "_device", None)
        if device is None:
            device = self._device = [self.xp.zeros((3,), dtype=self.xp.float64), [None] * 3]
        if tuple(device[1]) != host:
            for i, v in enumerate(host):
                device[0][i] = float(v)
            device[1] = list(host)
        return device[0]

    def advance(self, steps=1):
        """Host bookkeeping of ``steps`` updates made by replaying a captured step (the device
        scalars were advanced by the replay itself)."""
        names = list(getattr(self, "_flat", (None, {}))[1])
        self.iterations += steps
        for k in names:
            self.steps[k] = self.steps.get(k, 0) + steps
        if getattr(self, "_device", None) is not None:
            self._device[1][1] += steps
            self._device[1][2] += steps

    def uncount(self, steps):
        """Host bookkeeping of ``steps`` updates that were skipped on the device (``finite``
        false): the device's counters did not move, the host's are taken back."""
        self.advance(-steps)

    def _ensure_flat_state(self, flat, views):
        """Flat moment buffers whose per-parameter views are ``self.state``'s entries."""
        if not hasattr(self, "_flat_state"):
            self._flat_state = {}
        for slot in self.slots:
            held = self._flat_state.get(slot)
            buffers = self.state[slot]
            if held is not None and held[0].shape == flat.shape and \
                    all(buffers.get(k) is v for k, v in held[1].items()) and list(held[1]) == list(views):
                continue
            for k, p in views.items():
                self._ensure_state(k, p)  # existing, loaded or new (zero) buffers
            buf = self.xp.concatenate([buffers[k].reshape(-1) for k in views])
            slot_views, offset = {}, 0
            for k, p in views.items():
                slot_views[k] = buf[offset:offset + p.size].reshape(p.shape)
                offset += p.size
            buffers.update(slot_views)
            self._flat_state[slot] = (buf, slot_views)

    def _ensure_state(self, name, p):
        for slot in self.slots:
            buffers = self.state[slot]
            if name in buffers:
                continue
            key = f"{slot}:{name}"
            if key in self._pending:
                buf = self.xp.array(self._pending.pop(key), dtype=p.dtype)  # a copy
                if tuple(buf.shape) != tuple(p.shape):
                    raise TrainingError(f"{self._name}: saved state {key!r} has shape "
                                        f"{tuple(buf.shape)} but the parameter has shape "
                                        f"{tuple(p.shape)}; was it saved for another model?")
            else:
                buf = self.xp.zeros_like(p)
            buffers[name] = buf

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self):
        """{"iterations": int, "lr": float, "step:<param>": int, "<slot>:<param>": array}. Arrays
        are device copies; convert with backend.to_numpy to save them."""
        out = {"iterations": self.iterations, "lr": self.lr}
        out.update({f"step:{k}": n for k, n in self.steps.items()})
        for slot, buffers in self.state.items():
            out.update({f"{slot}:{k}": v.copy() for k, v in buffers.items()})
        out.update({k: v.copy() for k, v in self._pending.items() if k.split(":", 1)[0] in self.slots})
        return out

    def load_state_dict(self, state):
        """Restore what ``state_dict`` returned (host or device arrays, copied)."""
        if "iterations" not in state:
            raise ConfigError(f"{self._name}.load_state_dict: missing 'iterations'; keys are "
                              f"{sorted(state)}")
        steps, buffers = {}, {}
        for key, value in state.items():
            if key in ("iterations", "lr"):
                continue
            slot, sep, name = key.partition(":")
            if not sep or not name or (slot != "step" and slot not in self.slots):
                raise ConfigError(f"{self._name}.load_state_dict: unexpected entry {key!r}; this "
                                  f"optimizer keeps {', '.join(self.slots) or 'no buffers'}")
            if slot == "step":
                steps[name] = int(value)
            else:
                buffers[key] = value.copy() if hasattr(value, "copy") else value  # later edits of state: not ours
        self.iterations = int(state["iterations"])
        if "lr" in state:
            self.lr = float(state["lr"])
        self.steps = steps
        self.state = {slot: {} for slot in self.slots}
        self._pending = buffers  # moved to the device, in the parameter's dtype, at first use

    # -- description ------------------------------------------------------------------------
    def get_config(self):
        return {"type": self._name, "lr": self.lr, **self._hyper(), "decay": self.decay,
                "clipnorm": self.clipnorm, "clipvalue": self.clipvalue}

    def _hyper(self):
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "type")
        return f"{self._name}({args})"


def _cast(value, like):
    """A Python number as is (NumPy casts it to the array's dtype); a device scalar (float64) cast
    to the array's dtype the same way, so both give the same bits."""
    return value.astype(like.dtype) if hasattr(value, "astype") else value


def _sqrt(xp, value):
    return xp.sqrt(value) if hasattr(value, "astype") else math.sqrt(value)


class SGD(Optimizer):
    """torch.optim.SGD (dampening 0): g += weight_decay * p; buf = momentum * buf + g;
    p -= lr * (g + momentum * buf if nesterov else buf)."""

    def __init__(self, lr=None, momentum=0.0, nesterov=False, weight_decay=0.0, **kw):
        self.momentum = _number("SGD", "momentum", momentum, low=0.0, high=1.0, open_high=True)
        self.nesterov = flag(nesterov, "SGD", "nesterov")
        self.weight_decay = _number("SGD", "weight_decay", weight_decay, low=0.0)
        if self.nesterov and self.momentum == 0:
            raise ConfigError("SGD: nesterov=True needs momentum > 0")
        self.slots = ("momentum",) if self.momentum else ()
        super().__init__(lr, **kw)

    def _update(self, p, g, lr, state, t):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            buf = state["momentum"]
            buf *= self.momentum
            buf += g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= _cast(lr, p) * g

    def _hyper(self):
        return {"momentum": self.momentum, "nesterov": self.nesterov, "weight_decay": self.weight_decay}


class Adam(Optimizer):
    """torch.optim.Adam: L2 ``weight_decay`` is added to the gradient; m, v are the moment
    estimates and t the parameter's step count:
    p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)."""

    slots = ("m", "v")
    _decoupled = False
    default_lr = 1e-3

    def __init__(self, lr=None, beta1=None, beta2=None, eps=1e-8, weight_decay=0.0, beta_1=None,
                 beta_2=None, **kw):
        name = type(self).__name__
        beta1 = _either(name, "beta1", beta1, "beta_1", beta_1, 0.9)
        beta2 = _either(name, "beta2", beta2, "beta_2", beta_2, 0.999)
        self.beta1 = _number(name, "beta1", beta1, low=0.0, high=1.0, open_high=True)
        self.beta2 = _number(name, "beta2", beta2, low=0.0, high=1.0, open_high=True)
        self.eps = _number(name, "eps", eps, low=0.0)
        self.weight_decay = _number(name, "weight_decay", weight_decay, low=0.0)
        super().__init__(lr, **kw)

    def _update(self, p, g, lr, state, t):
        fused = getattr(self.backend, "adam_update", None)
        if fused is not None and hasattr(t, "astype"):  # the flat step, on a backend with a kernel
            # lr and t are float64 device scalars: the kernel derives its per-step factors from them
            fused(p, g, state["m"], state["v"], self.beta1, self.beta2, self.eps, lr, t,
                  self.weight_decay, self._decoupled)
            return
        if self.weight_decay:
            if self._decoupled:
                p *= _cast(1.0 - lr * self.weight_decay, p)
            else:
                g = g + self.weight_decay * p
        m, v = state["m"], state["v"]
        m *= self.beta1
        m += (1.0 - self.beta1) * g
        v *= self.beta2
        v += (1.0 - self.beta2) * (g * g)
        denom = self.xp.sqrt(v)
        denom /= _cast(_sqrt(self.xp, 1.0 - self.beta2 ** t), p)
        denom += self.eps
        p -= _cast(lr / (1.0 - self.beta1 ** t), p) * (m / denom)

    def _hyper(self):
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "weight_decay": self.weight_decay}


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay, p *= 1 - lr * weight_decay before
    the Adam update (the decay does not pass through the moments)."""

    _decoupled = True

    def __init__(self, lr=None, beta1=None, beta2=None, eps=1e-8, weight_decay=0.01, **kw):
        super().__init__(lr, beta1, beta2, eps, weight_decay, **kw)


class RMSprop(Optimizer):
    """torch.optim.RMSprop: s = alpha * s + (1 - alpha) * g**2; centered subtracts the squared
    running mean of g; d = g / (sqrt(s [- mean**2]) + eps); with momentum buf = momentum * buf + d
    and p -= lr * buf, else p -= lr * d."""

    default_lr = 1e-2

    def __init__(self, lr=None, alpha=0.99, eps=1e-8, momentum=0.0, centered=False,
                 weight_decay=0.0, **kw):
        self.alpha = _number("RMSprop", "alpha", alpha, low=0.0, high=1.0, open_high=True)
        self.eps = _number("RMSprop", "eps", eps, low=0.0)
        self.momentum = _number("RMSprop", "momentum", momentum, low=0.0, high=1.0, open_high=True)
        self.centered = flag(centered, "RMSprop", "centered")
        self.weight_decay = _number("RMSprop", "weight_decay", weight_decay, low=0.0)
        self.slots = ("square_avg",) + (("grad_avg",) if self.centered else ()) + \
            (("momentum",) if self.momentum else ())
        super().__init__(lr, **kw)

    def _update(self, p, g, lr, state, t):
        if self.weight_decay:
            g = g + self.weight_decay * p
        sq = state["square_avg"]
        sq *= self.alpha
        sq += (1.0 - self.alpha) * (g * g)
        if self.centered:
            ga = state["grad_avg"]
            ga *= self.alpha
            ga += (1.0 - self.alpha) * g
            avg = self.xp.sqrt(sq - ga * ga)
        else:
            avg = self.xp.sqrt(sq)
        avg += self.eps
        if self.momentum:
            buf = state["momentum"]
            buf *= self.momentum
            buf += g / avg
            p -= _cast(lr, p) * buf
        else:
            p -= _cast(lr, p) * (g / avg)

    def _hyper(self):
        return {"alpha": self.alpha, "eps": self.eps, "momentum": self.momentum,
                "centered": self.centered, "weight_decay": self.weight_decay}


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def get(name_or_obj, **kw):
    """An optimizer from an object (returned unchanged), a name ("sgd", "adam", "adamw",
    "rmsprop") with constructor arguments ``kw``, or a ``get_config()`` dict."""
    if isinstance(name_or_obj, Optimizer):
        if kw:
            raise ConfigError(f"optim.get: got an optimizer object and extra arguments {sorted(kw)}")
        return name_or_obj
    if isinstance(name_or_obj, dict):
        kw = {**{k: v for k, v in name_or_obj.items() if k != "type"}, **kw}
        name = name_or_obj.get("type")
    else:
        name = name_or_obj
    cls = OPTIMIZERS.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"unknown optimizer {name!r}; expected an Optimizer object or one of: "
                          + ", ".join(sorted(OPTIMIZERS)))
    try:
        return cls(**kw)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for optimizer {cls.__name__}: {exc}") from None


__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "OPTIMIZERS", "get",
           "clip_by_value", "clip_by_global_norm", "global_norm"]
