"""The real datasets: MNIST from the repository's data/mnist, Fashion-MNIST from $XPNET_DATA."""
import hashlib
import os

import numpy as np
import pytest

import xpnet.datasets as ds

MNIST_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def digests(*arrays):
    """The first 16 hex digits of each array's sha256 (of its values in C order): verify=True pins
    the files' bytes, these pin what the reader makes of them (pixel order, label alignment)."""
    return [hashlib.sha256(a.tobytes()).hexdigest()[:16] for a in arrays]


def test_mnist_from_repository(monkeypatch):
    monkeypatch.delenv("XPNET_DATA", raising=False)  # the repository's copy comes next in line
    (x, y), (xt, yt) = ds.load("mnist", download=False, verify=True)
    assert x.shape == (60000, 1, 28, 28) and xt.shape == (10000, 1, 28, 28)
    assert x.dtype == np.uint8 and y.dtype == np.int64
    assert np.bincount(y, minlength=10).tolist() == MNIST_COUNTS
    assert abs(x.mean() - 33.318) < 5e-4
    assert np.bincount(yt, minlength=10).sum() == 10000 and yt.min() == 0 and yt.max() == 9
    assert y[:5].tolist() == [5, 0, 4, 1, 9] and yt[:5].tolist() == [7, 2, 1, 0, 4]
    assert digests(x, y, xt, yt) == ["741c988805d008ac", "e474323ac02fc156", "6d87418db22cc802",
                                     "2fd8de6bdb8d1178"]
    assert ds.find("mnist", download=False)["train-images-idx3-ubyte.gz"].startswith(ds.REPO_DATA)


def test_fashion_mnist_from_xpnet_data():
    root = os.environ.get("XPNET_DATA")
    if not root or not os.path.isdir(os.path.join(root, "fashion-mnist")):
        pytest.skip("Fashion-MNIST not found: set XPNET_DATA to a folder holding fashion-mnist/ "
                    "(CI uses ../shared/data)")
    # verify=True checks the uncompressed md5s, so Debian's re-gzipped files pass
    (x, y), (xt, yt) = ds.load("fashion-mnist", data_dir=root, download=False, verify=True)
    assert x.shape == (60000, 1, 28, 28) and xt.shape == (10000, 1, 28, 28)
    assert np.bincount(y, minlength=10).tolist() == [6000] * 10
    assert np.bincount(yt, minlength=10).tolist() == [1000] * 10
    assert 72 < x.mean() < 74
    assert digests(x, y, xt, yt) == ["2e487a6c89124f78", "e3245b63f7c40d1c", "c867c93ff9536059",
                                     "d51d859896c55775"]
