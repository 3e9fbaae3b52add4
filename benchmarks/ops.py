"""Op-level timings: xpnet's fast (and optionally reference) conv/pool ops against torch.nn.functional.

    python benchmarks/ops.py --threads 1 --repeats 5 [--reference]

Shapes are those of the big benchmark CNN (batch 128, float32). Each row times forward + backward
(the input gradient only where training needs it), best of ``--repeats`` after one warm-up call,
alternating the frameworks. This is a development aid; benchmarks/run.py is the benchmark.
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, C, F, H, need_dx) for 5x5 "same" convolutions, then (name, C, H) for 2x2 max pools
CONVS = [("conv1 1->32 @28", 1, 32, 28, False), ("conv2 32->64 @28", 32, 64, 28, True),
         ("conv3 64->96 @14", 64, 96, 14, True), ("conv4 96->128 @14", 96, 128, 14, True)]
POOLS = [("pool 64 @28", 64, 28), ("pool 128 @14", 128, 14)]


def best(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--reference", action="store_true", help="also time xpnet/ops/reference.py")
    args = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, ROOT)
    import numpy as np
    import torch
    from xpnet.ops import fast, reference
    torch.set_num_threads(args.threads)
    F = torch.nn.functional
    n, rng = args.batch_size, np.random.default_rng(0)
    impls = [("fast", fast)] + ([("reference", reference)] if args.reference else [])
    print(f"{'op':<20} " + " ".join(f"{name + ' ms':>14}" for name, _ in impls) + f" {'torch ms':>10}  method")
    for name, c, f, h, need_dx in CONVS:
        x = rng.standard_normal((n, c, h, h), dtype=np.float32)
        w = rng.standard_normal((f, c, 5, 5), dtype=np.float32) * 0.1
        b = np.zeros(f, np.float32)
        dy = rng.standard_normal((n, f, h, h), dtype=np.float32)
        row = []
        for _, mod in impls:
            def step(mod=mod):
                _, cache = mod.conv2d_forward(np, x, w, b, (1, 1), (2, 2, 2, 2))
                mod.conv2d_backward(np, dy, cache, need_dx=need_dx)
            row.append(best(step, args.repeats))
        xt = torch.from_numpy(x).requires_grad_(need_dx)
        wt, bt, dyt = torch.from_numpy(w).requires_grad_(), torch.from_numpy(b).requires_grad_(), torch.from_numpy(dy)
        row.append(best(lambda: F.conv2d(xt, wt, bt, padding=2).backward(dyt), args.repeats))
        method = fast.choose(x.shape, w.shape, (1, 1), (2, 2, 2, 2))
        print(f"{name:<20} " + " ".join(f"{t * 1e3:14.1f}" for t in row) + f"  {method}")
    for name, c, h in POOLS:
        x = np.maximum(rng.standard_normal((n, c, h, h), dtype=np.float32), 0)
        dy = rng.standard_normal((n, c, h // 2, h // 2), dtype=np.float32)
        row = []
        for _, mod in impls:
            def step(mod=mod):
                _, cache = mod.maxpool2d_forward(np, x, (2, 2), (2, 2))
                mod.maxpool2d_backward(np, dy, cache)
            row.append(best(step, args.repeats))
        xt = torch.from_numpy(x).requires_grad_()
        row.append(best(lambda: F.max_pool2d(xt, 2).backward(torch.from_numpy(dy)), args.repeats))
        print(f"{name:<20} " + " ".join(f"{t * 1e3:14.1f}" for t in row))


if __name__ == "__main__":
    main()
