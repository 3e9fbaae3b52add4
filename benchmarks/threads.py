"""Does a second thread help xpnet, idle and beside busy processes? One process, steps alternating.

    python benchmarks/threads.py --models big --batch-size 128                 # point 2: 2 vs 1 thread
    python benchmarks/threads.py --models medium --batch-size 16 --load 1      # point 3: one busy process
    python benchmarks/threads.py --models medium --batch-size 16 --load 1 --blas follow   # the old way

xpnet's training step (forward in training mode, cross-entropy, backward without the input's gradient
as in fit(), Adam) is timed with the CPU
backend's pool at each of ``--threads`` (default 1,2), the thread counts alternating step by step
so that every count sees the same machine load; ``--load N`` runs N busy processes beside it
(benchmarks/load.py). ``--blas one`` (default) is what xpnet does: NumPy's BLAS on one thread;
``--blas follow`` gives the BLAS as many threads as the pool (what xpnet did before it limited the
BLAS, to show the difference). ``--split always`` splits every large pass over the pool whatever it
gains (what xpnet did before SplitCheck, backends/cpu_threads.py); the JSON records SplitCheck's
counts per model (passes split, passes kept on one thread). Prints and writes (``--out``) the
median and mean step per count and the ratio of each count's median to the first's, with a 90 %
interval for that ratio (bootstrap over the rounds: a round is one step of each count, so the
resampled steps stay paired in time). The counts' order turns by one place each round (1,2 then
2,1; with three counts each takes each place in turn): a step that follows another runs faster
or slower for it (with a fixed order 1,1,2 the second one-thread step read 0.93-0.98 of the
first). A count may come twice (``--threads 1,1,2``): the second is
labelled ``1#2`` and its ratio to the first, an A/A comparison of the same code, is the run's own
measure of noise (on this project's VM: 0.96-1.01 for the medium model at 16 beside a busy
process). ``--torch`` times PyTorch's same step (the same network and weights, Adam) in the same
rounds at the same thread counts (``torch.set_num_threads``): what a second core gives PyTorch on
this machine at this moment, beside what it gives xpnet. PyTorch's OpenMP workers wait as the
environment says (``OMP_WAIT_POLICY``, recorded: unset, they spin a while after each parallel
region, which is PyTorch's own best case and may cost the xpnet step that follows; benchmarks/run.py
sets PASSIVE).
"""
import argparse
import datetime
import os
import socket
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def step_arguments(p):
    """--models, --batch-size and --threads: the steps and thread counts timed (also
    layer_scaling.py's); ``step_values`` reads them."""
    p.add_argument("--models", default="big", help="comma list of benchmarks/run.py's models")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", default="1,2", help="comma list of pool thread counts, alternated")


def step_values(p, args):
    """args.threads as a list of ints and args.models as a list of names (``p.error`` for thread
    counts that are not whole numbers >= 1, or a batch size under 1)."""
    try:
        args.threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        p.error(f"--threads must be a comma list of integers, got {args.threads!r}")
    if min(args.threads) < 1 or args.batch_size < 1:
        p.error("--threads and --batch-size must be >= 1")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    return args


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    step_arguments(p)
    p.add_argument("--repeats", type=int, default=10, help="timed steps per thread count")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps per thread count first (SplitCheck's probes)")
    p.add_argument("--load", type=int, default=0, metavar="N", help="N busy processes beside it")
    p.add_argument("--blas", choices=("one", "follow"), default="one")
    p.add_argument("--split", choices=("auto", "always"), default="auto",
                   help="auto: xpnet keeps passes that do not gain on one thread (default); always: the old way")
    p.add_argument("--torch", action="store_true",
                   help="also time PyTorch's step at each thread count in the same rounds")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"),
                   help="folder for the JSON result ('' to skip writing)")
    p.add_argument("--tag", default="", help="suffix for the result file name, e.g. r2 for a second run")
    args = step_values(p, p.parse_args(argv))
    if args.repeats < 1 or args.warmup < 0 or args.load < 0:
        p.error("--repeats must be >= 1, --warmup and --load >= 0")
    return args


def fit_step(model, x, y):
    """fit()'s training step on (x, y) for ``model`` as a function of no arguments: forward in
    training mode, cross-entropy, backward without the input gradients fit() skips
    (``_input_grad_free``), Adam over the flat parameter buffer (``_flat_parameters``), as fit()."""
    from xpnet.losses import CrossEntropy
    from xpnet.optim import Adam
    for layer in model._input_grad_free():
        layer.need_input_grad = False
    loss, opt = CrossEntropy(), Adam(1e-3)
    model.optimizer = opt   # _flat_parameters binds the model's optimizer to the flat buffer

    def step():
        out = model.forward(x, training=True)
        loss.forward(out, y)
        model.backward(loss.backward())
        model._flat_parameters()
        opt.step(model.parameters, model.gradients)
    return step


def model_step(xpnet, np, name, batch_size):
    """(model, fit_step on a random batch) for benchmarks/run.py's model ``name`` on the CPU."""
    import run
    model = run.build_xpnet(xpnet, name, "cpu", "float32", 0)
    rng = np.random.default_rng(0)
    x = model.backend.asarray(rng.random((batch_size,) + tuple(model.input_shape)).astype("float32"))
    y = model.backend.asarray(rng.integers(0, 10, batch_size))
    return model, fit_step(model, x, y)


def torch_step(model, batch_size):
    """PyTorch's training step for ``model``'s network with its weights (benchmarks/run.py's
    build_torch), on a random batch: forward, cross-entropy, backward, Adam (lr 1e-3)."""
    import run
    import torch
    net = run.build_torch(torch, model)
    net.train()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((batch_size,) + tuple(model.input_shape), generator=gen, dtype=net[0].weight.dtype)
    y = torch.randint(0, 10, (batch_size,), generator=gen)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return step


def time_model(name, args, xpnet, np, set_threads):
    model, step = model_step(xpnet, np, name, args.batch_size)
    backend = model.backend
    labels = count_labels(args.threads)
    entries = [("xpnet", t, label) for t, label in zip(args.threads, labels)]
    times = {("xpnet", label): [] for label in labels}
    steps = {"xpnet": step}
    if args.torch:
        import torch
        steps["torch"] = torch_step(model, args.batch_size)
        entries += [("torch", t, label) for t, label in zip(args.threads, labels)]
        times.update({("torch", label): [] for label in labels})
    before = backend._kernels.check.report()  # the backend (and its counts) outlive one model
    for i in range(args.warmup + args.repeats):
        for kind, t, label in round_order(entries, i):
            if kind == "xpnet":
                set_threads(backend, t)
            else:
                torch.set_num_threads(t)
            t0 = time.perf_counter()
            steps[kind]()
            if i >= args.warmup:
                times[(kind, label)].append(time.perf_counter() - t0)
    after = backend._kernels.check.report()
    counts = {k: after[k] - before[k]
              for k in ("split_passes", "alone_passes", "holds", "alarms", "loads", "load_probes", "load_rests")}
    for k in ("loaded", "sites_alone_now", "last_gains"):
        counts[k] = after[k]
    result = {"model": name, "batch_size": args.batch_size, "split_check": counts,
              "input_gradient": model.layers[0].need_input_grad,
              "threads": summary({label: times[("xpnet", label)] for label in labels})}
    if args.torch:
        result["torch"] = {"version": torch.__version__,
                           "threads": summary({label: times[("torch", label)] for label in labels})}
    return result


def summary(times):
    """Per label (in order): median, mean, the median's ratio to the first label's with its 90 %
    interval, and the times."""
    first = next(iter(times.values()))
    return {label: {"median_s": statistics.median(v), "mean_s": statistics.mean(v),
                    "ratio_to_first": statistics.median(v) / statistics.median(first),
                    "ratio_interval_90": ratio_interval(first, v), "times_s": v}
            for label, v in times.items()}


def describe(threads):
    """One console line's part for a summary: each label's median, mean and ratio."""
    first = next(iter(threads))
    return "  ".join(
        f"{t} thr {v['median_s'] * 1e3:.1f} ms (mean {v['mean_s'] * 1e3:.1f}, x{v['ratio_to_first']:.2f}"
        + ("" if t == first else " [{:.2f}-{:.2f}]".format(*v["ratio_interval_90"])) + ")"
        for t, v in threads.items())


def round_order(entries, i):
    """The entries in round i's order: turned by i places, so each takes each place in turn."""
    k = i % len(entries)
    return entries[k:] + entries[:k]


def count_labels(counts):
    """A label per thread count: the count, with ``#k`` on its k-th repeat (1, 1#2, 2)."""
    seen, labels = {}, []
    for t in counts:
        seen[t] = seen.get(t, 0) + 1
        labels.append(str(t) if seen[t] == 1 else f"{t}#{seen[t]}")
    return labels


def ratio_interval(first, other, resamples=2000, seed=0):
    """90 % bootstrap interval of median(other) / median(first) over the rounds (pairs of steps
    taken in the same round are resampled together)."""
    import random
    rng = random.Random(seed)
    n = len(first)
    ratios = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        ratios.append(statistics.median(other[i] for i in idx) / statistics.median(first[i] for i in idx))
    ratios.sort()
    return [ratios[int(0.05 * (resamples - 1))], ratios[int(0.95 * (resamples - 1))]]


def main(argv=None):
    args = parse_args(argv)
    if args.blas == "follow":
        os.environ["XPNET_BLAS_THREADS"] = "keep"
    os.environ["XPNET_SPLIT"] = args.split
    sys.path.insert(0, ROOT)
    import numpy as np
    import xpnet
    from load import BusyLoad
    from xpnet.backends import compiled, cpu_threads

    def set_threads(backend, t):
        backend.set_threads(t)
        if args.blas == "follow":
            from threadpoolctl import threadpool_limits
            threadpool_limits(t, user_api="blas")

    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    results = []
    with BusyLoad(args.load) as load:
        for name in args.models:
            r = time_model(name, args, xpnet, np, set_threads)
            results.append(r)
            print(f"{name} b{args.batch_size} load {args.load} blas {args.blas} split {args.split}: "
                  + describe(r["threads"]), flush=True)
            if args.torch:
                print(f"{name} b{args.batch_size} PyTorch {r['torch']['version']}: " + describe(r["torch"]["threads"]),
                      flush=True)
    report = {"date": started.isoformat(timespec="seconds"), "command": " ".join(["benchmarks/threads.py"] + sys.argv[1:]),
              "settings": vars(args), "cpu_count": os.cpu_count(), "load": load.report(),
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "blas": cpu_threads.blas_report(), "compiled_kernels": compiled.describe(),
              "numpy": np.__version__, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "results": results}
    if args.load:
        print(f"load: {args.load} busy processes, CPU s each: {report['load']['cpu_s']}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        import run
        run.write_report(report, os.path.join(args.out, f"{started:%Y-%m-%d}-threads-{socket.gethostname()}"
                                                       f"-load{args.load}-blas-{args.blas}"
                                                       + ("-split-always" if args.split == "always" else "")
                                                       + (f"-{args.tag}" if args.tag else "") + ".json"))
    return report


if __name__ == "__main__":
    main()
