"""Resource behaviour: predict/evaluate on a large host input stay within a few batches of extra
memory, and resident memory does not grow over 20 epochs of training (with checkpoints and
validation) or over repeated fit() calls, and neither do Python's traced allocations (the exact
measure for leaks too small for RSS). Numbers are printed (-s) for docs/reliability.md."""
import gc
import os
import tracemalloc

import numpy as np
import pytest

import xpnet
from xpnet import callbacks
from xpnet.layers import BatchNorm, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU

MB = 2 ** 20


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


class Record(callbacks.Callback):
    """``measure()`` at each epoch's end: the RSS (rss_mb) or the live traced allocations (traced)."""

    def __init__(self, measure):
        super().__init__()
        self.measure = measure
        self.values = []

    def on_epoch_end(self, epoch, logs=None):
        self.values.append(self.measure())


def cnn():
    model = xpnet.Sequential([Conv2D(4, 3), ReLU(), MaxPool2D(2), Flatten(), Dropout(0.2), Dense(16),
                              BatchNorm(), ReLU(), Dense(10)], input_shape=(1, 12, 12), seed=0)
    return model.compile(loss="cross_entropy", optimizer="adam")


def data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 1, 12, 12), dtype=np.uint8), rng.integers(0, 10, n)


def twenty_epochs_then_eight_fits(measure, tmp_path):
    """``measure()`` at the end of each of 20 epochs of the small CNN (512 images, validation, a
    checkpoint every epoch), then after each of 8 more ``fit(epochs=1)`` calls."""
    x, y = data(512)
    model = cnn()
    record = Record(measure)
    model.fit(x, y, epochs=20, batch_size=32, verbose=0, callbacks=[record], checkpoint=tmp_path,
              validation_split=0.1)
    refits = []
    for _ in range(8):
        model.fit(x, y, epochs=1, batch_size=32, verbose=0)
        refits.append(measure())
    return record.values, refits


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc for RSS")
def test_rss_is_flat_over_twenty_epochs(tmp_path):
    epochs, refits = twenty_epochs_then_eight_fits(rss_mb, tmp_path)
    growth = epochs[-1] - epochs[2]
    print(f"RSS epochs 3..20: {epochs[2]:.1f} -> {epochs[-1]:.1f} MB; "
          f"8 more fit() calls: {refits[0]:.1f} -> {refits[-1]:.1f} MB")
    assert growth < 4.0, epochs
    assert refits[-1] - refits[0] < 4.0, refits


def traced():
    """Python's traced allocations (NumPy's arrays included) still alive."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def test_traced_memory_is_flat_over_twenty_epochs(tmp_path):
    """What RSS cannot see at this model's size: a step that keeps a reference to its output (1.4 KB
    a step) or a fit() that keeps its device copy of the data (0.3 MB) stays under RSS's 4 MB over
    these 288 steps and 8 calls. The live allocations are nearly exact: measured 15-21 KB over
    epochs 3..20 (History's floats, the checkpoints' records) and 1.5-4 KB over the 8 calls, so a
    leak of about 50 B a step or 0.6 KB a call shows (not a float32 scalar's 35 B a step)."""
    tracemalloc.start()
    try:
        epochs, refits = twenty_epochs_then_eight_fits(traced, tmp_path)
    finally:
        tracemalloc.stop()
    growth = epochs[-1] - epochs[2]
    print(f"traced epochs 3..20: +{growth / 1024:.1f} KB; 8 more fit() calls: "
          f"+{(refits[-1] - refits[0]) / 1024:.1f} KB")
    assert growth < 32 * 1024, epochs
    assert refits[-1] - refits[0] < 8 * 1024, refits


@pytest.mark.parametrize("what", ["predict", "evaluate"])
def test_large_input_in_bounded_memory(what):
    """The peak is the output plus a few batches' work, whatever the input's length: beside the
    4 MB bound, the extra of 30,000 samples may exceed that of 3,000 (measured first, with the
    first call's set-up) by 0.25 MB at most, so that anything kept per batch (evaluate holding
    every batch's output: 1.1 MB more) shows."""
    model = cnn()
    x = np.random.default_rng(1).standard_normal((30000, 1, 12, 12)).astype(np.float32)  # 16.5 MB
    y = np.arange(len(x)) % 10

    def extra(n):
        """Traced peak of the call on the first n samples, less its output."""
        tracemalloc.start()
        try:
            if what == "predict":
                out = model.predict(x[:n], batch_size=256)
                assert out.shape == (n, 10)
            else:
                result = model.evaluate(x[:n], y[:n], batch_size=256)
                assert 0.0 <= result["accuracy"] <= 1.0
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return peak, n * 10 * 4 if what == "predict" else 0

    small_peak, small_output = extra(3000)
    peak, output = extra(len(x))
    print(f"{what}: input {x.nbytes / MB:.1f} MB, peak extra {peak / MB:.1f} MB "
          f"(output {output / MB:.1f} MB); on 3,000 samples {small_peak / MB:.2f} MB (output {small_output / MB:.2f} MB)")
    assert peak < output + 4 * MB, f"{what} held {peak / MB:.1f} MB for a {x.nbytes / MB:.1f} MB input"
    assert peak - output < small_peak - small_output + MB / 4, \
        f"{what}: {(peak - output) / MB:.2f} MB beside the output on 30,000 samples, " \
        f"{(small_peak - small_output) / MB:.2f} MB on 3,000"
