"""Where a two-thread fit() step's time goes on the CPU pool: split passes, passes kept alone, work
outside the pool, the hand-offs, and how much slower each piece runs while both cores work.

    python benchmarks/pool_share.py --model big --batch-size 128
    python benchmarks/pool_share.py --model cnn3x3 --batch-size 128 --steps 100

One process: a model of benchmarks/run.py trains with fit() on two threads, then on one, with the
same weights' shapes and data. xpnet's split passes (backends/numpy_kernels.py ``_run``) are timed
by call site (the function that does a piece), and the pool's ``DaemonPool.run`` records each
piece's wall time and thread, when the first worker started (its wake-up after the hand-off) and
how long the caller waited at the end for the last worker piece. Nothing about what is computed
changes: the pieces are wrapped, SplitCheck still times the passes and decides as in training.

Per step, two threads: the step; the split passes' wall time and the pieces' summed time (caller
and worker); the passes SplitCheck kept alone; everything outside ``_run`` (Python, small ops,
GEMMs the pool does not split); wake-up and end wait. Then per site: one thread's time of the site
against two threads' wall and the thread time the site took there (its pieces, plus its passes kept
alone); that over one thread's time, above 1, is what running beside the other core costs the
work (shared caches and memory bandwidth, hand-offs; 1.0: none). Read the medians of a
few runs on an idle machine: the VM's speed moves by 20-30 % within minutes (docs/benchmarks.md).
"""
import argparse
import collections
import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="big", help="a benchmarks/run.py model name")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=15, help="timed steps per thread count")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps first (SplitCheck's probes)")
    p.add_argument("--sites", type=int, default=15, help="rows of the per-site table")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        p.error("--steps and --batch-size must be >= 1, --warmup >= 0")
    return args


class Recorder:
    """Wraps the pool's run and the kernels' _run for the duration of a fit."""

    def __init__(self, kernels_module):
        self.nk = kernels_module
        self.reset()

    def reset(self):
        self.sites = collections.defaultdict(lambda: [0.0, 0.0, 0.0])   # split wall, alone wall, pieces
        self.pieces = collections.defaultdict(float)   # "caller" / "worker" -> seconds
        self.wake = self.end_wait = self.pool_wall = 0.0
        self._current = None

    def install(self):
        nk, rec = self.nk, self
        pool_run, kernels_run = nk.DaemonPool.run, nk.ElementwiseKernels._run

        def run(pool, part, pieces, helpers=None):
            caller, start = threading.get_ident(), time.perf_counter()
            first_worker, caller_end = [], [start]
            lock = threading.Lock()

            def timed(piece):
                t0 = time.perf_counter()
                try:
                    return part(piece)
                finally:
                    t1 = time.perf_counter()
                    mine = threading.get_ident() == caller
                    with lock:
                        rec.pieces["caller" if mine else "worker"] += t1 - t0
                        if rec._current is not None:
                            rec.sites[rec._current][2] += t1 - t0
                        if mine:
                            caller_end[0] = max(caller_end[0], t1)
                        elif not first_worker:
                            first_worker.append(t0)
            out = pool_run(pool, timed, pieces, helpers)
            end = time.perf_counter()
            rec.pool_wall += end - start
            rec.end_wait += max(0.0, end - caller_end[0])
            rec.wake += (first_worker[0] - start) if first_worker else 0.0
            return out

        def _run(kernels, part, length, size, key_size=None, shape=None):
            code = part.__code__
            site = f"{os.path.basename(code.co_filename)}:{code.co_firstlineno} {code.co_qualname}"
            before, outer = kernels.check.split_passes, rec._current
            rec._current = site
            t0 = time.perf_counter()
            try:
                return kernels_run(kernels, part, length, size, key_size, shape)
            finally:
                dt = time.perf_counter() - t0
                rec._current = outer
                split = kernels.threads > 1 and kernels.check.split_passes > before
                rec.sites[site][0 if split else 1] += dt
        nk.DaemonPool.run, nk.ElementwiseKernels._run = run, _run
        return pool_run, kernels_run

    def uninstall(self, saved):
        self.nk.DaemonPool.run, self.nk.ElementwiseKernels._run = saved


def timed_fit(model, x, y, batch, steps, recorder):
    recorder.reset()
    t0 = time.perf_counter()
    model.fit(x[:batch * steps], y[:batch * steps], epochs=1, batch_size=batch, verbose=0, shuffle=False)
    return (time.perf_counter() - t0) / steps


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    sys.path.insert(0, ROOT)
    import numpy as np
    import xpnet
    from xpnet.backends import numpy_kernels
    import run as bench
    b, n = args.batch_size, args.steps
    model = bench.build_xpnet(xpnet, args.model, "numpy", "float32", 0)
    model.compile(loss="cross_entropy", optimizer=xpnet.optim.Adam(lr=1e-3))
    rng = np.random.default_rng(0)
    count = b * max(n, args.warmup, 1)
    x = rng.integers(0, 256, (count,) + tuple(model.input_shape), dtype=np.uint8)
    y = rng.integers(0, 10, count)
    backend = model.backend
    rec = Recorder(numpy_kernels)
    results, kept = {}, backend.threads
    try:
        for threads in (2, 1):
            backend.set_threads(threads)
            if args.warmup:
                model.fit(x[:b * args.warmup], y[:b * args.warmup], epochs=1, batch_size=b, verbose=0)
            saved = rec.install()
            try:
                step = timed_fit(model, x, y, b, n, rec)
            finally:
                rec.uninstall(saved)
            results[threads] = (step, {k: list(v) for k, v in rec.sites.items()}, dict(rec.pieces),
                                rec.wake, rec.end_wait, rec.pool_wall)
    finally:
        backend.set_threads(kept)   # the backend is the process's: leave it as it was
    ms = lambda s: 1e3 * s / n   # noqa: E731  seconds summed over the steps -> ms a step
    step2, sites2, pieces2, wake, end_wait, pool_wall = results[2]
    step1, sites1 = results[1][0], results[1][1]
    split = sum(v[0] for v in sites2.values())
    alone = sum(v[1] for v in sites2.values())
    print(f"# {args.model} at batch {b}, {n} steps each, load average {os.getloadavg()[0]:.2f}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"one thread {1e3 * step1:.1f} ms a step; two threads {1e3 * step2:.1f} ms "
          f"(ratio {step2 / step1:.2f})")
    print(f"two threads, a step: split passes {ms(split):.1f} ms (pieces: caller {ms(pieces2.get('caller', 0)):.1f}, "
          f"worker {ms(pieces2.get('worker', 0)):.1f} ms), passes kept alone {ms(alone):.1f} ms, "
          f"outside the split passes {1e3 * step2 - ms(split) - ms(alone):.1f} ms; hand-offs: worker "
          f"wake-up {ms(wake):.1f} ms, caller waiting at the end {ms(end_wait):.1f} ms (pool wall {ms(pool_wall):.1f})")
    print()
    print("| site | one thread ms | two threads: split ms | alone ms | pieces ms | (pieces + alone) / one thread |")
    print("|---|---:|---:|---:|---:|---:|")
    order = sorted(sites1, key=lambda k: -sites1[k][1])[:args.sites]
    for site in order:
        one = sites1[site][1]
        s, a, p = sites2.get(site, [0.0, 0.0, 0.0])
        share = f"{(p + a) / one:.2f}" if one else ""
        print(f"| {site} | {ms(one):.2f} | {ms(s):.2f} | {ms(a):.2f} | {ms(p):.2f} | {share} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
