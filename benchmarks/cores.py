"""How much does a second core give on this machine, whatever the library? Two copies of one kernel.

    python benchmarks/cores.py                      # prints a table
    python benchmarks/cores.py --out benchmarks/results --tag s16

Each kernel runs in one process alone, then in two processes at once (started together at a
barrier), each with NumPy's BLAS on one thread; a copy's time per call in the pair over its time
alone is the machine's slowdown for that kind of work when both cores are busy. No Python threads
and no GIL are involved, and nothing of xpnet runs: it is the bound that any split of such work
over two cores meets here. Then the same in one process, alone and in two Python threads at once
(as xpnet's CPU pool runs its pieces): the difference from the two processes is what sharing one
interpreter costs (each NumPy call takes the GIL back when it returns; on a VM, waking a thread
that waits for it takes tens of microseconds). With a slowdown s, work split perfectly in two
takes s / 2 of the one-thread time: s = 1.2 bounds a two-thread step at 0.6 of a one-thread step.

Kernels: ``sgemm`` (a 2048 x 32 by 32 x 64 float32 product, in cache, compute-bound; the size of the
spectral route's per-bin products), ``sgemm-large`` (1024 x 1024 by 1024 x 1024), ``stream`` (a
float32 a * b of 8 M elements, memory-bound), ``l2`` (the same on 200 k elements, in the core's
cache).
"""
import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import sys
import time

KERNELS = ("sgemm", "sgemm-large", "stream", "l2")


def _setup(name):
    import numpy as np
    rng = np.random.default_rng(0)
    if name == "sgemm":
        a, b = rng.random((2048, 32), dtype=np.float32), rng.random((32, 64), dtype=np.float32)
        out = np.empty((2048, 64), np.float32)
        return lambda: np.matmul(a, b, out=out)
    if name == "sgemm-large":
        a, b = rng.random((1024, 1024), dtype=np.float32), rng.random((1024, 1024), dtype=np.float32)
        out = np.empty((1024, 1024), np.float32)
        return lambda: np.matmul(a, b, out=out)
    size = 8 << 20 if name == "stream" else 200_000
    a, b = rng.random(size, dtype=np.float32), rng.random(size, dtype=np.float32)
    out = np.empty(size, np.float32)
    return lambda: np.multiply(a, b, out=out)


def _worker(name, seconds, barrier, results):
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"   # before NumPy loads its BLAS (a spawned process imports it here)
    import numpy  # noqa: F401
    try:   # and where the BLAS ignores the variables
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)
    except ImportError:
        pass
    fn = _setup(name)
    for _ in range(3):
        fn()
    # calls per timing: about 50 ms worth, timed repeatedly for ``seconds`` after the barrier
    t = time.perf_counter()
    fn()
    reps = max(1, int(0.05 / max(time.perf_counter() - t, 1e-7)))
    barrier.wait()
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - t) / reps)
    results.put(statistics.median(times))


def _in_threads(name, copies, seconds):
    """``per_call`` with ``copies`` Python threads of this process instead of processes."""
    import queue
    import threading
    barrier, results = threading.Barrier(copies), queue.SimpleQueue()
    threads = [threading.Thread(target=_worker, args=(name, seconds, barrier, results)) for _ in range(copies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [results.get() for _ in threads]


def per_call(name, copies, seconds, threads=False):
    """Median seconds per call of each of ``copies`` processes (or threads) running kernel ``name``
    at once."""
    if threads:
        return _in_threads(name, copies, seconds)
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(copies), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(name, seconds, barrier, results)) for _ in range(copies)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120 + 4 * seconds) for _ in procs]
    for p in procs:
        p.join()
    return got


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kernels", default=",".join(KERNELS))
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per run")
    p.add_argument("--rounds", type=int, default=2, help="alone / pair runs per kernel, alternating")
    p.add_argument("--out", default="")
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    kernels = [k for k in args.kernels.split(",") if k]
    bad = [k for k in kernels if k not in KERNELS]
    if bad or args.rounds < 1 or args.seconds <= 0:
        p.error(f"--kernels from {', '.join(KERNELS)} (got {bad}); --rounds >= 1, --seconds > 0")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{socket.gethostname()}: {cores} cores, {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"   # this process's own workers (the threads mode) too
    rows = []
    for name in kernels:
        for mode in ("processes", "threads"):
            alone, pair = [], []
            for _ in range(args.rounds):
                alone += per_call(name, 1, args.seconds, mode == "threads")
                pair += per_call(name, 2, args.seconds, mode == "threads")
            a, b = statistics.median(alone), statistics.median(pair)
            rows.append({"kernel": name, "mode": mode, "alone_us": a * 1e6, "pair_us": b * 1e6,
                         "slowdown": b / a, "best_two_thread_ratio": b / a / 2,
                         "alone_runs_us": [v * 1e6 for v in alone], "pair_runs_us": [v * 1e6 for v in pair]})
            print(f"{name:12s} {mode:9s} alone {a * 1e6:9.1f} us a call, two at once {b * 1e6:9.1f} us "
                  f"each: slowdown {b / a:.2f} (a perfect split in two: {b / a / 2:.2f} of one)", flush=True)
    if args.out:
        now = datetime.datetime.now(datetime.timezone.utc)
        path = os.path.join(args.out, f"{now:%Y-%m-%d}-cores{'-' + args.tag if args.tag else ''}.json")
        record = {"date": now.isoformat(timespec="seconds"), "command": " ".join(["benchmarks/cores.py"] + sys.argv[1:]),
                  "host": socket.gethostname(), "cores": cores, "load_average": os.getloadavg(),
                  "seconds": args.seconds, "rounds": args.rounds, "results": rows}
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(record, fh, indent=1)
        os.replace(tmp, path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
