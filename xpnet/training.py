"""compile / fit / evaluate / predict for any model with the Sequential surface (a mixin).

Data: ``x`` may be host NumPy or backend arrays. uint8 images are scaled to [0, 1] in the model's
dtype (x / 255); other dtypes are cast. Labels are integer class ids (N,) or target rows (N, K)
(one-hot, probabilities or regression targets). fit() moves the data to the device once; every
batch is then taken, augmented, trained and measured on the device. Loss and correct counts are
accumulated as device arrays and read with ONE host sync per epoch (validation included); the
progress bar adds at most a few bounded refreshes (see xpnet.progress). evaluate() and predict()
move host data batch by batch, so their memory does not grow with the input.

``validation_split`` holds out the LAST fraction of x/y (before any shuffling), as Keras does.
The reported training ``loss`` is the objective (data loss + regularization penalty); ``val_loss``
and ``evaluate()`` report the data loss alone. ``accuracy`` compares the argmax of the outputs with
the label (or the argmax of a target row); compile's default metrics leave it out for a model
with one output column, where it would always be 1.0. ``lr`` is ``optimizer.current_lr()`` at
the end of the epoch (the base rate set by schedules, after any inverse-time decay).
"""
import contextlib
import math
import numbers
import os
import sys
import time
import zlib

from . import callbacks as cbs, checks
from .checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from .errors import (BatchSizeError, ConfigError, DataError, ShapeError, TrainingError,
                     TrainingInterrupted, XpnetError)
from .progress import Progress, resolve_verbose

METRICS = {"accuracy": "accuracy", "acc": "accuracy"}
DEFAULT_METRICS = ("accuracy",)   # compile's default: dropped for a model with one output column
STREAMS = {"shuffle": zlib.crc32(b"xpnet.fit.shuffle"), "augment": zlib.crc32(b"xpnet.fit.augment")}
History = cbs.History


# -- data helpers ---------------------------------------------------------------------------------
def _is_device(backend, a):
    return isinstance(a, backend.xp.ndarray)


def _inputs_to_device(backend, x, dtype):
    """Host or device array -> device array of ``dtype`` (uint8 scaled by 1/255)."""
    kind = getattr(getattr(x, "dtype", None), "kind", None)
    if kind is None:
        raise DataError(f"x must be an array with a dtype (NumPy or backend array), got {type(x).__name__}")
    a = x if _is_device(backend, x) else backend.asarray(x)
    if kind == "u" and a.dtype.itemsize == 1:
        return a.astype(dtype) * dtype.type(1.0 / 255.0)
    if kind not in "fiub":
        raise DataError(f"x has dtype {a.dtype}; expected uint8 images or floating-point data")
    return a if a.dtype == dtype else a.astype(dtype)


def _targets_to_device(backend, y, dtype):
    kind = getattr(getattr(y, "dtype", None), "kind", None)
    if kind is None:
        raise DataError(f"y must be an array with a dtype (NumPy or backend array), got {type(y).__name__}")
    a = y if _is_device(backend, y) else backend.asarray(y)
    if kind in "iu":
        if a.ndim != 1:
            hint = (f"; for one-hot rows pass y.argmax(axis=1) (class ids) or y.astype('float32')"
                    if a.ndim == 2 else "")
            raise ShapeError(f"integer labels must have shape (N,), got {tuple(a.shape)}{hint}")
        return a if a.dtype == backend.xp.int64 else a.astype(backend.xp.int64)
    if kind == "f":
        if a.ndim < 2:
            raise ShapeError(f"floating-point targets must be rows (N, K) such as one-hot vectors or "
                             f"regression targets, got shape {tuple(a.shape)}; pass class ids as "
                             f"integers (y.astype('int64')), or one value per sample as "
                             f"y.reshape(-1, 1)")
        return a if a.dtype == dtype else a.astype(dtype)
    raise DataError(f"y has dtype {a.dtype}; expected integer class ids or floating-point targets")


def _length(name, a):
    shape = getattr(a, "shape", None)
    if not shape:
        raise ShapeError(f"{name} must be an array with a batch axis, got shape {shape}")
    return int(shape[0])


def _check_array(where, name, a):
    """DataError unless ``a`` is an array (NumPy or backend) with a batch axis. Lists and tuples
    are refused, not converted: fit/evaluate/predict take arrays."""
    if isinstance(a, (list, tuple)):
        raise DataError(f"{where}: {name} is a {type(a).__name__}; pass a NumPy (or CuPy) array, e.g. "
                        f"np.asarray({name})")
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise DataError(f"{where}: {name} must be a NumPy (or CuPy) array, got {type(a).__name__}")
    if len(a.shape) == 0:
        raise ShapeError(f"{where}: {name} must be an array with a batch axis, got a scalar array "
                         f"(shape ())")


class TrainingMixin:
    """compile/fit/evaluate/predict on top of forward/backward/parameters/gradients/buffers."""

    # -- configuration --------------------------------------------------------------------------
    def compile(self, loss="cross_entropy", optimizer="adam", metrics=DEFAULT_METRICS,
                mixed_precision=None):
        """Choose the loss (name or Loss), the optimizer (name or Optimizer) and the metrics; both
        get the model's backend. ``mixed_precision="float16"`` (or "mixed_float16", "bfloat16",
        a xpnet.mixed.MixedPrecision) trains in half precision with float32 master weights and
        dynamic loss scaling (xpnet/mixed.py); None (the default) trains in the model's dtype.

        metrics: a metric name or a list of them ("accuracy"), or None. "accuracy" compares the
        argmax of the outputs with the class, so it needs one output per class: the default leaves
        it out for a model with a single output column, and asking for it there is a ConfigError
        at fit() or evaluate()."""
        from . import losses, mixed, optim
        if isinstance(optimizer, type):
            raise ConfigError(f"optimizer must be an Optimizer instance or a name: pass an instance, "
                              f"e.g. optim.{optimizer.__name__}(), or a name such as 'adam', not the "
                              f"class {optimizer.__name__}")
        if isinstance(metrics, str):
            names = [metrics]
        elif metrics is None:
            names = []
        elif isinstance(metrics, (list, tuple)) and all(isinstance(m, str) for m in metrics):
            names = list(metrics)
        else:
            raise ConfigError(f"metrics must be a metric name or a list of names such as "
                              f"['accuracy'], got {metrics!r}")
        unknown = [m for m in names if m not in METRICS]
        if unknown:
            raise ConfigError(f"unknown metric(s) {unknown}; available: {sorted(set(METRICS))}")
        self.loss = losses.get(loss).bind(self.backend)
        self.optimizer = optim.get(optimizer) if isinstance(optimizer, str) else optimizer
        if not hasattr(self.optimizer, "step"):
            raise ConfigError(f"optimizer must be a name or an Optimizer, got {type(optimizer).__name__}")
        if hasattr(self.optimizer, "bind"):
            self.optimizer.bind(self.backend)
        self.metrics = [METRICS[m] for m in names]
        self._default_metrics = metrics is DEFAULT_METRICS
        self._check_metrics()
        self._warn_double_softmax()
        policy = mixed.get(mixed_precision)
        if policy is not None and not isinstance(self.optimizer, optim.Optimizer):
            raise ConfigError(f"mixed precision needs an xpnet optimizer (its update of float32 master "
                              f"weights may be skipped on the device), got {type(self.optimizer).__name__}")
        self._mixed = None if policy is None else mixed.MixedStep(self, policy)
        return self

    @property
    def mixed_precision(self):
        """The compiled MixedPrecision policy, or None."""
        step = getattr(self, "_mixed", None)
        return None if step is None else step.policy

    def _require_compiled(self):
        if getattr(self, "optimizer", None) is None or getattr(self, "loss", None) is None:
            raise ConfigError("the model is not compiled: call model.compile(loss=..., optimizer=...) "
                              "before fit() or evaluate()")

    def _check_metrics(self, where="compile"):
        """Accuracy on a model with one output column is always 1.0 (the argmax of one value):
        the default metrics leave it out there; asked for explicitly, it is a ConfigError."""
        shape = getattr(self, "output_shape", None)
        if "accuracy" not in (self.metrics or []) or not shape or isinstance(shape[0], (tuple, list)):
            return
        if tuple(shape) != (1,):
            return
        if getattr(self, "_default_metrics", False):
            self.metrics = [m for m in self.metrics if m != "accuracy"]
            return
        if where != "compile":   # the model may be compiled before it is built: refuse at use
            raise ConfigError(f"{where}: metric 'accuracy' needs one output per class, but model "
                              f"{self.name!r} has one output column (its argmax is always 0, so "
                              f"accuracy would always be 1.0); for regression compile without it "
                              f"(metrics=None) and use a loss such as 'mse', or give the model one "
                              f"output per class")

    def _check_inputs(self, where, x, y=None):
        """x (and y) must be arrays; the model must take one input (fit/evaluate/predict do not
        support several yet)."""
        inputs = getattr(self, "inputs", None)
        if isinstance(inputs, list) and len(inputs) > 1:
            raise ConfigError(f"{where}: model {self.name!r} has {len(inputs)} inputs, but fit, evaluate "
                              f"and predict take one input array: models with several inputs are not "
                              f"supported by them yet (model.forward([x1, x2, ...]) computes outputs)")
        _check_array(where, "x", x)
        if y is not None:
            _check_array(where, "y", y)

    def _ensure_built(self, x):
        if self.input_shape is None:
            if not hasattr(self, "build"):
                raise ConfigError("the model is not built")
            self.build(tuple(x.shape[1:]))

    def _check_shape(self, x_dev_row, shape):
        """Check the input's shape and dtype with the whole array's shape (``shape``) from one
        converted row, without converting or copying the rest."""
        self.check_input(self.xp.broadcast_to(x_dev_row, tuple(shape)))

    def _classes(self):
        shape = getattr(self, "output_shape", None) or getattr(self.layers[-1], "output_shape", None)
        return int(shape[-1]) if shape and len(shape) == 1 else None

    def _training_rngs(self, seed=None):
        """The shuffler's and augmenter's generators (kept on the model; saved in checkpoints)."""
        if getattr(self, "_fit_rngs", None) is None or seed is not None:
            from .model import check_seed
            seed = self.seed if seed is None else check_seed(seed, "fit: seed")
            self._fit_rngs = {k: self.backend.rng(seed, s) for k, s in STREAMS.items()}
        return self._fit_rngs

    # -- one pass without training -------------------------------------------------------------
    def _batches(self, x, y, batch_size):
        """Yield device (xb, yb) of consecutive slices; host data is moved one batch at a time."""
        n = _length("x", x)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            xb = _inputs_to_device(self.backend, x[start:stop], self.dtype)
            yb = None if y is None else _targets_to_device(self.backend, y[start:stop], self.dtype)
            yield xb, yb

    def _measure(self, x, y, batch_size, bad=None):
        """Device sums (loss_sum, correct) over x/y in eval mode; no host sync. With ``bad`` (a list)
        it gets the device count of x's non-finite entries, batch by batch."""
        xp = self.xp
        loss_sum = xp.zeros((), dtype=xp.float64)
        correct = xp.zeros((), dtype=xp.int64)
        if bad is not None:
            bad.append(xp.zeros((), dtype=xp.int64))
        for xb, yb in self._batches(x, y, batch_size):
            if bad is not None:
                bad[0] = bad[0] + (~xp.isfinite(xb)).sum()
            out = self.forward(xb, training=False)
            loss_sum = loss_sum + self.loss.forward(out, yb).astype(xp.float64) * xb.shape[0]
            if self.metrics:
                correct = correct + self._correct(out, yb)
        return loss_sum, correct

    def _correct(self, out, yb):
        xp = self.xp
        truth = yb if yb.ndim == 1 else xp.argmax(yb, axis=1)
        return (xp.argmax(out, axis=1) == truth).sum().astype(xp.int64)

    def evaluate(self, x, y, batch_size=256, verbose=0):
        """{"loss": mean data loss, "accuracy": fraction correct} over x/y (eval mode, batched);
        ``verbose`` takes what fit's does ("auto", 0, 1, 2, True, False, None): anything but 0
        (False, None) prints them on one line to stderr."""
        try:
            verbose = resolve_verbose(verbose)
        except ConfigError as exc:
            raise ConfigError(f"evaluate: {exc}") from None
        self._require_compiled()
        self._check_inputs("evaluate", x, y)
        self._ensure_built(x)
        self._check_metrics("evaluate")
        batch_size = _check_batch_size(batch_size)
        n = _length("x", x)
        if n == 0:
            raise DataError(f"evaluate: the dataset is empty (x has shape {tuple(x.shape)})")
        if _length("y", y) != n:
            raise DataError(f"evaluate: x has {n} samples but y has {_length('y', y)}; they must match")
        y_dev = _targets_to_device(self.backend, y, self.dtype)
        self._check_shape(_inputs_to_device(self.backend, x[:1], self.dtype), x.shape)
        self._check_values([("evaluate", None, y_dev)])
        # x moves batch by batch: its non-finite entries are counted on the way (same sync)
        bad = [] if getattr(x.dtype, "kind", "") == "f" else None
        loss_sum, correct = self._measure(x, y_dev, batch_size, bad)
        sums = [loss_sum, correct.astype(self.xp.float64)] + [b.astype(self.xp.float64) for b in bad or []]
        host = self.backend.to_numpy(self.xp.stack(sums))
        if bad and host[2] > 0:
            raise DataError(f"evaluate: x contains NaN or infinite values ({int(host[2])} entries); "
                            f"clean or drop them first")
        result = {"loss": float(host[0]) / n}
        if self.metrics:
            result["accuracy"] = float(host[1]) / n
        if verbose:
            print(" - ".join(f"{k} {v:.4f}" for k, v in result.items()), file=sys.stderr)
        return result

    def _check_values(self, triples):
        """Finiteness of float data and the label range, for (name, x or None, y) on the device:
        one host sync for all of them."""
        xp = self.xp
        classes = self._classes()
        probes, labels = [], []
        for name, x, y in triples:
            if x is not None:
                probes.append((f"{name}: x contains NaN or infinite values", (~xp.isfinite(x)).sum()))
            if y.dtype.kind == "f":
                if classes is not None and y.ndim == 2 and y.shape[1] != classes:
                    raise ShapeError(f"{name}: targets have {y.shape[1]} columns but the model outputs "
                                     f"{classes} values per sample")
                probes.append((f"{name}: y contains NaN or infinite values", (~xp.isfinite(y)).sum()))
            elif classes is not None:
                labels.append((name, y.min(), y.max()))
        values = [v.astype(xp.float64) for _, v in probes]
        for _, lo, hi in labels:
            values += [lo.astype(xp.float64), hi.astype(xp.float64)]
        if not values:
            return
        host = self.backend.to_numpy(xp.stack(values))
        for i, (message, _) in enumerate(probes):
            if host[i] > 0:
                raise DataError(f"{message} ({int(host[i])} entries); clean or drop them first")
        for j, (name, _, _) in enumerate(labels):
            lo, hi = host[len(probes) + 2 * j], host[len(probes) + 2 * j + 1]
            if lo < 0 or hi >= classes:
                raise DataError(f"{name}: labels must be in [0, {classes}) for a model with {classes} "
                                f"outputs, found values from {int(lo)} to {int(hi)}")

    def predict(self, x, batch_size=256):
        """Model outputs for x as a host NumPy array, computed batch by batch in eval mode."""
        self._check_inputs("predict", x)
        self._ensure_built(x)
        batch_size = _check_batch_size(batch_size)
        n = _length("x", x)
        if n == 0:
            raise DataError(f"predict: the input is empty (x has shape {tuple(x.shape)})")
        self._check_shape(_inputs_to_device(self.backend, x[:1], self.dtype), x.shape)
        out = None
        start = 0
        for xb, _ in self._batches(x, None, batch_size):
            yb = self.forward(xb, training=False)
            if out is None:
                out = self.xp.empty((n,) + tuple(yb.shape[1:]), dtype=yb.dtype)
            out[start:start + xb.shape[0]] = yb
            start += xb.shape[0]
        return self.backend.to_numpy(out)

    # -- training -------------------------------------------------------------------------------
    def _data_parallel(self, comm, batch_size, n, steps_per_epoch, sync_batchnorm, sizes):
        """fit's DataParallel over ``comm``, after the ranks agreed on ``sizes`` and then on the
        batches (``agree_then_check_batches``, as the command line does before its run folder),
        before the first collective of a step: the ranks must take the same steps."""
        from .distributed.data_parallel import DataParallel, agree_then_check_batches, check_communicator
        check_communicator(self, comm)
        agree_then_check_batches(comm, sizes, batch_size, n, steps_per_epoch)
        return DataParallel(self, comm, batch_size, n, steps_per_epoch, sync_batchnorm)

    def _warn_double_softmax(self):
        """A UserWarning when the last layer is Softmax and the loss takes logits (cross_entropy
        applies its own softmax): the outputs would be squashed twice, the gradients shrink and
        training crawls without any error (Keras's from_logits mix-up).

        In a data-parallel job every rank compiles the same model: rank 0 alone shows the warning,
        as callbacks' warnings are. The rank is that of the job's communicator (``job_rank``),
        which distributed.init() makes before the model is built on its backend; a model compiled
        before init() cannot know it, and warns on every rank."""
        from .distributed.base import job_rank
        from .losses import CrossEntropy
        last = (getattr(self, "layers", None) or [None])[-1]
        if type(last).__name__ == "Softmax" and isinstance(self.loss, CrossEntropy) \
                and job_rank() in (None, 0):
            import warnings
            warnings.warn(f"the model ends with a Softmax layer ({last.name!r}) and the loss "
                          f"cross_entropy takes logits (it applies its own softmax): the outputs are "
                          f"squashed twice. Drop the Softmax layer (predict() then gives logits; "
                          f"take their argmax or softmax), or end with LogSoftmax and loss='nll'",
                          UserWarning, stacklevel=3)

    def _check_last_batch(self, n, batch_size):
        """BatchSizeError before training when the epoch's last batch would hold one sample and a
        BatchNorm sees one value per channel there (it needs two; PyTorch stops there too, in the
        middle of the first epoch)."""
        if n <= 1 or n % batch_size != 1:
            return
        for layer in getattr(self, "layers", []):
            shape = getattr(layer, "input_shape", None)
            if type(layer).__name__ == "BatchNorm" and shape and math.prod(shape[1:]) == 1:
                raise BatchSizeError(f"the last batch of each epoch would hold 1 sample ({n} samples "
                                     f"in batches of {batch_size}), and layer {layer.name!r} "
                                     f"(BatchNorm) needs more than one value per channel in "
                                     f"training: choose a {{batch_size}} that does not leave 1 "
                                     f"sample over", ", or drop a sample")

    def fit(self, x, y, epochs=1, batch_size=32, shuffle=True, validation_data=None,
            validation_split=0.0, callbacks=None, verbose="auto", augment=None, initial_epoch=0,
            checkpoint=None, resume=False, steps_per_epoch=None, seed=None, distributed=None,
            sync_batchnorm=True, time_limit=None, graph=False):
        """Train for epochs ``initial_epoch .. epochs-1``; returns a History.

        x and y are arrays (NumPy or CuPy; lists are refused: np.asarray them), x one array (a
        Model with several inputs is not supported by fit yet). initial_epoch: an integer from 0
        to epochs (equal: nothing to train). shuffle: True or False. callbacks: a list of
        xpnet.callbacks.Callback objects, or one. seed: an integer >= 0 or None.

        checkpoint=DIR writes DIR/last.npz after every epoch; resume=True continues from it (an error
        when it is missing), resume="auto" continues when it exists and starts afresh otherwise.
        A checkpoint written under mixed precision continues only under the same one (compile's
        mixed_precision; for float16 with the same loss-scale settings, as the run's own settings
        go on with its saved scale), with its loss scale; otherwise resuming is a TrainingError.
        augment: a callable ``aug(x_batch, rng) -> x_batch`` (e.g. xpnet.augment.RandomAffine) or
        its config dict ({"type": "RandomAffine", ...}).
        steps_per_epoch: batches per epoch (full batches; the data is re-shuffled when it runs out).
        seed: restart the shuffling and augmentation generators from this seed (default: they
        derive from model.seed once and continue across fit() calls).
        distributed: a communicator from xpnet.distributed.init() for data-parallel training under
        mpirun; batch_size is then the GLOBAL batch, each rank trains on its share of it, and only
        rank 0 shows progress and writes checkpoints and log files (docs/scaling.md).
        sync_batchnorm: with ``distributed``, BatchNorm uses the statistics of the global batch
        (True, as PyTorch's SyncBatchNorm) or each rank's own, averaging the running statistics
        over the ranks at the end of each epoch (False).
        time_limit: a wall-clock budget for this call, in seconds (a number or a timedelta),
        counted from the start of fit(). Training ends gracefully after the epoch in progress once
        the budget is spent, or earlier when the next epoch, at the pace of the slowest epoch so
        far, would end past it; the last epoch is checkpointed, callbacks get on_train_end (so
        EarlyStopping(restore_best_weights=True) restores the best weights) and
        ``history.stopped_by_time_limit`` is True. An epoch is never cut short.
        With ``distributed``, rank 0's clock decides for every rank.
        graph: on a GPU, capture the training step once as a CUDA graph and replay it for every
        full batch (xpnet.capture); the numbers are those of graph=False. On the CPU it runs the
        ordinary step.
        """
        t_begin = time.monotonic()
        self._require_compiled()
        self._check_inputs("fit", x, y)
        self._ensure_built(x)
        self._check_metrics("fit")
        batch_size = _check_batch_size(batch_size)
        if not _is_whole(epochs, 0):
            raise ConfigError(f"epochs must be an integer >= 0, got {epochs!r}")
        if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, numbers.Integral) \
                or not 0 <= initial_epoch <= epochs:
            raise ConfigError(f"initial_epoch must be an integer from 0 to epochs ({epochs!r}), got "
                              f"{initial_epoch!r}")
        if not checks.is_bool(shuffle):
            raise ConfigError(f"shuffle must be True or False, got {type(shuffle).__name__} {shuffle!r}")
        shuffle = bool(shuffle)
        if callbacks is None:
            callbacks = []
        elif isinstance(callbacks, cbs.Callback):
            callbacks = [callbacks]
        elif not isinstance(callbacks, (list, tuple)):
            raise ConfigError(f"callbacks must be a list of xpnet.callbacks.Callback objects (or one), "
                              f"got {type(callbacks).__name__} {callbacks!r}")
        if seed is not None:
            from .model import check_seed
            check_seed(seed, "fit: seed", allow_none=True)
        if checkpoint is not None:
            if not isinstance(checkpoint, (str, os.PathLike)):
                raise ConfigError(f"checkpoint must be a folder name (str or os.PathLike), got "
                                  f"{type(checkpoint).__name__}")
            from .serialization import check_writable   # a file in the way of the folder, too
            check_writable(checkpoint_path(os.fspath(checkpoint)), "fit: cannot write the checkpoint")
        if not _is_real(validation_split) or not 0.0 <= float(validation_split) < 1.0:
            raise ConfigError(f"validation_split must be in [0, 1), got {validation_split!r}")
        if validation_split and validation_data is not None:
            raise ConfigError("pass either validation_data or validation_split, not both")
        if steps_per_epoch is not None and not _is_whole(steps_per_epoch, 1):
            raise ConfigError(f"steps_per_epoch must be a positive integer or None, got {steps_per_epoch!r}")
        if resume not in (False, True, "auto"):
            raise ConfigError(f"resume must be False, True or 'auto', got {resume!r}")
        if resume and checkpoint is None:
            raise ConfigError(f"resume={resume!r} needs checkpoint=DIR (the folder holding last.npz)")
        if isinstance(augment, dict):
            from .augment import from_config
            augment = from_config(augment)
        if augment is not None and not callable(augment):
            raise ConfigError(f"augment must be callable aug(x, rng) or an augmenter config dict, got "
                              f"{type(augment).__name__} {augment!r}")
        epochs = int(epochs)
        if graph and distributed is not None:
            raise ConfigError("graph=True does not combine with distributed= (the all-reduce is "
                              "not captured); use one or the other")
        budget = _seconds(time_limit)

        xd, yd, xv, yv = self._fit_data(x, y, validation_data, validation_split)
        n = _length("x", xd)
        steps = math.ceil(n / batch_size) if steps_per_epoch is None else int(steps_per_epoch)
        total = n if steps_per_epoch is None else steps * batch_size
        dp = None
        if distributed is not None:
            dp = self._data_parallel(distributed, batch_size, n, steps_per_epoch, sync_batchnorm, [
                ("the number of training samples", n),
                ("the number of validation samples", 0 if xv is None else len(xv)),
                ("the batch size", batch_size), ("the steps per epoch", steps),
                ("the number of epochs", epochs)])
        rank = 0 if dp is None else distributed.rank
        if dp is None and steps_per_epoch is None:
            self._check_last_batch(n, batch_size)
        history = History()
        history.stopped_by_time_limit = False
        self.history = history
        self.stop_training = False
        callback_list = [history] + list(callbacks)
        params = {"epochs": epochs, "batch_size": batch_size, "steps": steps, "samples": n,
                  "validation_samples": 0 if xv is None else len(xv), "initial_epoch": int(initial_epoch),
                  "time_limit": budget}
        cb = cbs.CallbackList(callback_list, self, params, rank)
        history.params = params
        rngs = self._training_rngs(seed)
        folder = None if checkpoint is None else os.fspath(checkpoint)
        ck_path = None if folder is None else checkpoint_path(folder)
        terminate_on_nan = any(isinstance(c, cbs.TerminateOnNaN) for c in cb)

        skipped = self._input_grad_free()
        saved_flags = [layer.need_input_grad for layer in skipped]
        progress = Progress(verbose if rank == 0 else 0, epochs, steps)
        captured = None
        if graph:
            from .capture import CapturedStep
            captured = CapturedStep(self, augment, rngs["augment"])
        saved_epoch = saving = None
        epoch = int(initial_epoch)
        slowest = 0.0
        try:
            for layer in skipped:
                layer.need_input_grad = False
            cb.call("on_train_begin", {})
            if resume is True or (resume == "auto" and os.path.isfile(ck_path)):
                meta = load_checkpoint(ck_path, self, rngs, callback_list)
                saved_epoch = meta["epoch"]
                epoch = saved_epoch + 1
                self.stop_training = bool(meta.get("stopped"))
                progress.message(f"resumed from {ck_path} after epoch {saved_epoch + 1}"
                                 + (" (that run had stopped early: nothing left to do)"
                                    if self.stop_training else ""))
            if dp is not None:  # the same checkpoint on every rank, then rank 0's weights everywhere
                dp.agree(-1 if saved_epoch is None else saved_epoch, "the checkpoint epoch to resume from")
                dp.broadcast_weights()
                dp.broadcast_rngs(rngs)
                dp.attach()
            while epoch < epochs and not self.stop_training:
                cb.call("on_epoch_begin", epoch, {})
                with self.backend.capture_stream() if graph else contextlib.nullcontext():
                    logs, bad_batch = self._run_epoch(epoch, xd, yd, xv, yv, batch_size, steps, total,
                                                      shuffle, augment, rngs, progress, cb, dp, captured)
                cb.call("on_epoch_end", epoch, logs)
                progress.epoch_end(epoch, logs)
                if not math.isfinite(logs["loss"]):
                    if not terminate_on_nan:
                        raise TrainingError(self._nan_message(epoch, logs, bad_batch, ck_path, saved_epoch))
                    break
                if folder is not None:
                    saving = epoch
                    if rank == 0:
                        save_checkpoint(ck_path, self, epoch, rngs, callback_list, self.stop_training)
                    saved_epoch = epoch
                epoch += 1
                slowest = max(slowest, logs["seconds"])
                if budget is not None and epoch < epochs and not self.stop_training:
                    used = time.monotonic() - t_begin
                    over = used + slowest > budget
                    if dp is not None:  # every rank must stop after the same epoch: rank 0 decides
                        over = distributed.broadcast_text("stop" if over else "go") == "stop"
                    if over:
                        history.stopped_by_time_limit = True
                        progress.message(f"time limit: stopping after epoch {epoch} of {epochs} "
                                         f"({used:.0f} s used of {budget:.0f} s; an epoch takes up to "
                                         f"{slowest:.0f} s)")
                        break
            cb.call("on_train_end", {})
        except KeyboardInterrupt:
            progress.close()  # the exception's message says what was kept (one message, no print)
            if saving is not None and saving != saved_epoch and rank == 0:
                saved_epoch = _checkpoint_epoch(ck_path, saved_epoch)   # stopped in or after the save
            current = epoch + 1 if saved_epoch is None or saved_epoch < epoch else saved_epoch + 2
            raise TrainingInterrupted(current, None if saved_epoch is None else saved_epoch + 1,
                                      ck_path if saved_epoch is not None else None, folder) from None
        finally:
            progress.close()
            for layer, flag in zip(skipped, saved_flags):
                layer.need_input_grad = flag
            if dp is not None:
                dp.detach()
            if captured is not None:
                captured.close()
        return history

    def _fit_data(self, x, y, validation_data, validation_split):
        """Split off validation data, move everything to the device once, validate with one sync."""
        n_total = _length("x", x)
        if _length("y", y) != n_total:
            raise DataError(f"fit: x has {n_total} samples but y has {_length('y', y)}; they must match")
        x_val = y_val = None
        if validation_split:
            split = int(n_total * (1.0 - float(validation_split)))
            if split == n_total or split == 0:
                raise DataError(f"validation_split={validation_split} of {n_total} samples leaves "
                                f"{n_total - split} for validation and {split} for training")
            x, y, x_val, y_val = x[:split], y[:split], x[split:], y[split:]
        elif validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ConfigError("validation_data must be a pair (x_val, y_val)")
            x_val, y_val = validation_data

        backend = self.backend
        float_x = getattr(x.dtype, "kind", "") == "f"
        xd = _inputs_to_device(backend, x, self.dtype)
        yd = _targets_to_device(backend, y, self.dtype)
        if _length("x", xd) == 0:
            raise DataError(f"fit: the dataset is empty (x has shape {tuple(x.shape)})")
        self.check_input(xd)   # shape and dtype only (xd is in the model's dtype: no copy)
        triples = [("fit", xd if float_x else None, yd)]
        if x_val is not None:
            _check_array("validation_data", "x_val", x_val)
            _check_array("validation_data", "y_val", y_val)
            float_v = getattr(x_val.dtype, "kind", "") == "f"
            xv = _inputs_to_device(backend, x_val, self.dtype)
            yv = _targets_to_device(backend, y_val, self.dtype)
            if _length("x_val", xv) == 0:
                raise DataError("validation data is empty")
            if _length("y_val", yv) != _length("x_val", xv):
                raise DataError(f"validation: x has {len(xv)} samples but y has {len(yv)}; they must match")
            self.check_input(xv)
            triples.append(("validation", xv if float_v else None, yv))
        else:
            xv = yv = None
        self._check_values(triples)
        return xd, yd, xv, yv


    def _input_grad_free(self):
        """The layers whose input gradient no training step needs: the first; in a Sequential also
        those after it up to the first layer with parameters (a Flatten before the first Dense: that
        Dense's input gradient would only go back to the Flatten, which has nothing to learn; with
        their flag off each returns None without computing it)."""
        if not self.layers:
            return []
        if not getattr(self, "layers_in_a_chain", False):   # a graph: its inputs' layers decide
            return self.layers[:1]
        for i, layer in enumerate(self.layers):
            if layer.params:
                return self.layers[:i + 1]
        return list(self.layers)

    def _train_step(self, xb, yb, dp=None):
        """Forward, loss, backward and the optimizer's update on one batch: (loss value, outputs),
        both device arrays (no host sync)."""
        if getattr(self, "_mixed", None) is not None:
            return self._mixed.train_step(xb, yb, dp)
        loss = self.loss
        out = self.forward(xb, training=True)
        value = loss.forward(out, yb) + self.regularization_loss()
        if dp is None:
            self.backward(loss.backward())
        else:  # gradient of the global batch's mean loss after the all-reduce
            self.backward(loss.backward() * dp.scale)
            dp.reduce_gradients()
        self.add_regularization_grads()
        self._flat_parameters()
        self.optimizer.step(self.parameters, self.gradients)
        return value, out

    def _flat_parameters(self):
        """Make every parameter a view of one flat buffer (once; again only if one was replaced)
        and tell the optimizer, which then updates them all in a few array operations. The layers'
        ``params`` keep their names and shapes: only where the numbers live changes."""
        bind = getattr(self.optimizer, "bind_flat", None)
        views = getattr(self, "_flat_views", None)
        params = self.parameters
        if bind is None or not params or (views is not None and len(views) == len(params)
                                           and all(params[k] is v for k, v in views.items())):
            return
        if len({p.dtype for p in params.values()}) != 1:
            return
        flat = self.xp.concatenate([p.reshape(-1) for p in params.values()])
        views, offset = {}, 0
        for layer in self.layers:
            for k, p in layer.params.items():
                layer.params[k] = views[f"{layer.name}.{k}"] = flat[offset:offset + p.size].reshape(p.shape)
                offset += p.size
        self._flat_views, self._flat_buffer = views, flat
        bind(flat, views)

    def _nan_message(self, epoch, logs, batch, ck_path, saved_epoch):
        at = f" (first non-finite at batch {batch + 1})" if batch is not None else ""
        if saved_epoch is not None:
            last = f"the last good checkpoint is {ck_path} (epoch {saved_epoch + 1})"
        elif ck_path is not None:
            last = "no epoch had completed, so no checkpoint was written"
        else:
            last = "no checkpoint was kept (pass checkpoint=DIR to keep one)"
        return (f"the training loss became {logs['loss']} in epoch {epoch + 1}{at}; the weights are no "
                f"longer usable; {last}. Lower the learning rate or clip gradients "
                f"(optimizer clipnorm=...), or add callbacks.TerminateOnNaN() to stop quietly")

    def _epoch_order(self, n, total, shuffle, rng):
        """Sample indices of one epoch (device); ``total`` > n chains several permutations."""
        xp = self.xp
        reps = math.ceil(total / n)
        parts = [rng.permutation(n) if shuffle else xp.arange(n) for _ in range(reps)]
        order = parts[0] if reps == 1 else xp.concatenate(parts)
        return order

    def _run_epoch(self, epoch, xd, yd, xv, yv, batch_size, steps, total, shuffle, augment, rngs,
                   progress, cb, dp=None, captured=None):
        """Train one epoch; returns (logs of host floats, first batch with a non-finite loss or None).

        Per batch the loop keeps only the batch's loss (written into ``losses[b]``) and, for the
        accuracy, its predicted classes (into ``preds``): one device operation each. The epoch's
        loss sum, correct count and first non-finite batch are computed from them once, before
        the epoch's sync (``_epoch_sums``: the same additions in the same order as adding batch
        by batch, so the same numbers).

        With ``dp`` (data-parallel) this rank trains on its rows of each global batch and the
        epoch's sums (validation on this rank's share included) are all-reduced once."""
        xp = self.xp
        opt = self.optimizer
        start_time = time.perf_counter()
        progress.epoch_begin(epoch)
        n = _length("x", xd)
        order = self._epoch_order(n, total, shuffle, rngs["shuffle"])
        losses = xp.empty((steps,), dtype=xp.float64)
        sizes = []  # each batch's rows on this rank (host ints)
        shape = getattr(self, "output_shape", None) or getattr(self.layers[-1], "output_shape", None)
        by_class = bool(self.metrics) and yd.ndim <= 2 and shape is not None and len(shape) == 1
        # the predicted class of each row trained so far, in training order, and (dp) which row
        preds = xp.empty((total,), dtype=xp.int64) if by_class else None
        rows = xp.empty((total,), dtype=order.dtype) if by_class and dp is not None else None
        correct = xp.zeros((), dtype=xp.int64)  # summed per batch only for other output shapes
        show = progress.verbose != 0
        on_batch = cb.hooks("on_batch_end")
        seen = seen_all = 0
        fit_batch = getattr(augment, "fit_batch", None) if captured is None and dp is None else None
        for b in range(steps):
            start = b * batch_size
            idx = order[start:min(start + batch_size, total)]
            size = int(idx.shape[0])
            seen_all += size
            if captured is not None:
                xb, yb = xd[idx], yd[idx]
            elif fit_batch is not None:  # the augmenter warps the next batches' images together
                xb = fit_batch(xd, order, start, start + size, rngs["augment"])
                yb = yd[idx]
            elif dp is None:
                xb, yb = xd[idx], yd[idx]
                if augment is not None:
                    xb = augment(xb, rngs["augment"])
            else:  # this rank's rows; augmentations drawn for the global batch (same as 1 process)
                lo, hi = dp.begin_batch(size)
                xb, yb = (xd[idx[lo:hi]] if augment is None
                          else augment(xd[idx], rngs["augment"])[lo:hi]), yd[idx[lo:hi]]
                idx = idx[lo:hi]
            if captured is not None:  # augments inside the (captured) step
                value, out = captured(xb, yb)
            else:
                value, out = self._train_step(xb, yb, dp)
            nb = int(xb.shape[0])
            losses[b] = value  # as float64, the sum's dtype
            sizes.append(nb)
            if preds is not None:
                out.argmax(axis=1, out=preds[seen:seen + nb])
                if rows is not None:
                    rows[seen:seen + nb] = idx
            elif self.metrics:
                correct = correct + self._correct(out, yb)
            seen += nb
            running = None
            if show:
                if progress.wants_refresh(b):
                    loss_sum, right = self._epoch_sums(losses, sizes, preds, rows, order, yd, correct)
                    host = self.backend.to_numpy(xp.stack([loss_sum, right.astype(xp.float64)]))
                    running = {"loss": float(host[0]) / seen}
                    if self.metrics:
                        running["accuracy"] = float(host[1]) / seen
                progress.batch_end(b, size, running)  # images/s of the whole job
            if on_batch:
                logs = {"size": nb}
                for hook in on_batch:
                    hook(b, logs)
            if running is not None and not math.isfinite(running["loss"]):
                break  # no use finishing the epoch: fit() reports it at the epoch sync
        loss_sum, correct = self._epoch_sums(losses, sizes, preds, rows, order, yd, correct)
        bad = ~xp.isfinite(losses[:len(sizes)])
        first_bad = xp.where(bad.any(), bad.argmax(), -1)
        sums = [loss_sum, correct.astype(xp.float64), first_bad.astype(xp.float64)]
        if xv is not None:
            if dp is None:
                v_loss, v_correct = self._measure(xv, yv, max(batch_size, 256))
            else:  # each rank measures its share of the validation data
                dp.average_buffers()
                v_loss, v_correct = self._measure(dp.rows(xv), dp.rows(yv), max(batch_size, 256))
            sums += [v_loss, v_correct.astype(xp.float64)]
        mixed = getattr(self, "_mixed", None)
        if mixed is not None:  # the loss scale and the skipped steps, in the same sync
            at = len(sums)  # (equal on every rank: only rank 0's enter the all-reduce's sum)
            own = 1.0 if dp is None or dp.comm.rank == 0 else 0.0
            sums += [v.astype(xp.float64) * own for v in mixed.epoch_values()]
        if dp is None:
            host = self.backend.to_numpy(xp.stack(sums))  # the epoch's one host sync
        else:  # one all-reduce of the epoch's sums over the ranks, then the host sync
            host = dp.reduce_epoch(xp.stack(sums), bad_index=2)
            seen = seen_all
        logs = {"loss": float(host[0]) / seen}
        if self.metrics:
            logs["accuracy"] = float(host[1]) / seen
        if xv is not None:
            nv = _length("x_val", xv)
            logs["val_loss"] = float(host[3]) / nv
            if self.metrics:
                logs["val_accuracy"] = float(host[4]) / nv
        if mixed is not None:
            logs["loss_scale"] = mixed.after_sync(host[at], host[at + 1], epoch, len(sizes),
                                                  quiet=dp is not None and dp.comm.rank != 0)
        logs["lr"] = float(opt.current_lr() if hasattr(opt, "current_lr") else opt.lr)
        logs["seconds"] = time.perf_counter() - start_time
        return logs, (int(host[2]) if host[2] >= 0 else None)

    def _epoch_sums(self, losses, sizes, preds, rows, order, yd, correct):
        """(loss sum, correct count), device arrays, of the ``len(sizes)`` batches trained so far.

        The loss sum adds loss x rows batch after batch (a cumulative sum: the additions that
        adding per batch made, in the same order, so the same bits on the CPU). The correct count
        compares the predicted classes ``preds`` with the labels of the rows trained, in order
        (``order``'s first rows; ``rows`` in data-parallel training); without ``preds`` it is
        ``correct``, summed per batch."""
        xp = self.xp
        k = len(sizes)
        odd = [i for i, s in enumerate(sizes) if s != sizes[0]]  # a last, shorter batch
        if odd:
            weights = xp.full((k,), float(sizes[0]), dtype=xp.float64)
            for i in odd:
                weights[i] = float(sizes[i])
            products = losses[:k] * weights
        else:
            products = losses[:k] * float(sizes[0])
        loss_sum = xp.cumsum(products)[-1]
        if preds is None:
            return loss_sum, correct
        seen = sum(sizes)
        truth = yd[order[:seen] if rows is None else rows[:seen]]
        if truth.ndim == 2:
            truth = xp.argmax(truth, axis=1)
        return loss_sum, (preds[:seen] == truth).sum().astype(xp.int64)


def _is_real(value):
    """A finite real number (not a bool, a string or None)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_whole(value, minimum):
    return _is_real(value) and int(value) == value and value >= minimum


def _seconds(time_limit):
    """fit's time_limit (seconds or a timedelta) -> positive float seconds, or None."""
    if time_limit is None:
        return None
    if hasattr(time_limit, "total_seconds"):
        time_limit = time_limit.total_seconds()
    if not _is_real(time_limit) or time_limit <= 0:
        raise ConfigError(f"time_limit must be a positive number of seconds (or a timedelta), got "
                          f"{time_limit!r}")
    return float(time_limit)


def _checkpoint_epoch(path, fallback):
    """The epoch (0-based) the checkpoint at ``path`` holds, or ``fallback`` when it cannot be read:
    after an interruption between writing a checkpoint and noting it, the file says which epoch it
    kept."""
    from .serialization import load_npz
    try:
        meta = load_npz(path)[1]
        return int(meta["epoch"])
    except (XpnetError, OSError, KeyError, TypeError, ValueError):
        return fallback


def _check_batch_size(batch_size):
    if not _is_whole(batch_size, 1):
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)
