"""Datasets as host NumPy arrays: MNIST, Fashion-MNIST and CIFAR-10 (binary release).

    (x_train, y_train), (x_test, y_test) = xpnet.datasets.load("mnist")

Images are uint8 NCHW, labels int64. A ``data_dir`` argument is the one place looked in (the
folder itself, then ``data_dir/<name>/``): when it does not exist or holds no complete copy of the
dataset, that is an error naming what was looked for (never a silent fallback). Without it, files
are looked for, in order, in ``$XPNET_DATA/<name>/``, the repository's ``data/<name>/``,
``~/.cache/xpnet/<name>/`` and ``/usr/share/datasets/<name>/``; if none holds them and
``download`` is true they are downloaded into ``~/.cache/xpnet/<name>/`` and checked against the
md5 of the published file.

Local files are always checked for structure (IDX header against payload size, record sizes,
label range, image sizes, matching counts). Their md5 is checked only with ``verify=True``,
against the md5 of the UNCOMPRESSED content, so re-gzipped copies (such as Debian's
dataset-fashion-mnist) are accepted. A CIFAR-10 tar is verified by its own md5; an extracted
``cifar-10-batches-bin/`` folder only by structure.
"""
import os

import numpy as np

from ..errors import ConfigError, DataError
from . import cifar
from .download import fetch_from_mirrors, md5_file
from .idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from .sources import ALIASES, DATASETS
from .utils import one_hot, to_float, train_val_split

REPO_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "data")
SYSTEM_DATA = "/usr/share/datasets"


def _canonical(name):
    key = ALIASES.get(str(name).lower())
    if key is None:
        raise ConfigError(f"unknown dataset {name!r}; expected one of: {', '.join(DATASETS)}")
    return key


def info(name):
    """Facts about a dataset: classes, class names, image shape, split sizes, files, licence."""
    key = _canonical(name)
    spec = DATASETS[key]
    return {"name": key, "classes": len(spec["class_names"]),
            "class_names": list(spec["class_names"]), "image_shape": spec["image_shape"],
            "train_size": spec["sizes"][0], "test_size": spec["sizes"][1],
            "files": list(spec["files"]), "license": spec["license"]}


def cache_dir(name):
    return os.path.join(os.path.expanduser("~"), ".cache", "xpnet", name)


def search_places(name, data_dir=None):
    """[(label, folder or None)] in search order; None marks a place that does not apply."""
    key = _canonical(name)
    env = os.environ.get("XPNET_DATA")
    places = []
    if data_dir is not None:
        data_dir = os.fspath(data_dir)
        places += [("data_dir", data_dir), ("data_dir", os.path.join(data_dir, key))]
    else:
        places.append(("data_dir (not given)", None))
    places.append((f"$XPNET_DATA/{key}", os.path.join(env, key) if env else None))
    places += [("repository data/", os.path.join(REPO_DATA, key)),
               ("cache", cache_dir(key)),
               ("system", os.path.join(SYSTEM_DATA, key))]
    return places


def _idx_path(folder, filename):
    for cand in (filename, filename[:-3]):
        path = os.path.join(folder, cand)
        if os.path.isfile(path):
            return path
    return None


SPLITS = ("train", "test")
_IDX_PREFIX = {"train": "train-", "test": "t10k-"}


def _check_split(split):
    if split is not None and split not in SPLITS:
        raise ConfigError(f"split must be None (both), 'train' or 'test', got {split!r}")


def _files(key, split=None):
    """The dataset's files that ``split`` needs (None: both splits; a CIFAR-10 tar holds both)."""
    files = DATASETS[key]["files"]
    if split is None or DATASETS[key]["format"] == "cifar":
        return list(files)
    return [f for f in files if f.startswith(_IDX_PREFIX[split])]


def _locate(key, folder, split=None):
    """The dataset's paths inside ``folder`` (dict), or None if anything ``split`` needs is missing."""
    if folder is None or not os.path.isdir(folder):
        return None
    if DATASETS[key]["format"] == "cifar":
        found = cifar.find(folder, split)
        return {"cifar": found} if found else None
    paths = {f: _idx_path(folder, f) for f in _files(key, split)}
    return None if None in paths.values() else paths


def _not_found(key, places, download, failure=None, split=None):
    lines = [f"{key}: dataset files not found. Expected {_wanted(key, split)} in one of:"]
    for label, folder in places:
        if folder is None:
            lines.append(f"  {label}: " + ("XPNET_DATA not set" if "XPNET" in label else "-"))
        else:
            state = "incomplete" if os.path.isdir(folder) else "no such folder"
            lines.append(f"  {label}: {folder} ({state})")
    if failure is not None:
        lines.append(f"Download into {cache_dir(key)} failed: {failure}")
    elif not download:
        lines.append("Downloading is off (download=False); put the files in one of these "
                     "folders or set XPNET_DATA.")
    return DataError("\n".join(lines))


def _download(key, split=None):
    spec = DATASETS[key]
    folder = cache_dir(key)
    for filename in _files(key, split):
        dest = os.path.join(folder, filename)
        if not os.path.isfile(dest):
            fetch_from_mirrors(spec["mirrors"], filename, dest, spec["md5"][filename])
    return _locate(key, folder, split)


def _wanted(key, split=None):
    files = _files(key, split)
    if DATASETS[key]["format"] == "cifar":
        return (f"{files[0]} or a {cifar.CIFAR_FOLDER}/ folder with "
                + ", ".join(cifar._batches(split)))
    return ", ".join(files) + " (gzip, or uncompressed without .gz)"


def _folder_state(key, folder, split=None):
    if not os.path.isdir(folder):
        return "no such folder" if not os.path.exists(folder) else "not a folder"
    if DATASETS[key]["format"] == "cifar":
        return "incomplete" if os.listdir(folder) else "empty"
    files = _files(key, split)
    missing = [f for f in files if _idx_path(folder, f) is None]
    if len(missing) == len(files):
        return "none of the files"
    return "missing " + ", ".join(missing)


def _find_in_data_dir(key, data_dir, split=None):
    folders = [folder for _, folder in search_places(key, data_dir)[:2]]
    for folder in folders:
        paths = _locate(key, folder, split)
        if paths:
            return paths
    where = "; ".join(f"{folder} ({_folder_state(key, folder, split)})" for folder in folders)
    raise DataError(f"{key}: the data directory {os.fspath(data_dir)} holds no {key} dataset. "
                    f"Expected {_wanted(key, split)} in {where}. Leave the data directory out to "
                    "use the bundled or cached copy (or to download it)")


def find(name, data_dir=None, download=True, split=None):
    """Where the dataset's files are: a dict of paths (downloading them if allowed).
    With ``data_dir`` only that folder (and its ``<name>/`` subfolder) is looked in. With
    ``split`` ("train" or "test") only the files of that split are needed (and downloaded)."""
    key = _canonical(name)
    _check_split(split)
    if data_dir is not None:
        return _find_in_data_dir(key, data_dir, split)
    places = search_places(key, data_dir)
    for _, folder in places:
        paths = _locate(key, folder, split)
        if paths:
            _note_missing_env(key, folder)
            return paths
    if not download:
        raise _not_found(key, places, download, split=split)
    _note_missing_env(key, cache_dir(key))
    try:
        paths = _download(key, split)
    except DataError as exc:
        raise _not_found(key, places, download, failure=exc, split=split) from exc
    if not paths:
        raise _not_found(key, places, download, failure="files missing after download", split=split)
    return paths


_NOTED = set()


def _note_missing_env(key, folder):
    """One line on stderr (once per folder) when $XPNET_DATA is set but does not exist and the
    data comes from ``folder`` instead: a typo there would otherwise go unnoticed. Quiet when
    XPNET_DATA is unset or exists."""
    env = os.environ.get("XPNET_DATA")
    if not env or os.path.isdir(env) or (env, folder) in _NOTED:
        return
    _NOTED.add((env, folder))
    import sys
    print(f"xpnet: note: $XPNET_DATA ({env}) does not exist; {key} is read from {folder} instead",
          file=sys.stderr)


def _verify(key, paths):
    spec = DATASETS[key]
    for filename, path in paths.items():
        if filename == "cifar":
            if os.path.isdir(path):
                continue  # no published md5 for the extracted batches: structure only
            expected, actual = spec["md5"][cifar.CIFAR_TAR], md5_file(path)
        else:
            expected, actual = spec["raw_md5"][filename], md5_file(path, uncompressed=True)
        if actual != expected:
            raise DataError(f"{path}: md5 of the content is {actual}, expected {expected} "
                            f"for {key} {filename}")


def _read_idx_pair(key, images_path, labels_path):
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"{key}: {images_path} holds {len(images)} images but {labels_path} "
                        f"holds {len(labels)} labels")
    c, h, w = DATASETS[key]["image_shape"]
    if images.shape[1:] != (h, w):
        raise DataError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, "
                        f"expected {h}x{w} for {key}")
    return images.reshape(len(images), c, h, w), labels.astype(np.int64)


def load(name, data_dir=None, download=True, verify=False, split=None):
    """((x_train, y_train), (x_test, y_test)) as host arrays: uint8 NCHW images, int64 labels.
    With ``split="test"`` (or ``"train"``) only that pair, (x, y): only its files are looked for,
    read and checked (``xpnet evaluate`` needs no training images)."""
    key = _canonical(name)
    _check_split(split)
    paths = find(key, data_dir, download, split)
    if verify:
        _verify(key, paths)
    parts = list(SPLITS) if split is None else [split]
    if DATASETS[key]["format"] == "cifar":
        pairs = cifar.read(paths["cifar"], split)
        pairs = list(pairs) if split is None else [pairs]
    else:
        pairs = [_read_idx_pair(key, paths[f"{_IDX_PREFIX[part]}images-idx3-ubyte.gz"],
                                paths[f"{_IDX_PREFIX[part]}labels-idx1-ubyte.gz"])
                 for part in parts]
    classes = len(DATASETS[key]["class_names"])
    for part, (_, y) in zip(parts, pairs):
        if len(y) and y.max() >= classes:
            raise DataError(f"{key} {part}: label {int(y.max())} out of range 0..{classes - 1}")
    return tuple(pairs) if split is None else pairs[0]


__all__ = ["load", "info", "find", "search_places", "cache_dir", "train_val_split", "one_hot",
           "to_float", "read_idx", "DATASETS"]
