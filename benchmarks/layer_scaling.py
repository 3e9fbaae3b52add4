"""What does a second thread give each layer? Per-layer times of one process, thread counts alternating.

    python benchmarks/layer_scaling.py --models big --batch-size 128      # point 2, layer by layer

fit()'s training step (benchmarks/threads.py's ``fit_step``: forward in training mode, cross-entropy,
backward without the input's gradient, Adam) is timed at each of ``--threads`` (default 1,2), the
counts alternating step by step and their order turning each round, as in threads.py, so that every
count sees the same machine. Each layer's ``forward`` and ``backward`` is timed by the wall clock
(a convolution's ``forward_pooled``, which runs its ReLU and pooling in one pass, counts as its
forward; the layers it ran, like a ReLU another layer applied, read 0); "rest" is the step less
its layers: the loss, the optimizer's update, the model's glue and the deferred weight-gradient
work that the backward finishes at its end. Prints a table
of the medians and each part's ratio to the first count's, and writes (``--out``) a JSON.
profile_layers.py gives one thread count per process (with FLOPs and routes); its processes run
minutes apart, and on a VM whose speed drifts that can put a 1.5x change between them.
"""
import argparse
import collections
import datetime
import os
import socket
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    sys.path.insert(0, HERE)
    import threads
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    threads.step_arguments(p)
    p.add_argument("--rounds", type=int, default=20, help="timed steps per thread count")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps per thread count first")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"),
                   help="folder for the JSON result ('' to skip writing)")
    p.add_argument("--tag", default="", help="suffix for the result file name")
    args = threads.step_values(p, p.parse_args(argv))
    if len(set(args.threads)) != len(args.threads):
        p.error("--threads: each count once")
    if args.rounds < 1 or args.warmup < 0:
        p.error("--rounds must be >= 1, --warmup >= 0")
    return args


def timed_layers(model, acc):
    """Wrap each layer's forward and backward (and forward_pooled: as forward; instance
    attributes) to add their wall time to ``acc[(layer name, "forward" | "backward")]``."""
    def wrap(layer, kind):
        real = getattr(layer, kind)

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return real(*a, **k)
            finally:
                acc[(layer.name, kind)] += time.perf_counter() - t0
        setattr(layer, kind, timed)

    for layer in model.layers:
        wrap(layer, "forward")
        wrap(layer, "backward")
        if hasattr(layer, "forward_pooled"):   # a convolution that runs its ReLU and pooling in one pass
            real = layer.forward_pooled

            def pooled(*a, real=real, layer=layer, **k):
                t0 = time.perf_counter()
                try:
                    return real(*a, **k)
                finally:
                    acc[(layer.name, "forward")] += time.perf_counter() - t0
            layer.forward_pooled = pooled


def time_model(name, args, xpnet, np):
    import threads
    model, step = threads.model_step(xpnet, np, name, args.batch_size)
    backend = model.backend
    acc = collections.defaultdict(float)
    timed_layers(model, acc)
    parts = [(layer.name, kind) for kind in ("forward", "backward")
             for layer in (model.layers if kind == "forward" else reversed(model.layers))]
    times = {t: collections.defaultdict(list) for t in args.threads}
    for i in range(args.warmup + args.rounds):
        for t in threads.round_order(args.threads, i):
            backend.set_threads(t)
            acc.clear()
            t0 = time.perf_counter()
            step()
            total = time.perf_counter() - t0
            if i >= args.warmup:
                for part in parts:
                    times[t][part].append(acc.get(part, 0.0))
                times[t][("rest", "")].append(total - sum(acc.values()))
                times[t][("step", "")].append(total)
    first = args.threads[0]
    rows = []
    for part in parts + [("rest", ""), ("step", "")]:
        medians = {str(t): statistics.median(times[t][part]) for t in args.threads}
        base = medians[str(first)]
        rows.append({"layer": part[0], "pass": part[1], "median_s": medians,
                     "ratio_to_first": {k: (v / base if base > 0 else None) for k, v in medians.items()}})
    return {"model": name, "batch_size": args.batch_size, "rows": rows}


def table(result, counts):
    """Markdown rows: part, one column of ms per count, one of ratios per further count; parts
    under 0.05 ms at every count are left out."""
    head = ["part"] + [f"{t} thr ms" for t in counts] + [f"{t} / {counts[0]}" for t in counts[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for r in result["rows"]:
        ms = [r["median_s"][str(t)] * 1e3 for t in counts]
        if max(ms) < 0.05:
            continue
        ratios = [r["ratio_to_first"][str(t)] for t in counts[1:]]
        label = f"{r['layer']} {r['pass']}".strip()
        if r["layer"] == "step":
            label = "**step**"
        lines.append("| " + " | ".join([label] + [f"{v:.1f}" for v in ms]
                                       + ["" if q is None else f"{q:.2f}" for q in ratios]) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, ROOT)
    import numpy as np
    import xpnet
    from xpnet.backends import compiled, cpu_threads
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    results = []
    for name in args.models:
        r = time_model(name, args, xpnet, np)
        results.append(r)
        print(f"### {name}, batch {args.batch_size}\n\n{table(r, args.threads)}\n", flush=True)
    report = {"date": started.isoformat(timespec="seconds"),
              "command": " ".join(["benchmarks/layer_scaling.py"] + sys.argv[1:]),
              "settings": vars(args), "cpu_count": os.cpu_count(), "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "blas": cpu_threads.blas_report(),
              "compiled_kernels": compiled.describe(), "numpy": np.__version__, "results": results}
    if args.out:
        import run
        os.makedirs(args.out, exist_ok=True)
        run.write_report(report, os.path.join(args.out, f"{started:%Y-%m-%d}-layer-scaling-{socket.gethostname()}"
                                                       + (f"-{args.tag}" if args.tag else "") + ".json"))
    return report


if __name__ == "__main__":
    main()
