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
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 0 or args.load < 0:
        p.error("--batch-size and --repeats must be >= 1, --warmup and --load >= 0")
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
    modes = ["1", "2on", "2off"]
    times = {m: [] for m in modes}
    try:
        with BusyLoad(args.load):
            for i in range(args.warmup + args.repeats):
                for m in round_order(modes, i):
                    backend.set_threads(1 if m == "1" else 2)
                    kernels.check = off if m == "2off" else on
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
    print(f"{args.model} b{args.batch_size} load {args.load}  " + "  ".join(cells)
          + f"  loaded on/off: {on.loaded}/{off.loaded}; split passes on/off: {on.split_passes}/{off.split_passes}")


if __name__ == "__main__":
    main()
