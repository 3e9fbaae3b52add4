"""Training throughput of one process vs several MPI ranks (docs/scaling.md).

    python benchmarks/scaling.py [--model seed001-tf] [--batch 64] [--steps 20]
    mpirun -n 2 python benchmarks/scaling.py --distributed [...]

Trains ``--steps`` steps of the model's training step (forward, backward, gradient all-reduce,
Adam) at global batch ``--batch`` on MNIST images after one warm-up step, and prints one JSON line
(from rank 0): images per second of the whole job, ranks, threads per rank. Set the threads per
rank with XPNET_NUM_THREADS or OMP_NUM_THREADS (xpnet's thread pool reads them at start-up; NumPy's
BLAS stays on one thread, backends/cpu_threads.py).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import xpnet  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="seed001-tf")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--distributed", action="store_true")
    args = p.parse_args(argv)
    comm = None
    if args.distributed:
        from xpnet import distributed
        comm = distributed.init(args.device)
    backend = xpnet.get_backend(args.device) if comm is None else comm.backend
    (x, y), _ = xpnet.datasets.load("mnist")
    n = args.batch * (args.steps + 1)
    x, y = x[:n], y[:n]
    model = xpnet.models.get(args.model).build((1, 28, 28), 10, backend, 0, "float32")
    model.compile(loss="cross_entropy", optimizer=xpnet.optim.Adam(5e-4), metrics=["accuracy"])
    model.fit(x[:args.batch], y[:args.batch], epochs=1, batch_size=args.batch, verbose=0,
              distributed=comm)  # warm-up: allocations, thread pools, first all-reduce
    if comm is not None:
        comm.barrier()
    start = time.perf_counter()
    model.fit(x[args.batch:], y[args.batch:], epochs=1, batch_size=args.batch, verbose=0,
              shuffle=False, distributed=comm)
    backend.synchronize()
    seconds = time.perf_counter() - start
    if comm is None or comm.rank == 0:
        print(json.dumps({"model": args.model, "params": model.count_params(), "batch": args.batch,
                          "steps": args.steps, "ranks": 1 if comm is None else comm.size,
                          "communicator": None if comm is None else comm.kind,
                          "threads_per_rank": os.environ.get("OMP_NUM_THREADS"),
                          "seconds": round(seconds, 3),
                          "images_per_s": round(args.batch * args.steps / seconds, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
