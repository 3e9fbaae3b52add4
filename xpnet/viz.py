"""Pictures of training runs and models, written as PNG files (matplotlib, no display needed).

Every function takes host data (NumPy arrays, lists; device arrays are copied to the host), writes
one PNG of a fixed pixel size (``SIZES`` x ``DPI``) and returns its path. matplotlib is imported
on first use, through its Agg canvas, so nothing here touches pyplot's global state.
"""
import math
import os

import numpy as np

from .errors import ConfigError, ShapeError

DPI = 100
SIZES = {"history": (10, 4), "confusion": (7, 6), "grid": (8, 8), "weights": (10, 4.5)}  # inches


def _figure(kind):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("xpnet.viz needs matplotlib: pip install 'xpnet[plot]'") from exc
    fig = Figure(figsize=SIZES[kind], dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    """Render ``fig`` as PNG in memory, then write it atomically: a kill or an error while drawing
    leaves the file as it was (a run folder's earlier curves.png), never half a PNG."""
    import io
    from .serialization import atomic_write_bytes
    path = os.fspath(path)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _host(a, what):
    """A NumPy copy of a host or device array (CuPy and strict arrays have .get())."""
    if not isinstance(a, (np.ndarray, list, tuple)) and hasattr(a, "get") and hasattr(a, "shape"):
        a = a.get()
    try:
        return np.asarray(a)
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"{what}: expected an array, got {type(a).__name__}") from exc


def _labels(y, what):
    y = _host(y, what)
    if y.ndim == 2:  # one-hot rows or probabilities
        y = y.argmax(axis=1)
    if y.ndim != 1 or y.dtype.kind not in "iub":
        raise ShapeError(f"{what}: expected integer class ids of shape (N,) or rows (N, K), got "
                         f"shape {y.shape} and dtype {y.dtype}")
    return y.astype(np.int64)


def _grid(count):
    cols = max(1, math.ceil(math.sqrt(count)))
    return math.ceil(count / cols), cols


def _image(a):
    """One (C, H, W) image with C = 1 or 3 (the library's layout), or (H, W) -> gray or RGB."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3 and a.shape[0] in (1, 3):
        a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    if a.ndim != 2 and not (a.ndim == 3 and a.shape[-1] == 3):
        raise ShapeError(f"expected images (C, H, W) with 1 or 3 channels, or (H, W); got {a.shape}")
    return a


# -- training curves ---------------------------------------------------------------------------
def plot_history(history, path):
    """Loss (left) and accuracy (right) per epoch, training and validation; ``history`` is a
    History (``.history`` dict) or a dict {"loss": [...], "val_loss": [...], ...}."""
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict) or not logs:
        raise ConfigError(f"plot_history: expected a History or a non-empty dict of per-epoch "
                          f"lists, got {type(history).__name__}")
    fig = _figure("history")
    panels = (("loss", "Loss"), ("accuracy", "Accuracy"))
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        for name, label in ((key, "training"), ("val_" + key, "validation")):
            values = logs.get(name)
            if values:
                y = np.array([np.nan if v is None else float(v) for v in values])
                ax.plot(np.arange(1, len(y) + 1), y, marker="o", markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    return _save(fig, path)


# -- test-set pictures -------------------------------------------------------------------------
def plot_confusion_matrix(y_true, y_pred, path, class_names=None):
    """Counts of (true class, predicted class) with the count in each cell."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if len(t) != len(p):
        raise ShapeError(f"plot_confusion_matrix: y_true has {len(t)} labels but y_pred has {len(p)}")
    if len(t) and (t.min() < 0 or p.min() < 0):
        raise ShapeError("plot_confusion_matrix: class ids must be >= 0")
    k = max(len(class_names or []), int(max(t.max(initial=-1), p.max(initial=-1))) + 1, 1)
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ShapeError(f"plot_confusion_matrix: {len(names)} class names for labels up to {k - 1}")
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (t, p), 1)
    fig = _figure("confusion")
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    errors = int(len(t) - np.trace(counts))
    ax.set_title(f"{len(t)} samples, {errors} errors")
    if k <= 20:
        top = counts.max() if counts.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if counts[i, j] > top / 2 else "black")
    fig.tight_layout()
    return _save(fig, path)


def plot_misclassified(x, y_true, y_pred, path, n=25, class_names=None):
    """The first ``n`` images whose prediction is wrong, titled "true -> predicted"."""
    images = _host(x, "x")
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if not (len(images) == len(t) == len(p)):
        raise ShapeError(f"plot_misclassified: x, y_true and y_pred have {len(images)}, {len(t)} "
                         f"and {len(p)} entries; they must match")
    if int(n) <= 0:
        raise ConfigError(f"plot_misclassified: n must be a positive integer, got {n!r}")
    wrong = np.flatnonzero(t != p)[:int(n)]
    name = (lambda c: str(class_names[c])) if class_names is not None else str
    fig = _figure("grid")
    if len(wrong) == 0:
        fig.text(0.5, 0.5, "no misclassified images", ha="center", va="center", fontsize=16)
    rows, cols = _grid(len(wrong))
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    for i, idx in enumerate(wrong):
        ax = fig.add_subplot(rows, cols, i + 1)
        img = np.clip(_image(images[idx]) / scale, 0.0, 1.0)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0)
        ax.set_title(f"{name(t[idx])} -> {name(p[idx])}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"misclassified: {int((t != p).sum())} of {len(t)}")
    return _save(fig, path)


plot_mistakes = plot_misclassified


# -- weights -----------------------------------------------------------------------------------
def _weights(model_or_W, want_ndim, pick, what):
    if hasattr(model_or_W, "layers"):
        found = [l.params["W"] for l in model_or_W.layers
                 if "W" in getattr(l, "params", {}) and l.params["W"].ndim == want_ndim]
        if not found:
            raise ConfigError(f"{what}: the model has no layer with a {want_ndim}-D weight 'W'")
        return _host(found[pick], what).astype(np.float64)
    w = _host(model_or_W, what).astype(np.float64)
    if w.ndim != want_ndim:
        raise ShapeError(f"{what}: expected a {want_ndim}-D weight array, got shape {w.shape}")
    return w


def plot_conv_filters(model_or_W, path):
    """The first convolution's filters (F, C, kh, kw): gray for one channel, RGB for three,
    the channel mean otherwise; each filter scaled to its own range."""
    w = _weights(model_or_W, 4, 0, "plot_conv_filters")
    fig = _figure("grid")
    rows, cols = _grid(w.shape[0])
    for i, f in enumerate(w):
        img = f.transpose(1, 2, 0) if f.shape[0] == 3 else f.mean(axis=0)
        lo, hi = img.min(), img.max()
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0)
        ax.axis("off")
    fig.suptitle(f"{w.shape[0]} filters of {w.shape[2]}x{w.shape[3]} over {w.shape[1]} channel(s)")
    return _save(fig, path)


def plot_class_weights(W, path, image_shape=(28, 28), class_names=None):
    """Column k of a Dense weight (in, classes) drawn as an image per class: the weights of a
    logistic regression, or of an MLP's last layer when its input size fits ``image_shape``.
    ``W`` may be a model: its last Dense-like layer is used."""
    w = _weights(W, 2, -1, "plot_class_weights")
    size = int(np.prod(image_shape))
    if w.shape[0] != size:
        raise ShapeError(f"plot_class_weights: the weight has {w.shape[0]} inputs, which do not "
                         f"form an image of shape {tuple(image_shape)} ({size} pixels)")
    k = w.shape[1]
    fig = _figure("weights")
    cols = min(k, 5)
    rows = math.ceil(k / cols)
    limit = np.abs(w).max() or 1.0
    for j in range(k):
        ax = fig.add_subplot(rows, cols, j + 1)
        image = ax.imshow(w[:, j].reshape(image_shape), cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(str(class_names[j]) if class_names is not None else f"class {j}", fontsize=9)
        ax.axis("off")
    fig.colorbar(image, ax=fig.axes, fraction=0.02, pad=0.02)
    return _save(fig, path)


__all__ = ["DPI", "SIZES", "plot_history", "plot_confusion_matrix", "plot_misclassified",
           "plot_mistakes", "plot_conv_filters", "plot_class_weights"]
