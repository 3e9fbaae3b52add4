"""The model zoo: every entry builds, runs forward and backward, has the parameter count its
architecture implies, and carries a complete, usable recipe."""
import numpy as np
import pytest

import xpnet
from xpnet import augment, models
from xpnet.errors import ConfigError


def conv(c_in, c_out, k, bias=True):
    return c_out * c_in * k * k + (c_out if bias else 0)


def dense(n_in, n_out):
    return n_in * n_out + n_out


def bn(n):
    return 2 * n  # gamma and beta (running statistics are buffers)


SEED000 = conv(1, 10, 3) + dense(10 * 26 * 26, 128) + dense(128, 10)
SEED001_MLP1 = dense(784, 128) + dense(128, 10)
SEED001_MLP2 = dense(784, 128) + dense(128, 50) + dense(50, 10)
SEED001_SMALL = conv(1, 8, 5) + conv(8, 16, 5) + dense(16 * 7 * 7, 10)
SEED001_WIDE = conv(1, 16, 5) + conv(16, 32, 5) + conv(32, 48, 5) + conv(48, 64, 5) + dense(64 * 7 * 7, 10)
LENET = lambda c: conv(c, 6, 5) + conv(6, 16, 5) + dense(400, 120) + dense(120, 84) + dense(84, 10)  # noqa: E731
SEED004_TRUNK = conv(1, 64, 3) + conv(64, 64, 3) * 2 + bn(64) * 3
EXPECTED = {
    "seed000-sgd": SEED000, "seed000-momentum": SEED000, "seed000-adam": SEED000,
    "seed000-final": conv(1, 64, 3) + dense(64 * 26 * 26, 128) + dense(128, 10),
    "seed001-m1": dense(784, 100) + dense(100, 50) + dense(50, 10),
    **{f"seed001-m{i}": SEED001_MLP1 for i in (2, 3, 4, 5)},
    **{f"seed001-m{i}": SEED001_MLP2 for i in (6, 7, 8)},
    "seed001-m9": SEED001_SMALL, "seed001-m10": SEED001_SMALL, "seed001-m10-scaled-lr": SEED001_SMALL,
    "seed001-m11": SEED001_WIDE, "seed001-m11-scaled-lr": SEED001_WIDE,
    "seed001-m12": SEED001_WIDE, "seed001-m12-scaled-lr": SEED001_WIDE,
    "seed001-tf": 575_980,
    **{f"seed002-logreg-{p}": dense(784, 10) for p in ("none", "l1", "l2")},
    **{f"seed002-mlp-{p}": 623_290 for p in ("none", "l1", "l2")},  # the report's own count
    "seed002-cnn": conv(1, 20, 3, bias=False) + dense(20 * 13 * 13, 10),
    "seed003-lenet5": LENET(1),
    "seed003-lenet5-bn": LENET(1) + bn(6) + bn(16) + bn(120) + bn(84),
    "seed003-lenet5-bn-cifar10": LENET(3) + bn(6) + bn(16) + bn(120) + bn(84),
    "seed004-mlp": dense(784, 512) + dense(512, 256) + dense(256, 10),
    "seed004-cnn": SEED004_TRUNK + dense(64 * 5 * 5, 512) + bn(512) + dense(512, 10),
    "seed004-functional": SEED004_TRUNK + dense(64 * 5 * 5, 784) + bn(784) + dense(2 * 784, 10),
    "quick-mlp": SEED001_MLP1,
}
EXPECTED["seed004-cnn-fashion"] = EXPECTED["seed004-cnn"]
EXPECTED["seed004-functional-fashion"] = EXPECTED["seed004-functional"]


def test_every_model_has_an_expected_count_and_seeds_are_covered():
    assert sorted(models.names()) == sorted(EXPECTED)
    assert EXPECTED["seed001-tf"] == conv(1, 32, 5) + conv(32, 64, 5) + conv(64, 96, 5) + \
        conv(96, 128, 5) + dense(128 * 7 * 7, 10) + bn(10) + dense(10, 10)
    assert {models.get(n).seed for n in models.names()} == {"000", "001", "002", "003", "004", None}
    plain = [f"seed001-m{i}" for i in range(1, 13)]
    assert plain[:10] + ["seed001-m10-scaled-lr", "seed001-m11", "seed001-m11-scaled-lr", "seed001-m12",
                                             "seed001-m12-scaled-lr"] == \
        [n for n in models.names() if n.startswith("seed001-m")]
    assert models.DEFAULT == "seed001-tf" and models.QUICK in models.names()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builds_runs_and_counts(name):
    spec = models.get(name)
    model = spec.build(seed=1)
    assert model.count_params() == EXPECTED[name]
    assert model.input_shape == spec.input_shape and model.output_shape == (10,)
    x = model.backend.rng(0, 0).random((2,) + spec.input_shape, "float32")
    out = model.forward(x, training=True)
    assert out.shape == (2, 10) and np.isfinite(out).all()
    model.backward(np.ones_like(out))
    grads = model.gradients
    for k, p in model.parameters.items():
        assert grads[k].shape == p.shape, k
        assert np.isfinite(grads[k]).all(), k
    assert any(float(abs(g).sum()) > 0 for g in grads.values())


def test_recipes_are_complete_and_usable():
    from xpnet import augment, callbacks, losses, optim, schedules
    for name in models.names():
        spec = models.get(name)
        r = spec.recipe
        assert set(models.RECIPE_KEYS) <= set(r), name
        assert isinstance(spec.description, str) and spec.description, name
        assert r["dataset"] in models.DATASET_SHAPES, name
        assert isinstance(r["batch_size"], int) and r["batch_size"] > 0, name
        assert isinstance(r["epochs"], int) and r["epochs"] > 0, name
        assert 0.0 <= r["validation_split"] < 1.0, name
        assert r["reported_error"] is None or 0.0 < r["reported_error"] < 100.0, name
        opt = optim.get(r["optimizer"], lr=r["lr"], decay=r["decay"],
                        **({"momentum": r["momentum"]} if r["momentum"] else {}),
                        **({"clipvalue": r["clipvalue"]} if r["clipvalue"] else {}))
        assert opt.lr == r["lr"], name
        assert losses.get(r["loss"]) is not None, name
        assert (r["targets"] == "one_hot") == (r["loss"] == "mse"), name
        if r["schedule"] is not None:
            base = schedules.get(r["schedule"])
            while hasattr(base, "schedule"):   # a wrapper (EpochBiasCorrection): its inner schedule
                base = base.schedule
            assert base.lr == r["lr"], name  # the base (peak) rate
        if r["augment"] is not None:
            kind = dict(r["augment"]).pop("type")
            augment.AUGMENTERS[kind](**{k: v for k, v in r["augment"].items() if k != "type"})
        if r["early_stopping"] is not None:
            callbacks.EarlyStopping(**r["early_stopping"])


def test_seed001_tf_layout_and_schedule():
    model = models.get("seed001-tf").build()
    kinds = [type(l).__name__ for l in model.layers]
    assert kinds[-4:] == ["Flatten", "Dense", "BatchNorm", "Dense"]
    assert [l.filters for l in model.layers if type(l).__name__ == "Conv2D"] == [32, 64, 96, 128]
    assert kinds.count("Dropout") == 4 and kinds.count("MaxPool2D") == 2
    m12 = models.get("seed001-m12").recipe["schedule"]
    from xpnet import schedules
    rates = schedules.get(m12).values(27)
    assert rates[4] == pytest.approx(5e-3) and rates[20] == pytest.approx(6.25e-4)
    assert rates[21] == pytest.approx(3.125e-4) and rates[24] == pytest.approx(1.5625e-4)


def test_seed002_penalties_sit_on_the_last_weights():
    assert models.get("seed002-mlp-none").build().regularization_loss() == 0.0
    for name, kind in (("seed002-logreg-l1", "L1"), ("seed002-mlp-l2", "L2")):
        layers = models.get(name).build().layers
        assert [type(r).__name__ for r in layers[-1].regularizers.values()] == [kind]
        assert all(not l.regularizers for l in layers[:-1])


def test_lenet_pads_mnist_and_takes_cifar_shape():
    spec = models.get("seed003-lenet5")
    mnist = spec.build()
    cifar = spec.build(input_shape=(3, 32, 32))
    # 28x28 padded by 2 on each side is LeNet's 32x32 input; both give C1 maps of 28x28
    assert mnist.layers[0].pads == (2, 2, 2, 2) and cifar.layers[0].pads == (0, 0, 0, 0)
    assert mnist.layers[0].output_shape == cifar.layers[0].output_shape == (6, 28, 28)
    assert cifar.count_params() == LENET(3)


def test_functional_model_concatenates_the_image_and_round_trips(tmp_path):
    spec = models.get("seed004-functional")
    model = spec.build(dtype="float64", seed=2)
    assert isinstance(model, xpnet.Model)
    concat = next(l for l in model.layers if type(l).__name__ == "Concatenate")
    assert concat.output_shape == (2, 28, 28)
    x = np.random.default_rng(0).random((2, 1, 28, 28))
    # weights the seed cannot rebuild: load must read them; "+ 0.1" because the biases, BatchNorm's
    # beta and its running mean start at zero (times 1.5 they stayed what a rebuild gives), and the
    # running statistics (buffers, used by this forward) too
    for v in model.state_arrays().values():
        v[...] = v * 1.5 + 0.1
    expected = model.forward(x)
    loaded = xpnet.load(model.save(tmp_path / "f.npz"))
    np.testing.assert_array_equal(loaded.forward(x), expected)


def test_strict_backend_builds_a_cnn_and_the_graph():
    for name in ("seed001-m9", "seed004-functional"):
        model = models.get(name).build(device="strict")
        x = model.backend.rng(0, 0).random((2, 1, 28, 28), "float32")
        out = model.forward(x, training=True)
        model.backward(out * 0 + 1)
        assert tuple(out.shape) == (2, 10)


def test_unknown_and_duplicate_names():
    with pytest.raises(ConfigError, match="unknown model 'nope'.*seed001-tf"):
        models.get("nope")
    with pytest.raises(ConfigError, match="already registered"):
        models.register(models.get("seed001-m1"))
    with pytest.raises(ConfigError, match="num_classes"):
        models.get("seed001-m1").build(num_classes=1)


def test_seed001_augmentation_and_stopping_follow_the_authors_code():
    """The author's data_augmentation.py zooms (+-20 %, both axes alike), rotates (+-25 deg) and
    shifts by up to 20 % of the width and height; models 10-12 stop with patience 25 (report
    listings 13-15, config.py's PATIENCE, model 11's best_result.log)."""
    for name, p in (("seed001-m7", 0.25), ("seed001-m9", 0.25), ("seed001-m10", 0.5),
                    ("seed001-m11", 0.5), ("seed001-m12", 0.8)):
        aug = models.get(name).recipe["augment"]
        assert aug == {"type": "RandomAffine", "rotation": 25.0, "scale": None, "zoom": 0.2,
                       "shift": [0.2, 0.2], "probability": p}, name
    for name in ("seed001-m10", "seed001-m11", "seed001-m12"):
        assert models.get(name).recipe["early_stopping"]["patience"] == 25
    built = augment.AUGMENTERS["RandomAffine"](**{k: v for k, v in models.get(
        "seed001-m12").recipe["augment"].items() if k != "type"})
    assert built.shift == (0.2, 0.2) and built.scale is None
