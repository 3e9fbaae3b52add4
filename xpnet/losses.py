"""Losses: ``forward(output, target) -> 0-d array`` (mean over the batch), ``backward() -> grad``.

``backward()`` returns d(loss)/d(output) of the last ``forward`` call, shaped like the output.
``forward`` never syncs with the host: it checks shapes and dtypes, not values. ``fit`` and
``evaluate`` check label ranges and finiteness themselves, with one host sync per run;
``check_targets`` (a host sync) does the same for a loss used on its own.
"""
from .backends import backend_of
from .errors import ConfigError, DataError, ShapeError, TrainingError


def _shape(a):
    return tuple(getattr(a, "shape", ()))


def _kind(a):
    return getattr(getattr(a, "dtype", None), "kind", "")


def _as_dtype(target, dtype):
    return target if target.dtype == dtype else target.astype(dtype)


class Loss:
    """Base class: subclasses implement ``forward`` and ``backward``. ``compile()`` hands the loss
    the model's backend (``bind``); a loss used on its own takes the backend of its input."""

    _cache = None
    backend = None

    def bind(self, backend):
        """Use ``backend``'s ``xp`` from now on; returns self."""
        self.backend = backend
        return self

    def _xp(self, array):
        return (self.backend if self.backend is not None else backend_of(array)).xp

    def __call__(self, output, target):
        return self.forward(output, target)

    def forward(self, output, target):
        raise NotImplementedError

    def backward(self):
        raise NotImplementedError

    def _saved(self):
        if self._cache is None:
            raise TrainingError(f"{type(self).__name__}.backward() called before forward()")
        return self._cache

    def check_targets(self, targets, num_classes=None):
        """Check target values once per run (this syncs with the host). Raises DataError.
        Regression losses accept any finite values."""
        if targets.size and not bool((abs(targets) < float("inf")).all()):
            raise DataError(f"{type(self).__name__}: targets contain NaN or infinite values")

    def get_config(self):
        return {"type": type(self).__name__}

    @classmethod
    def from_config(cls, config):
        return cls(**{k: v for k, v in config.items() if k != "type"})

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "type")
        return f"{type(self).__name__}({args})"


class _Elementwise(Loss):
    def _diff(self, output, target):
        name = type(self).__name__
        if _shape(output) != _shape(target):
            raise ShapeError(f"{name}: output has shape {_shape(output)} but target has shape "
                             f"{_shape(target)}; they must be equal")
        if len(_shape(output)) == 0 or _kind(output) != "f":
            raise ShapeError(f"{name}: expected a floating-point batch of outputs, got shape "
                             f"{_shape(output)} and dtype {getattr(output, 'dtype', None)}")
        return output - _as_dtype(target, output.dtype)


class MSE(_Elementwise):
    """Mean squared error over ALL elements, like torch's default ``reduction='mean'``:
    loss = sum((output - target) ** 2) / output.size (not divided by the batch size alone)."""

    def forward(self, output, target):
        diff = self._diff(output, target)
        self._cache = (diff, output.size)
        return ((diff * diff).sum() / output.size)[...]

    def backward(self):
        diff, n = self._saved()
        return diff * (2.0 / n)


class L1Loss(_Elementwise):
    """Mean absolute error over all elements: sum(|output - target|) / output.size. The gradient
    at output == target is 0, as in torch."""

    def forward(self, output, target):
        diff = self._diff(output, target)
        self._cache = (diff, output.size)
        return (abs(diff).sum() / output.size)[...]

    def backward(self):
        diff, n = self._saved()
        return self._xp(diff).sign(diff) * (1.0 / n)


class _Classification(Loss):
    def _split(self, output, target):
        """Check shapes; returns (n, k, labels or None, probability rows or None)."""
        name = type(self).__name__
        shape, tshape = _shape(output), _shape(target)
        if len(shape) != 2 or _kind(output) != "f":
            raise ShapeError(f"{name}: expected floating-point {self._what} of shape (N, K), got "
                             f"shape {shape} and dtype {getattr(output, 'dtype', None)}")
        n, k = shape
        if tshape == (n,):
            if _kind(target) not in ("i", "u"):
                raise ShapeError(f"{name}: targets of shape {tshape} must be integer class labels, "
                                 f"got dtype {getattr(target, 'dtype', None)}")
            return n, k, target, None
        if tshape == shape:
            return n, k, None, _as_dtype(target, output.dtype)
        raise ShapeError(f"{name}: {self._what} have shape {shape}, so targets must be integer "
                         f"labels of shape ({n},) or probability rows of shape {shape}; got {tshape}")

    def check_targets(self, targets, num_classes=None):
        """Check labels lie in [0, num_classes) or rows are probabilities (>= 0, summing to 1).
        Syncs with the host: call once per run. Raises DataError (ShapeError for a bad shape)."""
        name = type(self).__name__
        shape = _shape(targets)
        if len(shape) == 1:
            if _kind(targets) not in ("i", "u"):
                raise ShapeError(f"{name}: class labels must be integers, got dtype {targets.dtype}")
            if targets.size:
                lo, hi = int(targets.min()), int(targets.max())
                top = num_classes if num_classes is not None else float("inf")
                if lo < 0 or hi >= top:
                    raise DataError(f"{name}: class labels must lie in [0, {num_classes}), got "
                                    f"labels from {lo} to {hi}")
        elif len(shape) == 2:
            if num_classes is not None and shape[1] != num_classes:
                raise ShapeError(f"{name}: target rows have {shape[1]} columns but the model has "
                                 f"{num_classes} outputs")
            if targets.size:
                t = targets.astype("float64")
                if not bool((t >= 0).all()) or not bool((t <= 1).all()):
                    raise DataError(f"{name}: probability targets must lie in [0, 1]")
                worst = float(abs(t.sum(axis=1) - 1.0).max())
                if worst > 1e-3:
                    raise DataError(f"{name}: each target row must sum to 1 (one-hot or "
                                    f"probabilities); a row is off by {worst:.3g}")
        else:
            raise ShapeError(f"{name}: targets must be labels (N,) or rows (N, K), got {shape}")


class CrossEntropy(_Classification):
    """Softmax cross-entropy on LOGITS (a fused, stable log-softmax), averaged over the batch.

    Targets: integer labels (N,) or probability / one-hot rows (N, K). With label smoothing e the
    target distribution becomes (1 - e) * target + e / K, as in torch.nn.functional.cross_entropy.
    """

    _what = "logits"

    def __init__(self, label_smoothing=0.0):
        try:
            e = float(label_smoothing)
        except (TypeError, ValueError):
            e = -1.0
        if not 0.0 <= e <= 1.0:
            raise ConfigError(f"CrossEntropy: label_smoothing must be in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = e

    def forward(self, output, target):
        n, k, labels, rows = self._split(output, target)
        xp = self._xp(output)
        eps = self.label_smoothing
        if labels is not None and not eps:  # the common case: one fused pass over the rows
            p, picked = backend_of(output).softmax_labels(output, labels)
            self._cache = (p, labels, None, n, k)
            return ((-1.0 * picked.sum()) / n)[...]
        z = output - output.max(axis=1, keepdims=True)
        e = xp.exp(z)
        s = e.sum(axis=1, keepdims=True)
        logp = z - xp.log(s)
        if labels is not None:
            index = (xp.arange(n), labels)
            total = -(1.0 - eps) * logp[index].sum()
            if eps:
                total = total - (eps / k) * logp.sum()
        else:
            index = None
            if eps:
                rows = rows * (1.0 - eps) + eps / k
            total = -(rows * logp).sum()
        self._cache = (e / s, index, rows, n, k)
        return (total / n)[...]

    def backward(self):
        p, index, rows, n, k = self._saved()
        if index is not None and not isinstance(index, tuple):  # labels, from the fused forward
            return backend_of(p).softmax_labels_grad(p, index, n)
        if index is not None:
            grad = p.copy()
            grad[index] -= 1.0 - self.label_smoothing
            if self.label_smoothing:
                grad -= self.label_smoothing / k
        else:  # d/dz of -sum(q * log_softmax(z)) = p * sum(q) - q
            grad = p * rows.sum(axis=1, keepdims=True) - rows
        grad *= 1.0 / n
        return grad

    def get_config(self):
        return {"type": "CrossEntropy", "label_smoothing": self.label_smoothing}


class NLL(_Classification):
    """Negative log-likelihood of LOG-probabilities (e.g. after LogSoftmax), averaged over the
    batch: -mean(logp[i, y_i]) for integer labels y (N,), as torch.nn.functional.nll_loss; rows of
    probabilities (N, K) give -sum(q * logp) / N."""

    _what = "log-probabilities"

    def forward(self, output, target):
        n, k, labels, rows = self._split(output, target)
        xp = self._xp(output)
        if labels is not None:
            index = (xp.arange(n), labels)
            total = -output[index].sum()
        else:
            index = None
            total = -(output * rows).sum()
        self._cache = (output, index, rows, n)
        return (total / n)[...]

    def backward(self):
        output, index, rows, n = self._saved()
        if index is None:
            return rows * (-1.0 / n)
        grad = self._xp(output).zeros_like(output)
        grad[index] = -1.0 / n
        return grad


LOSSES = {"mse": MSE, "mean_squared_error": MSE,
          "cross_entropy": CrossEntropy, "crossentropy": CrossEntropy,
          "categorical_crossentropy": CrossEntropy, "sparse_categorical_crossentropy": CrossEntropy,
          "nll": NLL, "l1": L1Loss, "mae": L1Loss, "mean_absolute_error": L1Loss}
_CLASSES = {cls.__name__: cls for cls in (MSE, L1Loss, CrossEntropy, NLL)}


def get(name_or_obj, **kwargs):
    """A loss from an object (returned unchanged), a name, or a config dict with "type".

    Names: "mse", "cross_entropy" (also "categorical_crossentropy" and
    "sparse_categorical_crossentropy"; all take logits), "nll", "l1" / "mae". ``kwargs`` go to
    the constructor, e.g. ``get("cross_entropy", label_smoothing=0.1)``.
    """
    if isinstance(name_or_obj, Loss):
        if kwargs:
            raise ConfigError(f"losses.get: got a loss object and extra arguments {sorted(kwargs)}")
        return name_or_obj
    if isinstance(name_or_obj, type) and issubclass(name_or_obj, Loss):
        cls = name_or_obj
    elif isinstance(name_or_obj, dict):
        kwargs = {**{k: v for k, v in name_or_obj.items() if k != "type"}, **kwargs}
        cls = _CLASSES.get(name_or_obj.get("type")) or LOSSES.get(str(name_or_obj.get("type")).lower())
        if cls is None:
            raise ConfigError(f"unknown loss type {name_or_obj.get('type')!r}; expected one of "
                              + ", ".join(sorted(_CLASSES)))
    elif isinstance(name_or_obj, str) and name_or_obj.lower() in LOSSES:
        cls = LOSSES[name_or_obj.lower()]
    else:
        raise ConfigError(f"unknown loss {name_or_obj!r}; expected a Loss object or one of: "
                          + ", ".join(sorted(LOSSES)))
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for loss {cls.__name__}: {exc}") from None


__all__ = ["Loss", "MSE", "L1Loss", "CrossEntropy", "NLL", "LOSSES", "get"]
