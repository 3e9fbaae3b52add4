"""Test helpers: finite-difference gradient checks, host/device conversion, hypothesis settings."""
import os

import numpy as np

import xpnet
from xpnet.layers import LeakyReLU, MaxPool2D, ReLU
from xpnet.testing import gradcheck_model  # noqa: F401  (the public checker is the project's own)


def skip_unless_required(reason, need="CUPY_WHEEL"):
    """pytest.skip(reason), or pytest.fail(reason) where XPNET_REQUIRE_<need>=1. .ci/run sets
    XPNET_REQUIRE_CUPY_WHEEL for the CuPy audit once it has installed the wheels, and
    XPNET_REQUIRE_MPI for the suite (its test extra installs mpi4py and MPICH), so that a wheel
    or an MPI that installs but does not work fails CI instead of skipping its tests while CI
    stays green."""
    import pytest
    name = f"XPNET_REQUIRE_{need}"
    if os.environ.get(name, "").strip() == "1":
        pytest.fail(f"{name}=1 but: {reason}")
    pytest.skip(reason)


def fuzz_seed():
    """XPNET_FUZZ_SEED as an int, or None where it is unset or empty."""
    value = os.environ.get("XPNET_FUZZ_SEED", "").strip()
    return int(value) if value else None


def fuzz_settings(**kw):
    """The hypothesis settings of the fuzz tests, as a test decorator. Without XPNET_FUZZ_SEED the
    draws are derandomized: fixed by the test's source, the same on every CI run, and never new.
    XPNET_FUZZ_SEED=N draws from seed N instead (hypothesis.seed, which takes precedence over
    derandomize and also turns the example database off): another N explores other draws, the
    same N gives the same ones again, which is how a failure found that way is reproduced
    (conftest prints the seed after the run)."""
    from hypothesis import seed, settings   # here: conftest imports this module for fuzz_seed alone
    chosen = fuzz_seed()
    if chosen is None:
        return settings(derandomize=True, **kw)
    return lambda test: seed(chosen)(settings(derandomize=False, **kw)(test))


def to_np(backend, a):
    return None if a is None else np.asarray(backend.to_numpy(a), dtype=np.float64)


def layer_rngs(model):
    return [layer.rng for layer in model.layers if hasattr(layer, "rng")]


def pool_window_gap(y, pool):
    """The smallest nonzero difference between the two largest values of a window of the built
    MaxPool2D ``pool`` over ``y`` (N, C, H, W), with the layer's padding (-inf, which never wins);
    windows of one real value left out, inf where no window is left."""
    (kh, kw), (sh, sw), (oh, ow) = pool.pool_size, pool.strides, pool.output_shape[1:]
    if kh * kw < 2:
        return np.inf
    top, bottom, left, right = pool.pads
    padded = np.pad(y, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=-np.inf)
    windows = np.stack([padded[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]
                        for i in range(kh) for j in range(kw)])
    ranked = np.sort(windows, axis=0)
    gap = ranked[-1] - ranked[-2]
    gap = gap[np.isfinite(gap) & (gap > 0)]
    return float(gap.min()) if gap.size else np.inf


def kink_margin(model, x):
    """How near the training forward of ``model`` on ``x`` comes to a kink, where the function
    has no derivative: the smallest nonzero |input| of a ReLU or LeakyReLU and the smallest
    pool_window_gap of a MaxPool2D. Exact zeros and ties are left out: they come from padding,
    ReLUs and Dropout, and stay put (or move together) when an input or a weight moves.

    The layers run one by one, in float64 (so the margins are a float64 model's, which every
    caller builds), on a NumPy copy of the model whose generators start
    where the model's do, so Dropout draws the masks the model's next forward (gradcheck_model's)
    draws; the model itself is left as it is (its Dense or Conv2D may apply the next ReLU in one
    pass and so never show that ReLU's input)."""
    twin = xpnet.Sequential.from_config(model.get_config(), device="numpy", dtype="float64")
    twin.set_weights(model.get_weights())
    for mine, theirs in zip(layer_rngs(twin), layer_rngs(model)):
        mine.set_state(theirs.get_state())
    h, margin = np.asarray(x, dtype=np.float64), np.inf
    for layer in twin.layers:
        if isinstance(layer, (ReLU, LeakyReLU)):
            near = np.abs(h[h != 0])
            margin = min(margin, float(near.min()) if near.size else np.inf)
        elif isinstance(layer, MaxPool2D):
            margin = min(margin, pool_window_gap(h, layer))
        h = layer.forward(h, training=True)
    return margin


def build(layers, input_shape, backend, dtype="float64", seed=0):
    return xpnet.Sequential(layers, input_shape=input_shape, device=backend, dtype=dtype, seed=seed)


def _step_bytes(model, x, grad, training, same):
    out = model.forward(x, training=training)
    dx = model.backward(grad(out.shape))
    return [out.tobytes(), dx.tobytes()] + [same(name, v).tobytes() for name, v in model.gradients.items()]


def assert_steps_alike(a, b, x, grad, rng, same=lambda name, v: v):
    """One forward (training, then inference) and backward of the models a and b (the same layers
    and seed, built two ways) on x, with the same output gradients grad(shape) drawn from rng:
    outputs, input gradients and every parameter's gradient (through ``same(name, array)``) must
    have the same bits."""
    for training in (True, False):
        state = rng.bit_generator.state
        first = _step_bytes(a, x, grad, training, same)
        rng.bit_generator.state = state
        assert first == _step_bytes(b, x, grad, training, same)


def assert_fits_alike(a, b, input_shape, samples=40, classes=3):
    """Fit the models a and b (the same layers and seed, built two ways) on the same random data,
    Adam, 2 epochs of batch 8, and require the same weights, bit for bit."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((samples,) + tuple(input_shape)).astype(np.float32)
    y = rng.integers(0, classes, samples)
    for m in (a, b):
        m.compile(optimizer="adam")
        m.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        assert wa.tobytes() == wb.tobytes()


class Snapshots(xpnet.callbacks.Callback):
    """Keeps a host copy of every parameter at the end of each epoch."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append({k: self.model.backend.to_numpy(v).copy()
                             for k, v in self.model.parameters.items()})


def run_forked(before, child, after="", alarm=20, timeout=60):
    """A fresh interpreter (from the repository root) runs ``before``, forks, and the child runs
    ``child`` (code at the left margin; it exits 0 unless it calls os._exit itself) under an alarm
    of ``alarm`` seconds, while the parent runs ``after`` and waits: the CompletedProcess, whose
    returncode is the child's exit status (242 when its alarm killed it: os.waitstatus_to_exitcode's
    -14 as an exit code)."""
    import subprocess
    import sys
    import textwrap
    code = ("import os, signal\n" + before + "pid = os.fork()\nif pid == 0:\n"
            f"    signal.alarm({alarm})\n" + textwrap.indent(child, "    ") + "    os._exit(0)\n" + after
            + "_, status = os.waitpid(pid, 0)\nraise SystemExit(os.waitstatus_to_exitcode(status))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=root)
