"""The TensorBoard callback: event files read back with TensorBoard's EventAccumulator (tags, steps,
values against History), histograms and filter images, resume, no per-batch host syncs, the CLI."""
import glob
import json
import os
import sys

import numpy as np
import pytest

import xpnet
from xpnet import callbacks, cli, optim
from xpnet.backends.strict_backend import COUNTERS
from xpnet.layers import BatchNorm, Conv2D, Dense, Flatten, ReLU

pytest.importorskip("tensorboardX", reason="tensorboardX is not installed: pip install 'xpnet[tensorboard]'")
event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="the tensorboard package (to read event files back) is not installed")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(folder):
    acc = event_accumulator.EventAccumulator(
        str(folder), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
    acc.Reload()
    return acc


def scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def data(n=96, seed=0):
    r = np.random.default_rng(seed)
    x = r.random((n, 1, 8, 8), dtype=np.float32)
    y = (x[:, 0, :4].sum(axis=(1, 2)) > x[:, 0, 4:].sum(axis=(1, 2))).astype(np.int64)
    return x, y


def cnn(backend="cpu", seed=0):
    m = xpnet.Sequential([Conv2D(4, 3), ReLU(), BatchNorm(), Flatten(), Dense(2)], input_shape=(1, 8, 8),
                         device=backend, seed=seed)
    return m.compile(loss="cross_entropy", optimizer=optim.Adam(0.01), metrics=["accuracy"])


def as_f32(values):
    return [float(np.float32(v)) for v in values]


def assert_filter_grid(event, w):
    """The image ``event`` shows the filters ``w`` (N <= 8, 1, h, w) side by side, each scaled to
    its own [0, 1] (gray), to within one of 255 levels: checked by decoding the PNG."""
    import io

    from PIL import Image
    low = w.min(axis=(1, 2, 3), keepdims=True)
    span = w.max(axis=(1, 2, 3), keepdims=True) - low
    span[span == 0] = 1.0
    want = np.concatenate(list(((w - low) / span)[:, 0]), axis=1) * 255
    got = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")).astype(np.float64)
    assert got.shape == want.shape + (3,)
    assert (got == got[..., :1]).all()   # gray
    assert np.abs(got[..., 0] - want).max() <= 1


def test_scalars_match_history(tmp_path):
    x, y = data()
    model = cnn()
    schedule = callbacks.LearningRateScheduler(lambda epoch: 0.01 / (epoch + 1))
    h = model.fit(x, y, epochs=3, batch_size=16, validation_split=0.25, verbose=0,
                  callbacks=[schedule, callbacks.TensorBoard(tmp_path)])
    train, val = read(tmp_path / "train"), read(tmp_path / "validation")
    assert sorted(train.Tags()["scalars"]) == ["epoch_accuracy", "epoch_learning_rate", "epoch_loss",
                                               "epoch_seconds"]
    assert sorted(val.Tags()["scalars"]) == ["epoch_accuracy", "epoch_loss"]
    for acc, tag, key in [(train, "epoch_loss", "loss"), (train, "epoch_accuracy", "accuracy"),
                          (train, "epoch_learning_rate", "lr"), (train, "epoch_seconds", "seconds"),
                          (val, "epoch_loss", "val_loss"), (val, "epoch_accuracy", "val_accuracy")]:
        assert scalars(acc, tag) == list(zip([0, 1, 2], as_f32(h.history[key]))), tag
    assert as_f32(h.history["lr"]) == as_f32([0.01, 0.005, 0.01 / 3])
    assert not train.Tags()["histograms"] and not train.Tags()["images"]


def test_histograms_and_filter_images(tmp_path):
    x, y = data()
    model = cnn()
    model.fit(x, y, epochs=3, batch_size=32, verbose=0,
              callbacks=[callbacks.TensorBoard(tmp_path, histogram_freq=2, write_images=True)])
    train = read(tmp_path / "train")
    assert not os.path.exists(tmp_path / "validation")  # no validation data, no validation run
    names = sorted(k.replace(".", "/", 1) for k in list(model.parameters) + list(model.buffers))
    assert sorted(train.Tags()["histograms"]) == names
    assert "batch_norm/running_var" in names
    for name in names:
        assert [e.step for e in train.Histograms(name)] == [0, 2]
    final = {k.replace(".", "/", 1): v for k, v in list(model.parameters.items()) + list(model.buffers.items())}
    for name, value in final.items():  # epoch 2 is the last one: the histograms show the final weights
        hist = train.Histograms(name)[-1].histogram_value
        assert hist.num == value.size
        assert hist.min == pytest.approx(float(value.min()), rel=1e-6)
        assert hist.max == pytest.approx(float(value.max()), rel=1e-6)
        assert hist.sum == pytest.approx(float(value.astype(np.float64).sum()), rel=1e-4, abs=1e-5)
    images = train.Images("conv2d/filters")
    assert [e.step for e in images] == [0, 2]
    assert images[0].width > 3 and images[0].height >= 3  # a grid of the four 3x3 kernels
    assert images[0].encoded_image_string.startswith(b"\x89PNG")
    assert_filter_grid(images[-1], model.backend.to_numpy(model.layers[0].params["W"]))  # the final ones


def test_dense_first_layer_images_every_epoch_without_histograms(tmp_path):
    x, y = data()
    model = xpnet.Sequential([Flatten(), Dense(5), ReLU(), Dense(2)], input_shape=(1, 8, 8), device="cpu")
    model.compile(loss="cross_entropy", optimizer=optim.SGD(0.1))
    model.fit(x, y, epochs=2, batch_size=32, verbose=0,
              callbacks=[callbacks.TensorBoard(tmp_path, write_images=True)])
    train = read(tmp_path / "train")
    assert [e.step for e in train.Images("dense/filters")] == [0, 1]
    w = model.backend.to_numpy(model.layers[1].params["W"])   # (64, 5): one 8x8 image per unit
    assert_filter_grid(train.Images("dense/filters")[-1], w.T.reshape(5, 1, 8, 8))
    assert not train.Tags()["histograms"]
    flat = xpnet.Sequential([Dense(2)], input_shape=(7,), device="cpu")
    flat.compile(loss="cross_entropy", optimizer=optim.SGD(0.1))
    with pytest.warns(UserWarning, match="write_images draws the first layer's filters"):
        flat.fit(np.zeros((4, 7), np.float32), np.zeros(4, np.int64), epochs=1, verbose=0,
                 callbacks=[callbacks.TensorBoard(tmp_path / "flat", write_images=True)])


def _syncs(batch_size, **kwargs):
    x, y = data()
    model = cnn("strict")
    before = dict(COUNTERS)
    model.fit(x, y, epochs=2, batch_size=batch_size, validation_data=data(32, 5), verbose=0,
              callbacks=[callbacks.TensorBoard(kwargs.pop("log_dir"), **kwargs)])
    return {k: COUNTERS[k] - before[k] for k in COUNTERS}


def test_no_host_sync_per_batch(tmp_path):
    """Counts do not grow with the number of batches; the only extra sync is one copy of all
    weights on each histogram/image epoch. (Checked to fail: reading the weights in on_batch_end
    as well gave 9 syncs with batches of 48 and 53 with batches of 4, against 5.)"""
    plain = _syncs(48, log_dir=tmp_path / "a")
    assert plain == _syncs(4, log_dir=tmp_path / "b")
    assert plain["syncs"] == 1 + 2  # the data check, then one per epoch: the same as without it
    full = _syncs(48, log_dir=tmp_path / "c", histogram_freq=1, write_images=True)
    assert full == _syncs(4, log_dir=tmp_path / "d", histogram_freq=1, write_images=True)
    assert full["syncs"] == 1 + 2 + 2  # plus one weights copy per epoch
    assert full["h2d"] == plain["h2d"] == 4


def test_resumed_fit_replaces_the_steps_it_repeats(tmp_path):
    x, y = data()
    model = cnn()
    model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[callbacks.TensorBoard(tmp_path)])
    again = cnn(seed=1)  # as if resumed after epoch 1 (whose logs are already there)
    h = again.fit(x, y, epochs=3, initial_epoch=1, batch_size=32, verbose=0,
                  callbacks=[callbacks.TensorBoard(tmp_path)])
    train = read(tmp_path / "train")
    loss = scalars(train, "epoch_loss")
    assert [s for s, _ in loss] == [0, 1, 2]
    assert [v for _, v in loss[1:]] == as_f32(h.history["loss"])


def test_bad_histogram_freq():
    for value in (-1, 1.5, True, "1"):
        with pytest.raises(xpnet.ConfigError, match="histogram_freq must be an integer >= 0"):
            callbacks.TensorBoard("logs", histogram_freq=value)


def test_a_log_dir_with_a_file_in_the_way_is_refused_before_training(tmp_path):
    """It was a NotADirectoryError from tensorboardX after the first epoch had trained."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "validation").write_text("")
    m = cnn()
    x, y = data()
    for log_dir, existing in ((blocker, blocker), (blocker / "run1", blocker),
                              (tmp_path / "logs", tmp_path / "logs" / "validation")):
        trained = []
        spy = callbacks.Callback()
        spy.on_epoch_end = lambda epoch, logs=None: trained.append(epoch)
        with pytest.raises(xpnet.ConfigError, match=f"TensorBoard: cannot write logs into {log_dir}: "
                                                    f"{existing} is a file, where a folder is needed"):
            m.fit(x, y, epochs=1, verbose=0, callbacks=[spy, callbacks.TensorBoard(log_dir)])
        assert trained == []


def test_bad_log_dir_and_write_images_are_refused():
    with pytest.raises(xpnet.ConfigError, match=r"TensorBoard: log_dir must be a folder path .*got "
                                                r"NoneType None"):
        callbacks.TensorBoard(None)  # was a TypeError from os.fspath
    with pytest.raises(xpnet.ConfigError, match=r"TensorBoard: write_images must be True or False, "
                                                r"got str 'no'"):
        callbacks.TensorBoard("logs", write_images="no")  # was taken as True


def test_cli_train_tensorboard(tmp_path, capsys):
    out, logs = tmp_path / "runs", tmp_path / "tb"
    assert cli.main(["train", "--quick", "--device", "cpu", "--epochs", "2", "--train-images", "600",
                     "--test-images", "100", "--out", str(out), "--tensorboard", str(logs),
                     "--quiet"]) == 0
    (run,) = glob.glob(str(out / "*"))
    with open(os.path.join(run, "log.json")) as f:
        epochs = json.load(f)["epochs"]
    train = read(logs / os.path.basename(run) / "train")
    assert scalars(train, "epoch_loss") == list(zip([0, 1], as_f32(e["loss"] for e in epochs)))
    assert scalars(train, "epoch_learning_rate") == list(zip([0, 1], as_f32(e["lr"] for e in epochs)))


def test_runner_logs_each_run_in_its_own_subfolder(tmp_path):
    from xpnet.runner import _callbacks
    recipe = xpnet.models.get("quick-mlp").recipe
    for folder in ("runs/20261130-120000-quick-mlp-mnist", "runs/20261130-120000-quick-mlp-mnist/"):
        (tb,) = [c for c in _callbacks(recipe, folder, tmp_path) if isinstance(c, callbacks.TensorBoard)]
        assert tb.log_dir == os.path.join(str(tmp_path), "20261130-120000-quick-mlp-mnist")
    assert not any(isinstance(c, callbacks.TensorBoard) for c in _callbacks(recipe, "runs/x"))


def test_missing_tensorboardx_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ImportError, match=r"xpnet\[tensorboard\]"):
        callbacks.TensorBoard(tmp_path)
    assert cli.main(["train", "--quick", "--device", "cpu", "--out", str(tmp_path / "runs"),
                     "--tensorboard", str(tmp_path / "tb")]) == 2
    assert "xpnet[tensorboard]" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "runs") and not os.path.exists(tmp_path / "tb")
    # run_training checks it too (the command line above refuses before calling it)
    from xpnet.runner import run_training
    with pytest.raises(ImportError, match=r"xpnet\[tensorboard\]"):
        run_training("quick-mlp", device="cpu", out_dir=tmp_path / "api", verbose=0, epochs=1,
                     train_images=64, test_images=32, tensorboard=tmp_path / "tb")
    assert not os.path.exists(tmp_path / "api") and not os.path.exists(tmp_path / "tb")
