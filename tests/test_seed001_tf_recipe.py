"""seed001-tf trains with the recipe of the seed author's TensorFlow notebook: batch 64, Adam 5e-4,
warm-up then step decay (WarmupStepDecay), Keras ImageDataGenerator augmentation (KerasAffine),
early stopping on the training loss (patience 20, best weights back), at most 100 epochs."""
import json
import math

import numpy as np
import pytest

from xpnet.backends.strict_backend import COUNTERS
from xpnet import models, runner, schedules
from xpnet.augment import AUGMENTERS, KerasAffine, affine_warp, from_config
from xpnet.backends import get_backend
from xpnet.errors import ConfigError


def notebook_lr(epoch):
    """The notebook's scheduler, as the issue quotes it."""
    if epoch < 5:
        return 5e-4 * (epoch + 1) / 5
    return 5e-4 * 0.5 ** ((epoch - 5) // 5)


def test_recipe_is_the_notebooks():
    r = models.get("seed001-tf").recipe
    assert (r["optimizer"], r["lr"], r["batch_size"], r["epochs"]) == ("adam", 5e-4, 64, 100)
    assert r["early_stopping"] == {"monitor": "loss", "patience": 20, "restore_best_weights": True}
    assert r["validation_split"] == 0.0 and r["reported_error"] == 0.25
    aug = from_config(r["augment"])
    assert isinstance(aug, KerasAffine)
    assert aug.get_config() == {"rotation": 25.0, "zoom": 0.2, "shift": [0.2, 0.2],
                                "fill_mode": "nearest", "fill": 0.0, "probability": 1.0}
    # the runner builds exactly these callbacks from the recipe
    made = runner._callbacks(r, "/nonexistent")
    stop = [c for c in made if type(c).__name__ == "EarlyStopping"][0]
    assert (stop.monitor, stop.patience, stop.min_delta, stop.restore_best_weights) == ("loss", 20, 0.0, True)
    sched = [c for c in made if type(c).__name__ == "LearningRateScheduler"][0]
    assert [sched.schedule(e) for e in range(100)] == pytest.approx([notebook_lr(e) for e in range(100)],
                                                                    rel=1e-15)


def test_schedule_values_epoch_by_epoch():
    s = schedules.get(models.get("seed001-tf").recipe["schedule"])
    assert isinstance(s, schedules.WarmupStepDecay)
    expected = ([1e-4, 2e-4, 3e-4, 4e-4, 5e-4]          # epochs 0-4: 5e-4 * (e + 1) / 5
                + [5e-4] * 5 + [2.5e-4] * 5 + [1.25e-4] * 5 + [6.25e-5] * 5  # 5-9, 10-14, 15-19, 20-24
                + [3.125e-5] * 5)                        # 25-29
    assert s.values(30) == pytest.approx(expected, rel=1e-15)
    assert s(65) == pytest.approx(5e-4 * 0.5 ** 12, rel=1e-15)
    assert s(99) == pytest.approx(5e-4 * 0.5 ** 18, rel=1e-15)
    assert s.values(100) == pytest.approx([notebook_lr(e) for e in range(100)], rel=1e-15)
    again = schedules.get(json.loads(json.dumps(s.get_config())))
    assert again.values(100) == s.values(100)
    assert schedules.get("warmup_step_decay", lr=1.0, warmup_epochs=0, every=2).values(5) == [1, 1, .5, .5, .25]
    with pytest.raises(ConfigError, match="every must be an integer >= 1"):
        schedules.WarmupStepDecay(1e-3, every=0)


def batch(backend, n=6, h=12, w=12, seed=0, dtype="float64"):
    host = np.random.default_rng(seed).uniform(0.0, 1.0, (n, 1, h, w)).astype(dtype)
    return host, backend.asarray(host)


def test_zero_ranges_are_the_identity(backend):
    host, x = batch(backend, h=28, w=28, dtype="float32")
    out = KerasAffine(rotation=0, zoom=0, shift=(0, 0))(x, backend.rng(3))
    np.testing.assert_array_equal(backend.to_numpy(out), host)


def test_zoom_factors_are_independent_and_uniform_like_keras():
    b = get_backend("numpy")
    m = KerasAffine(rotation=0, zoom=0.2, shift=0).matrices(b.xp, b.rng(5), 20000, 28, 28)
    zx, zy = m[:, 0, 0], m[:, 1, 1]
    assert np.all(m[:, 0, 1] == 0) and np.all(m[:, 1, 0] == 0) and np.all(m[:, :, 2] == 0)
    for z in (zx, zy):
        assert 0.8 <= z.min() < 0.801 and 1.199 < z.max() < 1.2
        assert abs(z.mean() - 1.0) < 0.005 and abs(z.std() - 0.4 / math.sqrt(12)) < 0.003
    assert abs(np.corrcoef(zx, zy)[0, 1]) < 0.03  # drawn independently, not one isotropic factor
    assert np.mean(np.abs(zx - zy) > 0.05) > 0.7


def keras_reference(image, theta, tx, ty, zx, zy):
    """Keras 2's apply_affine_transform (rotation @ shift @ zoom, order 1, fill_mode 'nearest')
    on one (H, W) image, with its arguments in Keras's (row, column) order. One change: the
    centre is the image's centre ((H - 1) / 2), where Keras's transform_matrix_offset_center uses
    H / 2 + 0.5, half a pixel past the last pixel's centre (see docs/reproduction.md)."""
    ndimage = pytest.importorskip("scipy.ndimage")
    t = np.deg2rad(theta)
    rotation = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    shift = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    zoom = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
    matrix = rotation @ shift @ zoom
    h, w = image.shape
    o_x, o_y = (h - 1) / 2, (w - 1) / 2
    offset = np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]])
    reset = np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
    matrix = offset @ matrix @ reset
    return ndimage.affine_transform(image, matrix[:2, :2], matrix[:2, 2], order=1, mode="nearest")


def test_matches_keras_apply_affine_transform():
    b = get_backend("numpy")
    host, x = batch(b, n=12, h=28, w=28)
    host[:, :, 10:18, 6:22] += 2.0  # a bright bar, so edges and interpolation show
    x = b.asarray(host)
    aug = KerasAffine(rotation=25, zoom=0.2, shift=(0.2, 0.2))
    out = aug(x, b.rng(11, 2))
    r = b.rng(11, 2).random((5, 12), "float64") * 2.0 - 1.0  # the draws the augmenter made
    for i in range(12):
        theta, tx, ty = 25.0 * r[0, i], 0.2 * 28 * r[1, i], 0.2 * 28 * r[2, i]
        zx, zy = 1 + 0.2 * r[3, i], 1 + 0.2 * r[4, i]
        # ours is in (column, row) order: Keras's row axis takes our y, and the angle turns sign
        ref = keras_reference(host[i, 0], -theta, ty, tx, zy, zx)
        np.testing.assert_allclose(out[i, 0], ref, rtol=0, atol=1e-10)


def test_nearest_and_constant_fill():
    b = get_backend("numpy")
    host, x = batch(b, n=2, h=10, w=12)
    m = np.array([[[1.0, 0, 3.0], [0, 1, -2.0]]] * 2)  # input = output + (3, -2)
    nearest = affine_warp(np, x, m, mode="nearest")
    padded = np.pad(host, ((0, 0), (0, 0), (2, 0), (0, 3)), mode="edge")
    np.testing.assert_array_equal(nearest, padded[:, :, :10, 3:15])
    constant = affine_warp(np, x, m, fill=-1.0)
    assert np.all(constant[:, :, :2] == -1.0) and np.all(constant[:, :, :, -3:] == -1.0)
    with pytest.raises(ConfigError, match="mode must be 'constant' or 'nearest'"):
        affine_warp(np, x, m, mode="wrap")
    with pytest.raises(ConfigError, match="fill_mode must be 'nearest' or 'constant'"):
        KerasAffine(fill_mode="reflect")


def test_same_batch_on_numpy_and_strict_without_syncs():
    outs = []
    for name in ("numpy", "strict"):
        b = get_backend(name)
        _, x = batch(b, n=16, h=28, w=28, dtype="float32")
        aug, rng = KerasAffine(), b.rng(4, 1)
        before = dict(COUNTERS)
        out = aug(x, rng)
        assert COUNTERS == before, f"augmentation synced or copied: {before} -> {COUNTERS}"
        outs.append(b.to_numpy(out))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_config_round_trip_and_registry():
    aug = KerasAffine(rotation=10, zoom=0.1, shift=(0.1, 0.05), fill_mode="constant", fill=0.5,
                      probability=0.75)
    assert AUGMENTERS["KerasAffine"] is KerasAffine
    clone = from_config(json.loads(json.dumps({"type": "KerasAffine", **aug.get_config()})))
    assert clone.get_config() == aug.get_config()
    b = get_backend("numpy")
    _, x = batch(b, n=8)
    np.testing.assert_array_equal(clone(x, b.rng(2)), aug(x, b.rng(2)))
