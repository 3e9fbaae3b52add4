"""Input fuzzing: random layer stacks, shapes, strides, paddings and batch sizes either build and
pass a float64 finite-difference check with the right output shape, or raise an XpnetError with a
message. Also random arguments to fit/predict/evaluate, datasets.load, xpnet.load and the CLI.
Never a raw NumPy (or other) exception. Every accepted stack also survives save/load unchanged.
Draws within reach of a kink (ReLU, LeakyReLU, MaxPool2D), where there is no derivative to
check, are left out.

Default: a few derandomized examples per test; ``-m slow`` runs a larger profile; XPNET_FUZZ_SEED=N
draws other examples (tests/helpers.fuzz_settings).
"""
import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, reject
from hypothesis import strategies as st

import xpnet
from xpnet import cli, datasets
from xpnet.errors import XpnetError
from xpnet.layers import (AvgPool2D, BatchNorm, Conv2D, Dense, Dropout, Flatten, LeakyReLU,
                          LogSoftmax, MaxPool2D, ReLU, Reshape, Sigmoid, Softmax, Tanh)
from xpnet.testing import GradientCheckError

from .helpers import build, fuzz_settings, gradcheck_model, kink_margin


def profile(n):
    return fuzz_settings(max_examples=n, deadline=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


QUICK, LARGE = profile(25), profile(1000)
STEP = 1e-6  # gradcheck_model's finite-difference step (its default)
# a nudge of one entry by STEP moves a later activation by STEP times its derivative in that entry
# (weights up to 1, sums of a few, BatchNorm's 1 / std): a hundred steps leave room for that
NEAR_KINK = 100 * STEP

ints = st.integers
pair_or_int = lambda lo, hi: st.one_of(ints(lo, hi), st.tuples(ints(lo, hi), ints(lo, hi)))  # noqa: E731
paddings = st.one_of(st.sampled_from(["valid", "same", "full"]), pair_or_int(-1, 2))

LAYER = st.one_of(
    st.builds(lambda f, k, s, p: ("Conv2D", Conv2D, dict(filters=f, kernel_size=k, strides=s, padding=p)),
              ints(-1, 3), pair_or_int(0, 4), pair_or_int(0, 3), paddings),
    st.builds(lambda cls, k, s, p: (cls.__name__, cls, dict(pool_size=k, strides=s, padding=p)),
              st.sampled_from([MaxPool2D, AvgPool2D]), pair_or_int(0, 3),
              st.one_of(st.none(), pair_or_int(0, 3)), st.sampled_from(["valid", "same", "x"])),
    st.builds(lambda u: ("Dense", Dense, dict(units=u)), ints(-1, 4)),
    st.builds(lambda r: ("Dropout", Dropout, dict(rate=r)), st.sampled_from([0.0, 0.3, 0.9, 1.0, -0.1])),
    st.builds(lambda t: ("Reshape", Reshape, dict(target_shape=t)),
              st.lists(ints(-1, 6), min_size=1, max_size=3).map(tuple)),
    st.sampled_from([("Flatten", Flatten, {}), ("ReLU", ReLU, {}), ("Tanh", Tanh, {}),
                     ("Sigmoid", Sigmoid, {}), ("Softmax", Softmax, {}), ("LogSoftmax", LogSoftmax, {}),
                     ("LeakyReLU", LeakyReLU, {"alpha": 0.1}), ("BatchNorm", BatchNorm, {})]),
)
INPUT_SHAPE = st.one_of(st.tuples(ints(1, 3), ints(1, 8), ints(1, 8)), st.tuples(ints(1, 6)))
ACTIVATIONS = [ReLU, Tanh, Sigmoid, Softmax, LogSoftmax, LeakyReLU]


def _plain(cls, **kwargs):
    return (cls.__name__, cls, kwargs)


@st.composite
def stacks(draw, max_layers):
    """(input_shape, layer specs) that mostly fit together: the layer kinds follow the rank of the
    running shape; sizes, strides and paddings are random (too-large windows are still refused),
    and one draw in ten is any layer with any arguments."""
    input_shape = draw(INPUT_SHAPE)
    rank, specs = len(input_shape), []
    for _ in range(draw(ints(1, max_layers))):
        if draw(ints(0, 9)) == 0:
            spec = draw(LAYER)
        elif rank == 3:
            kind = draw(st.sampled_from(["conv", "conv", "pool", "act", "norm", "drop", "flatten"]))
            if kind == "conv":
                spec = _plain(Conv2D, filters=draw(ints(1, 3)), kernel_size=draw(pair_or_int(1, 3)),
                              strides=draw(pair_or_int(1, 2)),
                              padding=draw(st.one_of(st.sampled_from(["valid", "same"]), pair_or_int(0, 2))))
            elif kind == "pool":
                spec = _plain(draw(st.sampled_from([MaxPool2D, AvgPool2D])), pool_size=draw(pair_or_int(1, 3)),
                              strides=draw(st.one_of(st.none(), pair_or_int(1, 2))),
                              padding=draw(st.sampled_from(["valid", "same"])))
            elif kind == "flatten":
                spec = _plain(Flatten)
            else:
                spec = None
        else:
            kind = draw(st.sampled_from(["dense", "dense", "act", "norm", "drop", "reshape"]))
            if kind == "dense":
                spec = _plain(Dense, units=draw(ints(1, 5)))
            elif kind == "reshape":
                spec = _plain(Reshape, target_shape=draw(st.sampled_from([(1, -1, 1), (-1, 1, 1), (1, 1, -1)])))
            else:
                spec = None
        if spec is None:
            if kind == "act":
                spec = _plain(draw(st.sampled_from(ACTIVATIONS)))
            elif kind == "norm":
                spec = _plain(BatchNorm)
            else:
                spec = _plain(Dropout, rate=draw(st.sampled_from([0.0, 0.2, 0.5])))
        specs.append(spec)
        rank = {"Flatten": 1, "Dense": 1, "Reshape": len(spec[2].get("target_shape", ()))}.get(spec[0], rank)
    return input_shape, specs


def make_layers(specs):
    """Instantiate the drawn layers; None when a constructor refuses (with an XpnetError)."""
    layers = []
    for _, cls, kwargs in specs:
        try:
            layers.append(cls(**kwargs))
        except XpnetError as exc:
            assert str(exc), f"{cls.__name__}{kwargs}: empty error message"
            return None
    return layers


def check_stack(backend, specs, input_shape, batch):
    layers = make_layers(specs)
    if layers is None:
        return "refused"
    try:
        model = xpnet.Sequential(layers, input_shape=input_shape, device=backend, dtype="float64", seed=1)
    except XpnetError as exc:
        assert str(exc)
        return "refused"
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch,) + tuple(input_shape))
    for p in model.parameters.values():  # no exact zeros (zero biases put ReLU on its kink)
        p[...] = backend.asarray(rng.uniform(0.2, 1.0, p.shape) * rng.choice([-1.0, 1.0], p.shape))
    out = model(backend.asarray(x), training=False)
    assert tuple(out.shape) == (batch,) + tuple(model.output_shape)
    assert np.isfinite(backend.to_numpy(out)).all()
    try:   # the model's own training forward, as the check runs it
        model(backend.asarray(x), training=True)
    except XpnetError as exc:  # e.g. BatchNorm refuses one value per channel in training
        assert str(exc)
        return "refused in training"
    # outside the try: kink_margin rebuilds the model from its config, and a config that does not
    # rebuild is a defect to fail on, not a refusal (save/load below would catch it too)
    margin = kink_margin(model, x)
    # at a kink (a (Leaky)ReLU input near 0, a max-pool window's two largest values near a tie)
    # there is no derivative: a central difference across it mixes the two sides and disagrees
    # with backward by chance of the draw (exact zeros and ties stay in: kink_margin)
    if margin <= NEAR_KINK:
        event("left out: near a kink")  # counted in --hypothesis-show-statistics
        reject()
    # outside the try: a GradientCheckError is an XpnetError too, and a wrong gradient must fail
    gradcheck_model(model, x, training=True, eps=STEP, max_entries=3, tol=1e-5)
    with tempfile.TemporaryDirectory() as folder:  # every accepted stack survives save/load
        path = os.path.join(folder, "m.npz")
        model.save(path)
        again = xpnet.load(path, device=backend)
    xd = backend.asarray(x)
    assert backend.to_numpy(again(xd)).tobytes() == backend.to_numpy(model(xd)).tobytes()
    return "checked"


@QUICK
@given(stack=stacks(4), batch=ints(1, 3))
def test_random_layer_stacks(backend, stack, batch):
    check_stack(backend, stack[1], stack[0], batch)


@QUICK
@given(specs=st.lists(LAYER, min_size=1, max_size=4), input_shape=INPUT_SHAPE, batch=ints(1, 3))
def test_random_layer_arguments(backend, specs, input_shape, batch):
    check_stack(backend, specs, input_shape, batch)


@pytest.mark.slow
@LARGE
@given(stack=stacks(6), batch=ints(1, 4))
def test_random_layer_stacks_large(stack, batch):
    check_stack(xpnet.get_backend("numpy"), stack[1], stack[0], batch)


@pytest.mark.slow
@LARGE
@given(specs=st.lists(LAYER, min_size=1, max_size=5), input_shape=INPUT_SHAPE, batch=ints(1, 4))
def test_random_layer_arguments_large(specs, input_shape, batch):
    check_stack(xpnet.get_backend("numpy"), specs, input_shape, batch)


def test_a_config_that_does_not_rebuild_fails(backend, monkeypatch):
    """kink_margin rebuilds the model from its config: a layer whose config does not rebuild is a
    defect, not a refusal in training (it was counted as one while kink_margin ran in the try)."""
    monkeypatch.setattr(Dense, "get_config", lambda self: {"units": 0})
    with pytest.raises(XpnetError):
        check_stack(backend, [_plain(Dense, units=3), _plain(Tanh)], (4,), 2)


def test_wrong_gradient_fails(backend, monkeypatch):
    """A GradientCheckError is an XpnetError too, but not a refusal: check_stack raises it."""
    monkeypatch.setattr(Tanh, "backward", lambda self, grad: grad * 2.0)
    with pytest.raises(GradientCheckError, match="finite differences"):
        check_stack(backend, [_plain(Dense, units=3), _plain(Tanh)], (4,), 2)


@pytest.mark.parametrize("layer,x", [
    (ReLU, [[1e-9, -0.5, 0.7]]),
    (lambda: LeakyReLU(0.1), [[0.4, -1e-9, 0.7]]),
    # the bottom-left window takes in "same" padding: two real values 1e-9 apart and two -inf
    (lambda: MaxPool2D(2, padding="same"), [[[[0.1, 0.2, -0.3], [0.4, 0.5, 0.6], [0.3, 0.3 + 1e-9, 0.9]]]]),
])
def test_near_kinks_are_left_out(backend, layer, x):
    """Inputs on a kink, as check_stack leaves out: the check fails there though backward is right."""
    x = np.asarray(x)
    model = build([layer()], x.shape[1:], backend)
    assert kink_margin(model, x) < NEAR_KINK
    with pytest.raises(GradientCheckError, match="finite differences"):
        gradcheck_model(model, x, training=True, eps=STEP, max_entries=x.size, tol=1e-5)


@pytest.mark.parametrize("layers", [lambda: [ReLU(), ReLU()],
                                    lambda: [Conv2D(1, 1, padding=1), MaxPool2D(2, strides=1)]])
def test_exact_ties_stay_in(backend, layers):
    """Exact zeros into the second ReLU, and max-pool windows of cells that see only padding (the
    bias, 0.3, above the center's 0.2): they stay put or move together, and the check passes."""
    x = np.full((1, 1, 1, 1), -0.2)
    model = build(layers(), x.shape[1:], backend)
    for p, v in zip(model.parameters.values(), (0.5, 0.3)):
        p[...] = backend.asarray(np.full(p.shape, v))
    assert kink_margin(model, x) > NEAR_KINK
    gradcheck_model(model, x, training=True, eps=STEP, max_entries=x.size, tol=1e-5)


# -- fit / predict / evaluate arguments -----------------------------------------------------------
ODD_NUMBERS = st.one_of(ints(-3, 40), st.sampled_from([0.5, 2.0, True, None, "8", float("nan"), 10 ** 30]))


@pytest.fixture(scope="module")
def small_model():
    model = xpnet.Sequential([Dense(5), ReLU(), Dense(3)], input_shape=(4,), seed=0)
    return model.compile(loss="cross_entropy", optimizer="sgd")


X_KINDS = {
    "ok": lambda n: np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32),
    "uint8": lambda n: np.full((n, 4), 200, dtype=np.uint8),
    "wrong features": lambda n: np.zeros((n, 5), dtype=np.float32),
    "rank 1": lambda n: np.zeros(n, dtype=np.float32),
    "rank 3": lambda n: np.zeros((n, 4, 1), dtype=np.float32),
    "complex": lambda n: np.zeros((n, 4), dtype=np.complex64),
    "strings": lambda n: np.full((n, 4), "a"),
    "objects": lambda n: np.full((n, 4), None, dtype=object),
    "list": lambda n: [[0.0] * 4] * n,
    "nan": lambda n: np.full((n, 4), np.nan, dtype=np.float32),
}
Y_KINDS = {
    "ok": lambda n: np.arange(n) % 3,
    "out of range": lambda n: np.arange(n) + 3,
    "negative": lambda n: -np.ones(n, dtype=np.int64),
    "one-hot": lambda n: np.eye(3, dtype=np.float32)[np.arange(n) % 3],
    "one-hot wrong width": lambda n: np.eye(4, dtype=np.float32)[np.arange(n) % 4],
    "float ids": lambda n: (np.arange(n) % 3).astype(np.float32),
    "2-d ids": lambda n: (np.arange(n) % 3).reshape(n, 1),
    "short": lambda n: np.arange(max(n - 1, 0)) % 3,
    "strings": lambda n: np.array(["cat"] * n),
}


@QUICK
@given(x_kind=st.sampled_from(sorted(X_KINDS)), y_kind=st.sampled_from(sorted(Y_KINDS)),
       n=ints(0, 9), batch_size=ODD_NUMBERS, epochs=ODD_NUMBERS,
       split=st.sampled_from([0.0, 0.5, 0.99, 1.0, -0.2]))
@example(x_kind="ok", y_kind="ok", n=7, batch_size=3, epochs=1, split=0.5)  # valid calls, drawn
@example(x_kind="uint8", y_kind="one-hot", n=1, batch_size=4, epochs=2, split=0.0)  # or not
def test_fit_arguments(small_model, x_kind, y_kind, n, batch_size, epochs, split):
    x, y = X_KINDS[x_kind](n), Y_KINDS[y_kind](n)
    good_data = x_kind in ("ok", "uint8") and y_kind in ("ok", "one-hot")
    # a call that must train: good data, whole counts, a split that leaves samples for training
    # (without this a fit that refused everything with an XpnetError passed)
    plainly_fine = (good_data and n >= 1 and (split == 0.0 or (split == 0.5 and n >= 2))
                    and all(type(v) is int and 1 <= v <= 40 for v in (batch_size, epochs)))
    try:
        small_model.fit(x, y, epochs=epochs, batch_size=batch_size, validation_split=split, verbose=0)
    except XpnetError as exc:
        assert str(exc)
        assert not plainly_fine, f"a valid fit was refused: {exc}"
        return
    assert good_data, "bad data was accepted"


@QUICK
@given(x_kind=st.sampled_from(sorted(X_KINDS)), y_kind=st.sampled_from(sorted(Y_KINDS)),
       n=ints(0, 9), batch_size=ODD_NUMBERS)
@example(x_kind="ok", y_kind="one-hot", n=5, batch_size=2)  # valid calls, drawn or not
@example(x_kind="uint8", y_kind="ok", n=1, batch_size=8)
def test_predict_and_evaluate_arguments(small_model, x_kind, y_kind, n, batch_size):
    x, y = X_KINDS[x_kind](n), Y_KINDS[y_kind](n)
    # calls that must run (without this a predict or evaluate that refused everything passed)
    fine_x = x_kind in ("ok", "uint8") and n >= 1 and type(batch_size) is int and 1 <= batch_size <= 40
    try:
        out = small_model.predict(x, batch_size=batch_size)
        assert out.shape == (n, 3)
    except XpnetError as exc:
        assert str(exc)
        assert not fine_x, f"a valid predict was refused: {exc}"
    try:
        small_model.evaluate(x, y, batch_size=batch_size)
    except XpnetError as exc:
        assert str(exc)
        assert not (fine_x and y_kind in ("ok", "one-hot")), f"a valid evaluate was refused: {exc}"


# -- datasets.load, xpnet.load, the CLI -----------------------------------------------------------
NAMES = st.one_of(st.sampled_from(["mnist", "MNIST", "fashion-mnist", "cifar10", "cifar100", "", "../mnist",
                                   "mnist/../../etc"]), st.text(max_size=12))


@QUICK
@given(name=NAMES, sub=st.text(alphabet="ab/._-", max_size=8))
def test_dataset_load_arguments(tmp_path, monkeypatch, name, sub):
    monkeypatch.setattr(datasets, "REPO_DATA", str(tmp_path / "none"))
    monkeypatch.setattr(datasets, "SYSTEM_DATA", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XPNET_DATA", raising=False)
    with pytest.raises(XpnetError) as info:
        datasets.load(name, data_dir=tmp_path / sub, download=False)
    assert str(info.value)


@QUICK
@given(content=st.binary(max_size=300), kind=st.sampled_from(["file", "folder", "missing"]))
def test_model_load_arguments(tmp_path, content, kind):
    path = tmp_path / "m.npz"
    if path.is_dir():
        path.rmdir()
    elif path.exists():
        path.unlink()
    if kind == "file":
        path.write_bytes(b"PK\x03\x04" + content if content[:1] == b"\x00" else content)
    elif kind == "folder":
        path.mkdir()
    with pytest.raises(XpnetError, match="m.npz"):
        xpnet.load(path)


CLI_WORDS = st.sampled_from(["evaluate", "predict", "summary", "info", "models", "bogus", "--dataset",
                             "mnist", "cifar100", "--device", "tpu", "--batch-size", "0", "-3", "x",
                             "--top", "missing.npz", "seed001-tf", "nonexistent-model", "--help-me", ""])


@QUICK
@given(words=st.lists(CLI_WORDS, min_size=0, max_size=5))
def test_cli_arguments(capsys, words):
    """Arguments either run, or exit with status 2 and one line on stderr; no tracebacks."""
    try:
        code = cli.main(words)
    except SystemExit as exc:  # argparse: usage + error, status 2 (or 0 for --help)
        assert exc.code in (0, 2), exc.code
        return
    finally:
        err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code in (0, 2), (code, err)


def test_fuzz_seed_chooses_the_draws(monkeypatch):
    """XPNET_FUZZ_SEED (tests/helpers.fuzz_settings): unset, the derandomized draws; a value, its
    own draws, the same again for the same value (a failure found that way reproduces) and other
    draws for another value and for none."""
    def draws(value):
        monkeypatch.setenv("XPNET_FUZZ_SEED", value)
        seen = []

        @fuzz_settings(max_examples=20, deadline=None)
        @given(ints(0, 10 ** 9))
        def record(n):
            seen.append(n)

        record()
        return seen

    unset, one, two = draws(""), draws("1"), draws("2")
    assert unset == draws("") and one == draws(" 1 ") and len(one) == 20
    assert len({tuple(unset), tuple(one), tuple(two)}) == 3
