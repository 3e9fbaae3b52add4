"""Callbacks for fit(), in the style of Keras.

Each callback sees ``on_train_begin/end(logs)``, ``on_epoch_begin(epoch, logs)`` and
``on_epoch_end(epoch, logs)`` with epochs counted from 0 and ``logs`` a dict of host floats (loss,
accuracy, val_loss, val_accuracy, lr, seconds). ``on_batch_end(batch, logs)`` gets only host-side
information (batch size), never device values, so callbacks cannot add per-batch syncs. Setting
``model.stop_training = True`` ends training after the current epoch.

Callbacks that carry state across epochs implement ``get_state() -> (json_dict, host_arrays)`` and
``set_state(json_dict, arrays)`` so that checkpoints can resume them exactly.

Callbacks that write files set ``rank_zero_only = True``: in data-parallel training
(fit(..., distributed=comm)) only rank 0 calls them; the others (early stopping, schedules) run on
every rank, on the same globally reduced logs, so every rank takes the same decisions. A
callback warns through ``self.warn``, which shows the warning on rank 0 only, as progress and log
lines are (a plain warnings.warn in a callback shows on every rank).
"""
import csv
import difflib
import io
import json
import math
import os
import string
import warnings

from . import checks
from .errors import ConfigError
from .serialization import atomic_write_bytes, folder_problem


class Callback:
    rank_zero_only = False  # True for callbacks that write files: only rank 0 runs them
    rank = 0                # the data-parallel rank it runs on (set by CallbackList)

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = dict(params)

    def say(self, text):
        """print(text) on rank 0 (and in a single process), as the progress lines are; the other
        data-parallel ranks see rank 0's logs and would print the same lines."""
        if self.rank == 0:
            print(text)

    def warn(self, message, category=UserWarning, stacklevel=1):
        """warnings.warn(message) on rank 0 (and in a single process); nothing on the other
        data-parallel ranks, whose callbacks see rank 0's logs and would repeat its warnings.
        ``stacklevel`` counts from the caller of warn, as warnings.warn's does."""
        if self.rank == 0:
            warnings.warn(message, category, stacklevel=stacklevel + 1)

    def on_train_begin(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def get_state(self):
        return {}, {}

    def set_state(self, state, arrays):
        pass


class History(Callback):
    """Per-epoch logs: ``history`` {key: [value per epoch]}, ``epoch`` [epoch numbers], ``params``."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(int(epoch))
        known = len(self.epoch) - 1
        for key, value in (logs or {}).items():
            self.history.setdefault(key, [None] * known).append(value)
        for key, values in self.history.items():
            if len(values) < len(self.epoch):
                values.append(None)

    def rows(self):
        """One dict per epoch: {"epoch": e, key: value, ...}."""
        return [dict({"epoch": e}, **{k: v[i] for k, v in self.history.items()})
                for i, e in enumerate(self.epoch)]

    def get_state(self):
        return {"history": {k: list(v) for k, v in self.history.items()}, "epoch": list(self.epoch)}, {}

    def set_state(self, state, arrays):
        self.history = {k: list(vs) for k, vs in state["history"].items()}
        self.epoch = [int(e) for e in state["epoch"]]

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


def _mode(mode, monitor):
    if not isinstance(mode, str) or mode not in ("auto", "min", "max"):
        raise ConfigError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if ("acc" in monitor or monitor.endswith("auc")) else "min"
    return mode


class _Monitor(Callback):
    """Shared logic: is ``current`` better than ``best`` by the configured margins?"""

    def __init__(self, monitor, mode, min_delta=0.0, min_delta_rel=0.0):
        super().__init__()
        who = type(self).__name__
        self.monitor = checks.text(monitor, who, "monitor (the name of a metric in the logs)")
        self.mode = _mode(mode, monitor)
        # negative margins are refused (Keras takes abs(min_delta)): a sign is a mistake to report
        self.min_delta = checks.number(min_delta, who, "min_delta", low=0.0)
        self.min_delta_rel = checks.number(min_delta_rel, who, "min_delta_rel", low=0.0)
        self.best = math.inf if self.mode == "min" else -math.inf

    def improved(self, current):
        if current is None or not math.isfinite(current):
            return False
        if not math.isfinite(self.best):
            return True
        margin = max(self.min_delta, self.min_delta_rel * abs(self.best))
        if self.mode == "min":
            return self.best - current > margin
        return current - self.best > margin

    def current(self, logs):
        """The monitored value in this epoch's ``logs``; ConfigError when they do not have it (Keras
        warns and carries on, so a typo or a val_* metric without validation data meant a callback
        that never stopped, saved or restored anything)."""
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            raise ConfigError(_missing_monitor(type(self).__name__, self.monitor, logs))
        return value


def _missing_monitor(who, monitor, logs):
    keys = list(logs)
    text = (f"{who} monitors {monitor!r} but the epoch's logs have "
            f"{', '.join(keys) if keys else 'no metrics'}")
    if monitor.startswith("val_") and not any(k.startswith("val_") for k in keys):
        return (text + "; val_* metrics need validation data: pass validation_data or "
                "validation_split to fit(), or monitor a training metric such as 'loss'")
    close = difflib.get_close_matches(monitor, keys, n=1)
    return text + (f"; did you mean {close[0]!r}?" if close else "")


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved for ``patience`` epochs in a row (as in Keras: training
    stops at the end of the ``patience``-th epoch without improvement; patience 0 acts like 1).

    An improvement must beat the best value by more than ``min_delta`` (absolute) and by more than
    ``min_delta_rel * |best|`` (relative, the "min delta rel" of seed 001). Epochs before
    ``start_from_epoch`` are not monitored. With ``restore_best_weights`` the parameters and buffers
    of the best epoch are put back at the end of training (whether or not it stopped early).
    """

    def __init__(self, monitor="val_loss", patience=0, min_delta=0.0, min_delta_rel=0.0, mode="auto",
                 restore_best_weights=False, start_from_epoch=0, verbose=0):
        super().__init__(monitor, mode, min_delta, min_delta_rel)
        who = "EarlyStopping"
        self.patience = checks.whole(patience, who, "patience")
        self.restore_best_weights = checks.flag(restore_best_weights, who, "restore_best_weights")
        self.start_from_epoch = checks.whole(start_from_epoch, who, "start_from_epoch")
        self.verbose = checks.verbosity(verbose, who)
        self.wait = 0
        self.best_epoch = None
        self.stopped_epoch = None
        self.best_weights = None  # {name: device copy}

    def on_train_begin(self, logs=None):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait, self.best_epoch, self.stopped_epoch, self.best_weights = 0, None, None, None

    def on_epoch_end(self, epoch, logs=None):
        current = self.current(logs)  # checked from the first epoch, monitored or not
        if epoch < self.start_from_epoch:
            return
        if self.improved(current):
            self.best, self.best_epoch, self.wait = float(current), int(epoch), 0
            if self.restore_best_weights:
                self.best_weights = {k: v.copy() for k, v in self.model.state_arrays().items()}
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = int(epoch)
            self.model.stop_training = True
            if self.verbose:
                self.say(f"EarlyStopping: {self.monitor} has not improved for {self.wait} epochs "
                         f"(best {self.best:.6g} at epoch {self.best_epoch + 1}); stopping after epoch "
                         f"{epoch + 1}")

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None:
            for name, arr in self.model.state_arrays().items():
                arr[...] = self.best_weights[name]
            if self.verbose:
                self.say(f"EarlyStopping: restored the weights of epoch {self.best_epoch + 1}")

    def get_state(self):
        state = {"best": self.best, "wait": self.wait, "best_epoch": self.best_epoch,
                 "stopped_epoch": self.stopped_epoch}
        arrays = {}
        if self.best_weights is not None:
            backend = self.model.backend
            arrays = {k: backend.to_numpy(v) for k, v in self.best_weights.items()}
        return state, arrays

    def set_state(self, state, arrays):
        self.best = float(state["best"])
        self.wait = int(state["wait"])
        self.best_epoch = state["best_epoch"]
        self.stopped_epoch = state["stopped_epoch"]
        if arrays:
            self.best_weights = {k: self.model.backend.asarray(v) for k, v in arrays.items()}


class LearningRateScheduler(Callback):
    """Set ``model.optimizer.lr = schedule(epoch)`` at the start of each epoch.

    ``schedule`` is an xpnet.schedules object, a config dict/name for ``schedules.get``, or a
    callable ``epoch -> lr`` or, as in Keras, ``(epoch, lr) -> lr`` (given the optimizer's current
    rate; which one is read from its signature). A rate that is not a finite number >= 0 is a
    ConfigError naming the epoch.
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        from . import schedules
        self.schedule = schedules.get(schedule)
        self.verbose = checks.verbosity(verbose, "LearningRateScheduler")

    def on_epoch_begin(self, epoch, logs=None):
        from .schedules import check_rate
        if getattr(self.schedule, "wants_lr", False):
            value = self.schedule(epoch, float(self.model.optimizer.lr))
        else:
            value = self.schedule(epoch)
        lr = check_rate(value, epoch, f"LearningRateScheduler: the schedule {self.schedule!r}")
        self.model.optimizer.lr = lr
        if self.verbose:
            self.say(f"LearningRateScheduler: epoch {epoch + 1}: lr = {lr:.6g}")


class ReduceLROnPlateau(_Monitor):
    """Multiply the optimizer's lr by ``factor`` when ``monitor`` stalls for ``patience`` epochs.

    Warns once, at the end of the first epoch (when the rate training uses is known), when
    ``min_lr`` is not below the rate the optimizer started with."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, min_delta=1e-4, cooldown=0,
                 min_lr=0.0, mode="auto", min_delta_rel=0.0, verbose=0):
        super().__init__(monitor, mode, min_delta, min_delta_rel)
        who = "ReduceLROnPlateau"
        self.factor = checks.number(factor, who, "factor", low=0.0, high=1.0, open_low=True,
                                    open_high=True)
        self.patience = checks.whole(patience, who, "patience")
        self.cooldown = checks.whole(cooldown, who, "cooldown")
        self.min_lr = checks.number(min_lr, who, "min_lr", low=0.0)
        self.verbose = checks.verbosity(verbose, who)
        self.wait = 0
        self.cooldown_counter = 0
        self._start_lr = None   # see _check_min_lr
        self._checked = None    # the optimizer whose starting rate was checked

    def on_train_begin(self, logs=None):
        """Note the rate of an optimizer that has not stepped yet (the rate the user gave it), for
        the min_lr check at the end of the first epoch (``_check_min_lr``)."""
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = self.cooldown_counter = 0
        opt = self.model.optimizer
        fresh = getattr(opt, "iterations", 0) == 0 and opt is not self._checked
        self._start_lr = float(opt.lr) if fresh else None

    def _check_min_lr(self):
        """Warn once when ``min_lr`` is not below the rate the user gave the optimizer: a reduction
        would never lower it (Keras accepts this too, silently). Other rates at or under min_lr are
        no mistake: an optimizer that has stepped carries what earlier fits left (this callback's
        own reductions down to min_lr, a schedule's rate), and a rate that a LearningRateScheduler
        or another callback has changed by the end of the first epoch is not the one training
        uses. The first epoch end comes before this callback can have lowered anything. An
        optimizer is checked once: float16's skipped steps are taken off ``iterations``, so one
        whose every step was skipped reads 0 again with the rate this callback lowered."""
        start, self._start_lr = self._start_lr, None
        if start is None:
            return
        self._checked = self.model.optimizer
        if self.min_lr == 0 or start > self.min_lr:
            return
        if float(self.model.optimizer.lr) == start:
            self.warn(f"ReduceLROnPlateau: min_lr {self.min_lr:g} is not below the optimizer's "
                      f"learning rate {start:g}, so this callback will never lower the rate; "
                      f"expected a min_lr below {start:g}", UserWarning, stacklevel=5)

    def on_epoch_end(self, epoch, logs=None):
        self._check_min_lr()
        current = self.current(logs)
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.improved(current):
            self.best, self.wait = float(current), 0
            return
        if self.cooldown_counter > 0:
            return
        self.wait += 1
        if self.wait >= self.patience:
            opt = self.model.optimizer
            old = float(opt.lr)
            new = max(old * self.factor, self.min_lr)
            if new < old:
                opt.lr = new
                if self.verbose:
                    self.say(f"ReduceLROnPlateau: epoch {epoch + 1}: lr {old:.6g} -> {new:.6g}")
            self.cooldown_counter = self.cooldown
            self.wait = 0

    def get_state(self):
        return {"best": self.best, "wait": self.wait,
                "cooldown_counter": self.cooldown_counter}, {}

    def set_state(self, state, arrays):
        self.best = float(state["best"])
        self.wait = int(state["wait"])
        self.cooldown_counter = int(state["cooldown_counter"])


class ModelCheckpoint(_Monitor):
    """Save the model after each epoch to ``path_pattern.format(epoch=epoch + 1, **logs)``.

    rank_zero_only: in data-parallel training only rank 0 saves. Uses ``model.save(path)`` (architecture + weights + optimizer) when the model has it; otherwise
    a weights-only .npz of every parameter and buffer. With ``save_best_only`` a file is written only
    when ``monitor`` improves.
    """

    rank_zero_only = True

    def __init__(self, path_pattern, monitor="val_loss", save_best_only=False, mode="auto",
                 verbose=0):
        super().__init__(monitor, mode)
        self.path_pattern = _path(path_pattern, "ModelCheckpoint", "path_pattern")
        self.save_best_only = checks.flag(save_best_only, "ModelCheckpoint", "save_best_only")
        self.verbose = checks.verbosity(verbose, "ModelCheckpoint")
        self.saved = []

    def on_train_begin(self, logs=None):
        """Refuse a path that cannot be written (a file where a folder must be, a folder where the
        file goes), a pattern that cannot be filled in (unbalanced braces, a positional field, a
        val_* metric when fit has no validation data) before the first epoch trains, rather than
        at its end."""
        self._check_pattern()
        try:
            first = self.path_pattern.format(epoch=1)  # the whole path when it needs no logs
        except (KeyError, IndexError, ValueError, AttributeError, TypeError):
            first = None
        _check_writable("ModelCheckpoint", self.path_pattern, first)
        if hasattr(self.model, "save"):  # a layer save_model refuses: say so before epoch 1 trains
            from .layers import check_config
            for layer in self.model.layers:
                check_config(layer)

    def _check_pattern(self):
        pattern = self.path_pattern
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
        except ValueError as exc:
            raise ConfigError(f"ModelCheckpoint: cannot fill in {pattern!r}: {exc}") from None
        for field in fields:
            key = field.split(".")[0].split("[")[0]
            if not key or key.isdigit():
                raise ConfigError(f"ModelCheckpoint: {pattern!r} has a positional field "
                                  f"{{{field}}}; name what goes there, e.g. {{epoch:02d}} or "
                                  f"{{loss:.4f}}")
            if key.startswith("val_") and not self.params.get("validation_samples", 1):
                raise ConfigError(f"ModelCheckpoint: {pattern!r} names {key}, but this fit has no "
                                  f"validation data: pass validation_data or validation_split to "
                                  f"fit(), or name a training metric such as {{{key[4:]}}}")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.save_best_only:
            current = self.current(logs)
            if not self.improved(current):
                return
            self.best = float(current)
        try:
            path = self.path_pattern.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
            raise ConfigError(f"ModelCheckpoint: cannot fill in {self.path_pattern!r} "
                              f"(available keys: epoch, {', '.join(sorted(logs))}): {exc}") from exc
        save_weights(self.model, path)
        self.saved.append(path)
        if self.verbose:
            self.say(f"ModelCheckpoint: saved {path}")

    def get_state(self):
        return {"best": self.best, "saved": list(self.saved)}, {}

    def set_state(self, state, arrays):
        self.best = float(state["best"])
        self.saved = list(state["saved"])


def _path(path, who, name):
    try:
        return os.fspath(path)
    except TypeError:
        raise ConfigError(f"{who}: {name} must be a file path (str or os.PathLike), got "
                          f"{type(path).__name__} {path!r}") from None


_EXAMPLE_NAME = {"ModelCheckpoint": "model.npz", "CSVLogger": "log.csv", "JSONLogger": "log.json"}


def _check_writable(who, pattern, path):
    """ConfigError naming the path unless a file can be written there: ``path`` (the whole file
    path, or None when it needs the epoch's logs) must not be a folder, and the folder it goes in
    (made when missing) must not have a file in its place or on the way to it. Without ``path``
    the folder part of ``pattern`` before its first ``{`` is checked."""
    if path is not None:
        full = os.path.abspath(path)
        if os.path.isdir(full):
            raise ConfigError(f"{who}: {path} is a folder; give the path of a file in it (e.g. "
                              f"{os.path.join(path, _EXAMPLE_NAME.get(who, 'log'))})")
        folder = os.path.dirname(full)
    else:
        cut = pattern.find("{")
        folder = os.path.dirname(os.path.abspath((pattern if cut < 0 else pattern[:cut]) + "x"))
    problem = folder_problem(folder)
    if problem:
        raise ConfigError(f"{who}: cannot write {path if path is not None else pattern}: {problem}")


def save_weights(model, path):
    """``model.save(path)`` when available, else a weights-only .npz (params and buffers)."""
    if hasattr(model, "save"):
        model.save(path)
        return
    from .serialization import save_npz_atomic
    backend = model.backend
    save_npz_atomic(path, {k: backend.to_numpy(v) for k, v in model.state_arrays().items()},
                    {"format": "xpnet-weights", "version": 1})


class _FileLogger(Callback):
    """Rewrites the whole log atomically after every epoch from ``model.history`` (which a resumed
    fit restores), so the file always matches the run, including epochs before a resume."""

    rank_zero_only = True

    def __init__(self, path):
        super().__init__()
        self.path = _path(path, type(self).__name__, "path")

    def on_train_begin(self, logs=None):
        """Refuse a path that cannot be written before the first epoch trains."""
        _check_writable(type(self).__name__, self.path, self.path)

    def on_epoch_end(self, epoch, logs=None):
        atomic_write_bytes(self.path, self.render(self.model.history.rows()))


class CSVLogger(_FileLogger):
    """One row per epoch: epoch (1-based), then loss, accuracy, val_*, lr, seconds."""

    def render(self, rows):
        keys = []
        for row in rows:
            keys += [k for k in row if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(dict(row, epoch=row["epoch"] + 1))
        return buf.getvalue().encode("utf-8")


class JSONLogger(_FileLogger):
    """{"epochs": [{"epoch": 1, "loss": ..., ...}, ...]}; NaN/inf are written as null."""

    def render(self, rows):
        clean = [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                  for k, v in dict(row, epoch=row["epoch"] + 1).items()} for row in rows]
        return (json.dumps({"epochs": clean}, indent=1, allow_nan=False) + "\n").encode("utf-8")


class TerminateOnNaN(Callback):
    """Stop training (instead of raising TrainingError) when the epoch loss is NaN or infinite."""

    def __init__(self):
        super().__init__()
        self.stopped_epoch = None

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.stopped_epoch = int(epoch)
            self.model.stop_training = True
            self.say(f"TerminateOnNaN: epoch {epoch + 1}: loss is {loss}; stopping training")


class CallbackList:
    """Calls each callback in order."""

    def __init__(self, callbacks, model, params, rank=0):
        self.callbacks = list(callbacks)
        self.rank = int(rank)  # data-parallel rank: rank_zero_only callbacks run on rank 0 only
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise ConfigError(f"callbacks must be xpnet.callbacks.Callback objects, got "
                                  f"{type(cb).__name__}")
            cb.set_model(model)
            cb.set_params(params)
            cb.rank = self.rank

    def __iter__(self):
        return iter(self.callbacks)

    def call(self, hook, *args):
        for cb in self.callbacks:
            if self.rank == 0 or not cb.rank_zero_only:
                getattr(cb, hook)(*args)

    def hooks(self, hook):
        """The ``hook`` methods that ``call(hook, ...)`` would run, less the base class's no-ops:
        fit() looks up its per-batch hooks once per epoch and calls only these."""
        base = getattr(Callback, hook)
        found = []
        for cb in self.callbacks:
            if self.rank == 0 or not cb.rank_zero_only:
                method = getattr(cb, hook)
                if getattr(method, "__func__", None) is not base:
                    found.append(method)
        return found


from .tensorboard_logs import TensorBoard  # noqa: E402  (tensorboardX loads only when one is made)
