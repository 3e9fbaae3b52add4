"""Does one of Sequential's CPU layer links pay? One process, the two models' steps alternating.

    python benchmarks/links.py --models cnn3x3,lenet5 --batch-sizes 16,64,128 --threads 1,2

Two copies of a benchmarks/run.py model with the same weights, one as Sequential links it and one
with the link switched off (``--link conv_pool``: Conv2D.planes_out, the spectral route's planes
handed to the pooling, with model._link_planes off in both copies; ``--link conv_pool_fused``:
Conv2D.pool_link, the columns route and the pooling in one pass, ops/conv_pool.py; both
model._link_conv_pool; ``--link planes``: model._link_planes, planes handed through ReLU and
Dropout to the next convolution, off in the second copy when it is built; ``--link relu_dropout``:
model._link_relu_dropout, a ReLU and the Dropout after it, or a pooling that applies a ReLU and the
Dropout after it, in one pass each way), train
step by step in turn (forward in training mode, cross-entropy, backward without the input's gradient
as in fit(), Adam), so that both see the
same machine load; each pool thread count in ``--threads`` is a separate pair. The link changes no
bits (tests/test_conv_pool_planes.py, tests/test_conv_pool_fused.py, tests/test_relu_dropout.py), so only the time is compared: the JSON (``--out``) keeps each
cell's medians and the ratio linked / unlinked.
"""
import argparse
import datetime
import os
import socket
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# link: (the classes whose attribute is switched off after the build, or None: model._link_planes is
# left out of the second copy's build instead; the attribute; its value when off)
LINKS = {"conv_pool": (("Conv2D",), "planes_out", False), "conv_pool_fused": (("Conv2D",), "pool_link", None),
         "planes": (None, "planes_out", False), "relu_dropout": (("ReLU", "MaxPool2D"), "dropout_after", None)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="cnn3x3,lenet5,medium,big", help="comma list of benchmarks/run.py's models")
    p.add_argument("--batch-sizes", default="16,64,128")
    p.add_argument("--threads", default="1,2", help="comma list of pool thread counts")
    p.add_argument("--link", choices=sorted(LINKS), default="conv_pool")
    p.add_argument("--repeats", type=int, default=20, help="timed steps per model and cell")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps per model first (SplitCheck's probes)")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"),
                   help="folder for the JSON result ('' to skip writing)")
    args = p.parse_args(argv)
    try:
        args.threads = [int(t) for t in args.threads.split(",")]
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        p.error("--threads and --batch-sizes must be comma lists of integers")
    if min(args.threads + args.batch_sizes) < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--threads, --batch-sizes and --repeats must be >= 1, --warmup >= 0")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    return args


def time_cell(name, batch, threads, args, xpnet, np):
    import run
    from threads import fit_step
    import xpnet.model
    kind, attribute, off = LINKS[args.link]
    models = {}
    kept = xpnet.model._link_planes
    for linked in (True, False):
        if args.link == "conv_pool" or (args.link == "planes" and not linked):
            xpnet.model._link_planes = lambda layers, backend: None
        try:
            model = run.build_xpnet(xpnet, name, "cpu", "float32", 0)
        finally:
            xpnet.model._link_planes = kept
        if not linked and kind is not None:
            for layer in model.layers:
                if type(layer).__name__ in kind:
                    setattr(layer, attribute, off)
        models[linked] = model
    linked_layers, unlinked_layers = (sum(bool(getattr(layer, attribute, False)) for layer in models[k].layers
                                          if kind is None or type(layer).__name__ in kind)
                                      for k in (True, False))
    backend = models[True].backend
    backend.set_threads(threads)
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.random((batch,) + tuple(models[True].input_shape)).astype("float32"))
    y = backend.asarray(rng.integers(0, 10, batch))
    steps = {linked: fit_step(model, x, y) for linked, model in models.items()}
    times = {True: [], False: []}
    for i in range(args.warmup + args.repeats):
        for linked, step in steps.items():
            t0 = time.perf_counter()
            step()
            if i >= args.warmup:
                times[linked].append(time.perf_counter() - t0)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    return {"model": name, "batch_size": batch, "threads": threads, "linked_layers": linked_layers,
            "input_gradient": any(m.layers[0].need_input_grad for m in models.values()),
            "unlinked_layers": unlinked_layers,
            "linked_median_s": on, "unlinked_median_s": off, "ratio": on / off,
            "linked_times_s": times[True], "unlinked_times_s": times[False]}


def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, ROOT)
    import numpy as np
    import xpnet
    from xpnet.backends import cpu_threads
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    results = []
    for threads in args.threads:
        for name in args.models:
            for batch in args.batch_sizes:
                r = time_cell(name, batch, threads, args, xpnet, np)
                results.append(r)
                print(f"{name} b{batch} {threads} thr ({r['linked_layers']} linked): linked "
                      f"{r['linked_median_s'] * 1e3:.2f} ms, unlinked {r['unlinked_median_s'] * 1e3:.2f} ms, "
                      f"ratio {r['ratio']:.3f}", flush=True)
    report = {"date": started.isoformat(timespec="seconds"), "command": " ".join(["benchmarks/links.py"] + sys.argv[1:]),
              "settings": vars(args), "cpu_count": os.cpu_count(), "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "blas": cpu_threads.blas_report(),
              "numpy": np.__version__, "results": results}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        import run
        run.write_report(report, os.path.join(args.out, f"{started:%Y-%m-%d}-links-{args.link}-{socket.gethostname()}.json"))
    return report


if __name__ == "__main__":
    main()
