"""Dataset files: IDX and CIFAR-10 parsing, search order, downloads, split/one-hot helpers.

Everything runs on tiny files crafted in tmp_path; nothing touches the network.
"""
import gzip
import hashlib
import io
import os
import struct
import tarfile

import numpy as np
import pytest

import xpnet.datasets as ds
from xpnet.datasets import cifar, download, idx
from xpnet.errors import ConfigError, DataError

IDX_FILES = ds.DATASETS["mnist"]["files"]


def idx_bytes(array, magic=None):
    array = np.asarray(array, dtype=np.uint8)
    magic = magic if magic is not None else 0x0800 + array.ndim
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write(path, data, gz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_mnist(folder, n_train=5, n_test=3, label_offset=0, gz=True):
    """Four tiny MNIST-shaped IDX files; labels start at ``label_offset`` to tell copies apart."""
    rng = np.random.default_rng(label_offset)
    parts = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) + label_offset) % 10
        parts[prefix] = (images, labels)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte.gz" if gz else f"{prefix}-{kind}-ubyte"
            write(folder / name, idx_bytes(arr), gz=gz)
    return parts


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No XPNET_DATA, an empty repository data/ and system folder, a private HOME."""
    monkeypatch.delenv("XPNET_DATA", raising=False)
    monkeypatch.setattr(ds, "REPO_DATA", str(tmp_path / "repo_data"))
    monkeypatch.setattr(ds, "SYSTEM_DATA", str(tmp_path / "system"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


# -- IDX --------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_idx_reads_raw_and_gzip(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write(tmp_path / "x.idx", idx_bytes(images), gz=gz)
    out = idx.read_idx(path, idx.IMAGES_MAGIC)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, images)
    labels = write(tmp_path / "y.idx", idx_bytes([3, 1, 4, 1, 5]), gz=gz)
    np.testing.assert_array_equal(idx.read_idx(labels, idx.LABELS_MAGIC), [3, 1, 4, 1, 5])


def test_idx_wrong_magic(tmp_path):
    path = write(tmp_path / "labels.idx", idx_bytes([1, 2, 3]))
    with pytest.raises(DataError, match=r"magic number 0x00000801, expected 0x00000803"):
        idx.read_idx(path, idx.IMAGES_MAGIC)
    bad = write(tmp_path / "float.idx", struct.pack(">I", 0x00000D01) + struct.pack(">I", 1) + b"\0" * 4)
    with pytest.raises(DataError, match="not an unsigned-byte IDX file"):
        idx.read_idx(bad)


def test_idx_truncated_payload(tmp_path):
    data = idx_bytes(np.zeros((4, 5, 5)))
    path = write(tmp_path / "short.idx", data[:-7])
    with pytest.raises(DataError, match=r"short\.idx: truncated payload.*need 100 bytes.*holds 93"):
        idx.read_idx(path, idx.IMAGES_MAGIC)
    head = write(tmp_path / "head.idx", data[:6])
    with pytest.raises(DataError, match="truncated IDX dimensions"):
        idx.read_idx(head)


def test_idx_truncated_gzip(tmp_path):
    blob = gzip.compress(idx_bytes(np.random.default_rng(0).integers(0, 255, (50, 28, 28))))
    path = tmp_path / "cut.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"cut\.gz: gzip stream breaks off .*\(50, 28, 28\) need 39200 bytes"):
        idx.read_idx(path, idx.IMAGES_MAGIC)
    path.write_bytes(blob[:12])
    with pytest.raises(DataError, match=r"cut\.gz: corrupt or truncated gzip stream .*IDX header was expected"):
        idx.read_idx(path, idx.IMAGES_MAGIC)


def test_idx_header_larger_or_smaller_than_payload(tmp_path):
    data = idx_bytes(np.zeros((3, 2, 2)))
    extra = write(tmp_path / "extra.idx", data + b"\x01\x02")
    with pytest.raises(DataError, match=r"more data than the header dimensions \(3, 2, 2\)"):
        idx.read_idx(extra)
    # header claims 5 images but the payload holds 3
    lie = write(tmp_path / "lie.gz", struct.pack(">4I", 0x803, 5, 2, 2) + bytes(12), gz=True)
    with pytest.raises(DataError, match=r"lie\.gz: truncated payload.*need 20 bytes.*holds 12"):
        idx.read_idx(lie)


def test_idx_absurd_dimensions_refused_before_allocation(tmp_path, monkeypatch):
    path = write(tmp_path / "huge.gz", struct.pack(">4I", 0x803, 2 ** 31, 28, 28) + bytes(64), gz=True)

    def no_alloc(*a, **k):
        raise AssertionError("allocated before checking the header")

    monkeypatch.setattr(idx, "np", type("np", (), {"empty": staticmethod(no_alloc)}))
    with pytest.raises(DataError, match=r"\(2147483648, 28, 28\) declare 1683627180032 bytes"):
        idx.read_idx(path, idx.IMAGES_MAGIC)
    zero = write(tmp_path / "zero.idx", struct.pack(">2I", 0x801, 0))
    with pytest.raises(DataError, match="hold no data"):
        idx.read_idx(zero)


def test_images_labels_count_mismatch(isolated):
    folder = isolated / "d"
    make_mnist(folder)
    write(folder / "train-labels-idx1-ubyte.gz", idx_bytes(np.arange(4) % 10), gz=True)
    with pytest.raises(DataError, match=r"holds 5 images but .*train-labels-idx1-ubyte\.gz holds 4 labels"):
        ds.load("mnist", data_dir=folder, download=False)


def test_wrong_image_size_and_label_range(isolated):
    folder = isolated / "d"
    make_mnist(folder)
    write(folder / "t10k-images-idx3-ubyte.gz", idx_bytes(np.zeros((3, 27, 28))), gz=True)
    with pytest.raises(DataError, match="images are 27x28, expected 28x28"):
        ds.load("mnist", data_dir=folder, download=False)
    make_mnist(folder)
    write(folder / "t10k-labels-idx1-ubyte.gz", idx_bytes([1, 12, 3]), gz=True)
    with pytest.raises(DataError, match=r"mnist test: label 12 out of range 0\.\.9"):
        ds.load("mnist", data_dir=folder, download=False)


# -- loading and the search order ----------------------------------------------------------------
def test_load_shapes_and_dtypes(isolated):
    parts = make_mnist(isolated / "d", gz=False)  # uncompressed names are accepted too
    (x, y), (xt, yt) = ds.load("mnist", data_dir=isolated / "d", download=False)
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.uint8
    assert xt.shape == (3, 1, 28, 28) and y.dtype == np.int64 and yt.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0], parts["train"][0])
    np.testing.assert_array_equal(yt, parts["t10k"][1])


def test_search_order(isolated, monkeypatch):
    make_mnist(isolated / "arg", label_offset=1)
    make_mnist(isolated / "env" / "fashion-mnist", label_offset=2)
    make_mnist(isolated / "repo_data" / "fashion-mnist", label_offset=3)
    make_mnist(isolated / "home" / ".cache" / "xpnet" / "fashion-mnist", label_offset=4)
    make_mnist(isolated / "system" / "fashion-mnist", label_offset=5)
    monkeypatch.setenv("XPNET_DATA", str(isolated / "env"))

    def first_label(**kw):
        return int(ds.load("fashion-mnist", download=False, **kw)[0][1][0])

    assert first_label(data_dir=isolated / "arg") == 1
    assert first_label() == 2
    monkeypatch.delenv("XPNET_DATA")
    assert first_label() == 3
    (isolated / "repo_data" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()  # incomplete
    assert first_label() == 4
    for f in (isolated / "home" / ".cache" / "xpnet" / "fashion-mnist").iterdir():
        f.unlink()
    assert first_label() == 5
    # data_dir may also be the parent of a <name>/ folder
    make_mnist(isolated / "parent" / "fashion-mnist", label_offset=6)
    assert first_label(data_dir=isolated / "parent") == 6


def test_not_found_lists_every_place_and_file(isolated, monkeypatch):
    monkeypatch.setenv("XPNET_DATA", str(isolated / "env"))
    with pytest.raises(DataError) as err:
        ds.load("fashion-mnist", download=False)
    msg = str(err.value)
    for expected in [str(isolated / "env" / "fashion-mnist"),
                     str(isolated / "repo_data" / "fashion-mnist"),
                     str(isolated / "home" / ".cache" / "xpnet" / "fashion-mnist"),
                     str(isolated / "system" / "fashion-mnist"), "download=False", *IDX_FILES]:
        assert expected in msg, f"{expected!r} missing from: {msg}"


def test_a_data_dir_is_used_alone_never_a_silent_fallback(isolated, monkeypatch):
    """A data_dir that does not exist, or holds no complete dataset, is an error naming what was
    looked for, even when another copy (here $XPNET_DATA's) would have been found."""
    make_mnist(isolated / "env" / "mnist")
    monkeypatch.setenv("XPNET_DATA", str(isolated / "env"))
    assert len(ds.load("mnist", download=False)[0][1]) == 5  # the fallback copy exists
    missing = isolated / "nonexistent"
    with pytest.raises(DataError) as err:
        ds.load("mnist", data_dir=missing)
    msg = str(err.value)
    assert f"the data directory {missing} holds no mnist dataset" in msg
    assert f"{missing} (no such folder)" in msg and f"{missing / 'mnist'} (no such folder)" in msg
    assert all(f in msg for f in IDX_FILES)
    (isolated / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty \(none of the files\)"):
        ds.load("mnist", data_dir=isolated / "empty")
    make_mnist(isolated / "half")
    (isolated / "half" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"half \(missing t10k-labels-idx1-ubyte\.gz\)"):
        ds.load("mnist", data_dir=isolated / "half")
    with pytest.raises(DataError, match=r"cifar-10-binary\.tar\.gz or a cifar-10-batches-bin/"):
        ds.load("cifar10", data_dir=isolated / "empty")


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="unknown dataset 'svhn'.*mnist, fashion-mnist, cifar10"):
        ds.load("svhn")
    assert ds.info("Fashion_MNIST")["class_names"][9] == "Ankle boot"
    assert ds.info("cifar-10")["image_shape"] == (3, 32, 32)


def test_verify_checks_uncompressed_md5(isolated):
    make_mnist(isolated / "d")
    with pytest.raises(DataError, match=r"md5 of the content is [0-9a-f]{32}, expected 6bbc9ace898e"):
        ds.load("mnist", data_dir=isolated / "d", download=False, verify=True)


# -- downloads --------------------------------------------------------------------------------
def md5(data):
    return hashlib.md5(data).hexdigest()


def serve_mnist(isolated, monkeypatch):
    """Crafted files behind a file:// mirror, with the md5 table pointing at them."""
    served = isolated / "mirror"
    make_mnist(served)
    table = {f: md5((served / f).read_bytes()) for f in IDX_FILES}
    monkeypatch.setitem(ds.DATASETS["mnist"], "mirrors", ["file://" + str(isolated / "down") + "/",
                                                          served.as_uri() + "/"])
    monkeypatch.setitem(ds.DATASETS["mnist"], "md5", table)
    monkeypatch.setattr(ds, "REPO_DATA", str(isolated / "nothing"))
    return served


def test_download_via_part_file_and_rename(isolated, monkeypatch):
    served = serve_mnist(isolated, monkeypatch)
    (x, y), _ = ds.load("mnist")
    cache = isolated / "home" / ".cache" / "xpnet" / "mnist"
    assert sorted(os.listdir(cache)) == sorted(IDX_FILES)  # renamed, no .part left
    for f in IDX_FILES:
        assert (cache / f).read_bytes() == (served / f).read_bytes()
    assert x.shape == (5, 1, 28, 28)
    # a second load finds the cache and does not download
    monkeypatch.setattr(download, "urlopen", lambda *a, **k: pytest.fail("downloaded again"))
    ds.load("mnist")


def test_download_md5_mismatch_deletes_part(isolated, monkeypatch):
    served = serve_mnist(isolated, monkeypatch)
    wrong = "0" * 32
    monkeypatch.setitem(ds.DATASETS["mnist"]["md5"], "train-images-idx3-ubyte.gz", wrong)
    actual = md5((served / "train-images-idx3-ubyte.gz").read_bytes())
    with pytest.raises(DataError) as err:
        ds.load("mnist")
    assert f"expected {wrong}, got {actual}" in str(err.value)
    assert "dataset files not found" in str(err.value)
    cache = isolated / "home" / ".cache" / "xpnet" / "mnist"
    assert not any(name.endswith(".part") for name in os.listdir(cache))
    assert "train-images-idx3-ubyte.gz" not in os.listdir(cache)


def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch):
    class Broken(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > 0:
                raise TimeoutError("timed out")
            return super().read(4)

    seen = {}

    def opener(url, timeout):
        seen["timeout"] = timeout
        return Broken(b"0123456789")

    monkeypatch.setattr(download, "urlopen", opener)
    dest = str(tmp_path / "f.bin")
    with pytest.raises(DataError, match=r"could not download f\.bin:\n  http://a/f\.bin: timed out"):
        download.fetch_from_mirrors(["http://a/"], "f.bin", dest, md5(b"0123456789"))
    assert os.listdir(tmp_path) == [] and seen["timeout"] == download.TIMEOUT


# -- CIFAR-10 ---------------------------------------------------------------------------------
def cifar_batches(n=2):
    rng = np.random.default_rng(7)
    batches = {}
    for i, name in enumerate(cifar.CIFAR_TRAIN + cifar.CIFAR_TEST):
        labels = (np.arange(n) + i) % 10
        pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        batches[name] = (np.concatenate([labels[:, None].astype(np.uint8), pixels], 1).tobytes(),
                         labels, pixels.reshape(n, 3, 32, 32))
    return batches


def make_cifar_tar(path, batches):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, (data, _, _) in batches.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_cifar_from_tar_and_folder(isolated):
    batches = cifar_batches()
    make_cifar_tar(isolated / "t" / "cifar-10-binary.tar.gz", batches)
    (x, y), (xt, yt) = ds.load("cifar10", data_dir=isolated / "t", download=False)
    assert x.shape == (10, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64
    assert xt.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(x[2:4], batches["data_batch_2.bin"][2])  # R, G, B planes
    np.testing.assert_array_equal(y, np.concatenate([batches[n][1] for n in cifar.CIFAR_TRAIN]))
    np.testing.assert_array_equal(yt, batches["test_batch.bin"][1])
    folder = isolated / "f" / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, (data, _, _) in batches.items():
        (folder / name).write_bytes(data)
    (x2, y2), (xt2, _) = ds.load("cifar10", data_dir=isolated / "f", download=False)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(xt2, xt)


def test_cifar_bad_files(isolated):
    batches = cifar_batches()
    data, labels, _ = batches["data_batch_3.bin"]
    batches["data_batch_3.bin"] = (data[:-10], labels, None)
    make_cifar_tar(isolated / "a" / "cifar-10-binary.tar.gz", batches)
    with pytest.raises(DataError, match=r"data_batch_3\.bin: 6136 bytes is not a whole number of 3073-byte"):
        ds.load("cifar10", data_dir=isolated / "a", download=False)
    batches = cifar_batches()
    del batches["test_batch.bin"]
    make_cifar_tar(isolated / "b" / "cifar-10-binary.tar.gz", batches)
    with pytest.raises(DataError, match=r"no test_batch\.bin inside the archive"):
        ds.load("cifar10", data_dir=isolated / "b", download=False)
    blob = (isolated / "b" / "cifar-10-binary.tar.gz").read_bytes()
    write(isolated / "c" / "cifar-10-binary.tar.gz", blob[: len(blob) // 2])
    with pytest.raises(DataError, match="not a readable CIFAR-10 binary tar"):
        ds.load("cifar10", data_dir=isolated / "c", download=False)
    with pytest.raises(DataError, match="label 200 out of range"):
        cifar.parse_batch(bytes([200]) + bytes(3072), "x")
    with pytest.raises(DataError, match=r"md5 of the content is [0-9a-f]{32}, expected c32a1d4ab5d0"):
        make_cifar_tar(isolated / "d" / "cifar-10-binary.tar.gz", cifar_batches())
        ds.load("cifar10", data_dir=isolated / "d", download=False, verify=True)


# -- helpers ----------------------------------------------------------------------------------
def test_train_val_split():
    x = np.arange(200).reshape(100, 2)
    y = np.repeat(np.arange(4), [10, 20, 30, 40])
    (xtr, ytr), (xv, yv) = ds.train_val_split(x, y, fraction=0.2, seed=3)
    assert len(xv) == 20 and len(xtr) == 80
    assert sorted(np.concatenate([xtr[:, 0], xv[:, 0]]).tolist()) == list(range(0, 200, 2))
    np.testing.assert_array_equal(ytr, y[xtr[:, 0] // 2])  # pairs stay aligned
    (_, _), (xv2, _) = ds.train_val_split(x, y, fraction=0.2, seed=3)
    np.testing.assert_array_equal(xv, xv2)
    (_, _), (xv3, _) = ds.train_val_split(x, y, fraction=0.2, seed=4)
    assert not np.array_equal(xv, xv3)
    (_, _), (_, yvs) = ds.train_val_split(x, y, fraction=0.2, stratify=True)
    assert np.bincount(yvs).tolist() == [2, 4, 6, 8]
    with pytest.raises(ConfigError, match=r"fraction must be in \(0, 1\), got 1\.5"):
        ds.train_val_split(x, y, fraction=1.5)
    with pytest.raises(ConfigError, match="leaves 0 for validation"):
        ds.train_val_split(x, y, fraction=0.001)
    with pytest.raises(DataError, match="100 samples but 99 labels"):
        ds.train_val_split(x, y[:-1])


def test_one_hot_and_to_float():
    out = ds.one_hot(np.array([2, 0, 1]), 3)
    np.testing.assert_array_equal(out, [[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    assert out.dtype == np.float32
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.2, found 0\.\.3"):
        ds.one_hot(np.array([0, 3]), 3)
    with pytest.raises(DataError, match="expected integer labels"):
        ds.one_hot(np.array([0.5]), 3)
    f = ds.to_float(np.array([0, 51, 255], dtype=np.uint8))
    assert f.dtype == np.float32
    np.testing.assert_allclose(f, [0.0, 0.2, 1.0], rtol=1e-7)
    with pytest.raises(DataError, match="expected uint8 images, got float64"):
        ds.to_float(np.zeros(3))


def test_load_one_split_needs_reads_and_checks_only_its_files(isolated, monkeypatch):
    """split="test" (what xpnet evaluate loads) or "train": only that split's files are looked
    for, downloaded and read; without split the behaviour is unchanged."""
    folder = isolated / "d"
    parts = make_mnist(folder)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (folder / name).unlink()
    x, y = ds.load("mnist", data_dir=folder, download=False, split="test")
    assert x.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(y, parts["t10k"][1])
    with pytest.raises(DataError, match=r"missing train-images-idx3-ubyte\.gz, train-labels"):
        ds.load("mnist", data_dir=folder, download=False)
    with pytest.raises(DataError, match=r"Expected train-images-idx3-ubyte\.gz, train-labels-idx1-ubyte\.gz "
                                        r"\(gzip, .*/d \(none of the files\)"):
        ds.load("mnist", data_dir=folder, download=False, split="train")
    write(folder / "train-images-idx3-ubyte.gz", b"\x1f\x8b\x08")   # truncated: the test split loads
    write(folder / "train-labels-idx1-ubyte.gz", b"")
    assert len(ds.load("mnist", data_dir=folder, split="test")[1]) == 3
    with pytest.raises(DataError):
        ds.load("mnist", data_dir=folder, split="train")
    # a download fetches only the split's files
    fetched = []
    monkeypatch.setattr(ds, "fetch_from_mirrors", lambda mirrors, name, dest, md5: fetched.append(name))
    with pytest.raises(DataError, match="files missing after download"):
        ds.load("fashion-mnist", split="test")
    assert fetched == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    with pytest.raises(ConfigError, match="split must be None"):
        ds.load("mnist", data_dir=folder, split="val")


def test_cifar_test_split_reads_only_the_test_batch(isolated):
    batches = cifar_batches()
    folder = isolated / "f" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    (folder / "test_batch.bin").write_bytes(batches["test_batch.bin"][0])
    xt, yt = ds.load("cifar10", data_dir=isolated / "f", download=False, split="test")
    assert xt.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(yt, batches["test_batch.bin"][1])
    with pytest.raises(DataError, match="data_batch_1.bin"):
        ds.load("cifar10", data_dir=isolated / "f", download=False)
    del batches["data_batch_2.bin"]   # a tar without a training batch: the test split still reads
    make_cifar_tar(isolated / "t" / "cifar-10-binary.tar.gz", batches)
    assert len(ds.load("cifar10", data_dir=isolated / "t", split="test")[1]) == 2
    with pytest.raises(DataError, match=r"no data_batch_2\.bin inside the archive"):
        ds.load("cifar10", data_dir=isolated / "t")


def test_a_missing_xpnet_data_is_noted_once_when_the_data_comes_from_elsewhere(isolated, monkeypatch,
                                                                              capsys):
    """XPNET_DATA=/nonexistent silently used the repository's copy: now one line on stderr says
    so; nothing when XPNET_DATA is unset, or exists."""
    monkeypatch.setattr(ds, "_NOTED", set(), raising=False)
    make_mnist(isolated / "repo_data" / "mnist")
    assert len(ds.load("mnist", download=False)[1][1]) == 3
    assert capsys.readouterr().err == ""
    missing = isolated / "nonexistent"
    monkeypatch.setenv("XPNET_DATA", str(missing))
    ds.load("mnist", download=False)
    ds.load("mnist", download=False)
    assert capsys.readouterr().err == (f"xpnet: note: $XPNET_DATA ({missing}) does not exist; mnist is "
                                       f"read from {isolated / 'repo_data' / 'mnist'} instead\n")
    (isolated / "env").mkdir()
    monkeypatch.setenv("XPNET_DATA", str(isolated / "env"))   # exists, without mnist: no note
    ds.load("mnist", download=False)
    assert capsys.readouterr().err == ""
