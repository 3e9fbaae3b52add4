"""Host-side helpers for datasets: validation splits, one-hot labels, uint8 -> float."""
import numpy as np

from ..errors import ConfigError, DataError


def train_val_split(x, y, fraction=0.1, seed=0, stratify=False):
    """Split off a random ``fraction`` of (x, y) for validation: ((x_tr, y_tr), (x_val, y_val)).

    With ``stratify`` each class gives the same share (rounded per class). Both parts keep the
    original order of their samples.
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise DataError(f"train_val_split: {len(x)} samples but {len(y)} labels")
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"train_val_split: fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    n = len(y)
    if stratify:
        if y.ndim != 1:
            raise DataError(f"train_val_split: stratify needs integer class labels of shape (N,), "
                            f"got shape {y.shape}")
        val = []
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            val.append(rng.permutation(idx)[:int(round(fraction * len(idx)))])
        val = np.concatenate(val)
    else:
        val = rng.permutation(n)[:int(round(fraction * n))]
    if len(val) == 0 or len(val) == n:
        raise ConfigError(f"train_val_split: fraction {fraction} of {n} samples leaves "
                          f"{len(val)} for validation and {n - len(val)} for training")
    mask = np.zeros(n, dtype=bool)
    mask[val] = True
    return (x[~mask], y[~mask]), (x[mask], y[mask])


def one_hot(labels, classes, dtype="float32"):
    """Integer labels (N,) -> (N, classes) rows with a single 1."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"one_hot: expected integer labels of shape (N,), got {labels.dtype} "
                        f"{labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(f"one_hot: labels must lie in 0..{classes - 1}, found "
                        f"{labels.min()}..{labels.max()}")
    out = np.zeros((len(labels), classes), dtype=dtype)
    out[np.arange(len(labels)), labels] = 1
    return out


def to_float(x, dtype="float32"):
    """uint8 images -> floats in [0, 1]."""
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise DataError(f"to_float: expected uint8 images, got {x.dtype}")
    return x.astype(dtype) / np.asarray(255, dtype=dtype)
