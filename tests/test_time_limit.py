"""A wall-clock budget for training: fit(time_limit=), run_training(time_limit_minutes=) and
``--time-limit MINUTES`` for `xpnet train` and examples/train_mnist.py."""
import datetime
import json
import os
import sys

import numpy as np
import pytest

import xpnet
from xpnet import callbacks, cli, optim, runner, training
from xpnet.errors import ConfigError
from xpnet.layers import Dense, ReLU

from .helpers import Snapshots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeClock:
    """Stands in for the ``time`` module inside xpnet.training; each batch takes ``per_batch`` s."""

    def __init__(self, per_batch):
        self.now, self.per_batch = 1000.0, per_batch

    def monotonic(self):
        return self.now

    def perf_counter(self):
        return self.now


class Tick(callbacks.Callback):
    def __init__(self, clock):
        super().__init__()
        self.clock = clock

    def on_batch_end(self, batch, logs=None):
        self.clock.now += self.clock.per_batch


def small_model(backend="cpu"):
    m = xpnet.Sequential([Dense(8), ReLU(), Dense(3)], input_shape=(5,), device=backend, seed=1)
    return m.compile(loss="cross_entropy", optimizer=optim.Adam(0.01), metrics=["accuracy"])


def small_data(n=32):
    r = np.random.default_rng(0)
    x = r.standard_normal((n, 5)).astype(np.float32)
    return x, (x[:, :3].argmax(axis=1)).astype(np.int64)


@pytest.mark.parametrize("limit, expected", [(35.0, 3), (30.0, 3), (29.9, 2), (5.0, 1), (1000.0, 10)])
def test_fit_stops_after_the_last_epoch_that_fits(monkeypatch, limit, expected):
    """Epochs take 10 s: training stops once the next epoch would end past the budget."""
    clock = FakeClock(per_batch=5.0)  # 2 batches of 16 -> 10 s per epoch
    monkeypatch.setattr(training, "time", clock)
    x, y = small_data()
    h = small_model().fit(x, y, epochs=10, batch_size=16, verbose=0, callbacks=[Tick(clock)],
                          time_limit=limit)
    assert len(h.epoch) == expected
    assert h.stopped_by_time_limit == (expected < 10)
    assert h.params["time_limit"] == limit
    assert h.history["seconds"] == [10.0] * expected


def test_time_limit_restores_the_best_weights_and_checkpoints(monkeypatch, tmp_path):
    clock = FakeClock(per_batch=5.0)
    monkeypatch.setattr(training, "time", clock)
    x, y = small_data()
    m = small_model()
    snaps = Snapshots()
    # mode "max" on the falling training loss: the first epoch is the best one
    stop = callbacks.EarlyStopping(monitor="loss", mode="max", patience=50, restore_best_weights=True)
    h = m.fit(x, y, epochs=20, batch_size=16, verbose=0, callbacks=[Tick(clock), snaps, stop],
              time_limit=datetime.timedelta(seconds=45), checkpoint=tmp_path)
    assert h.stopped_by_time_limit and len(h.epoch) == 4
    assert h.history["loss"][0] > h.history["loss"][-1]
    for k, v in m.parameters.items():
        np.testing.assert_array_equal(m.backend.to_numpy(v), snaps.weights[0][k])
        assert not np.array_equal(snaps.weights[-1][k], snaps.weights[0][k])
    # the checkpoint is of the last epoch and not marked "stopped": it can be continued, here
    # with a time limit of its own that the two epochs left (10 s each) fit in exactly, though the
    # four epochs before took 40 s: the resumed run ends at epoch 6, not stopped by the limit
    clock = FakeClock(per_batch=5.0)
    monkeypatch.setattr(training, "time", clock)
    again = small_model()
    stop2 = callbacks.EarlyStopping(monitor="loss", mode="max", patience=50, restore_best_weights=True)
    h2 = again.fit(x, y, epochs=6, batch_size=16, verbose=0, checkpoint=tmp_path, resume=True,
                   callbacks=[Tick(clock), stop2], time_limit=20.0)
    assert h2.epoch == [0, 1, 2, 3, 4, 5] and not h2.stopped_by_time_limit
    assert h2.params["time_limit"] == 20.0 and clock.now == 1020.0   # it ran epochs 5 and 6 only


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "5", True, datetime.timedelta(0)])
def test_bad_time_limits_are_refused(bad):
    x, y = small_data()
    with pytest.raises(ConfigError, match="time_limit must be a positive number"):
        small_model().fit(x, y, epochs=1, verbose=0, time_limit=bad)


def test_runner_time_limit_writes_a_complete_run_folder(tmp_path):
    result = runner.run_training("quick-mlp", device="cpu", out_dir=tmp_path, verbose=0, epochs=50,
                                 train_images=300, test_images=100, time_limit_minutes=1e-6)
    assert result["stopped_by_time_limit"] and result["epochs_run"] == 1
    assert result["time_limit_minutes"] == 1e-6
    folder = result["run_dir"]
    for name in ("config.json", "log.csv", "log.json", "result.json", "model.npz", "last.npz"):
        assert os.path.isfile(os.path.join(folder, name)), name
    with open(os.path.join(folder, "config.json")) as f:
        assert json.load(f)["time_limit_minutes"] == 1e-6
    with pytest.raises(ConfigError, match="time_limit_minutes"):
        runner.run_training("quick-mlp", out_dir=tmp_path, verbose=0, time_limit_minutes=0)


def test_cli_time_limit(tmp_path, capsys):
    argv = ["train", "--model", "quick-mlp", "--device", "cpu", "--epochs", "40", "--train-images",
            "300", "--test-images", "100", "--quiet", "--out", str(tmp_path), "--time-limit", "0.00001"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "stopped by --time-limit 1e-05 after 1 epochs" in out and "test error" in out
    for bad in ("0", "-2", "soon", "inf"):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv[:-1] + [bad])
        assert exc.value.code == 2
        assert "--time-limit: expected a" in capsys.readouterr().err


def test_train_mnist_example_takes_time_limit(tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import train_mnist
    finally:
        sys.path.pop(0)
    argv = ["--model", "quick-mlp", "--device", "cpu", "--epochs", "40", "--train-images", "300",
            "--test-images", "100", "--quiet", "--out", str(tmp_path), "--time-limit", "0.00001"]
    assert train_mnist.main(argv) == 0
    assert "stopped by --time-limit" in capsys.readouterr().out
    (folder,) = os.listdir(tmp_path)
    with open(os.path.join(tmp_path, folder, "result.json")) as f:
        result = json.load(f)
    assert result["stopped_by_time_limit"] and result["epochs_run"] == 1


def test_a_time_limited_run_goes_on_with_resume(tmp_path, capsys):
    """`--time-limit` keeps the checkpoint, and `--resume` continues from it (an ordinary finished
    run is refused): the result is the uninterrupted run's, bit for bit, and config.json keeps the
    time-limited sitting's result."""
    common = ["--model", "quick-mlp", "--device", "cpu", "--epochs", "3", "--train-images", "300",
              "--test-images", "100", "--quiet"]
    assert cli.main(["train"] + common + ["--out", str(tmp_path / "whole")]) == 0
    assert cli.main(["train"] + common + ["--out", str(tmp_path / "cut"), "--time-limit", "0.00001"]) == 0
    (whole,), (cut,) = (os.listdir(tmp_path / d) for d in ("whole", "cut"))
    whole, cut = str(tmp_path / "whole" / whole), str(tmp_path / "cut" / cut)

    def result(folder):
        with open(os.path.join(folder, "result.json")) as f:
            return json.load(f)
    assert result(cut)["stopped_by_time_limit"] and result(cut)["epochs_run"] == 1
    with open(os.path.join(cut, "log.json")) as f:
        first = json.load(f)["epochs"][0]
    assert cli.main(["train", "--resume", cut, "--quiet"]) == 0
    with open(os.path.join(cut, "log.json")) as f:   # resumed, not retrained: epoch 1 kept, time too
        assert json.load(f)["epochs"][0] == first
    done = result(cut)
    assert not done["stopped_by_time_limit"] and done["resumed"] and done["epochs_run"] == 3
    assert done["mistakes"] == result(whole)["mistakes"]
    a, b = (xpnet.load(os.path.join(f, "model.npz")) for f in (whole, cut))
    for k, v in a.parameters.items():
        np.testing.assert_array_equal(b.parameters[k], v)
    with open(os.path.join(cut, "config.json")) as f:
        assert json.load(f)["resumed"][-1]["after_time_limit"]["epochs_run"] == 1
    capsys.readouterr()
    assert cli.main(["train", "--resume", cut]) == 2   # now it has finished its epochs
    assert "has finished" in capsys.readouterr().err
