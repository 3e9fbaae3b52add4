"""Untrusted files: forged .npz members, hostile model headers, random corruption of model and
dataset files. Every one is refused with an XpnetError or (for harmless bytes) loads unchanged.

tests/test_io.py and tests/test_datasets.py already cover pickles, unknown layer types, wrong
shapes/dtypes, truncation, wrong magic and absurd IDX dimensions; this file adds the rest.
"""
import gzip
import io
import json
import struct
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

import xpnet
from xpnet.datasets import idx
from xpnet.errors import DataError, XpnetError
from xpnet.layers import Dense, ReLU
from xpnet.serialization import load_npz, save_npz_atomic

from .helpers import fuzz_settings

FUZZ = fuzz_settings(max_examples=30, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.npz"
    model = xpnet.Sequential([Dense(4), ReLU(), Dense(3)], input_shape=(5,), dtype="float64", seed=3)
    for v in model.parameters.values():   # weights the seed cannot rebuild: "unchanged" means read
        v[...] = v + 0.125
    model.save(path)
    arrays, meta = load_npz(path)
    params = {k: model.backend.to_numpy(v) for k, v in model.parameters.items()}
    return path, arrays, meta, params


def npy_member(shape, descr="<f8", payload=b""):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue() + payload


def write_zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


# -- forged .npz members ----------------------------------------------------------------------
def test_forged_shape_is_refused_before_allocation(tmp_path):
    """A header claiming 8 TB backed by 64 bytes: refused from the header, nothing allocated."""
    path = write_zip(tmp_path / "bomb.npz", {"param/dense.W.npy": npy_member((10 ** 12,), payload=bytes(64))})
    with pytest.raises(DataError, match=r"declares shape \(1000000000000,\).*stores 64 bytes"):
        xpnet.load(path)


@pytest.mark.parametrize("shape, nbytes", [((3, 4), 80), ((3, 4), 200), ((0,), 8)])
def test_npy_header_payload_mismatch(tmp_path, shape, nbytes):
    path = write_zip(tmp_path / "lie.npz", {"param/dense.W.npy": npy_member(shape, payload=bytes(nbytes))})
    with pytest.raises(DataError, match="corrupt or forged"):
        load_npz(path)


def test_malformed_npy_header(tmp_path):
    bad = b"\x93NUMPY\x01\x00" + struct.pack("<H", 16) + b"{'descr': os.sy}"
    path = write_zip(tmp_path / "bad.npz", {"param/dense.W.npy": bad})
    with pytest.raises(DataError, match="malformed .npy header"):
        load_npz(path)


def test_object_dtype_member_is_refused_unread(tmp_path):
    """Refused from its header (the member named), not by np.load's allow_pickle=False after it."""
    path = write_zip(tmp_path / "obj.npz", {"param/x.npy": npy_member((2,), descr="|O", payload=bytes(16))})
    with pytest.raises(DataError, match=r"member param/x\.npy holds pickled objects"):
        load_npz(path)


def test_allow_pickle_false_refuses_an_object_member_on_its_own(tmp_path, monkeypatch):
    """The second guard: with the header check above skipped, np.load (allow_pickle=False) still
    refuses a real pickle, which with allow_pickle=True would be unpickled and returned."""
    import xpnet.serialization as ser
    path = tmp_path / "obj.npz"
    np.savez(path, w=np.array([print, "payload"], dtype=object))
    monkeypatch.setattr(ser, "_check_members", lambda path: None)
    with pytest.raises(DataError, match=r"obj\.npz: refusing to load: it holds pickled objects"):
        load_npz(path)


# -- hostile model headers --------------------------------------------------------------------
def _layer0(key, value):
    return lambda m: m["model"]["layers"][0]["config"].__setitem__(key, value)


HOSTILE = {
    "units=inf": _layer0("units", float("inf")),
    "units=10**12": _layer0("units", 10 ** 12),
    "units=-3": _layer0("units", -3),
    "units=string": _layer0("units", "__import__('os').system('true')"),
    "initializer=os.system": _layer0("kernel_initializer", "os.system"),
    "regularizer=eval": _layer0("kernel_regularizer", {"type": "eval", "l": 1}),
    "input_shape=10**12": lambda m: m["model"].__setitem__("input_shape", [10 ** 12]),
    "input_shape=nested": lambda m: m["model"].__setitem__("input_shape", [[5]]),
    "input_shape=null": lambda m: m["model"].__setitem__("input_shape", None),
    "seed=string": lambda m: m["model"].__setitem__("seed", "zero"),
    "type=Layer": lambda m: m["model"]["layers"][0].__setitem__("type", "Layer"),
    "type=builtins.eval": lambda m: m["model"]["layers"][0].__setitem__("type", "builtins.eval"),
    "type=xpnet.layers.Dense": lambda m: m["model"]["layers"][0].__setitem__("type", "xpnet.layers.Dense"),
    "type=list": lambda m: m["model"]["layers"][0].__setitem__("type", ["Dense"]),
    "layers=string": lambda m: m["model"].__setitem__("layers", "Dense"),
    "layer names clash": _layer0("name", "dense_1"),
    # the clash above is refused by the weights' names too; a layer without weights only by the check
    "layer names clash, no weights": lambda m: m["model"]["layers"][1]["config"].__setitem__("name", "dense"),
    "optimizer=string": lambda m: m.__setitem__("optimizer", "adam"),
    "optimizer=os.system": lambda m: m.__setitem__("optimizer", {"class": "os.system", "config": {}}),
    "compile=list": lambda m: m.__setitem__("compile", ["cross_entropy"]),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_header_is_refused(model_file, tmp_path, name):
    _, arrays, meta, _ = model_file
    meta = json.loads(json.dumps(meta))
    HOSTILE[name](meta)
    path = tmp_path / "hostile.npz"
    save_npz_atomic(path, arrays, meta)
    with pytest.raises(DataError) as info:
        xpnet.load(path)
    assert str(path) in str(info.value)


def _refused_before_allocating(tmp_path, arrays, meta, message):
    """xpnet.load of a file with these arrays and header raises DataError matching ``message``,
    naming the file, before allocating what the header asks for (under 50 MB traced)."""
    import tracemalloc
    path = tmp_path / "big.npz"
    save_npz_atomic(path, arrays, meta)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=message) as info:
            xpnet.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(info.value)
    assert peak < 50 * 2 ** 20   # none of the weights the header asks for was drawn


@pytest.mark.parametrize("edit, what", [
    (_layer0("units", 2 * 10 ** 7), r"layer 'dense' \(Dense\)'s kernel_initializer weights would have shape "
                                   r"\(5, 20000000\) \(100,000,000 values\)"),
    (lambda m: m["model"].__setitem__("input_shape", [10 ** 8]), r"shape \(100000000, 4\) \(400,000,000 values\)")])
def test_a_header_larger_than_its_arrays_is_refused_before_allocating(model_file, tmp_path, edit, what):
    """Sizes a machine can allocate (100-400 million float64 values: 0.8-3.2 GB, drawn from the RNG) are no
    MemoryError: the weights were made, then found not to fit the file's arrays. Each parameter is
    now checked against the file's largest parameter array first (here 5 x 4 values)."""
    _, arrays, meta, _ = model_file
    meta = json.loads(json.dumps(meta))
    edit(meta)
    _refused_before_allocating(tmp_path, arrays, meta, what + r", more than the file's largest parameter "
                                                          r"array \(20 values\)")


def test_a_custom_layers_header_larger_than_its_arrays_is_refused_before_allocating(tmp_path, monkeypatch):
    """A user's registered layer that draws its weights the way docs/custom_layers.md shows
    (initializers.get("he_normal")(rng, shape, dtype), not through Layer._initializer) is held to
    the file's largest parameter array too: units 2 * 10**6 in the header (10 million float64
    values, 80 MB) is refused before the weights are drawn."""
    from xpnet import initializers, layers as xlayers

    monkeypatch.setattr(xlayers, "LAYERS", dict(xlayers.LAYERS))

    @xlayers.register
    class OwnDense(xlayers.Layer):
        def __init__(self, units, name=None):
            super().__init__(name)
            self.units = int(units)

        def compute_output_shape(self, input_shape):
            return (self.units,)

        def create_params(self, ctx):
            shape = (self.input_shape[0], self.units)
            self.params["W"] = initializers.get("he_normal")(ctx.rng(self.name), shape, self.dtype)

        def forward(self, x, training=False):
            return x @ self.params["W"]

        def get_config(self):
            return {"name": self.name, "units": self.units}

    model = xpnet.Sequential([OwnDense(4, name="own")], input_shape=(5,), dtype="float64", seed=3)
    arrays, meta = load_npz(model.save(tmp_path / "own.npz"))
    meta["model"]["layers"][0]["config"]["units"] = 2 * 10 ** 6
    _refused_before_allocating(tmp_path, arrays, meta, r"he_normal weights would have shape \(5, 2000000\) "
                                                       r"\(10,000,000 values\), more than the file's largest "
                                                       r"parameter array \(20 values\)")


def test_hostile_compile_section(model_file, tmp_path):
    """A loss name that is not a registered loss is refused, as such ("os.system" alone also matched
    the compile section that the message echoes)."""
    _, arrays, meta, _ = model_file
    meta = json.loads(json.dumps(meta))
    meta["compile"] = {"loss": "os.system", "metrics": ["accuracy"]}
    path = tmp_path / "hostile.npz"
    save_npz_atomic(path, arrays, meta)
    with pytest.raises(DataError, match=r"unknown loss 'os\.system'"):
        xpnet.load(path)


# -- random corruption --------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_corrupted_model_file_is_refused_or_unchanged(model_file, tmp_path, data):
    """Flip bytes or cut the file anywhere: load raises an XpnetError or gives the same weights."""
    path, _, _, params = model_file
    raw = bytearray(path.read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1), label="cut at")]
    else:
        for pos in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4), label="flip"):
            raw[pos] ^= data.draw(st.integers(1, 255), label="mask")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(raw))
    try:
        model = xpnet.load(bad)
    except XpnetError:
        return
    for key, value in model.parameters.items():
        np.testing.assert_array_equal(model.backend.to_numpy(value), params[key])


def test_harmless_flips_load_unchanged(model_file, tmp_path):
    """The fuzz above almost always gets a refusal (zip's CRCs); here its other branch: flips in the
    local headers' modification times, which no reader checks, load the same weights."""
    path, _, _, params = model_file
    raw = bytearray(path.read_bytes())
    starts = [i for i in range(len(raw) - 4) if raw[i:i + 4] == b"PK\x03\x04"]
    assert len(starts) >= len(params)
    for start in starts:
        for pos in range(start + 10, start + 14):   # last-modified time and date
            raw[pos] ^= 0x5A
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(raw))
    assert bad.read_bytes() != path.read_bytes()
    model = xpnet.load(bad)
    for key, value in model.parameters.items():
        np.testing.assert_array_equal(model.backend.to_numpy(value), params[key])


def _idx(array):
    array = np.asarray(array, dtype=np.uint8)
    return struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


IMAGES = np.arange(3 * 6 * 5, dtype=np.uint8).reshape(3, 6, 5)


@FUZZ
@given(data=st.data())
def test_corrupted_gzip_idx_is_refused_or_unchanged(tmp_path, data):
    """gzip's CRC guards the payload: any flip or cut is refused or leaves the images intact."""
    raw = bytearray(gzip.compress(_idx(IMAGES), mtime=0))
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[:data.draw(st.integers(0, len(raw) - 1), label="cut at")]
    else:
        pos = data.draw(st.integers(0, len(raw) - 1), label="flip")
        raw[pos] ^= data.draw(st.integers(1, 255), label="mask")
    path = tmp_path / "images.gz"
    path.write_bytes(bytes(raw))
    try:
        out = idx.read_idx(path, idx.IMAGES_MAGIC)
    except DataError:
        return
    np.testing.assert_array_equal(out, IMAGES)


@FUZZ
@given(header=st.binary(min_size=0, max_size=24), tail=st.binary(max_size=64))
def test_random_idx_headers_never_crash(tmp_path, header, tail):
    """Arbitrary bytes as an uncompressed IDX file: an array or a DataError, never anything else."""
    path = tmp_path / "random.idx"
    path.write_bytes(header + tail)
    try:
        out = idx.read_idx(path)
    except DataError as exc:
        assert str(path) in str(exc)
        return
    assert out.dtype == np.uint8 and out.size == len(header + tail) - 4 - 4 * out.ndim


@pytest.mark.parametrize("content, words", [
    (b"", "truncated IDX header"), (b"\x1f\x8b", "corrupt or truncated gzip stream"),
    (b"\x00\x00\x0d\x01" + struct.pack(">I", 4) + bytes(16), "not an unsigned-byte IDX file"),
    (b"\x00\x00\x08\xff" + bytes(8), "truncated IDX dimensions: expected 1020 bytes")])
def test_idx_odd_files(tmp_path, content, words):
    """Empty file, a bare gzip magic, float-typed IDX, 255 declared dimensions: each refused for
    its own reason (without the type check the float file was refused as 'more data than the
    header')."""
    path = tmp_path / "odd.idx"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"odd\.idx: {words}"):
        idx.read_idx(path)


def test_idx_path_is_a_folder(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        idx.read_idx(tmp_path)


# -- what the writer leaves behind ---------------------------------------------------------------
def test_saved_files_get_the_usual_permissions(tmp_path):
    """Model files, checkpoints and logs are as readable as open() would make them (umask
    respected), not owner-only like the temporary file they are written through; a container's
    results on a mounted folder must stay readable by the host user."""
    import os

    old = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        model = xpnet.Sequential([Dense(2)], input_shape=(3,))
        model.save(tmp_path / "model.npz")
        os.umask(0o077)
        model.save(tmp_path / "private.npz")
    finally:
        os.umask(old)
    assert (tmp_path / "model.npz").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.npz").stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob("*.tmp"))
