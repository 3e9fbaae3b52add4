"""A module constant of xpnet two ways, in one process: fit() steps alternate between the values.

    python benchmarks/ab_setting.py --model cnn3x3 --batch-size 128 \
        --setting xpnet.ops.pooling.CHUNK_BYTES --values 1048576,2097152

A constant read when a pass runs (a chunk or block size, not one read at import) is set to value A
for two steps, to B for the next two, and so on, so that both see the same machine (load, clock,
caches) and the comparison does not depend on another run's noise. Steps are timed as in
benchmarks/run.py (end of one step to the end of the next, through on_batch_end) after
``--warmup`` untimed steps; the medians and B's over A's are printed. Results do not depend on such
a constant (bits), only speed does.
"""
import argparse
import importlib
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cnn3x3", help="a benchmarks/run.py model name")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--setting", required=True, help="module.CONSTANT, e.g. xpnet.ops.pooling.CHUNK_BYTES")
    p.add_argument("--values", required=True, help="two whole numbers A,B")
    p.add_argument("--steps", type=int, default=200, help="timed steps (half each way)")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    args = p.parse_args(argv)
    module, _, name = args.setting.rpartition(".")
    values = [v for v in args.values.split(",") if v]
    if not module or not name or len(values) != 2 or not all(v.isdigit() for v in values):
        p.error("--setting must be module.NAME and --values two whole numbers A,B")
    if args.steps < 4 or args.warmup < 0 or args.batch_size < 1:
        p.error("--steps must be >= 4, --warmup >= 0 and --batch-size >= 1")
    args.module, args.name, args.values = module, name, [int(v) for v in values]
    return args


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import run
    if args.threads:
        run.set_threads_env(args.threads)
    import numpy as np
    import xpnet
    from xpnet.optim import Adam
    module = importlib.import_module(args.module)
    if not hasattr(module, args.name):
        raise SystemExit(f"{args.module} has no {args.name}")
    kept = getattr(module, args.name)
    a, b = args.values
    model = run.build_xpnet(xpnet, args.model, "cpu", "float32", 0)
    model.compile(loss="cross_entropy", optimizer=Adam(lr=1e-3))
    rng = np.random.default_rng(0)
    n = args.batch_size * 8
    x = rng.integers(0, 256, (n,) + tuple(model.input_shape), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    times = {a: [], b: []}

    class Alternate(xpnet.callbacks.Callback):
        def on_train_begin(self, logs=None):
            setattr(module, args.name, a)
            self.t0 = time.perf_counter()

        def on_batch_end(self, step, logs=None):
            now = time.perf_counter()
            if step >= args.warmup:
                times[getattr(module, args.name)].append(now - self.t0)
            setattr(module, args.name, a if (step // 2) % 2 else b)   # two steps each way
            self.t0 = time.perf_counter()

    try:
        model.fit(x, y, epochs=1, batch_size=args.batch_size, steps_per_epoch=args.warmup + args.steps,
                  verbose=0, callbacks=[Alternate()])
    finally:
        setattr(module, args.name, kept)
    ma, mb = (statistics.median(times[v]) for v in (a, b))
    print(f"{args.model} b{args.batch_size} {args.setting}: {a} {ma * 1e3:.2f} ms, {b} {mb * 1e3:.2f} ms "
          f"({len(times[a])} and {len(times[b])} steps), B/A {mb / ma:.3f}", flush=True)
    return {"a_ms": ma * 1e3, "b_ms": mb * 1e3, "ratio": mb / ma, "steps": (len(times[a]), len(times[b]))}


if __name__ == "__main__":
    main()
