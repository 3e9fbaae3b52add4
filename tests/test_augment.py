"""On-device augmentation: exact identities, rot90/roll references, torch parity, seeds, no syncs."""
import json

import numpy as np
import pytest

from xpnet.backends.strict_backend import COUNTERS
from xpnet.augment import (AUGMENTERS, ElasticDistortion, RandomAffine, affine_matrices, affine_warp,
                           from_config, gaussian_matrix, to_config)
from xpnet.backends import get_backend
from xpnet.errors import ConfigError, ShapeError


def batch(backend, n=6, c=2, h=9, w=9, seed=0, dtype="float32", low=0.0, high=1.0):
    host = np.random.default_rng(seed).uniform(low, high, (n, c, h, w)).astype(dtype)
    return host, backend.asarray(host)


def mats(backend, rows):
    return backend.asarray(np.array(rows, dtype=np.float64))


def test_identity_parameters_return_input_exactly(backend):
    host, x = batch(backend, h=28, w=28)
    aug = RandomAffine(rotation=0, scale=None, zoom=0, shift=(0, 0), probability=1.0)
    np.testing.assert_array_equal(backend.to_numpy(aug(x, backend.rng(1))), host)
    eye = mats(backend, [[[1, 0, 0], [0, 1, 0]]] * len(host))
    np.testing.assert_array_equal(backend.to_numpy(affine_warp(backend.xp, x, eye)), host)


@pytest.mark.parametrize("hw", [(8, 8), (9, 9)])
def test_rotation_by_90_degrees_matches_rot90(backend, hw):
    host, x = batch(backend, h=hw[0], w=hw[1], dtype="float64")
    # positive angles turn the picture counter-clockwise as displayed, as np.rot90 does
    exact = mats(backend, [[[0, -1, 0], [1, 0, 0]]] * len(host))
    np.testing.assert_array_equal(backend.to_numpy(affine_warp(backend.xp, x, exact)),
                                  np.rot90(host, 1, axes=(2, 3)))
    xp = backend.xp
    for angle, k in ((90.0, 1), (-90.0, -1), (180.0, 2)):
        m = affine_matrices(xp, angle=xp.full((len(host),), angle))
        out = backend.to_numpy(affine_warp(xp, x, m))
        np.testing.assert_allclose(out, np.rot90(host, k, axes=(2, 3)), rtol=0, atol=1e-12)


def test_integer_shift_equals_roll_with_fill(backend):
    host, x = batch(backend, h=10, w=12)
    xp = backend.xp
    m = affine_matrices(xp, shift_x=xp.full((len(host),), 3.0), shift_y=-2.0)
    out = backend.to_numpy(affine_warp(xp, x, m, fill=-1.0))
    expected = np.roll(host, (-2, 3), axis=(2, 3))
    expected[:, :, -2:, :] = -1.0
    expected[:, :, :, :3] = -1.0
    np.testing.assert_array_equal(out, expected)


def test_scale_and_zoom_about_the_centre(backend):
    host, x = batch(backend, h=9, w=9, dtype="float64")
    xp = backend.xp
    # shrinking by 1/2 samples the input at twice the centred coordinates
    m = affine_matrices(xp, scale_x=xp.full((len(host),), 0.5), scale_y=0.5)
    out = backend.to_numpy(affine_warp(xp, x, m))
    np.testing.assert_array_equal(out[:, :, 2:7, 2:7], host[:, :, ::2, ::2])
    assert np.all(out[:, :, 0, :] == 0) and np.all(out[:, :, :, 8] == 0)


def test_bilinear_matches_torch_grid_sample():
    torch = pytest.importorskip("torch")
    backend = get_backend("numpy")
    host, x = batch(backend, n=5, c=3, h=11, w=13, dtype="float64")
    aug = RandomAffine(rotation=40, scale=(0.3, 0.1), zoom=0.2, shift=(0.2, 0.3), probability=1.0)
    m = aug.matrices(backend.xp, backend.rng(5), 5, 11, 13)
    ours = affine_warp(backend.xp, x, m)
    v, u = np.meshgrid(np.arange(11) - 5.0, np.arange(13) - 6.0, indexing="ij")
    xs = np.einsum("nk,khw->nhw", m[:, 0], np.stack([u, v, np.ones_like(u)])) + 6
    ys = np.einsum("nk,khw->nhw", m[:, 1], np.stack([u, v, np.ones_like(u)])) + 5
    grid = torch.from_numpy(np.stack([xs / 12 * 2 - 1, ys / 10 * 2 - 1], axis=-1))
    ref = torch.nn.functional.grid_sample(torch.from_numpy(host), grid, mode="bilinear",
                                          padding_mode="zeros", align_corners=True).numpy()
    assert np.abs(ref).max() > 0.1
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err < 1e-6, err


@pytest.mark.parametrize("make", [lambda: RandomAffine(probability=1.0, fill=0.5),
                                  lambda: ElasticDistortion(alpha=34, sigma=4, probability=1.0, fill=0.5)])
def test_outputs_stay_within_input_range(backend, make):
    host, x = batch(backend, n=16, h=28, w=28, low=0.2, high=0.9)
    out = backend.to_numpy(make()(x, backend.rng(3)))
    assert out.min() >= 0.2 - 1e-6 and out.max() <= 0.9 + 1e-6
    assert not np.array_equal(out, host)


@pytest.mark.parametrize("make", [lambda: RandomAffine(probability=0.5),
                                  lambda: ElasticDistortion(probability=0.5)])
def test_same_seed_same_batch_on_numpy_and_strict(make):
    results = []
    for name in ("numpy", "strict"):
        b = get_backend(name)
        _, x = batch(b, n=32, c=1, h=28, w=28)
        results.append(b.to_numpy(make()(x, b.rng(42, 7))))
    np.testing.assert_array_equal(results[0], results[1])
    b = get_backend("numpy")
    _, x = batch(b, n=32, c=1, h=28, w=28)
    again = make()(x, b.rng(42, 7))
    other = make()(x, b.rng(43, 7))
    np.testing.assert_array_equal(again, results[0])
    assert not np.array_equal(other, results[0])


@pytest.mark.parametrize("cls", [RandomAffine, ElasticDistortion])
def test_probability_zero_one_and_half(backend, cls):
    host, x = batch(backend, n=40, c=1, h=12, w=12)
    same = backend.to_numpy(cls(probability=0.0)(x, backend.rng(0)))
    np.testing.assert_array_equal(same, host)
    changed = backend.to_numpy(cls(probability=1.0)(x, backend.rng(0)))
    assert all(not np.array_equal(changed[i], host[i]) for i in range(len(host)))
    half = backend.to_numpy(cls(probability=0.5)(x, backend.rng(0)))
    untouched = [np.array_equal(half[i], host[i]) for i in range(len(host))]
    assert 8 <= sum(untouched) <= 32  # about half, each either exactly kept or warped


def test_elastic_alpha_zero_is_identity(backend):
    host, x = batch(backend, h=28, w=28)
    out = ElasticDistortion(alpha=0.0, sigma=4.0, probability=1.0)(x, backend.rng(9))
    np.testing.assert_array_equal(backend.to_numpy(out), host)


def test_elastic_field_is_smooth_and_scaled():
    b = get_backend("numpy")
    aug = ElasticDistortion(alpha=34, sigma=4, probability=1.0)
    dx, dy = aug.displacements(b.xp, b.rng(0), 64, 28, 28, "float64")
    raw = b.rng(0).random((64, 2, 28, 28), "float64") * 2 - 1
    g = gaussian_matrix(b.xp, 28, 4.0)
    np.testing.assert_allclose(dx, 34 * g @ raw[:, 0] @ g.T, rtol=0, atol=1e-12)
    torch = pytest.importorskip("torch")
    k1 = torch.from_numpy(np.exp(-np.arange(-16, 17) ** 2 / 32.0))
    k1 = k1 / k1.sum()
    ref = torch.nn.functional.conv2d(torch.from_numpy(raw[:, 1:]), (k1[:, None] * k1[None, :])[None, None],
                                     padding=16).numpy()[:, 0]
    np.testing.assert_allclose(dy, 34 * ref, rtol=0, atol=1e-12)
    # neighbours move together: smoothed fields correlate strongly, raw noise does not
    corr = np.corrcoef(dx[:, :, :-1].ravel(), dx[:, :, 1:].ravel())[0, 1]
    assert corr > 0.9 and 0.5 < np.abs(dy).mean() < 10
    k = np.arange(-16, 17)
    kernel = np.exp(-k ** 2 / 32.0) / np.exp(-k ** 2 / 32.0).sum()
    np.testing.assert_allclose(g[14, 14 - 13:14 + 14], kernel[16 - 13:16 + 14], rtol=1e-12)
    np.testing.assert_allclose(g, g.T)


@pytest.mark.parametrize("make", [lambda: RandomAffine(probability=0.7),
                                  lambda: ElasticDistortion(probability=0.7)])
def test_no_host_syncs_on_strict(make):
    b = get_backend("strict")
    _, x = batch(b, n=8, c=1, h=28, w=28)
    aug, rng = make(), b.rng(1)
    before = dict(COUNTERS)
    out = aug(x, rng)
    assert COUNTERS == before, f"augmentation synced or copied: {before} -> {COUNTERS}"
    assert out.shape == (8, 1, 28, 28) and out.dtype == np.float32


def test_config_round_trip():
    b = get_backend("numpy")
    _, x = batch(b, n=8, c=1, h=16, w=16)
    for aug in (RandomAffine(rotation=10, scale=None, zoom=0.1, shift=(0.1, 0.05), probability=0.9,
                             fill=0.25), ElasticDistortion(alpha=20, sigma=3, probability=0.8)):
        config = json.loads(json.dumps(aug.get_config()))
        clone = AUGMENTERS[type(aug).__name__].from_config(config)
        assert clone.get_config() == aug.get_config()
        np.testing.assert_array_equal(clone(x, b.rng(2)), aug(x, b.rng(2)))
        rebuilt = from_config(json.loads(json.dumps(to_config(aug))))
        assert type(rebuilt) is type(aug) and rebuilt.get_config() == aug.get_config()
    assert from_config(None) is None and from_config(aug) is aug
    with pytest.raises(ConfigError, match="type\" one of RandomAffine, KerasAffine, ElasticDistortion"):
        from_config({"type": "Blur"})
    with pytest.raises(ConfigError, match="bad arguments for RandomAffine"):
        from_config({"type": "RandomAffine", "angle": 3})
    assert RandomAffine().get_config() == {"rotation": 25.0, "scale": [0.2, 0.2], "zoom": 0.2,
                                           "shift": [0.2, 0.2], "probability": 0.5, "fill": 0.0}


def test_bad_arguments():
    with pytest.raises(ConfigError, match=r"probability must be in \[0, 1\], got 1.5"):
        RandomAffine(probability=1.5)
    with pytest.raises(ConfigError, match=r"zoom must be a fraction in \[0, 1\), got 1.0"):
        RandomAffine(zoom=1.0)
    with pytest.raises(ConfigError, match="scale must be a number or an"):
        RandomAffine(scale=(0.1, 0.1, 0.1))
    with pytest.raises(ConfigError, match="sigma must be > 0"):
        ElasticDistortion(sigma=0)
    b = get_backend("numpy")
    with pytest.raises(ShapeError, match=r"expected a float batch \(N, C, H, W\), got shape \(4, 28, 28\)"):
        RandomAffine()(np.zeros((4, 28, 28), np.float32), b.rng())
    with pytest.raises(ShapeError, match="expected float images, got uint8"):
        ElasticDistortion()(np.zeros((4, 1, 28, 28), np.uint8), b.rng())
    with pytest.raises(ShapeError, match=r"matrices must have shape \(4, 2, 3\)"):
        affine_warp(np, np.zeros((4, 1, 5, 5)), np.zeros((4, 3, 3)))
    for shape in ((4, 1, 5, 0), (4, 1, 0, 5)):   # NumPy's warp stopped at a slice step of 0
        with pytest.raises(ShapeError, match=r"images of at least one pixel, got shape \(4, 1, \d, \d\)"):
            affine_warp(np, np.zeros(shape, np.float32), np.zeros((4, 2, 3), np.float32))
        with pytest.raises(ShapeError, match="RandomAffine: expected images of at least one pixel"):
            RandomAffine()(np.zeros(shape, np.float32), b.rng())


# -- the CPU backends' RandomAffine: only the picked images are warped (xpnet/augment.py) ----------
class NoPeek:
    """A generator without ``peek``: RandomAffine then draws each batch's numbers alone."""

    def __init__(self, rng):
        self.rng, self.xp = rng, rng.xp

    def random(self, shape, dtype="float32"):
        return self.rng.random(shape, dtype)


def _with_fill(aug, fill):
    """``aug`` with ``fill`` set past the constructor, which refuses a NaN fill: the paths must
    still agree where NaN is what lands outside the images."""
    aug.fill = fill
    return aug


@pytest.mark.parametrize("make, shape, dtype", [
    (lambda: RandomAffine(rotation=25, scale=None, zoom=0.2, shift=(0.2, 0.2), probability=0.25),
     (16, 1, 28, 28), "float32"),                                      # seed 001's model-8 recipe
    (lambda: RandomAffine(fill=0.5), (5, 2, 9, 11), "float32"),
    (lambda: RandomAffine(scale=(0.1, 0.3), shift=(0.5, 0.4), probability=1.0, fill=-1.0),
     (7, 1, 12, 10), "float64"),
    (lambda: _with_fill(RandomAffine(probability=0.05), float("nan")), (4, 1, 8, 8), "float32")])
def test_cpu_picked_path_gives_the_fixed_paths_batches(make, shape, dtype):
    """Bit for bit and with the same generator counts: batch after batch (the look-ahead's plans,
    past their 128 batches), after the generator was used for something else (a new plan), for
    another batch size, and with a generator that cannot look ahead."""
    b = get_backend("numpy")
    aug = make()
    host = np.random.default_rng(5).random((300,) + shape[1:]).astype(dtype)
    for wrap in (lambda r: r, NoPeek):
        picked_rng, fixed_rng = b.rng(11, 3), b.rng(11, 3)
        for i in range(150 if wrap is NoPeek else 300):
            if i == 40:  # someone else draws from the generator between two batches
                picked_rng.random((3,)), fixed_rng.random((3,))
            n = shape[0] if i < 200 else shape[0] - 1
            x = b.asarray(host[(i * 7) % (300 - shape[0]):][:n])
            picked = aug._warp_picked(x, wrap(picked_rng), b.warp_constants)
            fixed = aug._warp_all(x, fixed_rng)
            np.testing.assert_array_equal(picked, fixed)
            assert picked_rng.counter == fixed_rng.counter
            assert picked.shape == x.shape and picked.dtype == x.dtype


def test_strict_keeps_the_fixed_path_and_numpy_takes_the_picked_one(monkeypatch):
    def refuse(*args):
        raise AssertionError("wrong path")
    aug = RandomAffine(probability=0.5)
    for name, other in (("strict", "_warp_picked"), ("numpy", "_warp_all")):
        b = get_backend(name)
        _, x = batch(b, n=8, c=1, h=28, w=28)
        expected = b.to_numpy(aug(x, b.rng(4)))
        with monkeypatch.context() as m:
            m.setattr(RandomAffine, other, refuse)
            np.testing.assert_array_equal(b.to_numpy(aug(x, b.rng(4))), expected)


def test_peek_gives_the_next_numbers_without_drawing_them():
    rng = get_backend("numpy").rng(8, 2)
    rng.random((5,), "float64")
    ahead = rng.peek(7)
    assert rng.counter == 5
    np.testing.assert_array_equal(ahead, rng.random((7,), "float64"))
    with pytest.raises(ValueError, match="device counter"):
        get_backend("numpy").rng(1).device_counter().peek(3)


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (2, 3, 9, 13), (1, 1, 5, 4)])
@pytest.mark.parametrize("mode", ["constant", "nearest"])
def test_numpy_warp_with_kept_constants_equals_the_reference(shape, mode):
    """The NumPy backend's affine_warp (constants kept per shape and dtype, a gather per neighbour)
    against the base backend's (constants made per call, one gather), far outside the image too;
    float64 images of the same shape first, so that float32 ones taking their constants would show."""
    from xpnet.backends.base import Backend
    b = get_backend("numpy")
    b.warp_constants.clear()   # a cache: none kept for these shapes by earlier tests
    r = np.random.default_rng(1)
    for dtype in (np.float64, np.float32):
        host = r.random(shape).astype(dtype)
        for shift in (3.0, 40.0):
            n = shape[0]
            m = affine_matrices(np, angle=r.uniform(-40, 40, n), scale_x=r.uniform(0.5, 1.5, n),
                                scale_y=r.uniform(0.5, 1.5, n), shift_x=r.uniform(-shift, shift, n),
                                shift_y=r.uniform(-shift, shift, n))
            for _ in range(2):  # the second call takes the kept constants
                np.testing.assert_array_equal(b.affine_warp(host, m, 0.25, mode),
                                              Backend.affine_warp(b, host, m, 0.25, mode))


@pytest.mark.parametrize("fit_args", [dict(epochs=3, batch_size=16),                  # 100 = 6 x 16 + 4
                                      dict(epochs=2, batch_size=8, steps_per_epoch=40),  # orders chained
                                      dict(epochs=2, batch_size=16, validation_split=0.2, shuffle=False)])
def test_fit_warps_batches_ahead_with_the_same_results(fit_args):
    """fit() hands RandomAffine the whole order (fit_batch: the picked images of the next batches
    warped together on the CPU backends); a plain callable gets each batch alone. Same weights,
    history and generator state; on the strict backend fit_batch takes the fixed path, no sync."""
    import xpnet
    from xpnet.layers import Dense, Flatten, ReLU
    host = np.random.default_rng(3).random((100, 1, 12, 12)).astype(np.float32)
    labels = np.random.default_rng(4).integers(0, 3, 100)
    results = []
    for name, plain in (("numpy", False), ("numpy", True), ("strict", False)):
        aug = RandomAffine(rotation=25, scale=None, zoom=0.2, shift=(0.2, 0.2), probability=0.25)
        m = xpnet.Sequential([Flatten(), Dense(8), ReLU(), Dense(3)], input_shape=(1, 12, 12),
                             device=name, seed=5).compile(optimizer="adam")
        before = dict(COUNTERS)
        history = m.fit(host, labels, augment=(lambda xb, rng: aug(xb, rng)) if plain else aug,
                        verbose=0, **fit_args)
        if name == "strict":  # the data check and one sync per epoch, as without augmentation
            assert COUNTERS["syncs"] - before["syncs"] == 1 + fit_args["epochs"]
        logs = {k: v for k, v in history.history.items() if k != "seconds"}
        results.append(({k: m.backend.to_numpy(v) for k, v in m.parameters.items()}, logs,
                        m._fit_rngs["augment"].get_state()))
    for other in results[1:]:
        assert all(np.array_equal(results[0][0][k], other[0][k]) for k in results[0][0])
        assert results[0][1] == other[1] and results[0][2] == other[2]


@pytest.mark.parametrize("chunk_bytes, threads", [(1, 1), (RandomAffine.CHUNK_BYTES, 1),
                                                  (RandomAffine.CHUNK_BYTES, 3)])
def test_fit_batch_serves_each_batch_as_the_plain_call(monkeypatch, chunk_bytes, threads):
    """fit_batch gathers the rows of the next batches as one block and warps their picked images
    together, then serves each batch from the block: every batch, and the generator's counter
    after it, equal the plain per-batch call's, also for a batch asked again with the generator
    rewound, after a jump in the order, for a shorter last batch, and when CHUNK_BYTES allows only
    one batch per block (chunk_bytes=1); with threads=3 the block's images are warped in pieces
    on the pool (every pass split, however small)."""
    import xpnet.backends.numpy_kernels as nk
    monkeypatch.setattr(RandomAffine, "CHUNK_BYTES", chunk_bytes)
    monkeypatch.setattr(nk, "MIN_ELEMENTS", 1)
    monkeypatch.setattr(nk, "ADAPTIVE", False)
    b = get_backend("numpy")
    monkeypatch.setattr(b._kernels, "threads", threads)
    x = np.random.default_rng(8).random((60, 1, 10, 10)).astype(np.float32)
    order = b.rng(1, 2).permutation(60)
    ahead, plain = (RandomAffine(rotation=25, scale=None, zoom=0.2, shift=(0.2, 0.2), probability=0.4)
                    for _ in range(2))
    r_ahead, r_plain = b.rng(0, 7), b.rng(0, 7)
    served = []
    for span in [(0, 8), (8, 16), (16, 24), None, (16, 24), (24, 32), (48, 56), (56, 60)]:
        if span is None:  # rewind by one batch's draws (7 per image)
            for r in (r_ahead, r_plain):
                r.set_state(dict(r.get_state(), counter=r.counter - 7 * 8))
            continue
        start, stop = span
        got = ahead.fit_batch(x, order, start, stop, r_ahead)
        want = plain(x[order[start:stop]], r_plain)
        np.testing.assert_array_equal(got, want)
        assert r_ahead.counter == r_plain.counter
        served.append(got.copy())
    assert sum(not np.array_equal(s, x[order[i * 8:i * 8 + 8]]) for i, s in enumerate(served[:3])) >= 2


def test_a_kept_block_is_served_to_its_own_generator_and_settings_only():
    """fit_batch keeps the block of the next batches it made: after the augmenter's settings
    change, or for another generator standing where the block's would, the batch is made anew,
    as the plain call makes it (the tests above keep one generator and one setting, so serving
    such a batch from the block could not fail them)."""
    b = get_backend("numpy")
    x = np.random.default_rng(8).random((64, 1, 10, 10)).astype(np.float32)
    order = b.rng(1, 2).permutation(64)
    ahead, plain = (RandomAffine(rotation=25, scale=None, zoom=0.2, shift=(0.2, 0.2), probability=0.4)
                    for _ in range(2))
    r_ahead, r_plain = b.rng(0, 7), b.rng(0, 7)
    np.testing.assert_array_equal(ahead.fit_batch(x, order, 0, 8, r_ahead), plain(x[order[:8]], r_plain))
    for aug in (ahead, plain):
        aug.probability = 0.9
    np.testing.assert_array_equal(ahead.fit_batch(x, order, 8, 16, r_ahead),
                                  plain(x[order[8:16]], r_plain))
    o_ahead, o_plain = b.rng(0, 9), b.rng(0, 9)   # another generator, at the first one's count
    for r in (o_ahead, o_plain):
        r.advance(r_ahead.counter)
    np.testing.assert_array_equal(ahead.fit_batch(x, order, 16, 24, o_ahead),
                                  plain(x[order[16:24]], o_plain))
    assert o_ahead.counter == o_plain.counter == r_ahead.counter + 7 * 8


def test_fit_with_blocks_made_in_the_background_trains_the_same_weights(monkeypatch):
    """fit() on two threads with blocks of two batches, so that most blocks are made on the
    background thread (counted), against the same fit with a plain per-batch callable: the same
    weights, history and generator state after three epochs."""
    import xpnet
    from xpnet.layers import Dense, Flatten, ReLU
    b = get_backend("numpy")
    monkeypatch.setattr(b._kernels, "threads", 2)
    host = np.random.default_rng(3).random((100, 1, 12, 12)).astype(np.float32)
    labels = np.random.default_rng(4).integers(0, 3, 100)
    monkeypatch.setattr(RandomAffine, "CHUNK_BYTES", 2 * 10 * host[0].nbytes)
    results, made = [], []
    for plain in (False, True):
        aug = RandomAffine(rotation=25, scale=None, zoom=0.2, shift=(0.2, 0.2), probability=0.25)
        m = xpnet.Sequential([Flatten(), Dense(8), ReLU(), Dense(3)], input_shape=(1, 12, 12),
                             device="numpy", seed=5).compile(optimizer="adam")
        history = m.fit(host, labels, augment=(lambda xb, rng: aug(xb, rng)) if plain else aug,
                        epochs=3, batch_size=10, verbose=0)
        made.append((aug.__dict__.get("made_ahead", 0), aug.__dict__.get("taken_ahead", 0)))
        logs = {k: v for k, v in history.history.items() if k != "seconds"}
        results.append(({k: m.backend.to_numpy(v) for k, v in m.parameters.items()}, logs,
                        m._fit_rngs["augment"].get_state()))
    # 5 blocks an epoch, 4 of them made ahead and served (the last block of an epoch starts none)
    assert made[0] == (3 * 4, 3 * 4) and made[1] == (0, 0)
    assert all(np.array_equal(results[0][0][k], results[1][0][k]) for k in results[0][0])
    assert results[0][1] == results[1][1] and results[0][2] == results[1][2]


def test_fit_batch_makes_the_next_block_on_the_background_thread(monkeypatch):
    """With more than one thread, fit_batch starts the next block (two batches here) on the
    backend's background thread when it serves a block's first batch, and takes it from there when
    its batches come: the same batches and generator counters as the plain call, every block after
    the first made in the background, none made for a jump in the order (it is dropped)."""
    import threading
    import xpnet.augment as A
    b = get_backend("numpy")
    monkeypatch.setattr(b._kernels, "threads", 2)
    x = np.random.default_rng(8).random((64, 1, 10, 10)).astype(np.float32)
    monkeypatch.setattr(RandomAffine, "CHUNK_BYTES", 2 * 8 * x[0].nbytes)   # two batches a block
    made_on = []
    warp_chunk = A.RandomAffine._warp_chunk

    def recording(self, x_all, order, start, *args, **kwargs):
        made_on.append((start, threading.current_thread().name))
        return warp_chunk(self, x_all, order, start, *args, **kwargs)

    monkeypatch.setattr(A.RandomAffine, "_warp_chunk", recording)
    order = b.rng(1, 2).permutation(64)
    ahead, plain = (RandomAffine(rotation=25, scale=None, zoom=0.2, shift=(0.2, 0.2), probability=0.4)
                    for _ in range(2))
    r_ahead, r_plain = b.rng(0, 7), b.rng(0, 7)
    spans = [(i, i + 8) for i in range(0, 32, 8)] + [(48, 56), (56, 64)]   # then a jump: 32-47 skipped
    for start, stop in spans:
        if start == 48:  # the plain call's generator skips the two batches' draws too
            for r in (r_ahead, r_plain):
                r.advance(2 * 7 * 8)
        got = ahead.fit_batch(x, order, start, stop, r_ahead)
        np.testing.assert_array_equal(got, plain(x[order[start:stop]], r_plain))
        assert r_ahead.counter == r_plain.counter
    b.background(lambda: None).result()   # jobs run in order: every block started is made now
    # blocks 0-15 (here), 16-31 (background), 32-47 (background, dropped at the jump), 48-63 (here)
    # (48-63 is the order's last block: nothing after it is started)
    here = threading.current_thread().name
    assert sorted(made_on) == [(0, here), (16, "xpnet-background"), (32, "xpnet-background"), (48, here)]


@pytest.mark.parametrize("shape, dtype", [((9, 1, 28, 28), "float32"), ((5, 3, 17, 23), "float32"),
                                          ((4, 2, 12, 12), "float64"), ((3, 1, 8, 8), "float16"),
                                          ((4, 1, 60, 60), "float16"),  # 64 x 64 frame: not exact in float16
                                          ((16, 1, 8, 8), "float16")])  # 16 frames of 12 x 12: not exact
def test_the_cpu_warp_path_gives_the_generic_paths_bits(shape, dtype):
    """_warp_centred's CPU path (per_corner: the grid without the 4-plane temporary, the flat
    indices made in the float dtype where whole numbers that large are exact, four unbuffered
    gathers) against the generic path that GPUs and the strict backend take, with maps that
    send many samples far outside the image (odd images) or keep them inside (even ones)."""
    from xpnet import augment as A
    n, c, h, w = shape
    r = np.random.default_rng(11)
    x = (r.random(shape) * 4 - 2).astype(dtype)
    maps = A.affine_matrices(np, angle=r.uniform(-180, 180, n), scale_x=r.uniform(0.3, 2, n),
                             scale_y=r.uniform(0.3, 2, n), shift_x=r.uniform(-2 * w, 2 * w, n) * (np.arange(n) % 2),
                             shift_y=r.uniform(-2 * h, 2 * h, n) * (np.arange(n) % 2)).astype(dtype)
    constants = A.warp_constants(np, x)
    uv, centre, nearest, limits, offsets = constants
    maps[:, :, 2] += centre
    got, want = (A._warp_centred(np, x, maps.copy(), 0.5, "constant", (uv, nearest, limits, offsets), fast)
                 for fast in (True, False))
    assert got.dtype == want.dtype == x.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend_name", ["numpy", "strict"])
def test_warp_of_maps_with_nan_or_inf_ends_with_nan_images(backend_name):
    """A map with NaN or inf on the NumPy backend (NumPy's passes: the compiled warp does not take
    such maps) and on the strict one (the reference's single gather, as CuPy's reference): those
    images come back NaN (with inf and mode "nearest": the edges' pixels), the others as warped
    without them. Run in a child with a time limit: with take's mode "wrap" a NaN coordinate's
    index (the most negative int64) was brought into range by adding the array's size, which did
    not end; the reference's gather raised an IndexError for it."""
    import subprocess
    import sys
    code = """if True:
        import numpy as np
        from xpnet.augment import affine_matrices
        from xpnet.backends import get_backend
        b = get_backend("%s")
        x = b.asarray(np.random.default_rng(0).random((4, 1, 10, 10)).astype(np.float32))
        m = affine_matrices(np, angle=np.array([5.0, 10.0, -7.0, 0.0]), shift_x=np.array([1.0, 2.0, 0.0, -1.0]))
        good = b.to_numpy(b.affine_warp(x, b.asarray(m)))
        for bad in (np.nan, np.inf):
            for mode in ("constant", "nearest"):
                k = m.copy()
                k[1, 0, 0] = bad
                k[2, 1, 2] = bad
                got = b.to_numpy(b.affine_warp(x, b.asarray(k), 0.0, mode))
                if bad == np.inf and mode == "nearest":   # the grid clipped to the edges: their pixels
                    assert np.isfinite(got).all()
                else:
                    assert np.isnan(got[1]).all() and np.isnan(got[2]).all(), (bad, mode)
                if mode == "constant":
                    np.testing.assert_array_equal(got[[0, 3]], good[[0, 3]])
        print("ok")
    """ % backend_name
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
