"""Bad arguments to the parts fit() is given (augmenters, callbacks, schedules, optimizers, layers)
are refused where they are made, or before training, with a ConfigError that names them (found by
a bad-input audit of the Python API)."""
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import xpnet
from xpnet import callbacks, optim, schedules
from xpnet.augment import ElasticDistortion, KerasAffine, RandomAffine
from xpnet.errors import ConfigError, ShapeError
from xpnet.layers import Add, Concatenate, Conv2D, Dense, ReLU

ROOT = Path(__file__).resolve().parents[1]
NAN, INF = float("nan"), float("inf")


def data(n=32, seed=0):
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, 5)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5)


def model(lr=0.01):
    m = xpnet.Sequential([Dense(8), ReLU(), Dense(3)], input_shape=(5,), seed=2)
    return m.compile(optimizer=optim.Adam(lr))


class Count(callbacks.Callback):
    """How many epochs ended (put first in the list: it sees an epoch before the others fail)."""

    def __init__(self):
        super().__init__()
        self.epochs = 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1


def fit(cbs, epochs=3, **kw):
    x, y = data()
    return model().fit(x, y, epochs=epochs, batch_size=16, callbacks=cbs, verbose=0, **kw)


# -- augmenters ------------------------------------------------------------------------------------
def test_non_finite_rotation_is_refused_at_once_instead_of_hanging_fit():
    """A NaN or infinite rotation made NaN sampling coordinates, and NumPy's gather then spun
    forever on their integer cast: fit never returned. Run in a child with a time limit, so that
    a regression fails here instead of hanging the suite."""
    code = textwrap.dedent("""
        import numpy as np
        import xpnet
        from xpnet.errors import ConfigError
        from xpnet.layers import Dense, Flatten
        x = np.random.default_rng(0).standard_normal((12, 1, 8, 8)).astype("float32")
        y = np.arange(12) % 3
        for make in (lambda: xpnet.RandomAffine(rotation=float("nan")),
                     lambda: xpnet.RandomAffine(rotation=float("inf")),
                     lambda: xpnet.KerasAffine(rotation=float("nan"))):
            m = xpnet.Sequential([Flatten(), Dense(3)], input_shape=(1, 8, 8)).compile()
            try:
                m.fit(x, y, epochs=1, augment=make(), verbose=0)
            except ConfigError as exc:
                assert "rotation" in str(exc), exc
                print("refused:", exc)
            else:
                raise SystemExit("fit trained with a non-finite rotation")
        print("done")
    """)
    try:
        run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("fit with a non-finite rotation did not return within 120 s (the hang is back)")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("refused:") == 3 and run.stdout.rstrip().endswith("done")


@pytest.mark.parametrize("make, name", [
    (lambda: RandomAffine(rotation=NAN), "rotation"),
    (lambda: RandomAffine(rotation=INF), "rotation"),
    (lambda: RandomAffine(rotation=-5), "rotation"),
    (lambda: RandomAffine(rotation="25"), "rotation"),
    (lambda: RandomAffine(rotation=True), "rotation"),
    (lambda: RandomAffine(zoom=NAN), "zoom"),
    (lambda: RandomAffine(zoom=INF), "zoom"),
    (lambda: RandomAffine(shift=NAN), "shift"),
    (lambda: RandomAffine(shift=(0.1, NAN)), "shift"),
    (lambda: RandomAffine(shift="ab"), "shift"),
    (lambda: RandomAffine(scale=(NAN, 0.1)), "scale"),
    (lambda: RandomAffine(probability=NAN), "probability"),
    (lambda: RandomAffine(fill=NAN), "fill"),
    (lambda: RandomAffine(fill=-INF), "fill"),
    (lambda: RandomAffine(fill=1e39), "fill"),
    (lambda: RandomAffine(fill="0"), "fill"),
    (lambda: KerasAffine(rotation=NAN), "rotation"),
    (lambda: KerasAffine(rotation=INF), "rotation"),
    (lambda: KerasAffine(zoom=NAN), "zoom"),
    (lambda: KerasAffine(fill=NAN), "fill"),
    (lambda: KerasAffine(probability=1.5), "probability"),
    (lambda: ElasticDistortion(alpha=NAN), "alpha"),
    (lambda: ElasticDistortion(alpha=INF), "alpha"),
    (lambda: ElasticDistortion(alpha=-1), "alpha"),
    (lambda: ElasticDistortion(alpha=1e39), "alpha"),
    (lambda: ElasticDistortion(sigma=NAN), "sigma"),
    (lambda: ElasticDistortion(sigma=0), "sigma"),
    (lambda: ElasticDistortion(sigma=1e9), "sigma"),  # its kernel's norm took 8e9 terms
    (lambda: ElasticDistortion(fill=NAN), "fill"),
])
def test_augmenter_arguments_must_be_finite_numbers_in_range(make, name):
    # what it must be and what it got, not only the argument's name
    with pytest.raises(ConfigError, match=rf"^(RandomAffine|KerasAffine|ElasticDistortion): {name} "
                                          r"must be .+, got \S"):
        make()


def test_augmenters_still_take_their_usual_arguments():
    aug = RandomAffine(rotation=None, scale=None, zoom=None, shift=np.float32(0.25), fill=np.float64(0.5))
    assert (aug.rotation, aug.zoom, aug.shift, aug.fill) == (0.0, 0.0, (0.25, 0.25), 0.5)
    assert KerasAffine(rotation=720, zoom=0, shift=0).rotation == 720.0  # as Keras: any finite angle
    assert ElasticDistortion(alpha=0, sigma=1000).sigma == 1000.0
    # a saved config (JSON numbers and lists) rebuilds the same augmenter
    assert repr(xpnet.augment.from_config(xpnet.augment.to_config(aug))) == repr(aug)


# -- boolean flags ----------------------------------------------------------------------------------
FLAGS = [
    (lambda v: Dense(4, use_bias=v), "Dense: use_bias"),
    (lambda v: Conv2D(2, 3, use_bias=v), "Conv2D: use_bias"),
    (lambda v: optim.SGD(momentum=0.9, nesterov=v), "SGD: nesterov"),
    (lambda v: optim.RMSprop(centered=v), "RMSprop: centered"),
    (lambda v: callbacks.EarlyStopping(restore_best_weights=v), "EarlyStopping: restore_best_weights"),
    (lambda v: callbacks.ModelCheckpoint("m.npz", save_best_only=v), "ModelCheckpoint: save_best_only"),
]


@pytest.mark.parametrize("make, name", FLAGS)
@pytest.mark.parametrize("value", ["no", "false", "False", 0, 1, None, 1.0])
def test_flags_take_only_bools(make, name, value):
    # bool("no") is True: a string used to switch the option on
    with pytest.raises(ConfigError, match=f"{name} must be True or False, got {type(value).__name__}"):
        make(value)


@pytest.mark.parametrize("make, name", FLAGS)
def test_flags_take_python_and_numpy_bools(make, name):
    make(True), make(False), make(np.bool_(True))
    layer = Dense(4, use_bias=np.bool_(False))
    assert layer.use_bias is False
    assert xpnet.Sequential([layer], input_shape=(6,)).count_params() == 24


# -- monitored metrics ------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: callbacks.EarlyStopping(monitor="val_los", patience=0),
    lambda: callbacks.ReduceLROnPlateau(monitor="val_los"),
    lambda: callbacks.ModelCheckpoint("unused_{epoch}.npz", monitor="val_los", save_best_only=True),
])
def test_a_monitored_metric_missing_from_the_logs_fails_the_first_epoch(make):
    """Keras warns once per epoch and the callback then never stops, reduces or saves anything:
    here a ConfigError at the end of the first epoch names the monitor and the logs' keys."""
    count, cb = Count(), make()
    x, y = data()
    with pytest.raises(ConfigError) as info:
        fit([count, cb], epochs=4, validation_data=(x[:8], y[:8]))
    text = str(info.value)
    assert text.startswith(f"{type(cb).__name__} monitors 'val_los' but the epoch's logs have "
                           "loss, accuracy, val_loss, val_accuracy")
    assert "did you mean 'val_loss'?" in text
    assert count.epochs == 1


@pytest.mark.parametrize("make", [
    lambda: callbacks.EarlyStopping(),  # monitors val_loss by default
    lambda: callbacks.EarlyStopping(monitor="val_accuracy", start_from_epoch=3),
    lambda: callbacks.ReduceLROnPlateau(),
    lambda: callbacks.ModelCheckpoint("unused.npz", save_best_only=True),
])
def test_val_metrics_without_validation_data_say_how_to_get_them(make):
    count = Count()
    with pytest.raises(ConfigError, match="val_.* but the epoch's logs have loss, accuracy, lr, "
                                          "seconds; val_\\* metrics need validation data: pass "
                                          "validation_data or validation_split") as info:
        fit([count, make()], epochs=5)
    assert count.epochs == 1, str(info.value)  # at the end of the first epoch, not later


def test_monitors_present_in_the_logs_still_work(tmp_path):
    # the zoo's recipes monitor "loss" without validation data; a checkpoint that saves every
    # epoch does not read its monitor at all
    es = callbacks.EarlyStopping(monitor="loss", patience=50)
    every = callbacks.ModelCheckpoint(str(tmp_path / "m_{epoch}.npz"), monitor="not_logged")
    h = fit([es, every, callbacks.ReduceLROnPlateau(monitor="accuracy")], epochs=2)
    assert len(h.epoch) == 2 and len(every.saved) == 2 and es.best_epoch is not None


# -- callback numbers ------------------------------------------------------------------------------
ES, RP = callbacks.EarlyStopping, callbacks.ReduceLROnPlateau
FINITE = "must be a finite number >= 0, got"
WHOLE = "must be an integer >= 0, got"
FACTOR = r"factor must be a finite number in \(0, 1\), got"


@pytest.mark.parametrize("cls, kwargs, match", [
    (ES, dict(min_delta=NAN), f"EarlyStopping: min_delta {FINITE} nan"),
    (ES, dict(min_delta=INF), f"min_delta {FINITE} inf"),
    (ES, dict(min_delta=-0.1), f"min_delta {FINITE} -0.1"),  # refused: Keras takes abs()
    (ES, dict(min_delta_rel=NAN), f"min_delta_rel {FINITE} nan"),
    (ES, dict(patience=-1), f"EarlyStopping: patience {WHOLE} -1"),
    (ES, dict(patience=2.5), f"patience {WHOLE} 2.5"),
    (ES, dict(start_from_epoch=-5), f"start_from_epoch {WHOLE} -5"),
    (RP, dict(min_delta=NAN), f"ReduceLROnPlateau: min_delta {FINITE} nan"),
    (RP, dict(patience=-1), f"ReduceLROnPlateau: patience {WHOLE} -1"),
    (RP, dict(cooldown=-3), f"cooldown {WHOLE} -3"),
    (RP, dict(min_lr=NAN), f"min_lr {FINITE} nan"),
    (RP, dict(min_lr=-1), f"min_lr {FINITE} -1"),
    (RP, dict(factor=1.0), f"{FACTOR} 1.0"),
    (RP, dict(factor=0), f"{FACTOR} 0"),
    (RP, dict(factor=NAN), f"{FACTOR} nan"),
])
def test_callback_numbers_must_be_finite_and_in_range(cls, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("make, match", [
    (lambda: ES(patience=None), f"patience {WHOLE} NoneType None"),
    (lambda: ES(patience="3"), f"patience {WHOLE} str '3'"),
    (lambda: ES(patience=True), f"patience {WHOLE} bool True"),
    (lambda: ES(monitor=None), "monitor .* must be a non-empty string, got NoneType"),
    (lambda: ES(monitor=""), "monitor .* must be a non-empty string"),
    (lambda: ES(min_delta="a"), f"min_delta {FINITE} str 'a'"),
    (lambda: ES(start_from_epoch="x"), f"start_from_epoch {WHOLE} str 'x'"),
    (lambda: ES(mode=None), "mode must be 'auto', 'min' or 'max', got None"),
    (lambda: RP(factor="a"), f"{FACTOR} str 'a'"),
    (lambda: RP(patience="x"), f"patience {WHOLE} str 'x'"),
    (lambda: RP(monitor=3), "monitor .* must be a non-empty string, got int 3"),
    (lambda: callbacks.ModelCheckpoint(None), "path_pattern must be a file path .* NoneType"),
    (lambda: callbacks.CSVLogger(None), "CSVLogger: path must be a file path"),
    (lambda: callbacks.JSONLogger(5), "JSONLogger: path must be a file path .* got int 5"),
])
def test_callback_arguments_of_the_wrong_type(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_whole_numbers_given_as_floats_are_still_taken():
    assert callbacks.EarlyStopping(patience=2.0, start_from_epoch=np.int64(1)).patience == 2
    assert callbacks.ReduceLROnPlateau(patience=np.int32(3), cooldown=1.0, min_lr=0).cooldown == 1


# -- learning-rate schedules -----------------------------------------------------------------------
def test_scheduler_takes_the_keras_signature_epoch_and_lr():
    h = fit([callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5)], epochs=3)
    assert h.history["lr"] == pytest.approx([0.005, 0.0025, 0.00125])
    h = fit([callbacks.LearningRateScheduler(lambda epoch: 0.1 / (epoch + 1))], epochs=2)
    assert h.history["lr"] == pytest.approx([0.1, 0.05])

    def keras_style(epoch, lr, *rest):
        return lr if epoch < 1 else lr * 0.1
    h = fit([callbacks.LearningRateScheduler(keras_style)], epochs=3)
    assert h.history["lr"] == pytest.approx([0.01, 0.001, 0.0001])


@pytest.mark.parametrize("fn, got", [
    (lambda epoch: None, "NoneType None"),
    (lambda epoch: "0.1", "str '0.1'"),
    (lambda epoch: NAN, "nan"),
    (lambda epoch: INF, "inf"),
    (lambda epoch: -1.0, "-1.0"),
    (lambda epoch: True, "bool True"),
    (lambda epoch, lr: None, "NoneType None"),
])
def test_scheduler_names_the_epoch_and_the_bad_value(fn, got):
    count = Count()
    with pytest.raises(ConfigError, match=rf"invalid learning rate {got} for epoch 0 \(0-based\)"):
        fit([count, callbacks.LearningRateScheduler(fn)], epochs=2)
    assert count.epochs == 0


def test_scheduler_refuses_a_callable_that_takes_neither_signature():
    with pytest.raises(ConfigError, match=r"a schedule must take epoch .* or epoch and lr"):
        callbacks.LearningRateScheduler(lambda epoch, lr, extra: lr)
    with pytest.raises(ConfigError, match=r"a schedule must take epoch"):
        schedules.Lambda(lambda: 0.1)
    with pytest.raises(ConfigError, match="takes \\(epoch, lr\\): give it the current learning rate"):
        schedules.Lambda(lambda epoch, lr: lr)(0)


# -- log and checkpoint paths ----------------------------------------------------------------------
@pytest.fixture
def in_the_way(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "afolder").mkdir()
    return tmp_path


@pytest.mark.parametrize("make, where", [
    (lambda d: callbacks.ModelCheckpoint(str(d / "afile" / "m.npz"), monitor="loss"), "afile"),
    (lambda d: callbacks.ModelCheckpoint(str(d / "afile" / "sub" / "m_{epoch}.npz")), "afile"),
    (lambda d: callbacks.ModelCheckpoint(str(d / "afile" / "m_{loss:.3f}.npz")), "afile"),
    (lambda d: callbacks.CSVLogger(d / "afile" / "log.csv"), "afile"),
    (lambda d: callbacks.JSONLogger(d / "afile" / "deeper" / "log.json"), "afile"),
])
def test_a_file_in_the_way_of_a_log_or_checkpoint_fails_before_training(in_the_way, make, where):
    count, cb = Count(), make(in_the_way)
    with pytest.raises(ConfigError, match=rf"{type(cb).__name__}: cannot write .*: "
                                          rf"{in_the_way / where} is a file, where a folder is needed"):
        fit([count, cb], epochs=2)
    assert count.epochs == 0  # it used to fail (FileExistsError) after the first epoch trained


@pytest.mark.parametrize("make, example", [
    (lambda d: callbacks.ModelCheckpoint(str(d / "afolder")), "model.npz"),
    (lambda d: callbacks.CSVLogger(d / "afolder"), "log.csv"),
    (lambda d: callbacks.JSONLogger(str(d / "afolder")), "log.json"),
])
def test_a_folder_given_as_the_file_fails_before_training(in_the_way, make, example):
    count, cb = Count(), make(in_the_way)
    folder = in_the_way / "afolder"
    with pytest.raises(ConfigError, match=rf"{type(cb).__name__}: {folder} is a folder; give the "
                                          rf"path of a file in it \(e.g. {folder / example}\)"):
        fit([count, cb], epochs=2)
    assert count.epochs == 0  # it used to fail (IsADirectoryError naming a .tmp file) after epoch 1


def test_missing_folders_of_logs_and_checkpoints_are_still_made(tmp_path):
    ck = callbacks.ModelCheckpoint(str(tmp_path / "new" / "m_{epoch}.npz"), monitor="loss")
    fit([ck, callbacks.CSVLogger(tmp_path / "a" / "b" / "log.csv")], epochs=1)
    assert (tmp_path / "new" / "m_1.npz").is_file() and (tmp_path / "a" / "b" / "log.csv").is_file()


# -- merge layers ----------------------------------------------------------------------------------
def test_merge_shape_errors_name_the_layer_not_none():
    i = xpnet.Input((6,))
    with pytest.raises(ShapeError) as info:
        Add()([Dense(3)(i), Dense(4)(i)])
    assert str(info.value).startswith("Add layer (unnamed): inputs must have one shape")
    assert "None" not in str(info.value)
    with pytest.raises(ShapeError, match=r"^layer 'sum' \(Add\): inputs must have one shape"):
        Add(name="sum")([Dense(3)(i), Dense(4)(i)])
    with pytest.raises(ShapeError) as info:
        Concatenate()([Dense(3)(i)])
    assert str(info.value).startswith("Concatenate layer (unnamed) needs a list of at least two")
    with pytest.raises(ShapeError, match=r"^layer 'join' \(Concatenate\): inputs must have the same rank"):
        Concatenate(name="join")([xpnet.Input((2, 3)), i])
