"""A tiny training run for the crash tests (tests/test_reliability_resume.py), run as a subprocess.

    python tests/reliability_child.py CHECKPOINT_DIR OUT.npz [--resume] [--epochs N] [--slow S]

Synthetic data, Dense/Dropout/Adam (so weights, optimizer moments, the shuffler and a layer's random
generator must all be restored). ``--slow S`` sleeps S seconds per batch and stretches every
checkpoint write (before fsync and before the rename) so that kills land inside them. Prints
"epoch K" (1-based) when epoch K starts and saves the final weights to OUT.npz (host arrays).
"""
import argparse
import os
import sys
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import xpnet  # noqa: E402
from xpnet import callbacks, serialization  # noqa: E402
from xpnet.layers import Dense, Dropout, ReLU  # noqa: E402


class Pace(callbacks.Callback):
    def __init__(self, delay):
        super().__init__()
        self.delay = delay

    def on_epoch_begin(self, epoch, logs=None):
        print(f"epoch {epoch + 1}", flush=True)

    def on_batch_end(self, batch, logs=None):
        time.sleep(self.delay)


def slow_file_writes(delay):
    """Stretch the windows between write, fsync and rename of serialization's atomic writes."""
    real = serialization.os

    def fsync(fd):
        time.sleep(delay)
        real.fsync(fd)

    def replace(src, dst):
        time.sleep(delay)
        real.replace(src, dst)

    proxy = types.SimpleNamespace(**{k: getattr(real, k) for k in dir(real) if not k.startswith("__")})
    proxy.fsync, proxy.replace, proxy.path = fsync, replace, real.path
    serialization.os = proxy


def data(n=96, features=8, classes=3):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, features)).astype(np.float32)
    y = (x[:, :classes].argmax(axis=1)).astype(np.int64)
    return x, y


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--slow", type=float, default=0.0)
    args = p.parse_args(argv)
    if args.slow:
        slow_file_writes(args.slow)
    x, y = data()
    model = xpnet.Sequential([Dense(16), ReLU(), Dropout(0.25), Dense(3)], input_shape=(8,), seed=11)
    model.compile(loss="cross_entropy", optimizer=xpnet.optim.Adam(lr=0.01), metrics=["accuracy"])
    model.fit(x, y, epochs=args.epochs, batch_size=12, verbose=0, checkpoint=args.checkpoint,
              resume=args.resume, callbacks=[Pace(args.slow)])
    weights = {k: model.backend.to_numpy(v) for k, v in model.parameters.items()}
    np.savez(args.out, **weights)
    print("done", flush=True)


if __name__ == "__main__":
    main()
