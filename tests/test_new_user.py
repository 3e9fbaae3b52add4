"""What a new user hit (issue 13): options that quietly did something else now refuse clearly."""
import importlib.util
import os

import pytest

from xpnet import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_mnist_script():
    spec = importlib.util.spec_from_file_location("train_mnist", os.path.join(ROOT, "examples",
                                                                              "train_mnist.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model, dataset, shape", [("seed003-lenet5-bn-cifar10", "cifar10", "3x32x32"),
                                                   ("seed004-cnn-fashion", "fashion-mnist", "1x28x28")])
def test_train_mnist_refuses_a_model_of_another_dataset(tmp_path, capsys, model, dataset, shape):
    script = train_mnist_script()
    assert script.main(["--model", model, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"train_mnist.py: error: {model} is a {dataset} model (its recipe trains on "
                           f"{shape} {dataset} images); this script trains on MNIST only: run "
                           f"`xpnet train --model {model}`, which uses the model's own dataset")
    assert os.listdir(tmp_path) == []  # no run folder


def test_train_mnist_accepts_the_mnist_models():
    script = train_mnist_script()
    for name in (None, "seed001-tf", "seed003-lenet5", "quick-mlp"):
        script.check_mnist_model(name)


@pytest.mark.parametrize("command", [["train"], ["train", "--quick"]])
def test_a_data_dir_that_does_not_exist_is_refused(tmp_path, capsys, command):
    missing = tmp_path / "nonexistent"
    out = tmp_path / "runs"
    assert cli.main(command + ["--data-dir", str(missing), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"xpnet train: error: mnist: the data directory {missing} holds no mnist dataset")
    assert "train-images-idx3-ubyte.gz" in err and "(no such folder)" in err
    assert not out.exists()  # nothing trained, no run folder recording the bad path


# -- a run in a log shows progress, and an honest estimate --------------------------------------
def run_main_job(tmp_path, *args, env=None, timeout=300):
    import subprocess
    import sys
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "examples/train_mnist.py", "--device", "cpu",
                           "--out", str(tmp_path)] + list(args), cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def test_a_run_without_a_terminal_prints_progress_lines_and_an_estimate(tmp_path):
    """stderr is a pipe (as in `make train | tee log` or nohup): no bar, but progress lines at the
    configured rate within the first epoch, then the estimate line, then the epoch line."""
    proc = run_main_job(tmp_path, "--quick", "--train-images", "6000", "--epochs", "2",
                        env={"XPNET_PROGRESS_SECONDS": "0.02"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    first_epoch = lines[:next(i for i, l in enumerate(lines) if l.startswith("epoch 1/2 - ") and "loss" in l)]
    progress = [l for l in first_epoch if l.startswith("epoch 1/2 - step ")]
    assert len(progress) >= 2, proc.stderr[-3000:]
    import re
    pattern = re.compile(r"epoch 1/2 - step ([\d,]+)/94 - [\d,]+ img/s - \d+ s left in the epoch$")
    assert all(pattern.match(l) for l in progress), progress
    estimate = [l for l in first_epoch if l.startswith("estimate: ")]
    assert len(estimate) == 1, proc.stderr[-3000:]
    assert re.match(r"estimate: \d+ s per epoch of 94 steps \([\d,]+ images/s over steps 6-45\); "
                    r"the 2 epochs would take about \d+ s$", estimate[0]), estimate
    assert "--time-limit" not in proc.stderr  # a short run gets no advice
    assert "\r" not in proc.stderr  # no bar drawn into the log


def test_progress_lines_are_bounded_by_the_interval(capsys):
    from xpnet.progress import Progress
    import io
    stream = io.StringIO()
    p = Progress(verbose=2, epochs=1, steps=10_000, stream=stream, line_interval=3600)
    p.epoch_begin(0)
    for b in range(10_000):
        p.batch_end(b, 16)
    assert "step" not in stream.getvalue()  # an hour has not passed: no line
    p = Progress(verbose=2, epochs=1, steps=50, stream=stream, line_interval=0)
    p.epoch_begin(0)
    for b in range(50):
        p.batch_end(b, 16)
    assert stream.getvalue().count(" - step ") == 49  # every step but the last (the epoch line)


def _fit_counts(monkeypatch, verbose, callbacks=()):
    """The strict backend's counters over a fit, and "waits": its synchronize() calls (a device wait
    on a GPU; the strict backend's counters do not see them)."""
    import numpy as np
    import xpnet
    from xpnet.backends.strict_backend import COUNTERS, StrictBackend
    waits, wait = [], StrictBackend.synchronize
    monkeypatch.setattr(StrictBackend, "synchronize", lambda self: (waits.append(1), wait(self))[1])
    from xpnet.layers import Dense, ReLU
    r = np.random.default_rng(0)
    x = r.standard_normal((200, 6)).astype(np.float32)
    y = r.integers(0, 3, size=200).astype(np.int64)
    m = xpnet.Sequential([Dense(12), ReLU(), Dense(3)], input_shape=(6,), device="strict", seed=0)
    m.compile(loss="cross_entropy", optimizer="adam", metrics=["accuracy"])
    before = dict(COUNTERS)
    m.fit(x, y, epochs=2, batch_size=4, verbose=verbose, callbacks=list(callbacks))
    return dict({k: COUNTERS[k] - before[k] for k in COUNTERS}, waits=len(waits))


def test_progress_lines_and_the_estimate_add_no_host_sync(monkeypatch, capsys):
    """On the strict backend (which counts host syncs), progress lines after every step and the
    estimate cost exactly as many syncs as a silent run: none per batch."""
    from xpnet.progress import Estimate
    silent = _fit_counts(monkeypatch, 0)
    monkeypatch.setenv("XPNET_PROGRESS_SECONDS", "0")
    loud = _fit_counts(monkeypatch, 2, [Estimate(after_steps=3, skip_steps=1, advice="advice", advice_after=0)])
    err = capsys.readouterr().err
    assert err.count(" - step ") == 2 * 49 and err.count("estimate: ") == 1 and "advice" in err
    assert loud == dict(silent, waits=2) and silent["waits"] == 0   # the estimate's two timed waits only
    assert silent["syncs"] == 1 + 2  # validating the data, then one per epoch


# -- Ctrl-C ends with one clean message ------------------------------------------------------------
def test_ctrl_c_ends_with_one_clean_message_about_the_checkpoint(tmp_path):
    """SIGINT to the main job after its first epoch (a model big enough for the threaded NumPy
    kernels), then a second one as an impatient user would: one line saying what was saved and how
    to continue, status 130, no traceback and no 'Exception ignored' from thread shutdown."""
    import signal
    import subprocess
    import sys
    env = dict(os.environ, XPNET_PROGRESS_SECONDS="3600")
    env.pop("XPNET_NUM_THREADS", None)
    env["OMP_NUM_THREADS"] = "2"  # two element-wise threads
    proc = subprocess.Popen(
        [sys.executable, "examples/train_mnist.py", "--device", "cpu", "--out", str(tmp_path),
         "--train-images", "96", "--test-images", "100", "--epochs", "1000"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("epoch 1/1000 - ") and "loss" in line:
                break
        else:
            raise AssertionError("no epoch line: " + "".join(seen)[-3000:])
        import time
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("*/last.npz")) and time.monotonic() < deadline:
            time.sleep(0.01)  # the checkpoint is written just after the epoch line
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest
    folder = next(tmp_path.iterdir())
    lines = [line for line in rest.splitlines() if line.strip() and not line.startswith("epoch ")]
    assert len(lines) == 1, rest
    import re
    match = re.fullmatch(r"train_mnist\.py: interrupted during epoch (\d+): the last complete epoch "
                         r"\((\d+)\) is saved in (\S+); continue with --resume (\S+)", lines[0])
    assert match, lines[0]
    assert int(match.group(1)) == int(match.group(2)) + 1
    assert match.group(3) == str(folder / "last.npz") and match.group(4) == str(folder)
    assert "Exception ignored" not in rest and "Traceback" not in rest


def test_the_element_wise_threads_never_hold_up_interpreter_exit():
    """The NumPy backend's element-wise pool runs daemon threads: a Ctrl-C that lands while the pool
    starts (the hang behind 'Exception ignored in threading') cannot leave exit waiting on them."""
    import threading
    import numpy as np
    from xpnet.backends.numpy_kernels import ElementwiseKernels
    kernels = ElementwiseKernels(threads=3)
    x = np.random.default_rng(0).standard_normal((160, 4096)).astype(np.float32)
    y, mask = kernels.relu_forward(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    workers = [t for t in threading.enumerate() if t.name.startswith("xpnet-elementwise")]
    assert len(workers) >= 2 and all(t.daemon for t in workers)   # the caller is the third thread
