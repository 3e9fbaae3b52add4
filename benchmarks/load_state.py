"""SplitCheck's load state on and off in one process, beside busy processes (or none).

    python benchmarks/load_state.py --model medium --batch-size 16 --load 1 --repeats 150

Steps of one thread, of two threads with the backend's own check (``2on``: the load state of
backends/cpu_threads.py SplitCheck), and of two threads with a second SplitCheck that never turns
loaded (``2off``: ``LOAD_PASSES`` 10**9, the check as it was before the load state) swapped in as
the backend's check, in turn, the order turning each round (benchmarks/threads.py round_order).
Each check keeps its own sites, so each kind of step sees its own check's decisions on the same
machine at the same time: runs in separate processes differ by more than the effect (the A/A
comparisons of threads.py read 0.93-1.02 there). Prints the medians, each one's ratio to the
one-thread median with a 90 % interval (threads.py ratio_interval), each check's load state at the
end and its split passes.

``--modes`` chooses the kinds of step (default ``1,2on,2off``); besides those three: ``1#2``, one
thread again (an A/A comparison: how far two runs of the same code differ here); ``2alone``, two
threads with a check that keeps every pass on the calling thread and says loaded (nothing split,
nothing deferred: what two threads cost beside one without any split); ``2probeN``, two threads
with a check of its own that probes a loaded pool every N alone passes instead of
``LOAD_PROBE_PASSES``.
"""
import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="medium", help="a benchmarks/run.py model name")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--load", type=int, default=1, metavar="N", help="N busy processes beside it")
    p.add_argument("--repeats", type=int, default=150, help="timed rounds")
    p.add_argument("--warmup", type=int, default=30, help="untimed rounds first")
    p.add_argument("--modes", default="1,2on,2off", help="comma list of 1, 1#2, 2on, 2off, 2alone, 2probeN")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 0 or args.load < 0:
        p.error("--batch-size and --repeats must be >= 1, --warmup and --load >= 0")
    modes = args.modes.split(",")
    bad = [m for m in modes if m not in ("1", "1#2", "2on", "2off", "2alone")
           and not (m.startswith("2probe") and m[6:].isdigit() and int(m[6:]) > 0)]
    if bad or "1" not in modes or len(set(modes)) != len(modes):
        p.error(f"--modes: a comma list of distinct 1, 1#2, 2on, 2off, 2alone, 2probeN (N > 0), with 1; got {args.modes!r}")
    sys.path.insert(0, ROOT)
    import numpy as np
    import xpnet
    from load import BusyLoad
    from threads import model_step, ratio_interval, round_order
    from xpnet.backends.cpu_threads import SplitCheck

    model, step = model_step(xpnet, np, args.model, args.batch_size)
    backend = model.backend
    kernels = backend._kernels
    on, off = kernels.check, SplitCheck()
    off.LOAD_PASSES = 10 ** 9
    checks = {"1": on, "1#2": on, "2on": on, "2off": off, "2alone": alone_check()}
    for m in modes:
        if m.startswith("2probe"):
            checks[m] = SplitCheck()
            checks[m].LOAD_PROBE_PASSES = int(m[6:])
    times = {m: [] for m in modes}
    try:
        with BusyLoad(args.load):
            for i in range(args.warmup + args.repeats):
                for m in round_order(modes, i):
                    backend.set_threads(1 if m.startswith("1") else 2)
                    kernels.check = checks[m]
                    t0 = time.perf_counter()
                    step()
                    if i >= args.warmup:
                        times[m].append(time.perf_counter() - t0)
    finally:
        kernels.check = on
    first = statistics.median(times["1"])
    cells = []
    for m, v in times.items():
        lo, hi = ratio_interval(times["1"], v)
        cells.append(f"{m}: {statistics.median(v) * 1e3:.2f} ms x{statistics.median(v) / first:.3f} [{lo:.3f}-{hi:.3f}]")
    probes = "".join(f"; {m}: loaded {checks[m].loaded}, split passes {checks[m].split_passes}, load probes "
                     f"{checks[m].load_probes}" for m in modes if m.startswith("2probe"))
    print(f"{args.model} b{args.batch_size} load {args.load}  " + "  ".join(cells)
          + f"  loaded on/off: {on.loaded}/{off.loaded}; split passes on/off: {on.split_passes}/{off.split_passes}"
          + f"; on: load probes {on.load_probes}, rests {on.load_rests}"
          + probes)


def alone_check():
    """A SplitCheck that keeps every pass on the calling thread, untimed, and says loaded (so the
    backend defers nothing to idle workers)."""
    from xpnet.backends.cpu_threads import UNTIMED, SplitCheck

    class Alone(SplitCheck):
        def __init__(self):
            super().__init__()
            self.loaded = True

        def next_pass(self, key):
            self.alone_passes += 1
            return UNTIMED

        def record(self, key, wall_s, work, cpu_s=None):
            pass

    return Alone()


if __name__ == "__main__":
    main()
