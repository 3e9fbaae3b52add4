"""Checkpoints and resume: 4 epochs == 2 + resume + 2, bit for bit, on numpy and strict."""
import csv

import numpy as np
import pytest

import xpnet
from xpnet import callbacks, optim, schedules
from xpnet.checkpoint import checkpoint_path
from xpnet.errors import DataError, TrainingError
from xpnet.layers import BatchNorm, Dense, Dropout, ReLU
from xpnet.serialization import load_npz


def data(n=80, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, 6)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 0.8)


def jitter(xb, rng):
    return xb + rng.normal(0.0, 0.05, shape=xb.shape, dtype="float32")


def build(backend, seed=4):
    m = xpnet.Sequential([Dense(10), BatchNorm(), ReLU(), Dropout(0.3), Dense(3)], input_shape=(6,),
                         device=backend, seed=seed)
    return m.compile(optimizer=optim.Adam(0.01))


def make_callbacks(tmp, tag):
    return [callbacks.EarlyStopping(monitor="val_loss", patience=50, restore_best_weights=True),
            callbacks.LearningRateScheduler(schedules.WarmupHalving(0.005, k=2, late_start=3)),
            callbacks.ReduceLROnPlateau(monitor="loss", patience=1, factor=0.5, min_delta=10.0),
            callbacks.CSVLogger(tmp / f"{tag}.csv")]


def run(backend, tmp, tag, epochs, checkpoint=None, resume=False, cbs=None):
    x, y = data()
    m = build(backend)
    h = m.fit(x, y, epochs=epochs, batch_size=16, validation_split=0.25, augment=jitter,
              callbacks=cbs if cbs is not None else make_callbacks(tmp, tag), checkpoint=checkpoint,
              resume=resume, verbose=0)
    return m, h


def state(m):
    out = {k: m.backend.to_numpy(v) for k, v in m.parameters.items()}
    out.update({k: m.backend.to_numpy(v) for k, v in m.buffers.items()})
    return out


def assert_same(a, b):
    sa, sb = state(a), state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert np.array_equal(sa[k], sb[k]), k


def test_two_plus_two_equals_four(backend, tmp_path):
    full, h_full = run(backend, tmp_path, "full", 4)
    ck = tmp_path / "ck"
    _, h_first = run(backend, tmp_path, "part", 2, checkpoint=ck)
    assert h_first.epoch == [0, 1]
    resumed, h_res = run(backend, tmp_path, "part", 4, checkpoint=ck, resume=True)
    assert_same(full, resumed)
    assert h_res.epoch == [0, 1, 2, 3]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert h_res.history[key] == h_full.history[key], key
    assert resumed.optimizer.iterations == full.optimizer.iterations == 4 * 4
    rows = list(csv.DictReader((tmp_path / "part.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["loss"]) for r in rows] == h_full.history["loss"]


def test_reduce_lr_on_plateau_resumes_its_wait(tmp_path):
    """The test above cannot see ReduceLROnPlateau: its scheduler sets the rate at every epoch's
    start, over any reduction. Alone, a wait of 1 saved after epoch 2 must bring the halving of
    epoch 3's end into epoch 4, as in the run without a break."""
    def cbs():
        return [callbacks.ReduceLROnPlateau(monitor="loss", patience=2, factor=0.5, min_delta=10.0)]

    full, h_full = run("numpy", tmp_path, "a", 4, cbs=cbs())
    assert h_full.history["lr"] == [0.01, 0.01, 0.01, 0.005]
    ck = tmp_path / "ck"
    run("numpy", tmp_path, "b", 2, checkpoint=ck, cbs=cbs())
    resumed, h = run("numpy", tmp_path, "b", 4, checkpoint=ck, resume=True, cbs=cbs())
    assert h.history["lr"] == h_full.history["lr"]
    assert_same(full, resumed)


def test_resume_after_a_finished_run_continues(tmp_path):
    full, _ = run("numpy", tmp_path, "a", 5, cbs=[])
    ck = tmp_path / "ck"
    run("numpy", tmp_path, "b", 3, checkpoint=ck, cbs=[])
    resumed, h = run("numpy", tmp_path, "b", 5, checkpoint=ck, resume=True, cbs=[])
    assert_same(full, resumed)
    assert h.epoch == [0, 1, 2, 3, 4]


def test_resume_when_already_done_trains_nothing(tmp_path):
    ck = tmp_path / "ck"
    first, _ = run("numpy", tmp_path, "a", 2, checkpoint=ck, cbs=[])
    again, h = run("numpy", tmp_path, "a", 2, checkpoint=ck, resume=True, cbs=[])
    assert_same(first, again)
    assert h.epoch == [0, 1] and again.optimizer.iterations == 8


def test_checkpoint_contents(tmp_path):
    m, _ = run("numpy", tmp_path, "a", 2, checkpoint=tmp_path, cbs=make_callbacks(tmp_path, "a"))
    arrays, meta = load_npz(checkpoint_path(tmp_path))
    assert meta["format"] == "xpnet-checkpoint" and meta["epoch"] == 1
    assert {"param/dense.W", "param/batch_norm.gamma", "buffer/batch_norm.running_mean",
            "buffer/batch_norm.running_var"} <= set(arrays)
    assert np.array_equal(arrays["param/dense.W"], m.backend.to_numpy(m.parameters["dense.W"])) or \
        meta["callbacks"][1]["state"]["best_epoch"] != 1  # EarlyStopping may have restored epoch 0
    assert set(meta["rngs"]) == {"shuffle", "augment"}
    assert "dropout.rng" in meta["layer_rngs"]
    assert meta["callbacks"][0]["class"] == "History"
    es = meta["callbacks"][1]
    assert es["class"] == "EarlyStopping" and es["arrays"]  # best weights are kept
    assert meta["optimizer"]["class"] == "Adam"
    assert not list(tmp_path.glob("*.tmp"))


def test_interrupt_keeps_the_last_complete_epoch(tmp_path, capsys):
    class Interrupt(callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt

    ck = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt) as info:  # a TrainingInterrupted whose message says it all
        run("strict", tmp_path, "a", 4, checkpoint=ck, cbs=[Interrupt()])
    err = str(info.value)
    assert "interrupted during epoch 3" in err and "epoch (2) is saved in" in err
    assert info.value.epoch == 3 and info.value.saved_epoch == 2
    assert str(checkpoint_path(ck)) in err and "resume=True" in err
    resumed, _ = run("strict", tmp_path, "a", 4, checkpoint=ck, resume=True, cbs=[])
    full, _ = run("strict", tmp_path, "b", 4, cbs=[])
    assert_same(full, resumed)


def test_interrupt_without_checkpoint_says_so(tmp_path, capsys):
    class Interrupt(callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        run("numpy", tmp_path, "a", 2, cbs=[Interrupt()])
    assert "pass checkpoint=DIR" in str(info.value)


def test_early_stopped_run_resumes_as_stopped(tmp_path):
    def cbs():
        return [callbacks.EarlyStopping(monitor="val_loss", patience=0, min_delta=1.0,
                                        restore_best_weights=True)]

    full, h_full = run("numpy", tmp_path, "a", 6, cbs=cbs())
    assert h_full.epoch == [0, 1]
    ck = tmp_path / "ck"
    run("numpy", tmp_path, "b", 6, checkpoint=ck, cbs=cbs())
    resumed, h = run("numpy", tmp_path, "b", 6, checkpoint=ck, resume=True, cbs=cbs())
    assert h.epoch == [0, 1]
    assert_same(full, resumed)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(TrainingError, match=r"no checkpoint at .*ck.*last\.npz"):
        run("numpy", tmp_path, "a", 2, checkpoint=tmp_path / "ck", resume=True, cbs=[])


def test_corrupt_checkpoint(tmp_path):
    run("numpy", tmp_path, "a", 1, checkpoint=tmp_path, cbs=[])
    path = checkpoint_path(tmp_path)
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="last.npz"):
        run("numpy", tmp_path, "a", 2, checkpoint=tmp_path, resume=True, cbs=[])


def test_checkpoint_of_another_model(tmp_path):
    run("numpy", tmp_path, "a", 1, checkpoint=tmp_path, cbs=[])
    x, y = data()
    other = xpnet.Sequential([Dense(7), ReLU(), Dense(3)], input_shape=(6,)).compile()
    with pytest.raises(TrainingError, match="does not match this model|has shape"):
        other.fit(x, y, epochs=2, checkpoint=tmp_path, resume=True, verbose=0)
    sgd = build("numpy").compile(optimizer=optim.SGD(0.1))
    with pytest.raises(TrainingError, match="optimizer Adam"):
        sgd.fit(x, y, epochs=2, checkpoint=tmp_path, resume=True, verbose=0)


def test_initial_epoch_without_resume():
    x, y = data()
    m = build("numpy")
    h = m.fit(x, y, epochs=5, initial_epoch=3, batch_size=16, verbose=0)
    assert h.epoch == [3, 4] and m.optimizer.iterations == 10


def test_resume_auto(tmp_path):
    ck = tmp_path / "ck"
    first, h = run("numpy", tmp_path, "a", 2, checkpoint=ck, resume="auto", cbs=[])  # nothing yet
    assert h.epoch == [0, 1]
    resumed, h = run("numpy", tmp_path, "a", 3, checkpoint=ck, resume="auto", cbs=[])
    full, _ = run("numpy", tmp_path, "b", 3, cbs=[])
    assert h.epoch == [0, 1, 2]
    assert_same(full, resumed)
    with pytest.raises(xpnet.ConfigError, match="resume must be"):
        run("numpy", tmp_path, "a", 3, checkpoint=ck, resume="yes", cbs=[])


def test_checkpoint_of_another_dtype_is_refused(tmp_path):
    """fit(resume=True) with the model built in float64 from a float32 run's checkpoint: refused
    (it was converted silently)."""
    run("numpy", tmp_path, "a", 1, checkpoint=tmp_path, cbs=[])
    x, y = data()
    m = xpnet.Sequential([Dense(10), BatchNorm(), ReLU(), Dropout(0.3), Dense(3)], input_shape=(6,),
                         seed=4, dtype="float64").compile(optimizer=optim.Adam(0.01))
    with pytest.raises(TrainingError, match="holds a float32 model but this model is float64"):
        m.fit(x, y, epochs=2, batch_size=16, validation_split=0.25, checkpoint=tmp_path, resume=True,
              verbose=0)
