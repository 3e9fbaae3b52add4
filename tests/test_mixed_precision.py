"""Mixed precision (xpnet/mixed.py): float16 compute, float32 master weights, dynamic loss scaling.

Tolerances. float16 keeps 11 significant bits (unit roundoff u = 2**-11, about 4.9e-4). A value
in the forward or backward pass has gone through a handful of float16 roundings, so gradients at
the same weights agree with float32 to about 1e-3 of their largest entry (measured 1.5e-3 at
most) and losses to about 1e-3 relative (measured 1.4e-3): we allow 5e-3 (ten u). Over several
steps the weights follow different paths: we compare how far the two runs end apart with how far
the float32 run moved. With SGD that is the accumulated gradient error: allowed 2 % (measured
0.9 % at most). Adam divides each gradient by its own running size, which lifts the rounding
noise of near-zero gradient entries to full-size steps: allowed 10 % (measured 5 %). With
BatchNorm the convolution before it is scale-invariant, its gradient a small difference of large
terms with a larger relative error: allowed 20 % with SGD (measured 6.5 %). Loss-scaling
behaviour (skips, halving, growth, resume) is exact and tested so.
"""
import json
import os

import numpy as np
import pytest

import xpnet
from xpnet import callbacks, cli, mixed, optim
from xpnet.backends import strict_backend as sb
from xpnet.errors import ConfigError, TrainingError
from xpnet.layers import BatchNorm, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU, Softmax

from .test_capture import replaying  # noqa: F401  (the fixture: a strict backend replaying captures)


def data(n=64, seed=0):
    r = np.random.default_rng(seed)
    x = r.random((n, 1, 12, 12), dtype=np.float32)
    return x, (x.reshape(n, -1)[:, :10].argmax(1) % 4).astype(np.int64)


def cnn(bn=True):
    first = [Conv2D(8, 3, padding="same", use_bias=False), BatchNorm()] if bn else [Conv2D(8, 3, padding="same")]
    return first + [ReLU(), MaxPool2D(2), Conv2D(8, 3), ReLU(), Flatten(), Dense(4)]


def mlp():
    return [Flatten(), Dense(32), ReLU(), Dropout(0.2), Dense(32), ReLU(), Dense(4)]


def build(layers, device="numpy", opt=None, precision="float16"):
    m = xpnet.Sequential(layers, input_shape=(1, 12, 12), device=device, seed=3)
    return m.compile(optimizer=opt or optim.SGD(0.01, momentum=0.9), mixed_precision=precision)


def host(m):
    return {k: m.backend.to_numpy(v).copy() for k, v in m.parameters.items()}


def scale_state(m):
    return m.backend.to_numpy(m._mixed.state)


# -- float16 against float32 -------------------------------------------------------------------
def test_gradients_at_the_same_weights_match_float32_within_ten_roundoffs(backend):
    x, y = data()
    grads = []
    for precision in (None, "float16"):
        m = build(cnn(), backend.name, optim.SGD(0.0), precision)
        m.fit(x, y, epochs=1, steps_per_epoch=1, batch_size=16, shuffle=False, verbose=0)
        grads.append({k: m.backend.to_numpy(g) for k, g in m.gradients.items()})
    for k, g32 in grads[0].items():
        assert grads[1][k].dtype == np.float32  # unscaled into float32
        assert np.abs(grads[1][k] - g32).max() <= 5e-3 * np.abs(g32).max(), k


@pytest.mark.parametrize("layers, make_opt, weight_tol", [
    (mlp, lambda: optim.SGD(0.01, momentum=0.9), 0.02),
    (mlp, lambda: optim.Adam(1e-3), 0.1),
    (lambda: cnn(bn=False), lambda: optim.SGD(0.01, momentum=0.9), 0.02),
    (lambda: cnn(bn=False), lambda: optim.Adam(1e-3), 0.1),
    (cnn, lambda: optim.SGD(0.01, momentum=0.9), 0.2),
])
def test_training_in_float16_follows_float32(layers, make_opt, weight_tol):
    x, y = data()
    runs = []
    for precision in (None, "float16"):
        m = build(layers(), "numpy", make_opt(), precision)
        start = host(m)
        h = m.fit(x, y, epochs=6, steps_per_epoch=1, batch_size=16, verbose=0)  # a loss per step
        runs.append((np.array(h.history["loss"]), host(m), start))
    (l32, w32, w0), (l16, w16, _) = runs
    assert np.all(np.abs(l16 - l32) <= 5e-3 * np.abs(l32))
    for k in w32:
        assert w16[k].dtype == np.float32  # master weights
        moved = np.linalg.norm(w32[k] - w0[k])
        assert np.linalg.norm(w16[k] - w32[k]) <= weight_tol * moved, k


def test_activations_are_float16_and_loss_batchnorm_softmax_float32():
    seen = {}

    class Spy(ReLU):
        def forward(self, x, training=False):
            seen.setdefault("relu", x.dtype)
            return super().forward(x, training)

    m = xpnet.Sequential([Conv2D(4, 3, use_bias=False), BatchNorm(), Spy(), Flatten(), Dense(4), Softmax()],
                         input_shape=(1, 12, 12), device="numpy")
    m.compile(loss="cross_entropy", mixed_precision="mixed_float16")
    bn, soft = m.layers[1], m.layers[5]
    x, y = data(16)
    out = m._train_step(x, y)[1]
    assert seen["relu"] == np.float16 and out.dtype == np.float32  # Softmax computes float32
    assert bn.cache[0].dtype == np.float32 and bn.buffers["running_mean"].dtype == np.float32
    assert soft.in_dtype == np.float16 and m.layers[4].x.dtype == np.float16
    assert all(p.dtype == np.float32 for p in m.parameters.values())


def test_bfloat16_where_the_backend_has_it_else_a_clear_refusal(backend):
    """NumPy has no bfloat16: the CPU backends refuse it; on a GPU whose CuPy computes in
    bfloat16 (8 significant bits, u = 2**-8) gradients match float32 within ten u of their
    largest entry, with no loss scaling (scale 1, no skipped steps)."""
    try:
        backend.compute_dtype("bfloat16")
    except ConfigError as exc:
        assert "'bfloat16' is not available" in str(exc) and "float16" in str(exc)
        assert backend.name != "cupy" or "ml_dtypes" in str(exc)
        return
    x, y = data()
    grads = []
    for precision in (None, "bfloat16"):
        m = build(cnn(bn=False), backend.name, optim.SGD(0.0), precision)
        m.fit(x, y, epochs=1, steps_per_epoch=1, batch_size=16, shuffle=False, verbose=0)
        grads.append({k: m.backend.to_numpy(g) for k, g in m.gradients.items()})
    assert scale_state(m).tolist() == [1.0, 0.0, 0.0]
    for k, g32 in grads[0].items():
        assert np.abs(grads[1][k] - g32).max() <= 4e-2 * np.abs(g32).max(), k


# -- dynamic loss scaling ----------------------------------------------------------------------
def test_overflow_skips_the_step_and_halves_the_scale(backend):
    m = build(mlp(), backend.name, optim.Adam(1e-3))
    x, y = data()
    m.fit(x, y, epochs=1, steps_per_epoch=2, batch_size=16, verbose=0)  # moments exist
    before, state = host(m), {k: backend.to_numpy(v).copy() for k, v in m.optimizer.state_dict().items()
                              if k.startswith(("m:", "v:"))}
    assert len(state) == 2 * len(before) > 0  # Adam's m and v of every parameter: all() over none proves nothing
    m._mixed.state[0] = 2.0 ** 100  # the scaled float16 gradients overflow to inf
    h = m.fit(x, y, epochs=1, steps_per_epoch=1, batch_size=16, verbose=0)
    assert all(np.array_equal(before[k], v) for k, v in host(m).items())
    after = m.optimizer.state_dict()
    assert all(np.array_equal(v, backend.to_numpy(after[k])) for k, v in state.items())
    assert after["iterations"] == 2 and all(after[f"step:{k}"] == 2 for k in before)
    assert scale_state(m).tolist() == [2.0 ** 99, 0.0, 1.0]  # halved, no run of good steps, 1 skip
    assert h.history["loss_scale"] == [2.0 ** 99] and np.isfinite(h.history["loss"][0])
    m._mixed.state[0] = 2.0 ** 10
    m.fit(x, y, epochs=1, steps_per_epoch=1, batch_size=16, verbose=0)  # the device count held too
    assert backend.to_numpy(m.optimizer._device[0]).tolist()[1:] == [3.0, 3.0]
    assert m.optimizer.iterations == 3


def test_scale_doubles_after_growth_interval_finite_steps_and_a_skip_resets_the_count():
    m = build(mlp(), "numpy", precision=mixed.MixedPrecision("float16", growth_interval=3))
    x, y = data()
    fit = lambda steps: m.fit(x, y, epochs=1, steps_per_epoch=steps, batch_size=16, verbose=0)  # noqa: E731
    fit(2)
    assert scale_state(m).tolist() == [2.0 ** 15, 2.0, 0.0]
    fit(1)
    assert scale_state(m).tolist() == [2.0 ** 16, 0.0, 0.0]
    fit(5)
    assert scale_state(m).tolist() == [2.0 ** 17, 2.0, 0.0]
    m._mixed.state[0] = 2.0 ** 100
    fit(1)
    assert scale_state(m).tolist() == [2.0 ** 99, 0.0, 1.0]
    assert mixed.MixedPrecision().growth_interval == 2000 and mixed.MixedPrecision().initial_scale == 2.0 ** 15


def test_no_host_sync_or_copy_per_step_with_skips_and_growth():
    """Syncs and host-to-device copies per fit() do not grow with the number of steps, while
    steps are skipped and the scale changes (all on the device). Made to fail once by reading
    the finite flag on the host (float(finite) in MixedStep._update_scale): 1 sync per step."""
    counts = []
    for steps in (4, 24):
        m = build(cnn(), "strict", optim.Adam(1e-3),
                  mixed.MixedPrecision("float16", initial_scale=2.0 ** 40, growth_interval=2))
        x, y = data()
        m.fit(x, y, epochs=1, steps_per_epoch=1, batch_size=16, verbose=0)  # warm-up: buffers made
        before = (sb.COUNTERS["syncs"], sb.COUNTERS["h2d"])
        h = m.fit(x, y, epochs=1, steps_per_epoch=steps, batch_size=16, verbose=0)
        counts.append((sb.COUNTERS["syncs"] - before[0], sb.COUNTERS["h2d"] - before[1]))
        assert scale_state(m)[2] >= 3  # some steps were skipped (2**40 overflows float16)
    assert counts[0] == counts[1]
    assert h.history["loss_scale"][0] < 2.0 ** 40


def test_graph_true_gives_the_numbers_of_the_ordinary_step_in_mixed_mode(replaying):  # noqa: F811
    policy = lambda: mixed.MixedPrecision("float16", initial_scale=2.0 ** 30, growth_interval=3)  # noqa: E731
    plain = build(mlp(), "strict", optim.Adam(1e-3), policy())
    graphed = build(mlp(), replaying, optim.Adam(1e-3), policy())
    x, y = data(70)
    h0 = plain.fit(x, y, epochs=2, batch_size=16, verbose=0)
    h1 = graphed.fit(x, y, epochs=2, batch_size=16, verbose=0, graph=True)
    w0, w1 = host(plain), host(graphed)
    assert all(np.array_equal(w0[k], w1[k]) for k in w0)
    assert h0.history == {**h1.history, "seconds": h0.history["seconds"]}
    assert np.array_equal(scale_state(plain), scale_state(graphed)) and scale_state(plain)[2] > 0
    assert plain.optimizer.iterations == graphed.optimizer.iterations
    first = replaying.traces[0]
    assert len(replaying.traces) == 7 and all(t == first for t in replaying.traces[1:])
    assert all(c == (0, 0) for c in replaying.counts)


def test_checkpoint_and_resume_keep_the_loss_scale(tmp_path, backend):
    policy = lambda: mixed.MixedPrecision("float16", initial_scale=2.0 ** 20, growth_interval=3)  # noqa: E731
    x, y = data()
    straight = build(mlp(), backend.name, optim.Adam(1e-3), policy())
    h0 = straight.fit(x, y, epochs=3, batch_size=16, verbose=0)
    first = build(mlp(), backend.name, optim.Adam(1e-3), policy())
    first.fit(x, y, epochs=2, batch_size=16, verbose=0, checkpoint=tmp_path)
    resumed = build(mlp(), backend.name, optim.Adam(1e-3), policy())
    h1 = resumed.fit(x, y, epochs=3, batch_size=16, verbose=0, checkpoint=tmp_path, resume=True)
    assert h1.history["loss_scale"] == h0.history["loss_scale"]
    assert np.array_equal(scale_state(resumed), scale_state(straight))
    assert scale_state(resumed)[0] != 2.0 ** 20  # it moved: the resumed run did not start afresh
    w0, w1 = host(straight), host(resumed)
    assert all(np.array_equal(w0[k], w1[k]) for k in w0)


def test_resuming_a_mixed_precision_checkpoint_without_it_is_refused(tmp_path):
    """It used to continue in float32 and drop the loss scale without a word; now it is refused
    before anything is loaded, and compiling with the same mixed precision continues the run."""
    x, y = data()
    policy = mixed.MixedPrecision("float16", initial_scale=2.0 ** 20, growth_interval=3)
    build(mlp(), opt=optim.Adam(1e-3), precision=policy).fit(x, y, epochs=1, batch_size=16,
                                                              verbose=0, checkpoint=tmp_path)
    plain = build(mlp(), opt=optim.Adam(1e-3), precision=None)
    before = host(plain)
    for resume in (True, "auto"):
        with pytest.raises(TrainingError, match=r"last\.npz: the checkpoint was trained with mixed "
                                                r"precision 'float16' \(loss scale [0-9.e+]+\) but "
                                                r"this model is compiled without mixed precision; "
                                                r"compile it with mixed_precision='float16' to "
                                                r"continue the run"):
            plain.fit(x, y, epochs=2, batch_size=16, verbose=0, checkpoint=tmp_path, resume=resume)
    assert all(np.array_equal(before[k], v) for k, v in host(plain).items())
    again = build(mlp(), opt=optim.Adam(1e-3), precision=policy)
    h = again.fit(x, y, epochs=2, batch_size=16, verbose=0, checkpoint=tmp_path, resume=True)
    assert len(h.history["loss_scale"]) == 2  # (its exactness: the test above)


def test_resuming_with_other_loss_scale_settings_is_refused(tmp_path):
    """It used to continue from the saved scale (initial_scale ignored) but grow it with the new
    growth_interval and growth_factor, without a word; now it is refused, naming both settings,
    and the run's own policy continues it."""
    x, y = data()
    run = mixed.MixedPrecision("float16", initial_scale=2.0 ** 20, growth_interval=3)
    build(mlp(), opt=optim.Adam(1e-3), precision=run).fit(x, y, epochs=1, batch_size=16, verbose=0,
                                                           checkpoint=tmp_path)
    other = build(mlp(), opt=optim.Adam(1e-3), precision=mixed.MixedPrecision(
        "float16", initial_scale=8.0, growth_interval=3, growth_factor=4.0))
    before = host(other)
    with pytest.raises(TrainingError, match=r"last\.npz: the checkpoint was trained with the loss-scale "
                                            r"settings initial_scale=1048576\.0, growth_factor=2\.0 "
                                            r"but this model is compiled with initial_scale=8\.0, "
                                            r"growth_factor=4\.0; a resumed run keeps its settings "
                                            r"and its loss scale \([0-9.e+]+\): compile it with "
                                            r"mixed_precision=MixedPrecision\(compute='float16', "
                                            r"initial_scale=1048576\.0, growth_interval=3, "
                                            r"growth_factor=2\.0, backoff_factor=0\.5\)"):
        other.fit(x, y, epochs=2, batch_size=16, verbose=0, checkpoint=tmp_path, resume=True)
    assert all(np.array_equal(before[k], v) for k, v in host(other).items())
    assert scale_state(other)[0] == 8.0
    again = build(mlp(), opt=optim.Adam(1e-3), precision=run)
    assert len(again.fit(x, y, epochs=2, batch_size=16, verbose=0, checkpoint=tmp_path,
                         resume=True).history["loss_scale"]) == 2


def test_cli_resume_continues_in_mixed_precision_from_the_saved_loss_scale(tmp_path):
    """--resume takes mixed precision from config.json and the loss scale from last.npz: a scale
    written into the checkpoint (2**7, which the run itself never reaches) is the one it goes on
    from."""
    from xpnet.serialization import load_npz, save_npz_atomic
    assert cli.main(["train", "--model", "quick-mlp", "--device", "cpu", "--epochs", "2",
                     "--train-images", "256", "--test-images", "64", "--quiet", "--out",
                     str(tmp_path / "runs"), "--mixed-precision", "float16",
                     "--time-limit", "0.0001"]) == 0  # stops after its first epoch
    folder = str(tmp_path / "runs" / os.listdir(tmp_path / "runs")[0])
    ckpt = os.path.join(folder, "last.npz")
    arrays, meta = load_npz(ckpt)
    arrays["mixed/scale_state"] = np.array([2.0 ** 7, 0, 0], np.float32)
    save_npz_atomic(ckpt, arrays, meta)
    assert cli.main(["train", "--resume", folder, "--quiet"]) == 0
    with open(os.path.join(folder, "log.json")) as f:
        rows = json.load(f)["epochs"]
    assert [row["loss_scale"] for row in rows] == [2.0 ** 15, 2.0 ** 7]


# -- settings and refusals ---------------------------------------------------------------------
def test_names_and_clear_errors():
    assert mixed.get("mixed_float16").compute == "float16" and mixed.get(None) is None
    assert mixed.get("float32") is None and mixed.get("bfloat16").dynamic is False
    with pytest.raises(ConfigError, match=r"unknown mixed precision 'float8'; expected one of bfloat16, "
                                          r"float16, mixed_bfloat16, mixed_float16"):
        build(mlp(), precision="float8")
    with pytest.raises(ConfigError, match="mixed_precision must be a name"):
        build(mlp(), precision=16)
    with pytest.raises(ConfigError, match="'bfloat16' is not available on the numpy backend: NumPy has "
                                          "no bfloat16"):
        build(mlp(), precision="bfloat16")
    assert cli._compute_types(xpnet.get_backend("cpu")).startswith("float16 (bfloat16: mixed precision")
    with pytest.raises(ConfigError, match="growth_interval must be a positive integer"):
        mixed.MixedPrecision("float16", growth_interval=0)
    m64 = xpnet.Sequential(mlp(), input_shape=(1, 12, 12), dtype="float64")
    with pytest.raises(ConfigError, match="keeps float32 master weights; model 'sequential' is float64"):
        m64.compile(mixed_precision="float16")


def test_evaluate_and_predict_use_the_float32_weights():
    m = build(mlp())
    x, y = data()
    m.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert m.predict(x).dtype == np.float32
    plain = xpnet.Sequential(mlp(), input_shape=(1, 12, 12), seed=3).compile()
    plain.set_weights(m.get_weights())
    assert np.array_equal(plain.predict(x), m.predict(x))


def test_a_skipped_epoch_is_logged_and_training_goes_on():
    m = build(mlp(), precision=mixed.MixedPrecision("float16", initial_scale=2.0 ** 60))
    h = m.fit(*data(), epochs=2, batch_size=16, verbose=0, callbacks=[callbacks.TerminateOnNaN()])
    assert h.history["loss_scale"][-1] < 2.0 ** 60 and len(h.history["loss"]) == 2
    assert all(np.isfinite(h.history["loss"]))
    with pytest.raises(TrainingError):  # a step that cannot be skipped on the device
        m.optimizer.step({"a": m.xp.zeros(2)}, {"a": m.xp.zeros(2)}, finite=m.xp.asarray(True))


def test_an_epoch_whose_every_step_was_skipped_warns_that_the_weights_did_not_change(recwarn):
    """The log showed only a falling loss_scale while nothing trained; now a RuntimeWarning says so.
    A run that skips some steps (the scale finding its level) is normal and stays quiet."""
    x, y = data()
    m = build(mlp(), precision=mixed.MixedPrecision("float16", initial_scale=1e30))
    before = host(m)
    with pytest.warns(RuntimeWarning, match=r"all 4 steps of epoch 1 were skipped .* so the weights "
                                            r"did not change; the loss scale, halved at each skip, "
                                            r"is now 6\.25e\+28"):
        m.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert all(np.array_equal(before[k], v) for k, v in host(m).items())
    recwarn.clear()
    m = build(mlp(), precision=mixed.MixedPrecision("float16", initial_scale=2.0 ** 20))
    m.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert 0 < scale_state(m)[2] < 8  # some of the 8 steps skipped, not all
    assert not [w for w in recwarn if "were skipped" in str(w.message)]
    # data-parallel ranks other than 0 leave it to rank 0 (every rank has the same counts)
    steps_skipped = m._mixed.skipped_seen + 4
    m._mixed.after_sync(1.0, steps_skipped, 0, 4, quiet=True)
    assert not [w for w in recwarn if "were skipped" in str(w.message)]


def test_run_folder_records_the_precision_and_the_loss_scale(tmp_path, capsys):
    argv = ["train", "--model", "quick-mlp", "--device", "cpu", "--epochs", "1", "--train-images", "256",
            "--test-images", "64", "--quiet", "--out", str(tmp_path)]
    assert cli.main(argv + ["--mixed-precision", "float16"]) == 0
    folder = str(tmp_path / os.listdir(tmp_path)[0])
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    assert config["mixed_precision"] == "float16"
    assert config["precision"] == {"compute": "float16", "master_weights": "float32", "tf32": None,
                                   "loss_scaling": mixed.MixedPrecision().get_config()}
    with open(os.path.join(folder, "log.csv")) as f:
        assert "loss_scale" in f.readline()
    assert cli.main(argv + ["--mixed-precision", "bfloat16"]) == 2
    assert "'bfloat16' is not available on the numpy backend" in capsys.readouterr().err
    assert len(os.listdir(tmp_path)) == 1  # refused before a run folder was made
    assert cli.main(["train", "--resume", folder, "--mixed-precision", "float16"]) == 2
    assert "drop --mixed-precision" in capsys.readouterr().err


def test_run_training_refuses_loss_scale_settings_it_cannot_record(tmp_path):
    """run_training trained a MixedPrecision(initial_scale=8) at the default 2**15 (the run folder
    keeps the compute type alone, which it compiles with) while config.json's precision said 8;
    now it is refused before a run folder is made."""
    from xpnet import runner
    with pytest.raises(ConfigError, match=r"run_training takes mixed_precision as a name \('float16' "
                                          r"or 'bfloat16'\), which trains with the default loss-scale "
                                          r"settings, got MixedPrecision\(compute='float16', "
                                          r"initial_scale=8\.0, "):
        runner.run_training("quick-mlp", device="cpu", epochs=1, train_images=256, test_images=64,
                            verbose=0, out_dir=str(tmp_path),
                            mixed_precision=mixed.MixedPrecision("float16", initial_scale=8.0))
    assert os.listdir(tmp_path) == []
    # bfloat16 has no loss scale: its settings change nothing, so they are not refused
    runner._check_default_scaling(mixed.MixedPrecision("bfloat16", initial_scale=8.0))


@pytest.mark.timeout(600)
def test_two_ranks_skip_the_same_steps_and_follow_one_process(tmp_path):
    """Data-parallel (mpirun -n 2): the unscaled float32 gradients are all-reduced before the
    finite check, so both ranks skip the same steps and hold the same weights and loss scale.
    Against one process (batch 15 where each rank sums 7 or 8 samples in float16, with
    BatchNorm): losses within 1e-3, weights within 15 % of their largest entry (measured 7 %)."""
    from tests.mpi_helpers import require_mpi
    from tests.test_distributed import distributed_run, reference, rel_errors
    require_mpi()
    (w0, h0), (w1, h1) = distributed_run("mixed", tmp_path, 3)
    ws, hs = reference("mixed", tmp_path, 3)
    assert all(np.array_equal(w0[k], w1[k]) for k in w0)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "loss_scale"):
        assert h0[key] == h1[key], key
    assert h0["loss_scale"] == hs["loss_scale"] and h0["loss_scale"][0] < 2.0 ** 24  # skips happened
    np.testing.assert_allclose(h0["loss"], hs["loss"], rtol=1e-3)
    assert max(rel_errors(ws, w0).values()) < 0.15
