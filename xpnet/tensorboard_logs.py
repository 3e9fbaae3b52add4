"""The TensorBoard callback (``xpnet.callbacks.TensorBoard``; needs the ``xpnet[tensorboard]`` extra).

    model.fit(x, y, epochs=10, validation_split=0.1,
              callbacks=[xpnet.callbacks.TensorBoard("logs/run1", histogram_freq=1)])
    # then: tensorboard --logdir logs

As in Keras, ``log_dir/train`` gets ``epoch_loss``, ``epoch_accuracy``, ``epoch_learning_rate``
and ``epoch_seconds``, ``log_dir/validation`` gets ``epoch_loss`` and ``epoch_accuracy`` (so
TensorBoard draws training and validation in one chart), at step = epoch (counted from 0). Every
``histogram_freq`` epochs (0: never) each parameter and buffer gets a histogram ``layer/name``; with
``write_images`` the first layer's filters are drawn as images ``layer/filters`` (a Conv2D's kernels,
or a Dense layer's weights per unit reshaped to the input image) on the same epochs, or every epoch
when ``histogram_freq`` is 0. Event files are written by tensorboardX (no TensorFlow).

Everything comes from the epoch's logs (host floats) and, on histogram/image epochs, one
device-to-host copy of all weights at the end of the epoch: nothing is read per batch. A resumed
run (``fit(..., resume=True)`` or ``initial_epoch``) hides what an earlier attempt logged from its
first epoch on, so the curves have no duplicate steps.
"""
import itertools
import os
import warnings

from . import checks
from .callbacks import Callback
from .errors import ConfigError
from .serialization import folder_problem

EXTRA_HINT = "the TensorBoard callback needs tensorboardX: pip install 'xpnet[tensorboard]'"
_files = itertools.count()


def summary_writer_class():
    """tensorboardX's SummaryWriter, or an ImportError naming the extra."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError as exc:
        raise ImportError(f"{EXTRA_HINT} ({exc})") from exc
    return SummaryWriter


class TensorBoard(Callback):
    """Keras-style TensorBoard logs of a fit (see the module doc)."""

    rank_zero_only = True  # data-parallel training: rank 0 writes the logs

    def __init__(self, log_dir="logs", histogram_freq=0, write_images=False):
        super().__init__()
        self._writer_class = summary_writer_class()
        if isinstance(histogram_freq, bool) or not isinstance(histogram_freq, int) or histogram_freq < 0:
            raise ConfigError(f"TensorBoard: histogram_freq must be an integer >= 0, got {histogram_freq!r}")
        try:
            self.log_dir = os.fspath(log_dir)
        except TypeError:
            raise ConfigError(f"TensorBoard: log_dir must be a folder path (str or os.PathLike), got "
                              f"{type(log_dir).__name__} {log_dir!r}") from None
        self.histogram_freq = histogram_freq
        self.write_images = checks.flag(write_images, "TensorBoard", "write_images")
        self._writers = {}
        self._purge_step = None
        self._first_epoch = True
        self._image_layer = None

    # -- writers ----------------------------------------------------------------------------------
    def _writer(self, kind):
        """The writer of log_dir/train or log_dir/validation, opened on first use."""
        if kind not in self._writers:
            suffix = f".{os.getpid()}.{next(_files)}.xpnet"  # two writers in one second: two files
            self._writers[kind] = self._writer_class(os.path.join(self.log_dir, kind),
                                                     purge_step=self._purge_step,
                                                     filename_suffix=suffix)
        return self._writers[kind]

    def _close(self):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}

    # -- callback hooks ---------------------------------------------------------------------------
    def _check_log_dir(self):
        """ConfigError unless log_dir/train and log_dir/validation can be folders (a file in the
        way, or no permission): before the first epoch trains, not at its end."""
        for kind in ("train", "validation"):
            problem = folder_problem(os.path.join(self.log_dir, kind))
            if problem:
                raise ConfigError(f"TensorBoard: cannot write logs into {self.log_dir}: {problem}")

    def on_train_begin(self, logs=None):
        self._check_log_dir()
        self._close()
        self._purge_step, self._first_epoch = None, True
        self._image_layer = self._filter_layer() if self.write_images else None

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch:  # a resumed run replaces what was logged from its first epoch on
            self._purge_step = int(epoch) if epoch > 0 else None
            self._first_epoch = False

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if key == "lr":
                self._writer("train").add_scalar("epoch_learning_rate", value, epoch)
            elif key.startswith("val_"):
                self._writer("validation").add_scalar("epoch_" + key[4:], value, epoch)
            else:
                self._writer("train").add_scalar("epoch_" + key, value, epoch)
        histograms = bool(self.histogram_freq) and epoch % self.histogram_freq == 0
        images = self._image_layer is not None and (histograms or not self.histogram_freq)
        if histograms or images:
            self._log_weights(epoch, histograms, images)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        self._close()

    # -- weights ----------------------------------------------------------------------------------
    def _weights(self):
        """Every parameter and buffer as host arrays, fetched with one device-to-host copy."""
        arrays = dict(self.model.parameters)
        arrays.update(self.model.buffers)
        if not arrays:
            return {}
        xp = self.model.xp
        flat = xp.concatenate([a.reshape(-1).astype(xp.float32) for a in arrays.values()])
        host = self.model.backend.to_numpy(flat)
        out, start = {}, 0
        for name, a in arrays.items():
            size = int(a.size)
            out[name] = host[start:start + size].reshape(tuple(a.shape))
            start += size
        return out

    def _log_weights(self, epoch, histograms, images):
        weights = self._weights()
        train = self._writer("train")
        if histograms:
            for name, values in weights.items():
                train.add_histogram(name.replace(".", "/", 1), values, epoch)
        if images:
            layer, kind = self._image_layer
            w = weights[f"{layer.name}.W"]
            if kind == "dense":  # (in, units) -> one image per unit, shaped like the input
                w = w.T.reshape((w.shape[1],) + tuple(self.model.input_shape))
            if w.shape[1] not in (1, 3):  # neither gray nor RGB: one gray image per channel
                w = w.reshape((-1, 1) + tuple(w.shape[2:]))
            low = w.min(axis=(1, 2, 3), keepdims=True)
            span = w.max(axis=(1, 2, 3), keepdims=True) - low
            span[span == 0] = 1.0
            train.add_images(f"{layer.name}/filters", (w - low) / span, epoch, dataformats="NCHW")

    def _filter_layer(self):
        """(layer, "conv" or "dense") whose weights write_images draws, or None with a warning."""
        first = next((l for l in self.model.layers if "W" in l.params), None)
        shape = getattr(self.model, "input_shape", None)
        kind = type(first).__name__ if first is not None else None
        if kind == "Conv2D":
            return first, "conv"
        if kind == "Dense" and isinstance(shape, tuple) and len(shape) == 3 and \
                first.params["W"].shape[0] == shape[0] * shape[1] * shape[2]:
            return first, "dense"
        warnings.warn("TensorBoard: write_images draws the first layer's filters, but this model's "
                      "first weighted layer is neither a Conv2D nor a Dense layer on the input "
                      "images; no images are written", stacklevel=2)
        return None
