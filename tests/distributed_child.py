"""Small data-parallel runs for tests/test_distributed.py, started under mpirun (or alone).

    mpirun -n 2 python tests/distributed_child.py OUT_DIR --case sgd|adam|perrank [--epochs N]
        [--device numpy|strict] [--checkpoint DIR [--resume]] [--die-at E:B | --hang-at E:B]
        [--timeout S] [--single]

A small CNN with batch norm and dropout in float64 on synthetic 8x8 images (100 training, 30
validation). ``--single`` trains in one process without MPI (the reference). Every rank writes
OUT_DIR/rank<R>.npz (parameters and buffers) and OUT_DIR/rank<R>.json (the History), and prints
"rank R: epoch K" (1-based) as epoch K starts (a resumed run shows where it went on). Rank r
builds its model with seed r, so only the broadcast of rank 0's weights and generator states
makes the ranks agree. ``--die-at E:B`` makes rank 1 SIGKILL itself after batch B of epoch E
(0-based); ``--hang-at E:B`` makes it SIGSTOP itself there.
"""
import argparse
import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import xpnet  # noqa: E402
from xpnet import callbacks, regularizers  # noqa: E402
from xpnet.layers import BatchNorm, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU  # noqa: E402

BATCH = 15  # 100 samples: six batches of 15 (shards 7 + 8) and a last one of 10 (5 + 5)


def data():
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (130, 1, 8, 8)).astype(np.uint8)
    y = rng.integers(0, 10, 130)
    return (x[:100], y[:100]), (x[100:], y[100:])


def build(case, device, seed):
    dense = Dense(10)
    dense.regularizers = {"W": regularizers.L2(1e-3)}
    model = xpnet.Sequential([
        Conv2D(4, 3, padding="same", use_bias=False), BatchNorm(momentum=0.9), ReLU(), MaxPool2D(2),
        Dropout(0.3), Flatten(), Dense(16, use_bias=False), BatchNorm(momentum=0.8), ReLU(),
        Dropout(0.2), dense], input_shape=(1, 8, 8), device=device,
        dtype="float32" if case == "mixed" else "float64", seed=seed)
    if case == "adam":
        opt = xpnet.optim.Adam(lr=0.01, decay=0.01)
    else:
        opt = xpnet.optim.SGD(lr=0.05, momentum=0.9)
    mixed = xpnet.MixedPrecision("float16", initial_scale=2.0 ** 24, growth_interval=4)  # skips early
    model.compile(loss="cross_entropy", optimizer=opt, metrics=["accuracy"],
                  mixed_precision=mixed if case == "mixed" else None)
    return model


class Epochs(callbacks.Callback):
    """Prints "rank R: epoch K" (1-based) when epoch K starts: a resumed run shows where it went on."""

    def __init__(self, rank):
        super().__init__()
        self.rank = rank

    def on_epoch_begin(self, epoch, logs=None):
        sys.stdout.write(f"rank {self.rank}: epoch {epoch + 1}\n")   # one write: whole lines
        sys.stdout.flush()


class Fault(callbacks.Callback):
    """Rank 1 kills or stops itself after batch ``batch`` of epoch ``epoch``."""

    def __init__(self, rank, where, sig):
        super().__init__()
        self.rank, self.sig = rank, sig
        self.epoch, self.batch = (int(v) for v in where.split(":"))
        self.current = None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_batch_end(self, batch, logs=None):
        if self.rank == 1 and self.current == self.epoch and batch == self.batch:
            print(f"rank 1: sending itself {self.sig.name}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), self.sig)


def train(args, comm=None):
    (x, y), val = data()
    rank = 0 if comm is None else comm.rank
    model = build(args.case, args.device if comm is None else comm.backend, seed=rank)
    cbs = [callbacks.CSVLogger(os.path.join(args.out, f"log{rank}.csv")), Epochs(rank)]
    if args.case == "adam":
        cbs.append(callbacks.LearningRateScheduler(xpnet.schedules.StepDecay(0.01, drop=0.5, every=1)))
    if args.die_at:
        cbs.append(Fault(rank, args.die_at, signal.SIGKILL))
    if args.hang_at:
        cbs.append(Fault(rank, args.hang_at, signal.SIGSTOP))
    augment = xpnet.RandomAffine(rotation=10, zoom=0.1, probability=0.7) if args.case == "adam" else None
    history = model.fit(x, y, epochs=args.epochs, batch_size=BATCH, validation_data=val, verbose=0,
                        callbacks=cbs, augment=augment, checkpoint=args.checkpoint,
                        resume=bool(args.resume), seed=rank, distributed=comm,
                        sync_batchnorm=args.case != "perrank")
    return model, history


def save(model, history, out, rank):
    arrays = {k: model.backend.to_numpy(v) for k, v in {**model.parameters, **model.buffers}.items()}
    np.savez(os.path.join(out, f"rank{rank}.npz"), **arrays)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(history.history, f)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--case", default="sgd", choices=("sgd", "adam", "perrank", "mixed"))
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--device", default="numpy")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--die-at", default=None)
    p.add_argument("--hang-at", default=None)
    p.add_argument("--timeout", type=float, default=None)
    p.add_argument("--single", action="store_true")
    args = p.parse_args(argv)
    comm = None
    if not args.single:
        from xpnet import distributed
        comm = distributed.init(args.device, timeout=args.timeout)
    model, history = train(args, comm)
    save(model, history, args.out, 0 if comm is None else comm.rank)
    return 0


if __name__ == "__main__":
    sys.exit(main())
