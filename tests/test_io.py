"""Model files: round trips across backends and dtypes, and every refusal of a bad file."""
import io
import json
import os
import pickle

import numpy as np
import pytest

import xpnet
from xpnet import layers as xlayers
from xpnet.errors import ConfigError, DataError
from xpnet.io import load_model, save_model
from xpnet.layers import Dense, ReLU
from xpnet.layers.base import Layer
from xpnet.serialization import load_npz


def small_model(device="cpu", dtype="float64", seed=3):
    return xpnet.Sequential([Dense(6), ReLU(), Dense(3)], input_shape=(4,), device=device,
                            dtype=dtype, seed=seed, name="tiny")


def outputs(model, x):
    return model.backend.to_numpy(model.forward(model.backend.asarray(x)))


def write_npz(path, arrays, meta):
    """Write an .npz exactly as given (object arrays allowed), bypassing every safety check."""
    payload = dict(arrays)
    if meta is not None:
        payload["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **payload)
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture
def saved(tmp_path):
    model = small_model()
    path = tmp_path / "model.npz"
    model.save(path)
    arrays, meta = load_npz(path)
    return model, path, arrays, meta


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("first,second", [("numpy", "strict"), ("strict", "numpy")])
def test_round_trip_across_backends(tmp_path, dtype, first, second):
    x = np.random.default_rng(0).standard_normal((5, 4))
    model = small_model(first, dtype)
    # change the weights so the test cannot pass by rebuilding from the same seed
    w = model.layers[0].params["W"]
    w[...] = w * 2 + 0.25
    model.save(tmp_path / "a.npz")
    loaded = load_model(tmp_path / "a.npz", device=second)
    assert loaded.backend.name == second
    assert loaded.dtype.name == dtype and loaded.input_shape == (4,) and loaded.name == "tiny"
    assert [type(l).__name__ for l in loaded.layers] == ["Dense", "ReLU", "Dense"]
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]
    np.testing.assert_array_equal(outputs(loaded, x), outputs(model, x))
    loaded.save(tmp_path / "b.npz")
    again = xpnet.load(tmp_path / "b.npz", device=first)
    np.testing.assert_array_equal(outputs(again, x), outputs(model, x))
    for k, v in model.parameters.items():
        np.testing.assert_array_equal(again.backend.to_numpy(again.parameters[k]),
                                      model.backend.to_numpy(v))


def test_header_describes_the_model(saved):
    model, path, arrays, meta = saved
    assert meta["format"] == "xpnet.model" and meta["version"] == 1
    m = meta["model"]
    assert m["class"] == "Sequential" and m["input_shape"] == [4] and m["dtype"] == "float64"
    assert m["seed"] == 3
    assert m["layers"][0] == {"type": "Dense", "config": model.layers[0].get_config()}
    assert sorted(arrays) == ["param/dense.W", "param/dense.b", "param/dense_1.W", "param/dense_1.b"]
    assert meta["arrays"]["param/dense.W"] == {"shape": [4, 6], "dtype": "float64"}


class Counter(Layer):
    """A test layer with a saved buffer: counts the samples it has seen while training."""

    def create_params(self, ctx):
        self.buffers["seen"] = self.xp.zeros((1,), dtype="int64")
        self.buffers["mean"] = self.xp.zeros(self.input_shape, dtype=self.dtype)

    def forward(self, x, training=False):
        if training:
            self.buffers["seen"] += x.shape[0]
            self.buffers["mean"][...] = x.mean(axis=0)
        return x - self.buffers["mean"]


@pytest.mark.parametrize("first,second", [("numpy", "strict"), ("strict", "numpy")])
def test_buffers_round_trip(tmp_path, monkeypatch, first, second):
    monkeypatch.setitem(xlayers.LAYERS, "Counter", Counter)
    model = xpnet.Sequential([Counter(), Dense(2)], input_shape=(3,), device=first)
    x = np.random.default_rng(1).standard_normal((7, 3)).astype("float32")
    model.forward(model.backend.asarray(x), training=True)
    model.save(tmp_path / "c.npz")
    loaded = load_model(tmp_path / "c.npz", device=second)
    assert int(loaded.backend.to_numpy(loaded.buffers["counter.seen"])[0]) == 7
    np.testing.assert_array_equal(outputs(loaded, x), outputs(model, x))


def test_unbuilt_model_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not built"):
        save_model(xpnet.Sequential([Dense(2)]), tmp_path / "x.npz")


# -- refusals ----------------------------------------------------------------------------------
def test_pickled_object_array_inside_npz(saved, tmp_path):
    _, _, arrays, meta = saved
    arrays = dict(arrays, **{"param/dense.W": np.array([print, "payload"], dtype=object)})
    bad = write_npz(tmp_path / "bad.npz", arrays, meta)
    # the words after the file name: tmp_path (test_pickled_...) alone matched "pickled"
    with pytest.raises(DataError, match=r"bad\.npz: refusing to load.* pickled objects"):
        load_model(bad)


def test_plain_pickle_file(tmp_path):
    bad = tmp_path / "model.npz"
    bad.write_bytes(pickle.dumps({"W": [1, 2, 3]}))
    with pytest.raises(DataError, match=r"model\.npz: refusing to load a pickle"):  # not tmp_path's name
        load_model(bad)


def test_unknown_layer_type(saved, tmp_path):
    _, _, arrays, meta = saved
    meta["model"]["layers"][1] = {"type": "os.system", "config": {"command": "echo hi"}}
    bad = write_npz(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(DataError, match=r"unknown type 'os\.system'.*Dense"):
        load_model(bad)


def test_invalid_layer_config(saved, tmp_path):
    _, _, arrays, meta = saved
    meta["model"]["layers"][0]["config"]["units"] = -1
    bad = write_npz(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(DataError, match=r"layer 0 \(Dense\) has an invalid config"):
        load_model(bad)
    meta["model"]["layers"][0]["config"] = {"units": 6, "evil": "x"}
    write_npz(bad, arrays, meta)
    with pytest.raises(DataError, match="evil"):
        load_model(bad)


def test_wrong_shape(saved, tmp_path):
    _, _, arrays, meta = saved
    arrays["param/dense.W"] = np.zeros((6, 4))
    bad = write_npz(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(DataError, match=r"param/dense\.W has shape \(6, 4\).*expects shape \(4, 6\)"):
        load_model(bad)


def test_wrong_dtype(saved, tmp_path):
    _, _, arrays, meta = saved
    arrays["param/dense.b"] = arrays["param/dense.b"].astype("float32")
    bad = write_npz(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(DataError, match="dtype float32.*dtype float64"):
        load_model(bad)


def test_missing_and_extra_arrays(saved, tmp_path):
    _, _, arrays, meta = saved
    missing = {k: v for k, v in arrays.items() if k != "param/dense_1.b"}
    bad = write_npz(tmp_path / "bad.npz", missing, meta)
    with pytest.raises(DataError, match=r"missing arrays for param/dense_1\.b"):
        load_model(bad)
    write_npz(bad, dict(arrays, **{"param/dense.gamma": np.ones(6)}), meta)
    with pytest.raises(DataError, match=r"arrays this model lacks: param/dense\.gamma"):
        load_model(bad)


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_unknown_format_version(saved, tmp_path, version):
    _, _, arrays, meta = saved
    meta["version"] = version
    bad = write_npz(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(DataError, match="unsupported model format version"):
        load_model(bad)


def test_npz_without_header(saved, tmp_path):
    _, _, arrays, _ = saved
    bad = write_npz(tmp_path / "bad.npz", arrays, None)
    with pytest.raises(DataError, match="not an xpnet model file"):
        load_model(bad)


def test_unknown_model_class_and_bad_dtype(saved, tmp_path):
    _, _, arrays, meta = saved
    meta["model"]["class"] = "subprocess.Popen"
    bad = write_npz(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(DataError, match="unknown model class 'subprocess.Popen'"):
        load_model(bad)
    meta["model"]["class"] = "Sequential"
    meta["model"]["dtype"] = "object"
    write_npz(bad, arrays, meta)
    with pytest.raises(DataError, match="dtype must be"):
        load_model(bad)


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.7, 0.99])
def test_truncated_file(saved, tmp_path, keep):
    _, path, _, _ = saved
    data = path.read_bytes()
    bad = tmp_path / "cut.npz"
    bad.write_bytes(data[:int(len(data) * keep)])
    # after the file name: tmp_path (test_truncated_file...) alone matched "truncated"
    with pytest.raises(DataError, match=r"cut\.npz: .*(truncated|corrupt|not an xpnet)"):
        load_model(bad)


def test_corrupted_bytes(saved, tmp_path):
    _, path, _, _ = saved
    data = bytearray(path.read_bytes())
    start = data.find(b"\x93NUMPY", data.find(b"param/dense.W"))  # inside the first weight array
    data[start + 140] ^= 0xFF
    bad = tmp_path / "flip.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"flip\.npz: .*corrupt"):   # tmp_path alone matched "corrupt"
        load_model(bad)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such model file"):
        load_model(tmp_path / "nope.npz")


# -- optimizer state ---------------------------------------------------------------------------
def adam_steps(model, x, n, opt):
    for _ in range(n):
        out = model.forward(model.backend.asarray(x), training=True)
        model.backward(out - 1.0)
        opt.step(model.parameters, model.gradients)


@pytest.mark.parametrize("first,second", [("numpy", "strict"), ("strict", "numpy")])
def test_optimizer_state_round_trip(tmp_path, first, second):
    from xpnet import optim
    x = np.random.default_rng(2).standard_normal((8, 4))
    model = small_model(first)
    opt = optim.Adam(lr=0.01, beta1=0.8, clipnorm=5.0)
    adam_steps(model, x, 3, opt)
    save_model(model, tmp_path / "o.npz", optimizer=opt)
    loaded = load_model(tmp_path / "o.npz", device=second)
    new = loaded.optimizer
    assert type(new) is optim.Adam and new.get_config() == opt.get_config()
    assert new.iterations == 3
    adam_steps(model, x, 2, opt)  # two more identical steps on both: same weights
    adam_steps(loaded, x, 2, new)
    for k, v in model.parameters.items():
        np.testing.assert_array_equal(loaded.backend.to_numpy(loaded.parameters[k]),
                                      model.backend.to_numpy(v))
    _, meta = load_npz(tmp_path / "o.npz")
    assert meta["optimizer"]["class"] == "Adam"
    assert load_model(tmp_path / "o.npz", compile=False).__dict__.get("optimizer") is None


def test_model_save_without_optimizer(tmp_path):
    from xpnet import optim
    model = small_model()
    model.optimizer = optim.SGD(lr=0.1, momentum=0.9)
    model.save(tmp_path / "with.npz")
    model.save(tmp_path / "without.npz", include_optimizer=False)
    assert load_npz(tmp_path / "with.npz")[1]["optimizer"]["class"] == "SGD"
    assert load_npz(tmp_path / "without.npz")[1]["optimizer"] is None


def test_optimizer_state_refusals(tmp_path):
    from xpnet import optim
    model = small_model()
    opt = optim.Adam()
    adam_steps(model, np.ones((2, 4)), 1, opt)
    save_model(model, tmp_path / "o.npz", optimizer=opt)
    arrays, meta = load_npz(tmp_path / "o.npz")
    bad = dict(meta, optimizer=dict(meta["optimizer"], **{"class": "os.system"},
                                    config=dict(meta["optimizer"]["config"], type="os.system")))
    write_npz(tmp_path / "bad.npz", arrays, bad)
    with pytest.raises(DataError, match="unknown optimizer 'os.system'"):
        load_model(tmp_path / "bad.npz")
    dropped = {k: v for k, v in arrays.items() if k != "optimizer/0"}
    write_npz(tmp_path / "bad.npz", dropped, meta)
    with pytest.raises(DataError, match="missing array 'optimizer/0'"):
        load_model(tmp_path / "bad.npz")
    write_npz(tmp_path / "bad.npz", dict(arrays, **{"optimizer/99": np.zeros(2)}), meta)
    with pytest.raises(DataError, match=r"unexpected arrays optimizer/99"):
        load_model(tmp_path / "bad.npz")


# -- functional models and compiled models ----------------------------------------------------
def functional_model(device="cpu"):
    from xpnet.graph import Concatenate, Input, Model
    x = Input((4,), name="pixels")
    a = ReLU()(Dense(5)(x))
    h = Concatenate(axis=1)([x, a])
    return Model(x, Dense(3)(h), device=device, dtype="float64", seed=5, name="skip")


@pytest.mark.parametrize("first,second", [("numpy", "strict"), ("strict", "numpy")])
def test_functional_model_round_trip(tmp_path, first, second):
    x = np.random.default_rng(3).standard_normal((6, 4))
    model = functional_model(first)
    for v in model.parameters.values():
        v[...] = v + 0.125
    model.save(tmp_path / "g.npz")
    loaded = xpnet.load(tmp_path / "g.npz", device=second)
    assert type(loaded).__name__ == "Model" and loaded.name == "skip"
    np.testing.assert_array_equal(outputs(loaded, x), outputs(model, x))
    arrays, meta = load_npz(tmp_path / "g.npz")
    assert meta["model"]["class"] == "Model" and meta["model"]["input_shape"] == [4]
    meta["model"]["layers"][0]["type"] = "os.system"
    write_npz(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(DataError, match="unknown type 'os.system'"):
        xpnet.load(tmp_path / "bad.npz")


def test_compiled_model_keeps_training_where_it_stopped(tmp_path):
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((32, 4)), rng.integers(0, 3, 32)
    model = small_model()
    model.compile(loss="cross_entropy", optimizer=xpnet.optim.Adam(lr=0.01), metrics=["accuracy"])
    model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    model.save(tmp_path / "t.npz")
    loaded = load_model(tmp_path / "t.npz", device="strict")
    assert loaded.loss.get_config() == model.loss.get_config() and loaded.metrics == ["accuracy"]
    assert loaded.optimizer.iterations == 8
    assert loaded.evaluate(x, y) == pytest.approx(model.evaluate(x, y), rel=1e-12)
    model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    loaded.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    for k, v in model.parameters.items():
        np.testing.assert_allclose(loaded.backend.to_numpy(loaded.parameters[k]), v, rtol=0, atol=1e-14)


def _mixed_model(tmp_path):
    """A float32 model trained one epoch in float16 (a scale that moves: 2**20, growth after 3
    finite steps), saved to tmp_path/m.npz; returns it and its data."""
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((32, 4)).astype(np.float32), rng.integers(0, 3, 32)
    model = small_model(dtype="float32")
    model.compile(optimizer=xpnet.optim.Adam(lr=0.01), mixed_precision=xpnet.MixedPrecision(
        "float16", initial_scale=2.0 ** 20, growth_interval=3))
    model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    model.save(tmp_path / "m.npz")
    return model, x, y


def test_a_mixed_precision_model_loads_compiled_with_its_policy_and_loss_scale(tmp_path):
    """The file used not to say that the model was trained in mixed precision: loaded, it went on
    in float32 from a fresh loss scale. Now it goes on as the saved model does, bit for bit."""
    model, x, y = _mixed_model(tmp_path)
    loaded = load_model(tmp_path / "m.npz")
    assert loaded.mixed_precision.get_config() == model.mixed_precision.get_config()
    scale = model.backend.to_numpy(model._mixed.state)
    assert np.array_equal(loaded.backend.to_numpy(loaded._mixed.state), scale)
    assert scale[0] != 2.0 ** 20  # the scale had moved: a fresh one would differ
    h0 = model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    h1 = loaded.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    assert h1.history["loss_scale"] == h0.history["loss_scale"]
    for k, v in model.parameters.items():
        assert np.array_equal(loaded.backend.to_numpy(loaded.parameters[k]), v), k
    assert load_model(tmp_path / "m.npz", compile=False).mixed_precision is None


def test_files_without_the_mixed_precision_field_still_load_as_float32_training(tmp_path):
    """No format break: a file written before the field existed (no "mixed_precision", no loss
    scale) loads and compiles without mixed precision, as does one that says null."""
    model = _mixed_model(tmp_path)[0]
    arrays, meta = load_npz(tmp_path / "m.npz")
    assert meta["mixed_precision"]["compute"] == "float16" and "loss_scale_state" in meta["compile"]
    del meta["mixed_precision"], meta["compile"]["loss_scale_state"]
    write_npz(tmp_path / "old.npz", arrays, meta)
    old = load_model(tmp_path / "old.npz")
    assert old.mixed_precision is None and old.optimizer.iterations == model.optimizer.iterations
    plain = small_model(dtype="float32").compile(optimizer="adam")
    plain.save(tmp_path / "plain.npz")
    assert load_npz(tmp_path / "plain.npz")[1]["mixed_precision"] is None
    assert load_model(tmp_path / "plain.npz").mixed_precision is None


def test_a_bad_mixed_precision_header_is_a_data_error_naming_the_file(tmp_path):
    _mixed_model(tmp_path)
    arrays, meta = load_npz(tmp_path / "m.npz")
    bad = tmp_path / "bad.npz"
    for value in ["float16", 7, [], {"compute": "int8"}, {"compute": "float16", "initial_scale": -1},
                  {"speed": "fast"}]:
        write_npz(bad, arrays, dict(meta, mixed_precision=value))
        with pytest.raises(DataError, match=r"bad\.npz: the header's mixed_precision is not a "
                                            r"mixed-precision policy \(expected null or"):
            load_model(bad)
        # loaded without compiling (predict, serve, evaluate) the field is not read: no error
        assert load_model(bad, compile=False).mixed_precision is None
    for value in [None, "x", [1, 2], [0, 0, 0], [1e308 * 10, 0, 0], [1, True, 0]]:
        write_npz(bad, arrays, dict(meta, compile=dict(meta["compile"], loss_scale_state=value)))
        with pytest.raises(DataError, match=r"bad\.npz: compile\.loss_scale_state must be \[loss "
                                            r"scale > 0, finite steps, skipped steps\]"):
            load_model(bad)


def test_a_policy_the_backend_cannot_compute_loads_without_it_and_warns(tmp_path):
    """bfloat16 (a GPU's) on the NumPy backend: the model still loads, compiled in float32."""
    model = _mixed_model(tmp_path)[0]
    arrays, meta = load_npz(tmp_path / "m.npz")
    meta["mixed_precision"]["compute"] = "bfloat16"
    write_npz(tmp_path / "bf.npz", arrays, meta)
    with pytest.warns(RuntimeWarning, match=r"bf\.npz was trained with mixed precision 'bfloat16', "
                                            r"which cannot be used here .*compiled without it") as caught:
        loaded = load_model(tmp_path / "bf.npz")
    assert caught[0].filename == __file__   # the warning points at the load_model call
    assert loaded.mixed_precision is None
    assert loaded.optimizer.iterations == model.optimizer.iterations


@pytest.mark.parametrize("first,second", [("numpy", "strict"), ("strict", "numpy")])
def test_every_zoo_layer_kind_round_trips(tmp_path, first, second):
    """Conv2D, BatchNorm (running statistics are buffers), pooling, dropout, reshape, activations."""
    from xpnet.layers import (AvgPool2D, BatchNorm, Conv2D, Dropout, Flatten, LeakyReLU, MaxPool2D,
                              Reshape, Sigmoid, Tanh)
    layers = [Conv2D(3, 3, padding="same", kernel_regularizer="l2:1e-3"),
              BatchNorm(), LeakyReLU(0.1), MaxPool2D(2), Conv2D(4, 2, strides=2), Tanh(),
              AvgPool2D(1), Dropout(0.3), Flatten(), Dense(8), Sigmoid(), Reshape((2, 4)),
              Flatten(), Dense(3)]
    model = xpnet.Sequential(layers, input_shape=(2, 8, 8), device=first, dtype="float64", seed=9)
    model.compile(optimizer="adam")
    rng = np.random.default_rng(5)
    x, y = rng.random((16, 2, 8, 8)), rng.integers(0, 3, 16)
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)  # moves BatchNorm's running statistics
    running_mean = model.backend.to_numpy(model.buffers["batch_norm.running_mean"])
    assert np.abs(running_mean).min() > 0  # no longer the initial zeros
    model.save(tmp_path / "cnn.npz")
    loaded = xpnet.load(tmp_path / "cnn.npz", device=second)
    assert [type(l).__name__ for l in loaded.layers] == [type(l).__name__ for l in layers]
    assert [l.get_config() for l in loaded.layers] == [l.get_config() for l in model.layers]
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    for k, v in model.buffers.items():
        np.testing.assert_array_equal(loaded.backend.to_numpy(loaded.buffers[k]), model.backend.to_numpy(v))


HOSTILE = [None, 7, -1, 1e308, "x", [], [1, [2]], {}, {"type": "os.system"}, True]


def test_hostile_header_values_are_data_errors(tmp_path):
    """Every header field replaced by values of the wrong type or range: a DataError, never a raw
    exception (the file may come from anyone)."""
    from xpnet import optim
    model = small_model()
    model.compile(optimizer=optim.Adam(), metrics=["accuracy"])
    model.fit(np.ones((4, 4)), np.zeros(4, dtype=np.int64), epochs=1, batch_size=2, verbose=0)
    model.save(tmp_path / "ok.npz")
    arrays, meta = load_npz(tmp_path / "ok.npz")
    fields = [("model", "class"), ("model", "input_shape"), ("model", "dtype"), ("model", "seed"),
              ("model", "name"), ("model", "layers"), ("optimizer", "class"), ("optimizer", "config"),
              ("optimizer", "state"), ("compile", "loss"), ("compile", "metrics")]
    bad = tmp_path / "bad.npz"
    checked = 0
    for section, key in fields:
        for value in HOSTILE:
            header = json.loads(json.dumps(meta))
            header[section][key] = value
            write_npz(bad, arrays, header)
            try:
                loaded = load_model(bad)
            except DataError:
                checked += 1
                continue
            # a value that is acceptable after all (any name, say) gives a working model
            assert outputs(loaded, np.ones((2, 4))).shape == (2, 3), (section, key, value)
    for section in ("model", "optimizer", "compile"):
        for value in [v for v in HOSTILE if v is not None and not isinstance(v, dict)]:
            header = json.loads(json.dumps(meta))
            header[section] = value
            write_npz(bad, arrays, header)
            with pytest.raises(DataError):
                load_model(bad)
    header = json.loads(json.dumps(meta))
    header["model"]["layers"][0] = {"type": ["Dense"], "config": {}}
    write_npz(bad, arrays, header)
    with pytest.raises(DataError, match="unknown type"):
        load_model(bad)
    assert checked > 60


def test_functional_model_with_regularized_layer_round_trips(tmp_path):
    """A nested {"type": "L2"} regularizer config is not mistaken for a layer type."""
    import numpy as np

    import xpnet
    from xpnet.layers import Dense

    inp = xpnet.Input((4,))
    out = Dense(3, kernel_regularizer="l2:1e-3")(inp)
    model = xpnet.Model(inp, out, seed=3)
    for v in model.parameters.values():   # weights the seed cannot rebuild: load must read them
        v[...] = v + 0.125
    path = tmp_path / "m.npz"
    model.save(path)
    again = xpnet.load(path)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype("float32")
    np.testing.assert_array_equal(model.forward(x), again.forward(x))
    assert again.layers[-1].regularizers["W"].get_config() == {"type": "L2", "l": 1e-3}


# -- writing and reading errors of the file system ----------------------------------------------
@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"),
                                   OSError(30, "Read-only file system"),
                                   OSError(28, "No space left on device"),
                                   OSError(36, "File name too long")])
def test_a_failed_write_names_the_target_and_leaves_no_temp_file(tmp_path, monkeypatch, error):
    """A save whose rename (or write) fails is a DataError naming the model file and the reason,
    never the temporary file, and the temporary file is gone."""
    import xpnet.serialization as ser
    path = tmp_path / "m.npz"

    def fail(src, dst):
        error.filename, error.filename2 = src, dst  # what the OS error names: the temp file
        raise error
    monkeypatch.setattr(ser.os, "replace", fail)
    with pytest.raises(DataError) as err:
        save_model(small_model(), path)
    message = str(err.value)
    assert message == f"cannot write {path}: {error.strerror}"
    assert ".tmp" not in message and os.listdir(tmp_path) == []


@pytest.mark.parametrize("path", ["/sys/m.npz", "/proc/m.npz"])
def test_saving_where_the_system_refuses_is_a_data_error(path):
    """/sys and /proc refuse new files, even to root: the OS reason, naming the target."""
    if not os.path.isdir(os.path.dirname(path)):
        pytest.skip(f"no {os.path.dirname(path)} here")
    with pytest.raises(DataError, match=rf"^cannot write {path}: ") as err:
        save_model(small_model(), path)
    assert ".tmp" not in str(err.value)
    assert not os.path.exists(path)


def test_an_unreadable_model_file_is_a_data_error(saved, monkeypatch):
    """open() refused (no read permission; simulated: the tests run as root) -> DataError."""
    import builtins
    _, path, _, _ = saved

    def refuse(name, *args, **kwargs):
        if os.fspath(name) == os.fspath(path):
            raise PermissionError(13, "Permission denied", os.fspath(name))
        return builtins.open(name, *args, **kwargs)
    monkeypatch.setattr("xpnet.io.open", refuse, raising=False)
    with pytest.raises(DataError, match=rf"^cannot read the model file {path}: Permission denied$"):
        load_model(path)


def test_a_bad_thread_variable_is_not_blamed_on_the_model_file(saved, monkeypatch):
    """XPNET_NUM_THREADS=abc: the backend is made before the rebuild that turns errors into
    '<file>: the saved architecture does not rebuild', so the variable's message comes alone."""
    import xpnet.backends as xb
    from xpnet.errors import XpnetError
    _, path, _, _ = saved
    monkeypatch.setattr(xb, "_cache", {})   # the CPU backend is made (and reads the variable) anew
    monkeypatch.setenv("XPNET_NUM_THREADS", "abc")
    with pytest.raises(XpnetError) as err:
        load_model(path)
    assert str(err.value) == "XPNET_NUM_THREADS must be a positive whole number, got 'abc'"
    assert not isinstance(err.value, DataError)


@pytest.mark.parametrize("bad", [b"/tmp/m.npz", None, 3, ["m.npz"]])
def test_load_model_and_export_onnx_check_the_path_type(bad, saved, monkeypatch):
    """bytes gave an AttributeError, None or a number a raw TypeError: now a ConfigError as in
    save_model, and export_onnx refuses before it builds the ONNX model; pathlib keeps working."""
    import xpnet.onnx_export as ox
    model, path, _, _ = saved
    with pytest.raises(ConfigError, match=rf"^load_model: path must be a file name \(str or "
                                          rf"os.PathLike\), got {type(bad).__name__}$"):
        load_model(bad)

    def not_built(*args, **kwargs):
        raise AssertionError("the ONNX model was built")
    with monkeypatch.context() as m:
        m.setattr(ox, "to_onnx", not_built)
        with pytest.raises(ConfigError, match=rf"^export_onnx: path must be a file name .*got "
                                              rf"{type(bad).__name__}$"):
            ox.export_onnx(model, bad)
    assert load_model(path).name == "tiny"   # a pathlib.Path
    pytest.importorskip("onnx")
    assert ox.export_onnx(model, path.with_suffix(".onnx")) == str(path.with_suffix(".onnx"))


@pytest.mark.parametrize("key", ["input_shape", "dtype", "seed"])
def test_a_null_header_field_is_named(saved, tmp_path, key):
    """"input_shape": null rebuilt an unbuilt model and then complained of 'arrays this model
    lacks'; a null field is now named as lacking."""
    _, _, arrays, meta = saved
    meta["model"][key] = None
    bad = write_npz(tmp_path / "null.npz", arrays, meta)
    with pytest.raises(DataError, match=rf"null\.npz: the model header lacks '{key}' \(it is null\)$"):
        load_model(bad)


def test_an_npz_this_process_cannot_read_is_named_as_such_not_as_corrupt(tmp_path, monkeypatch):
    """A checkpoint without read permission was reported as 'not a readable .npz file (truncated
    or corrupt?)': the file is fine, the permission is not. (Run as root, so the open is made to
    fail.)"""
    import errno
    from xpnet import serialization
    path = tmp_path / "last.npz"
    serialization.save_npz_atomic(path, {"w": np.zeros(3, np.float32)}, {"a": 1})

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))
    monkeypatch.setattr(serialization, "_check_members", denied)
    with pytest.raises(DataError) as caught:
        load_npz(path)
    assert str(caught.value) == f"cannot read {path}: Permission denied"


def test_a_model_with_an_initializer_function_of_the_users_loads_with_its_weights(tmp_path):
    """Dense(3, kernel_initializer=my_fn) was saved naming 'my_fn', and the file did not load
    ('unknown initializer'): the trained weights were out of reach. The file now records the
    layer's default initializer, with a warning at saving; the weights are the saved ones."""
    import xpnet
    from xpnet.layers import Dense, Flatten

    def my_fn(rng, shape, dtype):
        return np.full(shape, 0.25, dtype=dtype)
    model = xpnet.Sequential([Flatten(), Dense(3, kernel_initializer=my_fn)], input_shape=(1, 4, 4), seed=2)
    model.layers[1].params["W"][...] = np.arange(48, dtype=np.float32).reshape(16, 3)
    path = tmp_path / "m.npz"
    with pytest.warns(UserWarning, match=r"layer 'dense' \(Dense\): its kernel_initializer 'my_fn' is a function"):
        model.save(path)
    loaded = xpnet.load_model(path)
    np.testing.assert_array_equal(loaded.layers[1].params["W"], model.layers[1].params["W"])
    assert loaded.layers[1].get_config()["kernel_initializer"] == "glorot_uniform"
