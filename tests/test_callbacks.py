"""Callbacks: early stopping, LR scheduling and plateaus, checkpoints, CSV/JSON logs, NaN stop."""
import csv
import json
import math
import warnings

import numpy as np
import pytest

import xpnet
from xpnet import callbacks, optim, schedules
from xpnet.errors import ConfigError
from xpnet.layers import Dense, ReLU

from .helpers import Snapshots


def data(n=64, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, 5)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)


def model(backend="cpu", lr=0.01, seed=2):
    m = xpnet.Sequential([Dense(8), ReLU(), Dense(3)], input_shape=(5,), device=backend, seed=seed)
    return m.compile(optimizer=optim.Adam(lr))


class Inject(callbacks.Callback):
    """Puts a scripted value into the logs, so monitors see a known sequence."""

    def __init__(self, key, values):
        super().__init__()
        self.key, self.values = key, values

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.values[epoch]


def fit(m, cbs, epochs=10, **kw):
    x, y = data()
    return m.fit(x, y, epochs=epochs, batch_size=16, callbacks=cbs, verbose=0, **kw)


def test_early_stopping_patience():
    es = callbacks.EarlyStopping(monitor="score", patience=2)
    h = fit(model(), [Inject("score", [5, 4, 4.5, 3, 3.5, 3.2, 3.1, 2, 1, 0]), es])
    # best 3 at epoch 3; epochs 4 and 5 do not improve (wait 1, 2): stop after epoch 5, as Keras does
    assert h.epoch == [0, 1, 2, 3, 4, 5]
    assert es.best == 3 and es.best_epoch == 3 and es.stopped_epoch == 5


def test_early_stopping_patience_zero_and_mode_max():
    es = callbacks.EarlyStopping(monitor="val_accuracy_fake", patience=0, mode="max")
    h = fit(model(), [Inject("val_accuracy_fake", [0.1, 0.5, 0.4, 0.9]), es])
    assert h.epoch == [0, 1, 2] and es.best == 0.5
    assert callbacks.EarlyStopping(monitor="val_accuracy").mode == "max"
    assert callbacks.EarlyStopping(monitor="val_loss").mode == "min"


def test_early_stopping_min_delta_rel():
    """Seed 001's rule: a decrease counts only when it is more than min_delta_rel of the best."""
    es = callbacks.EarlyStopping(monitor="score", patience=2, min_delta_rel=0.005)
    # 1.0 -> 0.996 is a 0.4 % drop (no), 0.994 is 0.6 % below 1.0 (yes), then 0.99 and 0.9895 are
    # 0.40 % and 0.45 % below 0.994 (no, no): stop after epoch 4
    h = fit(model(), [Inject("score", [1.0, 0.996, 0.994, 0.99, 0.9895, 0.5]), es])
    assert es.best == 0.994 and es.best_epoch == 2
    assert h.epoch == [0, 1, 2, 3, 4]


def test_early_stopping_min_delta_absolute():
    es = callbacks.EarlyStopping(monitor="score", patience=0, min_delta=0.1)
    scores = [1.0, 0.85, 0.8, 0.5] + [0.1] * 6
    h = fit(model(), [Inject("score", scores)])
    assert len(h.epoch) == 10  # without the callback nothing stops
    h = fit(model(), [Inject("score", scores), es])
    assert h.epoch == [0, 1, 2] and es.best == 0.85


def test_early_stopping_start_from_epoch():
    es = callbacks.EarlyStopping(monitor="score", patience=0, start_from_epoch=3)
    h = fit(model(), [Inject("score", [1, 2, 3, 4, 3, 5, 6, 7, 8, 9]), es])
    assert h.epoch == [0, 1, 2, 3, 4, 5] and es.best == 3


def test_restore_best_weights_actually_restores(backend):
    snaps = Snapshots()
    es = callbacks.EarlyStopping(monitor="score", patience=2, restore_best_weights=True)
    m = model(backend)
    fit(m, [Inject("score", [3, 2, 1, 1.5, 2, 2.5, 3, 3, 3, 3]), snaps, es])
    final = {k: backend.to_numpy(v) for k, v in m.parameters.items()}
    assert es.best_epoch == 2 and es.stopped_epoch == 4 and len(snaps.weights) == 5
    for k, v in final.items():
        assert np.array_equal(v, snaps.weights[2][k])
        assert not np.array_equal(v, snaps.weights[-1][k])


def test_without_restore_the_last_weights_stay():
    snaps = Snapshots()
    es = callbacks.EarlyStopping(monitor="score", patience=0)
    m = model()
    fit(m, [Inject("score", [3, 2, 2.5] + [9] * 7), snaps, es])
    for k, v in m.parameters.items():
        assert np.array_equal(v, snaps.weights[-1][k])


def test_early_stopping_refuses_a_missing_metric():
    # it used to warn once per epoch and never stop (a bad-input audit): now a ConfigError
    with pytest.raises(ConfigError, match="EarlyStopping monitors 'nope' but the epoch's logs have loss"):
        fit(model(), [callbacks.EarlyStopping(monitor="nope")], epochs=1)


def test_learning_rate_scheduler_sets_rates():
    s = schedules.WarmupHalving(1e-3, k=2)
    h = fit(model(), [callbacks.LearningRateScheduler(s)], epochs=6)
    assert h.history["lr"] == pytest.approx(s.values(6))
    h = fit(model(), [callbacks.LearningRateScheduler(lambda e: 0.1 / (e + 1))], epochs=3)
    assert h.history["lr"] == pytest.approx([0.1, 0.05, 0.1 / 3])
    h = fit(model(), [callbacks.LearningRateScheduler({"type": "StepDecay", "lr": 1.0, "every": 1})],
            epochs=3)
    assert h.history["lr"] == [1.0, 0.5, 0.25]


def test_reduce_lr_on_plateau():
    rl = callbacks.ReduceLROnPlateau(monitor="score", factor=0.5, patience=2, min_delta=0, cooldown=1,
                                     min_lr=0.002)
    m = model(lr=0.01)
    h = fit(m, [Inject("score", [5, 4, 4, 4, 4, 4, 4, 4, 4, 4]), rl])
    # lr logged is the rate used in that epoch. Waits: e2 1, e3 2 -> halve; e4 is the cooldown epoch
    # (as in Keras it still counts one wait), e5 2 -> halve; e6 cooldown, e7 -> halve to min_lr
    assert h.history["lr"] == pytest.approx([0.01] * 4 + [0.005] * 2 + [0.0025] * 2 + [0.002] * 2)
    assert m.optimizer.lr == pytest.approx(0.002)  # clipped at min_lr


def test_reduce_lr_on_plateau_warns_when_min_lr_is_not_below_the_rate():
    """min_lr above the optimizer's lr meant no reduction ever, silently: one warning at the start
    of fit names both; a min_lr below the rate gives none."""
    rl = callbacks.ReduceLROnPlateau(monitor="score", factor=0.5, patience=1, min_delta=0, min_lr=0.05)
    with pytest.warns(UserWarning, match=r"min_lr 0\.05 is not below the optimizer's learning rate "
                      r"0\.01") as caught:
        h = fit(model(lr=0.01), [Inject("score", [5, 5, 5, 5]), rl], epochs=4)
    assert len([w for w in caught if "min_lr" in str(w.message)]) == 1
    assert caught[0].filename == __file__  # points at the user's fit call
    assert h.history["lr"] == [0.01] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rl = callbacks.ReduceLROnPlateau(monitor="score", patience=1, min_delta=0, min_lr=0.001)
        fit(model(lr=0.01), [Inject("score", [5, 5]), rl], epochs=2)


def test_reduce_lr_on_plateau_does_not_warn_when_fit_continues_at_min_lr():
    """Keras-style continued training: a second fit() after the callback had lowered the rate to
    min_lr warned that min_lr was not below the rate, the rate it had set itself (and so did a new
    callback with the same min_lr). Once the optimizer has stepped, its rate is not the user's."""
    m = model(lr=0.01)
    rl = callbacks.ReduceLROnPlateau(monitor="score", factor=0.5, patience=1, min_delta=0,
                                     min_lr=0.005)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(m, [Inject("score", [5, 5, 5]), rl], epochs=3)
        assert m.optimizer.lr == 0.005
        fit(m, [Inject("score", [4, 4]), rl], epochs=2)
        fresh = callbacks.ReduceLROnPlateau(monitor="score", patience=1, min_delta=0, min_lr=0.005)
        fit(m, [Inject("score", [4, 4]), fresh], epochs=2)
    with pytest.warns(UserWarning, match=r"min_lr 0\.005 is not below the optimizer's learning "
                                         r"rate 0\.005"):
        fit(model(lr=0.005), [Inject("score", [4, 4]), rl], epochs=2)  # a new model's own rate


def test_reduce_lr_on_plateau_checks_an_optimizer_once_even_when_its_steps_were_taken_back():
    """float16's skipped steps are taken off the optimizer's ``iterations``: after a fit whose
    every step was skipped and in which the callback lowered the rate to min_lr, the optimizer
    read as unstepped again, and a second fit() warned about the rate the callback had set."""
    from xpnet.mixed import MixedPrecision
    m = model(lr=0.01)
    m.compile(optimizer=m.optimizer,
              mixed_precision=MixedPrecision("float16", initial_scale=1e30))  # every step overflows
    rl = callbacks.ReduceLROnPlateau(monitor="score", factor=0.5, patience=1, min_delta=0,
                                     min_lr=0.005)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*skipped.*")   # the all-steps-skipped warning
        warnings.filterwarnings("error", message=".*min_lr.*")
        fit(m, [Inject("score", [5, 5, 5]), rl], epochs=3)
        assert m.optimizer.lr == 0.005 and m.optimizer.iterations == 0
        fit(m, [Inject("score", [4, 4]), rl], epochs=2)


@pytest.mark.parametrize("order", ["scheduler first", "plateau first"])
def test_reduce_lr_on_plateau_does_not_warn_about_a_rate_a_schedule_replaces(order):
    """A LearningRateScheduler sets the rate at the start of each epoch, so the optimizer's rate
    when fit starts is not the one training uses: a starting rate at min_lr warned falsely. The
    check waits for the end of the first epoch, whichever callback runs first; a schedule that
    keeps the user's rate (the Keras form given the current rate) still gets the warning."""
    def callbacks_for(schedule):
        rl = callbacks.ReduceLROnPlateau(monitor="score", factor=0.5, patience=1, min_delta=0,
                                         min_lr=0.001)
        sched = callbacks.LearningRateScheduler(schedule)
        both = [sched, rl] if order == "scheduler first" else [rl, sched]
        return [Inject("score", [5, 5, 5])] + both
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = fit(model(lr=0.001), callbacks_for(lambda epoch: [0.0005, 0.01, 0.01][epoch]), epochs=3)
    assert h.history["lr"] == [0.0005, 0.01, 0.01]   # a warm-up from under min_lr
    with pytest.warns(UserWarning, match=r"min_lr 0\.001 is not below the optimizer's learning "
                                         r"rate 0\.001") as caught:
        fit(model(lr=0.001), callbacks_for(lambda epoch, lr: lr), epochs=3)
    assert len([w for w in caught if "min_lr" in str(w.message)]) == 1


class Warns(callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.warn("epoch warning")

    def on_batch_end(self, batch, logs=None):
        self.warn("batch warning")


@pytest.mark.parametrize("rank", [0, 1])
def test_callback_warnings_show_on_rank_zero_only(rank):
    """In a data-parallel fit every rank runs ReduceLROnPlateau and the other shared callbacks on
    the same logs, so each rank repeated their warnings; a callback's ``self.warn`` shows them on
    rank 0 only, as progress and log lines are (the callbacks still run on the other ranks)."""
    m = model(lr=0.01)
    rl = callbacks.ReduceLROnPlateau(monitor="loss", min_lr=0.05)
    mine = Warns()
    cbs = callbacks.CallbackList([rl, mine], m, {}, rank=rank)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cbs.call("on_train_begin", {})
        for hook in cbs.hooks("on_batch_end"):   # as fit calls the per-batch hooks
            hook(0, {})
        cbs.call("on_epoch_end", 0, {"loss": 1.0})
    seen = sorted(str(w.message).split(":")[0] for w in caught)
    assert seen == ([] if rank else ["ReduceLROnPlateau", "batch warning", "epoch warning"])
    assert rl.best == 1.0   # rank 1 ran the callback all the same


@pytest.mark.parametrize("rank", [0, 1])
def test_callbacks_print_their_lines_on_rank_zero_only(rank, capsys):
    """EarlyStopping, ReduceLROnPlateau, LearningRateScheduler and TerminateOnNaN printed their
    verbose lines on every data-parallel rank (they run there on rank 0's logs); ``self.say``
    prints on rank 0 only, as progress lines are."""
    m = model(lr=0.01)
    es = callbacks.EarlyStopping(monitor="loss", patience=1, verbose=1)
    rl = callbacks.ReduceLROnPlateau(monitor="loss", patience=1, factor=0.5, verbose=1)
    sched = callbacks.LearningRateScheduler(lambda e: 0.01, verbose=1)
    nan = callbacks.TerminateOnNaN()
    cbs = callbacks.CallbackList([es, rl, sched, nan], m, {}, rank=rank)
    cbs.call("on_train_begin", {})
    for epoch, loss in enumerate([1.0, 2.0, float("nan")]):
        cbs.call("on_epoch_begin", epoch, {})
        cbs.call("on_epoch_end", epoch, {"loss": loss})
    out = capsys.readouterr().out
    said = sorted({line.split(":")[0] for line in out.splitlines()})
    assert said == ([] if rank else ["EarlyStopping", "LearningRateScheduler", "ReduceLROnPlateau",
                                     "TerminateOnNaN"]), out
    assert es.stopped_epoch >= 1 and m.stop_training   # rank 1 ran them all the same


@pytest.mark.parametrize("rank", [0, 1])
def test_calling_callbacks_keeps_the_warnings_already_shown(rank):
    """A warning from one place (NumPy's overflow, say) shows once under Python's default filter;
    on ranks other than 0 the callbacks were called inside warnings.catch_warnings(), which resets
    the record of what was shown each time it is left, so such a warning came again after every
    callback call (every epoch, or every batch with a per-batch hook)."""
    cbs = callbacks.CallbackList([Warns(), callbacks.EarlyStopping(monitor="loss", patience=9)],
                                 model(), {}, rank=rank)
    registry = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for epoch in range(4):
            warnings.warn_explicit("overflow in a pass", RuntimeWarning, "pass.py", 7, registry=registry)
            for hook in cbs.hooks("on_batch_end"):
                hook(0, {})
            cbs.call("on_epoch_end", epoch, {"loss": 1.0})
    overflow = [w for w in caught if "overflow" in str(w.message)]
    assert len(overflow) == 1, [str(w.message) for w in caught]


def test_model_checkpoint_files(tmp_path):
    pattern = str(tmp_path / "m-{epoch:02d}-{score:.1f}.npz")
    ck = callbacks.ModelCheckpoint(pattern, monitor="score", save_best_only=True)
    m = model()
    fit(m, [Inject("score", [3, 2, 2.5, 1, 4]), ck], epochs=5)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["m-01-3.0.npz", "m-02-2.0.npz", "m-04-1.0.npz"]
    every = callbacks.ModelCheckpoint(str(tmp_path / "all-{epoch}.npz"))
    fit(model(), [every], epochs=2)
    assert (tmp_path / "all-1.npz").exists() and (tmp_path / "all-2.npz").exists()
    loaded = xpnet.load(tmp_path / "all-2.npz")
    x, _ = data()
    assert loaded.predict(x).shape == (64, 3)


def test_model_checkpoint_bad_pattern(tmp_path):
    ck = callbacks.ModelCheckpoint(str(tmp_path / "m-{nothing}.npz"))
    with pytest.raises(ConfigError, match="cannot fill in"):
        fit(model(), [ck], epochs=1)


def test_model_checkpoint_pattern_errors_come_before_training_and_as_config_errors(tmp_path):
    """A val_* field without validation data, a positional field and unbalanced braces were found
    only after the first epoch trained; an attribute or index on a value was a bare
    AttributeError/TypeError."""
    trained = []
    spy = callbacks.Callback()
    spy.on_epoch_end = lambda epoch, logs=None: trained.append(epoch)
    for pattern, match in (
            ("m-{val_loss:.3f}.npz", r"m-\{val_loss:.3f\}.npz' names val_loss, but this fit has no "
                                     r"validation data: pass validation_data or validation_split to "
                                     r"fit\(\), or name a training metric such as \{loss\}"),
            ("m-{}.npz", r"has a positional field \{\}; name what goes there"),
            ("m-{epoch.npz", r"cannot fill in '.*m-\{epoch.npz': expected '\}' before end of string")):
        ck = callbacks.ModelCheckpoint(str(tmp_path / pattern))
        with pytest.raises(ConfigError, match=match):
            fit(model(), [spy, ck], epochs=1)
        assert trained == []
    ck = callbacks.ModelCheckpoint(str(tmp_path / "m-{val_loss:.3f}.npz"))  # with validation: fine
    fit(model(), [ck], epochs=1, validation_split=0.25)
    assert len(ck.saved) == 1
    for pattern in ("m-{epoch.real.x}.npz", "m-{loss[0]}.npz"):
        with pytest.raises(ConfigError, match=r"ModelCheckpoint: cannot fill in .*(has no attribute|"
                                              r"not subscriptable)"):
            fit(model(), [callbacks.ModelCheckpoint(str(tmp_path / pattern))], epochs=1)


def test_csv_and_json_logs(tmp_path):
    csv_path, json_path = tmp_path / "log.csv", tmp_path / "log.json"
    x, y = data()
    m = model()
    h = m.fit(x, y, epochs=3, batch_size=16, validation_split=0.25, verbose=0,
              callbacks=[callbacks.CSVLogger(csv_path), callbacks.JSONLogger(json_path)])
    rows = list(csv.DictReader(csv_path.open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert list(rows[0]) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]
    assert [float(r["val_loss"]) for r in rows] == h.history["val_loss"]
    logged = json.loads(json_path.read_text())["epochs"]
    assert [e["epoch"] for e in logged] == [1, 2, 3]
    assert [e["loss"] for e in logged] == h.history["loss"]
    assert [e["accuracy"] for e in logged] == h.history["accuracy"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_json_logger_writes_nan_as_null(tmp_path):
    m = model()
    m.compile(loss="mse", optimizer=optim.SGD(1e30))
    x, y = data()
    m.fit(x * 1e25, np.eye(3, dtype=np.float32)[y], epochs=3, batch_size=16, verbose=0,
          callbacks=[callbacks.TerminateOnNaN(), callbacks.JSONLogger(tmp_path / "l.json")])
    logged = json.loads((tmp_path / "l.json").read_text())["epochs"]
    assert len(logged) == 1 and logged[0]["loss"] is None


def test_history_rows_and_state():
    h = callbacks.History()
    h.on_epoch_end(0, {"loss": 1.0})
    h.on_epoch_end(1, {"loss": 0.5, "val_loss": 0.7})
    assert h.history == {"loss": [1.0, 0.5], "val_loss": [None, 0.7]}
    assert h.rows() == [{"epoch": 0, "loss": 1.0, "val_loss": None},
                        {"epoch": 1, "loss": 0.5, "val_loss": 0.7}]
    again = callbacks.History()
    again.set_state(*h.get_state())
    assert again.history == h.history and again.epoch == [0, 1]


def test_stop_training_flag_from_any_callback():
    class StopAt(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True

    h = fit(model(), [StopAt()])
    assert h.epoch == [0, 1]


def test_callback_hooks_order():
    events = []

    class Log(callbacks.Callback):
        def on_train_begin(self, logs=None):
            events.append("train_begin")

        def on_epoch_begin(self, epoch, logs=None):
            events.append(f"epoch_begin {epoch}")

        def on_batch_end(self, batch, logs=None):
            events.append(f"batch {batch} {logs['size']}")

        def on_epoch_end(self, epoch, logs=None):
            events.append(f"epoch_end {epoch} {sorted(logs)}")

        def on_train_end(self, logs=None):
            events.append("train_end")

    x, y = data(n=20)
    model().fit(x, y, epochs=1, batch_size=16, callbacks=[Log()], verbose=0)
    assert events == ["train_begin", "epoch_begin 0", "batch 0 16", "batch 1 4",
                      "epoch_end 0 ['accuracy', 'loss', 'lr', 'seconds']", "train_end"]


@pytest.mark.parametrize("make, match", [
    (lambda: callbacks.EarlyStopping(patience=-1), "patience"),
    (lambda: callbacks.EarlyStopping(mode="up"), "mode must be"),
    (lambda: callbacks.EarlyStopping(min_delta_rel=-0.1), "min_delta"),
    (lambda: callbacks.ReduceLROnPlateau(factor=1.5), "factor"),
    (lambda: callbacks.LearningRateScheduler("nope"), "unknown schedule"),
])
def test_bad_configs(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


@pytest.mark.parametrize("make", [
    lambda v: callbacks.EarlyStopping(verbose=v),
    lambda v: callbacks.ReduceLROnPlateau(verbose=v),
    lambda v: callbacks.LearningRateScheduler(lambda e: 0.1, verbose=v),
    lambda v: callbacks.ModelCheckpoint("m.npz", verbose=v),
])
def test_verbose_is_0_1_or_a_bool(make):
    """verbose="yes" was kept and taken for its truth value; a callback's verbose is quiet or not."""
    for bad in ("yes", 2, None, 0.5):
        with pytest.raises(ConfigError, match=r"^\w+: verbose must be 0, 1, True or False, got "
                           + type(bad).__name__):
            make(bad)
    assert [make(v).verbose for v in (0, 1, False, True, np.int64(1))] == [0, 1, 0, 1, 1]


def test_scheduler_refuses_bad_rates():
    with pytest.raises(ConfigError, match="invalid learning rate"):
        fit(model(), [callbacks.LearningRateScheduler(lambda e: math.nan)], epochs=1)
