"""Reader for the BINARY release of CIFAR-10 (cifar-10-binary.tar.gz), never the pickle one.

Each batch file is a run of 3073-byte records: one label byte, then 1024 red, 1024 green and
1024 blue pixel bytes (row-major 32x32), which is already the NCHW layout.
"""
import os
import tarfile
import zlib

import numpy as np

from ..errors import DataError
from .sources import CIFAR_FOLDER, CIFAR_TAR, CIFAR_TEST, CIFAR_TRAIN

RECORD = 1 + 3 * 32 * 32
MAX_BATCH_BYTES = 64 * 1024 * 1024  # a real batch is 30,730,000 bytes


def parse_batch(data, where):
    """Bytes of one batch file -> (images uint8 (N, 3, 32, 32), labels int64 (N,))."""
    if len(data) == 0 or len(data) % RECORD:
        raise DataError(f"{where}: {len(data)} bytes is not a whole number of {RECORD}-byte "
                        "CIFAR-10 records (1 label byte + 3072 pixel bytes)")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataError(f"{where}: label {int(labels.max())} out of range 0..9")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def _join(parts):
    images, labels = zip(*parts)
    return np.concatenate(images), np.concatenate(labels)


def _check_size(size, where):
    if size > MAX_BATCH_BYTES:
        raise DataError(f"{where}: {size} bytes is far larger than a CIFAR-10 batch "
                        f"(30,730,000 bytes); refusing to read it")


def _batches(split):
    """The batch files of ``split`` (None: both, "train" or "test")."""
    return {None: CIFAR_TRAIN + CIFAR_TEST, "train": CIFAR_TRAIN, "test": CIFAR_TEST}[split]


def _pairs(split, one):
    """((x_train, y_train), (x_test, y_test)), or the one pair of ``split``, from ``one(name)``."""
    if split is not None:
        return _join([one(n) for n in _batches(split)])
    return _join([one(n) for n in CIFAR_TRAIN]), _join([one(n) for n in CIFAR_TEST])


def read_tar(path, split=None):
    """((x_train, y_train), (x_test, y_test)) from cifar-10-binary.tar.gz, read in memory; with
    ``split`` ("train" or "test") only that pair, and only its batches are read."""
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
            parts = {}
            for name in _batches(split):
                if name not in members:
                    raise DataError(f"{path}: no {name} inside the archive; expected "
                                    f"{CIFAR_FOLDER}/ with {', '.join(CIFAR_TRAIN + CIFAR_TEST)}")
                where = f"{path}:{members[name].name}"
                _check_size(members[name].size, where)
                parts[name] = parse_batch(tar.extractfile(members[name]).read(), where)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{path}: not a readable CIFAR-10 binary tar (truncated or corrupt?): "
                        f"{exc}") from exc
    return _pairs(split, parts.__getitem__)


def read_folder(folder, split=None):
    """The same from an extracted ``cifar-10-batches-bin/`` folder."""
    def one(name):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise DataError(f"{folder}: missing {name}")
        _check_size(os.path.getsize(path), path)
        with open(path, "rb") as f:
            return parse_batch(f.read(), path)
    return _pairs(split, one)


def find(folder, split=None):
    """The tar or batch folder for CIFAR-10 inside ``folder`` (a folder needs the batches of
    ``split``: None for both), or None."""
    tar = os.path.join(folder, CIFAR_TAR)
    if os.path.isfile(tar):
        return tar
    for cand in (os.path.join(folder, CIFAR_FOLDER), folder):
        if all(os.path.isfile(os.path.join(cand, n)) for n in _batches(split)):
            return cand
    return None


def read(path, split=None):
    return read_folder(path, split) if os.path.isdir(path) else read_tar(path, split)
