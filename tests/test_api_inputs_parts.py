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
    with pytest.raises(ConfigError, match=rf"^(RandomAffine|KerasAffine|ElasticDistortion): {name} "):
        make()


def test_augmenters_still_take_their_usual_arguments():
    aug = RandomAffine(rotation=None, scale=None, zoom=None, shift=np.float32(0.25), fill=np.float64(0.5))
    assert (aug.rotation, aug.zoom, aug.shift, aug.fill) == (0.0, 0.0, (0.25, 0.25), 0.5)
    assert KerasAffine(rotation=720, zoom=0, shift=0).rotation == 720.0  # as Keras: any finite angle
    assert ElasticDistortion(alpha=0, sigma=1000).sigma == 1000.0
    # a saved config (JSON numbers and lists) rebuilds the same augmenter
    assert repr(xpnet.augment.from_config(xpnet.augment.to_config(aug))) == repr(aug)

