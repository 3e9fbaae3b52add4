"""ONNX export: every zoo model and every mappable layer run in ONNX Runtime against model.predict,
trained run folders round-tripped on the whole MNIST test set, and the errors."""
import hashlib
import json
import os
import sys

import numpy as np
import pytest

import xpnet
from xpnet import cli
from xpnet.errors import ConfigError
from xpnet.graph import Add, Concatenate, Input, Model
from xpnet.layers import (AvgPool2D, BatchNorm, Conv2D, Dense, Dropout, Flatten, LeakyReLU, Layer,
                          LogSoftmax, MaxPool2D, ReLU, Reshape, Sigmoid, Softmax, Tanh)

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed: pip install 'xpnet[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install 'xpnet[onnx]'")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 32
TOL = 1e-5


@pytest.fixture(scope="module")
def mnist_test():
    return xpnet.datasets.load("mnist")[1]


def images_for(shape, x):
    """The first BATCH MNIST test images as float32 in [0, 1], fitted to ``shape`` (C, H, W): a
    3x32x32 model (LeNet-5 for CIFAR-10) gets them zero-padded to 32x32 and repeated on 3 channels."""
    c, h, w = shape
    x = x[:BATCH].astype(np.float32) / 255
    top, left = (h - x.shape[2]) // 2, (w - x.shape[3]) // 2
    out = np.zeros((len(x), 1, h, w), np.float32)
    out[:, :, top:top + x.shape[2], left:left + x.shape[3]] = x
    return np.ascontiguousarray(np.repeat(out, c, axis=1))


def run_onnx(proto_or_path, feeds):
    source = proto_or_path if isinstance(proto_or_path, str) else proto_or_path.SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the test machine is shared; one thread is plenty here
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


_PREDICTED = {}


def predicted(model, x):
    """model.predict(x), computed once per identical model (same layers, configs and weights): the
    zoo repeats architectures under several names (recipes, datasets), all with seed-0 weights."""
    h = hashlib.sha256(json.dumps([[type(l).__name__, l.get_config()] for l in model.layers],
                                  sort_keys=True).encode() + x.tobytes())
    for name, value in sorted(model.parameters.items()) + sorted(model.buffers.items()):
        h.update(name.encode() + model.backend.to_numpy(value).tobytes())
    key = h.hexdigest()
    if key not in _PREDICTED:
        _PREDICTED[key] = model.predict(x)
    return _PREDICTED[key]


@pytest.mark.parametrize("name", xpnet.models.names())
def test_every_zoo_model_matches_onnx_runtime(name, mnist_test):
    model = xpnet.models.get(name).build(device="cpu", seed=0)
    x = images_for(model.input_shape, mnist_test[0])
    proto = xpnet.onnx_export.to_onnx(model)
    (out,) = run_onnx(proto, {"input": x})
    ref = predicted(model, x)
    assert out.dtype == np.float32 and out.shape == ref.shape == (BATCH, 10)
    assert np.abs(out - ref).max() <= TOL
    assert np.array_equal(out.argmax(axis=1), ref.argmax(axis=1))


def _randomize(model, seed=0):
    """Non-trivial BatchNorm statistics and biases (fresh models have zeros and ones)."""
    r = np.random.default_rng(seed)
    for layer in model.layers:
        for key, arr in list(layer.params.items()) + list(layer.buffers.items()):
            if key in ("b", "beta", "running_mean"):
                arr[...] = r.normal(0, 0.3, arr.shape)
            elif key in ("gamma", "running_var"):
                arr[...] = r.uniform(0.5, 1.5, arr.shape)


def test_every_mappable_layer_in_a_functional_model():
    x = Input((1, 28, 28), name="image")
    feats = Input(12, name="features")
    h = ReLU()(BatchNorm()(Conv2D(6, 3, strides=2, padding="same")(x)))      # pads (0, 1, 0, 1)
    h = MaxPool2D(3, strides=2, padding="same")(h)
    h = AvgPool2D(2, padding="same")(LeakyReLU(0.2)(Conv2D(8, (3, 2), padding=1)(h)))
    a = Dense(16, use_bias=False)(Flatten()(h))                              # MatMul, no bias
    b = Tanh()(Dense(16)(feats))
    c = Sigmoid()(Dense(16)(Dropout(0.5)(feats)))
    s = BatchNorm()(Add()([a, b, c]))
    r = Flatten()(Reshape((4, -1))(s))
    both = Concatenate(axis=1)([r, LogSoftmax()(Dense(5)(s))])
    y1, y2 = Softmax()(Dense(10)(both)), LogSoftmax(axis=1)(Dense(3)(both))
    model = Model([x, feats], [y1, y2], device="cpu", seed=4)
    _randomize(model)
    rng = np.random.default_rng(1)
    xs = [rng.random((7, 1, 28, 28), dtype=np.float32), rng.standard_normal((7, 12), dtype=np.float32)]
    outs = run_onnx(xpnet.onnx_export.to_onnx(model), {"image": xs[0], "features": xs[1]})
    refs = [model.backend.to_numpy(o) for o in model.forward(xs)]  # predict takes one input
    assert len(outs) == len(refs) == 2   # zip below would hide a missing output
    for out, ref in zip(outs, refs):
        np.testing.assert_allclose(out, ref, atol=TOL, rtol=0)


def test_sequential_with_every_single_input_layer_and_float64_weights():
    model = xpnet.Sequential([
        Conv2D(4, 5, strides=(2, 1), padding="valid"), BatchNorm(), LeakyReLU(0.1),
        AvgPool2D((2, 3), strides=1), MaxPool2D(2), Dropout(0.3), Reshape((-1,)), Dense(20),
        BatchNorm(), Sigmoid(), Dense(10), Tanh(), Softmax()],
        input_shape=(2, 21, 19), device="cpu", dtype="float64", seed=2)
    _randomize(model, 5)
    x = np.random.default_rng(3).random((5, 2, 21, 19))
    (out,) = run_onnx(xpnet.onnx_export.to_onnx(model, opset=13), {"input": x.astype(np.float32)})
    np.testing.assert_allclose(out, model.predict(x), atol=TOL, rtol=0)


def test_batch_axis_is_dynamic_and_the_file_documents_its_input():
    model = xpnet.models.get("quick-mlp").build(device="cpu", seed=0)
    proto = xpnet.onnx_export.to_onnx(model)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 28, 28]
    assert proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    props = {p.key: p.value for p in proto.metadata_props}
    assert "255" in props["input_scaling"] and "255" in proto.doc_string
    onnx.checker.check_model(proto, full_check=True)
    for n in (1, 3, 50):
        x = np.random.default_rng(n).random((n, 1, 28, 28), dtype=np.float32)
        (out,) = run_onnx(proto, {"input": x})
        np.testing.assert_allclose(out, model.predict(x), atol=TOL, rtol=0)


class Square(Layer):
    def forward(self, x, training=False):
        return x * x


class MyReLU(ReLU):
    pass


@pytest.mark.parametrize("layer, kind", [(Square(), "Square"), (MyReLU(), "MyReLU")])
def test_a_layer_without_mapping_is_named(layer, kind, tmp_path):
    model = xpnet.Sequential([Flatten(), Dense(4), layer, Dense(2)], input_shape=(3,), device="cpu")
    path = tmp_path / "m.onnx"
    with pytest.raises(ConfigError, match=rf"layer '{model.layers[2].name}' \({kind}\).*no ONNX mapping"):
        xpnet.export_onnx(model, path)
    assert not os.listdir(tmp_path)  # nothing written, not even a temporary file


def test_bad_opset_and_unbuilt_model():
    model = xpnet.models.get("quick-mlp").build(device="cpu")
    for opset in (12, 10_000, "17", True):
        with pytest.raises(ConfigError, match="opset must be an integer from 13"):
            xpnet.onnx_export.to_onnx(model, opset=opset)
    with pytest.raises(ConfigError, match="not built"):
        xpnet.onnx_export.to_onnx(xpnet.Sequential([Dense(3)]))


def test_missing_onnx_names_the_extra(monkeypatch, tmp_path, capsys):
    model = xpnet.models.get("quick-mlp").build(device="cpu")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(ImportError, match=r"xpnet\[onnx\]"):
        xpnet.export_onnx(model, tmp_path / "m.onnx")
    model.save(tmp_path / "m.npz")
    assert cli.main(["export", str(tmp_path / "m.npz"), str(tmp_path / "m.onnx")]) == 2
    assert "xpnet[onnx]" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("run", ["seed001-m9", "seed003-lenet5-bn"])
def test_trained_run_folder_round_trip(run, tmp_path, capsys):
    """`xpnet export RUN_DIR` then ONNX Runtime on the whole MNIST test set makes exactly the
    mistakes the run recorded, and agrees with model.predict on a batch."""
    folder = os.path.join(ROOT, "docs", "runs", run)
    out_file = str(tmp_path / "model.onnx")
    assert cli.main(["export", folder, out_file]) == 0
    assert "divide uint8 pixels by 255" in capsys.readouterr().out
    with open(os.path.join(folder, "result.json")) as f:
        result = json.load(f)
    x, y = xpnet.datasets.load("mnist")[1]
    assert result["test_samples"] == len(y)
    (logits,) = run_onnx(out_file, {"input": x.astype(np.float32) / 255})
    assert int((logits.argmax(axis=1) != y).sum()) == result["mistakes"]
    model = xpnet.load(os.path.join(folder, "model.npz"), device="cpu", compile=False)
    ref = model.predict(x[:BATCH].astype(np.float32) / 255)
    # trained logits reach |20|, where float32 spacing is 2e-6: 1e-5 relative to the logit size
    np.testing.assert_allclose(logits[:BATCH], ref, rtol=TOL, atol=TOL)
    assert np.array_equal(logits[:BATCH].argmax(axis=1), ref.argmax(axis=1))


def test_export_refuses_to_write_over_its_model_or_a_non_file(tmp_path, capsys):
    """`xpnet export m.npz m.npz` (or RUN_DIR RUN_DIR/model.npz) would replace the model with ONNX
    bytes, and a device or folder as the output would be replaced too: refused, the model intact."""
    model = xpnet.models.get("quick-mlp").build(device="cpu")
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()
    (tmp_path / "folder.onnx").mkdir()
    for out, message in ((path, "the model file itself"), (tmp_path / "folder.onnx", "not a regular file"),
                         (tmp_path / "missing" / "m.onnx", "its folder does not exist")):
        assert cli.main(["export", str(path), str(out)]) == 2
        assert message in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path), str(path)]) == 2   # the folder has no model.npz yet
    assert "no such model file" in capsys.readouterr().err          # (the same file: just below)
    os.replace(path, tmp_path / "model.npz")
    assert cli.main(["export", str(tmp_path), str(tmp_path / "model.npz")]) == 2
    assert "the model file itself" in capsys.readouterr().err
    assert (tmp_path / "model.npz").read_bytes() == before


def test_export_where_writing_fails_is_one_line(tmp_path, capsys, monkeypatch):
    """A read-only folder (simulated: the tests run as root), a full disk and /sys end with one
    line naming the .onnx file and the reason, never the temporary file; nothing is left."""
    import errno

    import xpnet.serialization as ser
    model = xpnet.models.get("quick-mlp").build(device="cpu")
    model.save(tmp_path / "m.npz")
    out = tmp_path / "out"
    out.mkdir()
    for code in (errno.EACCES, errno.EROFS, errno.ENOSPC):
        def fail(src, dst, code=code):
            raise OSError(code, os.strerror(code), src)
        with monkeypatch.context() as m:
            m.setattr(ser.os, "replace", fail)
            assert cli.main(["export", str(tmp_path / "m.npz"), str(out / "m.onnx")]) == 2
        err = capsys.readouterr().err
        assert err == f"xpnet export: error: cannot write {out / 'm.onnx'}: {os.strerror(code)}\n"
        assert os.listdir(out) == []
    if os.path.isdir("/sys"):
        assert cli.main(["export", str(tmp_path / "m.npz"), "/sys/m.onnx"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("xpnet export: error: cannot write /sys/m.onnx: ") and err.count("\n") == 1


def test_export_where_the_system_takes_no_new_files_says_so(tmp_path, capsys, monkeypatch):
    """/proc/x.onnx (even as root) ended with the kernel's bare "No such file or directory", which
    reads as a missing folder: the line now names the folder that takes no new files. Simulated
    in tmp_path, then /proc itself where it refuses."""
    import errno
    import tempfile

    import xpnet.serialization as ser
    model = xpnet.models.get("quick-mlp").build(device="cpu")
    model.save(tmp_path / "m.npz")
    out = tmp_path / "out"
    out.mkdir()

    def refuse(*args, **kwargs):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(out / "m.onnx.x.tmp"))
    with monkeypatch.context() as m:
        m.setattr(ser.tempfile, "mkstemp", refuse)
        with pytest.raises(xpnet.DataError) as caught:
            xpnet.export_onnx(model, out / "m.onnx")
    assert str(caught.value) == (f"cannot write {out / 'm.onnx'}: {out} does not take new files (the "
                                 f"system answered \"No such file or directory\", as special file "
                                 f"systems such as /proc and /sys do); give a path in an ordinary folder")
    assert os.listdir(out) == []
    try:
        os.close(tempfile.mkstemp(dir="/proc")[0])
        pytest.skip("/proc takes new files here")
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            pytest.skip(f"/proc refuses new files with {exc.strerror} here")
    assert cli.main(["export", str(tmp_path / "m.npz"), "/proc/m.onnx"]) == 2
    assert capsys.readouterr().err == ("xpnet export: error: cannot write /proc/m.onnx: /proc does not "
                                       "take new files (the system answered \"No such file or "
                                       "directory\", as special file systems such as /proc and /sys "
                                       "do); give a path in an ordinary folder\n")


def test_export_checks_its_folder_before_building_the_graph(tmp_path, monkeypatch):
    """A folder without write permission is named before the ONNX graph is built (as save_model
    and the file-writing callbacks check first), not by the write at the end."""
    import xpnet.onnx_export as ox
    model = xpnet.models.get("quick-mlp").build(device="cpu")
    monkeypatch.setattr(ox, "to_onnx", lambda *a, **k: pytest.fail("built before the check"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)   # the tests run as root
    with pytest.raises(xpnet.DataError, match=rf"^cannot write {tmp_path / 'm.onnx'}: no permission "
                                              rf"to write into {tmp_path}$"):
        xpnet.export_onnx(model, tmp_path / "m.onnx")


def test_layers_and_inputs_named_like_the_graph_outputs(tmp_path, capsys):
    """A layer named "output" (or "output_0"/"output_1" with two outputs), or an Input named
    "output", made the same tensor name twice: ONNX's checker refused the graph (not SSA) with a
    traceback. The graph outputs' names are reserved first; the file runs and matches xpnet."""
    seq = xpnet.Sequential([Flatten(), Dense(10, name="output")], input_shape=(1, 28, 28),
                           device="cpu", seed=1)
    seq.save(tmp_path / "n.npz")
    assert cli.main(["export", str(tmp_path / "n.npz"), str(tmp_path / "n.onnx")]) == 0
    capsys.readouterr()
    x = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    (out,) = run_onnx(str(tmp_path / "n.onnx"), {"input": x})
    np.testing.assert_allclose(out, seq.predict(x), atol=TOL, rtol=0)

    inp = Input((4,), name="output")
    h = Dense(6, name="output_0")(inp)
    two = Model(inp, [Dense(3, name="output_1")(h), Dense(2)(h)], device="cpu", seed=2)
    x = np.random.default_rng(1).random((3, 4), dtype=np.float32)
    outs = run_onnx(xpnet.onnx_export.to_onnx(two), {"output": x})
    refs = [two.backend.to_numpy(o) for o in two.forward(x)]
    assert len(outs) == len(refs) == 2
    for out, ref in zip(outs, refs):
        np.testing.assert_allclose(out, ref, atol=TOL, rtol=0)

    one = Model(inp, Dense(3, name="output_1")(inp), device="cpu", seed=3)
    proto = xpnet.onnx_export.to_onnx(one)
    assert [o.name for o in proto.graph.output] == ["output_1"]
    (out,) = run_onnx(proto, {"output": x})
    np.testing.assert_allclose(out, one.backend.to_numpy(one.forward(x)), atol=TOL, rtol=0)


def test_a_graph_the_checker_refuses_is_a_config_error(monkeypatch, tmp_path, capsys):
    """onnx.checker.ValidationError (many lines) becomes a one-line ConfigError; nothing written."""
    def refuse(proto, full_check=False):
        raise onnx.checker.ValidationError("Graph must be in single static assignment (SSA) form\n\n"
                                           "==> Context: Bad node spec")
    monkeypatch.setattr(onnx.checker, "check_model", refuse)
    model = xpnet.models.get("quick-mlp").build(device="cpu")
    model.save(tmp_path / "m.npz")
    assert cli.main(["export", str(tmp_path / "m.npz"), str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xpnet export: error: cannot export") and err.count("\n") == 1
    assert "single static assignment" in err
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


def test_export_under_a_file_says_the_file_is_in_the_way(tmp_path, capsys):
    """text.npz/x.onnx where text.npz is a file: not 'its folder does not exist'."""
    model = xpnet.models.get("quick-mlp").build(device="cpu")
    model.save(tmp_path / "m.npz")
    (tmp_path / "text.npz").write_text("x")
    for out in (tmp_path / "text.npz" / "x.onnx", tmp_path / "text.npz" / "sub" / "x.onnx"):
        assert cli.main(["export", str(tmp_path / "m.npz"), str(out)]) == 2
        assert capsys.readouterr().err == (f"xpnet export: error: cannot write {out}: "
                                           f"{tmp_path / 'text.npz'} is a file, not a folder\n")
