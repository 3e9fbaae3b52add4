"""Bad input to the training API (compile / fit / evaluate / predict, models, layers, saving):
each case is a clear xpnet error naming what was wrong, or the Keras behaviour. Found by an
audit of the Python API with bad input."""
import os
import re

import numpy as np
import pytest

import xpnet
from xpnet import callbacks, optim
from xpnet.errors import ConfigError, DataError, ShapeError
from xpnet.graph import Input, Model
from xpnet.layers import Add, Conv2D, Dense, ReLU
from xpnet.serialization import atomic_write_bytes


def data(n=24, features=6, classes=3, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, features)).astype(np.float32)
    return x, r.integers(0, classes, n)


def mlp(device="cpu", **kw):
    m = xpnet.Sequential([Dense(8), ReLU(), Dense(3)], input_shape=(6,), device=device, **kw)
    return m.compile(loss="cross_entropy", optimizer="sgd", metrics=["accuracy"])


def same(a, b):
    return all(np.array_equal(u, v) for u, v in zip(a, b))


# -- item 2: a layer that another model already built --------------------------------------------
def test_a_built_layer_in_a_new_model_shares_its_weights_not_reinitialised():
    x, y = data()
    d = Dense(3)
    m1 = xpnet.Sequential([d], input_shape=(6,), seed=1).compile(optimizer="sgd")
    m1.fit(x, y, epochs=2, verbose=0)
    trained = m1.get_weights()
    before = m1.predict(x)
    m2 = xpnet.Sequential([d], input_shape=(6,), seed=2)   # another seed would draw other weights
    assert same(m1.get_weights(), trained)
    assert same(m2.get_weights(), trained)
    np.testing.assert_array_equal(m1.predict(x), before)


def test_a_built_layer_is_refused_for_another_input_shape_and_the_first_model_still_works():
    x, y = data()
    d = Dense(3)
    m1 = xpnet.Sequential([d], input_shape=(6,)).compile(optimizer="sgd")
    before = m1.predict(x)
    with pytest.raises(ConfigError, match=r"already built for input shape \('batch', 6\).*"
                                          r"\('batch', 4\).*create a new layer"):
        xpnet.Sequential([d], input_shape=(4,))
    np.testing.assert_array_equal(m1.predict(x), before)
    m1.fit(x, y, verbose=0)


def test_a_built_layer_is_refused_on_another_dtype():
    """Both dtypes named: "float64" alone is the argument given back."""
    d = Dense(3)
    xpnet.Sequential([d], input_shape=(6,), dtype="float32")
    with pytest.raises(ConfigError, match=r"layer 'dense' \(Dense\) is already built on backend \w+ "
                                          r"with float32; this model uses \w+ with float64"):
        xpnet.Sequential([d], input_shape=(6,), dtype="float64")


def test_a_failed_build_leaves_its_new_layers_unbuilt():
    d = Dense(4)
    with pytest.raises(ShapeError):
        xpnet.Sequential([d, Conv2D(2, 3)], input_shape=(6,))   # a convolution on rank-1 input
    assert not d.built
    assert xpnet.Sequential([d], input_shape=(5,)).output_shape == (4,)


def test_a_shared_layer_keeps_each_models_own_fused_neighbours():
    """On the strict backend (as on a GPU) a Dense links the ReLU after it (bias + ReLU in one
    pass). A second model that shares the Dense without that ReLU must not apply it, nor stop the
    first from applying it."""
    x, _ = data()
    d = Dense(5)
    m2 = xpnet.Sequential([d], input_shape=(6,), device="strict", dtype="float64")
    m1 = xpnet.Sequential([d, ReLU(), Dense(3)], input_shape=(6,), device="strict", dtype="float64")
    assert d.relu_after is m1.layers[1]   # m1 linked last: its ReLU runs inside the Dense
    xd = x.astype(np.float64)
    w, b = m1.get_weights()[:2]
    plain = xd @ w + b
    assert (plain < 0).any()
    np.testing.assert_allclose(m2.backend.to_numpy(m2.forward(m2.backend.asarray(xd))), plain)
    w2, b2 = m1.get_weights()[2:]
    expected = np.maximum(plain, 0) @ w2 + b2
    np.testing.assert_allclose(m1.backend.to_numpy(m1.forward(m1.backend.asarray(xd))), expected)
    np.testing.assert_allclose(m2.backend.to_numpy(m2.forward(m2.backend.asarray(xd))), plain)
    # a functional Model with the Dense but not the ReLU, run right after m1 (whose links are set)
    inp = Input(6)
    g = Model(inp, d(inp), device="strict", dtype="float64")
    m1.forward(m1.backend.asarray(xd))
    assert d.relu_after is m1.layers[1]
    np.testing.assert_allclose(g.backend.to_numpy(g.forward(g.backend.asarray(xd))), plain)
    np.testing.assert_allclose(m1.backend.to_numpy(m1.forward(m1.backend.asarray(xd))), expected)


# -- item 3: build() on a built model ------------------------------------------------------------
def test_build_again_with_the_same_shape_keeps_the_trained_weights():
    x, y = data()
    m = mlp()
    m.fit(x, y, epochs=2, verbose=0)
    trained = m.get_weights()
    assert m.build((6,)) is m
    m.build(6)
    assert same(m.get_weights(), trained)


def test_build_again_with_another_shape_is_refused():
    m = mlp()
    with pytest.raises(ConfigError, match=r"already built for input shape \('batch', 6\)"):
        m.build((4,))
    with pytest.raises(ShapeError, match="positive sizes"):
        xpnet.Sequential([Dense(2)]).build(("a",))


# -- item 4: accuracy needs one output per class -------------------------------------------------
def test_default_metrics_leave_accuracy_out_for_one_output_column(tmp_path):
    x, _ = data()
    target = x[:, :1] * 2.0
    m = xpnet.Sequential([Dense(1)], input_shape=(6,)).compile(loss="mse", optimizer="sgd")
    h = m.fit(x, target, epochs=2, validation_split=0.25, verbose=0)
    assert "accuracy" not in h.history and "val_accuracy" not in h.history
    assert set(m.evaluate(x, target)) == {"loss"}
    loaded = xpnet.load(m.save(tmp_path / "m.npz"))
    assert set(loaded.evaluate(x, target)) == {"loss"}
    # compiled before it is built: decided when fit builds it
    lazy = xpnet.Sequential([Dense(1)]).compile(loss="mse", optimizer="sgd")
    assert "accuracy" not in lazy.fit(x, target, verbose=0).history
    # one output per class: the default keeps accuracy
    assert "accuracy" in xpnet.Sequential([Dense(3)], input_shape=(6,)).compile().evaluate(x, data()[1])


def test_accuracy_asked_for_with_one_output_column_is_refused_at_fit_and_evaluate():
    x, _ = data()
    target = x[:, :1]
    m = xpnet.Sequential([Dense(1)], input_shape=(6,)).compile(loss="mse", metrics=["accuracy"])
    for call in (lambda: m.fit(x, target, verbose=0), lambda: m.evaluate(x, target)):
        with pytest.raises(ConfigError, match="one output column.*regression"):
            call()


def test_a_model_saved_without_metrics_loads_without_them(tmp_path):
    x, y = data()
    m = xpnet.Sequential([Dense(3)], input_shape=(6,)).compile(metrics=None)
    assert set(xpnet.load(m.save(tmp_path / "m.npz")).evaluate(x, y)) == {"loss"}


# -- item 5: initial_epoch -----------------------------------------------------------------------
@pytest.mark.parametrize("initial", [-1, 4, 1.5, 1.0, "1", True, None])
def test_initial_epoch_must_be_an_integer_from_0_to_epochs(initial):
    x, y = data()
    m = mlp()
    before = m.get_weights()
    expected = f"initial_epoch must be an integer from 0 to epochs (3), got {initial!r}"
    with pytest.raises(ConfigError, match=re.escape(expected)):   # not only the argument's name
        m.fit(x, y, epochs=3, initial_epoch=initial, verbose=0)
    assert same(m.get_weights(), before)


def test_initial_epoch_equal_to_epochs_trains_nothing():
    x, y = data()
    m = mlp()
    before = m.get_weights()
    h = m.fit(x, y, epochs=2, initial_epoch=2, verbose=0)
    assert h.epoch == [] and same(m.get_weights(), before)
    assert m.fit(x, y, epochs=3, initial_epoch=np.int64(2), verbose=0).epoch == [2]


# -- item 6: shuffle -----------------------------------------------------------------------------
@pytest.mark.parametrize("shuffle", ["false", "no", 0, 1, None])
def test_shuffle_must_be_a_bool(shuffle):
    x, y = data()
    with pytest.raises(ConfigError, match="shuffle must be True or False"):
        mlp().fit(x, y, shuffle=shuffle, verbose=0)


def test_shuffle_false_as_numpy_bool_does_not_shuffle():
    x, y = data()
    a, b = mlp(seed=4), mlp(seed=4)
    a.fit(x, y, shuffle=False, batch_size=8, verbose=0)
    b.fit(x, y, shuffle=np.bool_(False), batch_size=8, seed=9, verbose=0)  # another shuffling seed
    assert same(a.get_weights(), b.get_weights())


# -- item 9: evaluate checks x for NaN as fit does -----------------------------------------------
def test_evaluate_refuses_non_finite_x():
    x, y = data()
    bad = x.copy()
    bad[3, 2], bad[20, 0] = np.nan, np.inf
    m = mlp()
    with pytest.raises(DataError, match=r"evaluate: x contains NaN or infinite values \(2 entries\)"), \
            np.errstate(invalid="ignore"):
        m.evaluate(bad, y, batch_size=8)
    assert np.isfinite(m.evaluate(x, y)["loss"])
    images = (np.abs(x) * 40).astype(np.uint8)
    assert np.isfinite(m.evaluate(images, y)["loss"])


@pytest.mark.parametrize("verbose", ["yes", 3, 0.5, "loud"])
def test_evaluate_refuses_a_verbose_fit_would_refuse(verbose, capsys):
    """evaluate took any value for verbose by its truth ("no" printed); it now takes what fit
    takes ("auto", 0, 1, 2, True, False, None: one verbose for both calls), before any work."""
    x, y = data()
    m = mlp()
    with pytest.raises(ConfigError) as caught:
        m.evaluate(x, y, verbose=verbose)
    assert str(caught.value) == f"evaluate: verbose must be 'auto', 0, 1 or 2, got {verbose!r}"
    for quiet in (0, False, None):
        m.evaluate(x, y, verbose=quiet)
    assert capsys.readouterr() == ("", "")   # quiet on both streams
    for loud in (1, True, 2, "auto"):
        m.evaluate(x, y, verbose=loud)
    out, err = capsys.readouterr()
    assert err.count("loss ") == 4 and out == ""


# -- item 12: several inputs ---------------------------------------------------------------------
def test_fit_evaluate_predict_say_several_inputs_are_not_supported():
    a, b = Input(6, name="a"), Input(6, name="b")
    m = Model([a, b], Dense(3)(Add()([a, b]))).compile()
    x, y = data()
    for call in (lambda: m.fit([x, x], y, verbose=0), lambda: m.fit(x, y, verbose=0),
                 lambda: m.evaluate([x, x], y), lambda: m.predict([x, x])):
        with pytest.raises(ConfigError, match="2 inputs.*take one input array.*not supported"):
            call()
    assert m.forward([x, x]).shape == (24, 3)


# -- item 13: checkpoint= a file, atomic writes to bad paths --------------------------------------
def test_fit_checkpoint_that_is_a_file_is_refused_before_training(tmp_path):
    x, y = data()
    afile = tmp_path / "afile"
    afile.write_text("x")
    m = mlp()
    before = m.get_weights()
    seen = []

    class Count(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(epoch)

    for folder in (afile, afile / "ck"):   # the reason, not only the path given back
        why = f"fit: cannot write the checkpoint {folder / 'last.npz'}: {afile} is a file, not a folder"
        with pytest.raises(DataError, match=re.escape(why)):
            m.fit(x, y, epochs=2, checkpoint=folder, callbacks=[Count()], verbose=0)
    assert seen == [] and same(m.get_weights(), before)
    with pytest.raises(ConfigError, match="checkpoint must be a folder name"):
        m.fit(x, y, checkpoint=5, verbose=0)


def test_atomic_write_names_the_target_not_a_temp_file(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    cases = {str(folder): "is a folder", str(afile / "m.npz"): "is a file, not a folder",
             str(tmp_path / "new") + os.sep: "ends with a path separator"}
    for path, why in cases.items():
        with pytest.raises(DataError, match=why) as err:
            atomic_write_bytes(path, b"data")
        assert path in str(err.value) and ".tmp" not in str(err.value)
    # the folder appears after the check (a race): the OSError becomes the same DataError
    import xpnet.serialization as ser
    monkeypatch.setattr(ser, "check_writable", lambda path, what="": None)
    with pytest.raises(DataError, match="is a folder") as err:
        atomic_write_bytes(folder, b"data")
    assert str(folder) in str(err.value) and ".tmp" not in str(err.value)
    assert os.listdir(folder) == [] and sorted(os.listdir(tmp_path)) == ["afile", "folder"]


# -- item 14: model.save to a folder or under a file ---------------------------------------------
def test_save_to_a_folder_or_under_a_file_is_a_data_error(tmp_path):
    m = mlp()
    afile = tmp_path / "afile"
    afile.write_text("x")
    for path, why in ((tmp_path, "is a folder"), (str(tmp_path / "newdir") + os.sep, "separator"),
                      (afile / "m.npz", "is a file, not a folder")):
        with pytest.raises(DataError, match=why):
            m.save(path)
    assert sorted(os.listdir(tmp_path)) == ["afile"]


# -- items 15, 16, 24: lists instead of arrays ---------------------------------------------------
def test_lists_are_refused_with_a_hint_everywhere():
    x, y = data()
    m = mlp()
    hint = r"is a list; pass a NumPy \(or CuPy\) array, e.g. np.asarray"
    cases = [(lambda: m.fit(x.tolist(), y, verbose=0), "fit: x"),
             (lambda: m.fit(x, list(y), verbose=0), "fit: y"),
             (lambda: m.fit(x, y, validation_data=(x.tolist(), y.tolist()), verbose=0), "x_val"),
             (lambda: m.fit(x, y, validation_data=(x, y.tolist()), verbose=0), "y_val"),
             (lambda: m.evaluate(x, list(y)), "evaluate: y"),
             (lambda: m.evaluate(x.tolist(), y), "evaluate: x"),
             (lambda: m.predict(x.tolist()), "predict: x"),
             (lambda: xpnet.Sequential([Dense(3)]).predict(x.tolist()), "predict: x"),
             (lambda: xpnet.Sequential([Dense(3)]).compile().fit(x.tolist(), y, verbose=0), "fit: x")]
    for call, where in cases:
        with pytest.raises(DataError, match=where + ".*" + hint):
            call()
    with pytest.raises(DataError, match="must be a NumPy"):
        m.predict(None)


# -- item 18: callbacks= ---------------------------------------------------------------------------
def test_one_callback_is_accepted_and_other_objects_are_refused():
    x, y = data()
    seen = []

    class Count(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(epoch)

    mlp().fit(x, y, epochs=2, callbacks=Count(), verbose=0)
    assert seen == [0, 1]
    for bad, name in ((5, "int"), ("abc", "str"), ({"a": Count()}, "dict")):
        with pytest.raises(ConfigError, match=f"callbacks must be a list.*got {name}"):
            mlp().fit(x, y, callbacks=bad, verbose=0)


# -- item 20: compile's optimizer and metrics ----------------------------------------------------
def test_compile_refuses_an_optimizer_class_and_malformed_metrics():
    m = xpnet.Sequential([Dense(3)], input_shape=(6,))
    with pytest.raises(ConfigError, match=r"pass an instance, e.g. optim.Adam\(\)"):
        m.compile(optimizer=optim.Adam)
    for metrics in (5, [["accuracy"]], [None], {"accuracy": 1}):
        with pytest.raises(ConfigError, match="metrics must be a metric name or a list of names"):
            m.compile(metrics=metrics)
    assert m.compile(metrics="acc").metrics == ["accuracy"]
    assert m.compile(metrics=None).metrics == []


# -- item 21: names and seeds --------------------------------------------------------------------
def test_names_must_be_strings_and_seeds_non_negative_integers():
    x, y = data()
    with pytest.raises(ConfigError, match="Dense: name must be a string"):
        Dense(3, name=5)
    with pytest.raises(ConfigError, match="Sequential: name must be a string"):
        xpnet.Sequential([Dense(3)], name=5)
    for seed in ("abc", None, -1, 1.5, True):
        with pytest.raises(ConfigError, match="Sequential: seed must be an integer >= 0"):
            xpnet.Sequential([Dense(3)], seed=seed)
        with pytest.raises(ConfigError, match="Model: seed must be an integer >= 0"):
            inp = Input(6)
            Model(inp, Dense(3)(inp), seed=seed)
    for seed in ("abc", -1, 1.5, True):
        with pytest.raises(ConfigError, match="fit: seed must be an integer >= 0 or None"):
            mlp().fit(x, y, seed=seed, verbose=0)
    assert xpnet.Sequential([Dense(3)], seed=np.int64(3)).seed == 3
    mlp().fit(x, y, seed=np.int64(3), verbose=0)


# -- item 23: wrong types in the model API -------------------------------------------------------
def test_wrong_types_in_the_model_api_are_config_errors():
    x, _ = data()
    with pytest.raises(ConfigError, match="Dense layer is not built.*Input"):
        Dense(3)(x)
    with pytest.raises(ConfigError, match=r"got a single Dense; write Sequential\(\[Dense"):
        xpnet.Sequential(Dense(3))
    with pytest.raises(ConfigError, match="takes a list of layers, got NoneType"):
        xpnet.Sequential(None)
    m = mlp()
    with pytest.raises(ConfigError, match="first argument must be an xpnet model.*wrong way round"):
        xpnet.save_model("x.npz", m)
    with pytest.raises(ConfigError, match="path must be a file name"):
        xpnet.save_model(m, None)
    with pytest.raises(ConfigError, match="print_fn must be a callable"):
        m.summary(print_fn=5)
    inp = Input(6)
    with pytest.raises(ConfigError, match="print_fn must be a callable"):
        Model(inp, Dense(3)(inp)).summary(print_fn="yes")
    assert "Total params" in m.summary(print_fn=None)
    built = m.layers[0]
    with pytest.raises(ShapeError, match="takes a NumPy or CuPy array, got list; convert"):
        built(x.tolist())


# -- item 25: the whole array's shape in shape errors --------------------------------------------
def test_shape_errors_report_the_whole_array_shape():
    x, y = data()
    wrong = np.zeros((24, 5), np.float32)
    m = mlp()
    with pytest.raises(ShapeError, match=r"got \(24, 5\)"):
        m.fit(wrong, y, verbose=0)
    with pytest.raises(ShapeError, match=r"got \(7, 5\)"):
        m.fit(x, y, validation_data=(wrong[:7], y[:7]), verbose=0)
    with pytest.raises(ShapeError, match=r"got \(24, 5\)"):
        m.evaluate(wrong, y)
    with pytest.raises(ShapeError, match=r"got \(300, 5\)"):
        m.predict(np.zeros((300, 5), np.uint8), batch_size=16)


# -- item 27: set_weights with something other than a list of arrays -----------------------------
def test_set_weights_names_what_it_got():
    m = mlp()
    weights = m.get_weights()
    with pytest.raises(ShapeError, match=r"weight 0 \(dense.W\) must be an array of shape \(6, 8\), "
                                         r"got list"):
        m.set_weights([w.tolist() for w in weights])
    with pytest.raises(ConfigError, match="takes a list of arrays.*got dict"):
        m.set_weights({"dense.W": weights[0]})
    m.set_weights(tuple(weights))


def test_a_last_batch_of_one_sample_before_a_dense_batchnorm_is_refused_before_training():
    """33 samples in batches of 32 leave one sample over, and a BatchNorm after a Dense cannot
    normalise one value per channel: refused before the first step (it stopped in the middle of
    the first epoch with a ShapeError), while a convolution's BatchNorm (many positions) goes on."""
    from xpnet.layers import BatchNorm, Flatten
    r = np.random.default_rng(0)
    y = np.arange(33) % 3
    m = xpnet.Sequential([Dense(8), BatchNorm(), ReLU(), Dense(3)], input_shape=(5,), seed=0)
    m.compile(loss="cross_entropy", optimizer=optim.Adam(0.01))
    before = [m.backend.to_numpy(w).copy() for w in m.get_weights()]
    with pytest.raises(ConfigError, match=r"last batch of each epoch would hold 1 sample \(33 samples in "
                                          r"batches of 32\), and layer 'batch_norm' \(BatchNorm\)"):
        m.fit(r.random((33, 5), dtype=np.float32), y, batch_size=32, verbose=0)
    assert same(before, [m.backend.to_numpy(w) for w in m.get_weights()])
    m.fit(r.random((33, 5), dtype=np.float32), y, batch_size=11, verbose=0)
    c = xpnet.Sequential([Conv2D(4, 3), BatchNorm(), ReLU(), Flatten(), Dense(3)], input_shape=(1, 6, 6), seed=0)
    c.compile(loss="cross_entropy", optimizer=optim.Adam(0.01))
    c.fit(r.random((33, 1, 6, 6), dtype=np.float32), y, batch_size=32, verbose=0)


@pytest.mark.parametrize("shape", [(6.5,), ("6",), (True,), (0,), (6, -1)])
def test_an_input_shape_of_other_than_positive_whole_numbers_is_refused(shape):
    """6.5 and "6" went through int() as 6."""
    with pytest.raises(ShapeError, match="input_shape must be a tuple of positive sizes"):
        xpnet.Sequential([Dense(3)], input_shape=shape)
    assert xpnet.Sequential([Dense(3)], input_shape=(np.int64(6),)).input_shape == (6,)


@pytest.mark.parametrize("shape", [(6.5,), ("6",), (True,), 0])
def test_an_input_of_other_than_positive_whole_numbers_is_refused(shape):
    with pytest.raises(ShapeError, match=r"Input: shape must be a tuple of positive sizes"):
        Input(shape)
    assert Input(784).shape == (784,)


def test_target_shape_messages_say_what_to_pass():
    x = np.random.default_rng(0).random((24, 6), dtype=np.float32)
    m = xpnet.Sequential([Dense(1)], input_shape=(6,)).compile(loss="mse", optimizer="adam")
    with pytest.raises(ShapeError, match=r"got shape \(24,\);.*or one value per sample as y.reshape\(-1, 1\)"):
        m.fit(x, np.zeros(24, np.float32), verbose=0)
    m.fit(x, np.zeros((24, 1), np.float32), verbose=0)
    m3 = xpnet.Sequential([Dense(3)], input_shape=(6,)).compile(loss="cross_entropy", optimizer="adam")
    with pytest.raises(ShapeError, match=r"got \(24, 3\); for one-hot rows pass y.argmax\(axis=1\)"):
        m3.fit(x, np.eye(3, dtype=np.int64)[np.arange(24) % 3], verbose=0)


def test_a_softmax_before_cross_entropy_is_warned_about():
    """cross_entropy takes logits: a model ending with Softmax squashes twice, silently before."""
    from xpnet.layers import LogSoftmax, Softmax
    m = xpnet.Sequential([Dense(3), Softmax()], input_shape=(6,))
    with pytest.warns(UserWarning, match=r"ends with a Softmax layer \('softmax'\) and the loss "
                                         r"cross_entropy takes logits"):
        m.compile(loss="cross_entropy", optimizer="adam")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xpnet.Sequential([Dense(3)], input_shape=(6,)).compile(loss="cross_entropy", optimizer="adam")
        xpnet.Sequential([Dense(3), LogSoftmax()], input_shape=(6,)).compile(loss="nll", optimizer="adam")
        m.compile(loss="mse", optimizer="adam")


@pytest.mark.parametrize("rank", [0, 1])
def test_the_softmax_warning_shows_on_rank_zero_only(rank):
    """Every rank of a data-parallel job compiles the same model, and every rank showed this
    warning; rank 0 alone shows it now, as callbacks' warnings. The job's rank is faked as in
    tests/test_distributed_units.py: an installed abort guard, as distributed.init() leaves."""
    import warnings

    from xpnet.distributed import base
    from xpnet.layers import Softmax
    guard = base.AbortOnError(lambda code: None, rank)
    guard.install()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m = xpnet.Sequential([Dense(3), Softmax()], input_shape=(6,))
            m.compile(loss="cross_entropy", optimizer="adam")
    finally:
        guard.uninstall()
    shown = [str(w.message) for w in caught if "ends with a Softmax layer" in str(w.message)]
    assert len(shown) == (0 if rank else 1)
    assert m.loss is not None   # rank 1 compiled all the same
