"""What one hand-off to a second thread costs on this machine, and from what size a split pass gains.

    python benchmarks/handoff.py                      # sizes 2**16 .. 2**22, table + JSON
    python benchmarks/handoff.py --out ''             # table only

xpnet's CPU backend splits a pass over its pool (backends/numpy_kernels.py): the calling thread puts
the other pieces on a queue, a sleeping worker wakes and takes them, and both hold Python's GIL
between NumPy calls. Whether that pays depends on how fast a sleeping thread wakes on the machine.
This script measures, with the pool xpnet uses (idle machine expected; the load average is recorded):

* wake: how long after the hand-off the worker starts its piece, after the caller was busy alone
  for 0, 0.5 and 2 ms (an idle core sleeps deeper the longer it idles: on a VM its wake-up goes
  through the hypervisor), and how long the worker's piece then takes against the caller's;
* split: a float32 multiply of 2**k elements on one thread, and split over the pool in 2 and in 8
  pieces (8 = the pool's 4 pieces per thread at 2 threads); beside it PyTorch's multiply of the same
  arrays with 1 and 2 intra-op threads (torch.set_num_threads, OMP_WAIT_POLICY as benchmarks/run.py
  sets it), so the two frameworks' thread hand-offs are compared in one run;
* together: two threads multiplying arrays of their own (nothing shared, nothing handed off), each
  ``--repeats`` times, against one thread alone: how far memory-bound passes scale on two cores
  at all (1.0 = no gain, 2.0 = twice the throughput).

Medians of ``--repeats`` calls, in microseconds; the ratio columns are 2-thread / 1-thread time
(below 1: the second thread helps).
"""
import argparse
import datetime
import json
import os
import socket
import statistics
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="16,17,18,19,20,21,22", help="comma list of k: arrays of 2**k floats")
    p.add_argument("--repeats", type=int, default=60)
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"),
                   help="folder for the JSON result ('' to skip)")
    return p.parse_args(argv)


def busy(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def median_us(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def wake(np, pool, repeats):
    """Per idle gap: the worker's start after the hand-off, its piece's time and the caller's."""
    a = np.ones(1 << 18, np.float32)
    b = np.empty_like(a)
    half = len(a) // 2
    caller = threading.get_ident()
    rows = []
    for gap in (0.0, 0.0005, 0.002):
        seen = []

        def part(s):
            t = time.perf_counter()
            np.multiply(a[s], 2, out=b[s])
            seen.append((threading.get_ident() == caller, t - start[0], time.perf_counter() - t))

        start = [0.0]
        for _ in range(repeats):
            busy(gap)
            start[0] = time.perf_counter()
            pool.run(part, [slice(0, half), slice(half, None)])
        worker = [s for s in seen if not s[0]]
        mine = [s for s in seen if s[0]]
        rows.append({"idle_gap_ms": gap * 1e3, "worker_pieces": len(worker), "caller_pieces": len(mine),
                     "worker_start_us": statistics.median(s[1] for s in worker) * 1e6 if worker else None,
                     "worker_piece_us": statistics.median(s[2] for s in worker) * 1e6 if worker else None,
                     "caller_piece_us": statistics.median(s[2] for s in mine) * 1e6,
                     "piece_alone_us": median_us(lambda: np.multiply(a[:half], 2, out=b[:half]), repeats)})
    return rows


def split(np, pool, torch, k, repeats):
    a = np.ones(1 << k, np.float32)
    b = np.empty_like(a)
    n = len(a)

    def part(s):
        np.multiply(a[s], 2, out=b[s])

    def pieces(m):
        step = n // m
        return [slice(i, i + step) for i in range(0, n, step)]

    two, eight = pieces(2), pieces(8)
    row = {"elements": n, "one_us": median_us(lambda: np.multiply(a, 2, out=b), repeats),
           "pool_2_pieces_us": median_us(lambda: pool.run(part, two), repeats),
           "pool_8_pieces_us": median_us(lambda: pool.run(part, eight), repeats)}
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        for t in (1, 2):
            torch.set_num_threads(t)
            row[f"torch_{t}_us"] = median_us(lambda: torch.mul(ta, 2, out=tb), repeats)
    return row


def together(np, k, repeats):
    """Throughput of two threads each multiplying its own arrays, over one thread alone."""
    arrays = [(np.ones(1 << k, np.float32), np.empty(1 << k, np.float32)) for _ in range(2)]

    def work(a, b):
        for _ in range(repeats):
            np.multiply(a, 2, out=b)

    t0 = time.perf_counter()
    work(*arrays[0])
    alone = time.perf_counter() - t0
    helper = threading.Thread(target=work, args=arrays[1])
    t0 = time.perf_counter()
    helper.start()
    work(*arrays[0])
    helper.join()
    both = time.perf_counter() - t0
    return {"elements": 1 << k, "alone_us_per_call": alone / repeats * 1e6,
            "two_threads_us_per_pair": both / repeats * 1e6, "throughput_gain": 2 * alone / both}


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # as benchmarks/run.py
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.path.insert(0, ROOT)
    import numpy as np
    from xpnet.backends.numpy_kernels import DaemonPool
    torch = None
    if not args.no_torch:
        import torch
    pool = DaemonPool(1)
    load_before = os.getloadavg()
    rows_wake = wake(np, pool, args.repeats)
    rows_split = [split(np, pool, torch, int(k), args.repeats) for k in args.sizes.split(",")]
    rows_together = [together(np, int(k), args.repeats) for k in args.sizes.split(",")]
    print(f"load average {load_before[0]:.2f}; medians of {args.repeats} calls, microseconds")
    print("| caller idle before (ms) | worker starts after | worker's piece | caller's piece | the piece alone |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows_wake:
        print(f"| {r['idle_gap_ms']:.1f} | {r['worker_start_us'] or 0:.0f} | {r['worker_piece_us'] or 0:.0f} "
              f"| {r['caller_piece_us']:.0f} | {r['piece_alone_us']:.0f} |")
    print()
    head = "| elements | NumPy, 1 thread | pool, 2 pieces | pool, 8 pieces | 2 pieces / 1 |"
    if torch is not None:
        head += " PyTorch, 1 thread | PyTorch, 2 threads | PyTorch 2 / 1 |"
    print(head)
    print("|" + "---:|" * (head.count("|") - 1))
    for r in rows_split:
        line = (f"| 2^{r['elements'].bit_length() - 1} | {r['one_us']:.0f} | {r['pool_2_pieces_us']:.0f} | "
                f"{r['pool_8_pieces_us']:.0f} | {r['pool_2_pieces_us'] / r['one_us']:.2f} |")
        if torch is not None:
            line += f" {r['torch_1_us']:.0f} | {r['torch_2_us']:.0f} | {r['torch_2_us'] / r['torch_1_us']:.2f} |"
        print(line)
    print()
    print("| elements | one thread alone, per call | two threads, their own arrays, per pair of calls | throughput gain |")
    print("|---:|---:|---:|---:|")
    for r in rows_together:
        print(f"| 2^{r['elements'].bit_length() - 1} | {r['alone_us_per_call']:.0f} | "
              f"{r['two_threads_us_per_pair']:.0f} | {r['throughput_gain']:.2f} |")
    if args.out:
        cpu = "unknown"
        with open("/proc/cpuinfo") as fh:
            cpu = next((l.split(":", 1)[1].strip() for l in fh if l.startswith("model name")), cpu)
        report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "command": "python benchmarks/handoff.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "machine": {"host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(),
                              "numpy": np.__version__, "torch": getattr(torch, "__version__", None),
                              "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")},
                  "load_average_before": load_before, "load_average_after": os.getloadavg(),
                  "wake": rows_wake, "split": rows_split,
                  "together": rows_together}
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, datetime.date.today().isoformat() + "-handoff.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(report, fh, indent=1)
        os.replace(tmp, path)
        print("wrote", path)


if __name__ == "__main__":
    main()
