"""Race xpnet against PyTorch on full training steps of the same networks, in one process.

    python benchmarks/run.py --device cpu --models big,medium,lenet5,seed001-m8,cnn3x3 \
        --batch-size 16,64,128 --repeats 15 --warmup 20 --threads 2 --out benchmarks/results/
    python benchmarks/run.py --rounds 3        # the whole sweep three times; each cell's median ratio

Each model is built in xpnet (Sequential of xpnet layers) and in torch.nn with the same weights;
each (model, batch size) pair is one cell. One step is what training does per batch, measured the
way a user trains: xpnet's steps are those of ``model.fit()`` (epochs=1, steps_per_epoch=warmup +
repeats, no augmentation, accuracy metric), timed from the end of one step to the end of the next
through ``on_batch_end``, so fit's own per-step work (the batch's rows taken from the shuffled
order, the device-side loss and accuracy sums, progress and callbacks) is inside the time. The
PyTorch step is the usual hand-written loop body: rows of the shuffled order, zero_grad, forward,
cross-entropy, backward, optimizer step (Adam; ``--optimizer``), and the same running loss and
accuracy sums. Forward runs in training mode (dropout on). The PyTorch step runs inside xpnet's on_batch_end callback, so the
steps alternate (xpnet, torch, xpnet, torch, ...) and both see the same machine load; the medians
are reported with images/s, the ratio xpnet/torch, each framework's peak resident memory during
its own steps, and the nominal FLOPs of a step (direct convolution and dense products, forward
and backward) with the GFLOP/s this implies. The JSON result records the machine, versions,
thread counts and the load average before and after.

Rounds: on a shared or virtual machine one cell's ratio moves by 0.1-0.2 between sweeps minutes
apart (docs/benchmarks.md), so ``--rounds N`` runs the whole sweep N times, one after the other,
and gives each cell its N ratios (``ratio_rounds``, with each round's step medians in ``rounds``)
and their median (``ratio_median``); ``results`` keeps the first round's full record.

Threads: both frameworks get ``--threads`` (default: all cores). PyTorch through
``torch.set_num_threads``; NumPy's BLAS through OMP/OPENBLAS/MKL_NUM_THREADS, which this script
sets before NumPy is imported (threadpoolctl is used as well when it is installed). Because the
two frameworks share one process, OMP_WAIT_POLICY defaults to PASSIVE: otherwise PyTorch's
OpenMP workers keep spinning after each of its steps and take the cores from NumPy's BLAS threads
in the xpnet step that follows (measured: 9.8 s instead of 1.6 s per big-model step).
"""
import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("big", "medium", "lenet5", "seed001-m8", "cnn3x3")
# seed 000's per-sample recipes (batch 1; their steps are mostly the optimizer's update of the
# large Dense layer): given by name, not in the default sweep
PER_SAMPLE = ("seed000-adam", "seed000-final")
# the optimizer of both frameworks' steps: Adam (the default; the recipes of the sweep's zoo model
# and of seed000-adam) or SGD with momentum 0.8 (seed000-final's recipe)
OPTIMIZERS = {"adam": ("Adam", {"lr": 1e-3}), "sgd-momentum": ("SGD", {"lr": 1e-3, "momentum": 0.8})}
BATCH_SIZES = (16, 64, 128)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma list of " + ", ".join(MODELS + PER_SAMPLE) + " (default: %(default)s)")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam",
                   help="both frameworks' optimizer (default: adam, lr 1e-3; sgd-momentum: momentum 0.8)")
    p.add_argument("--batch-size", default=",".join(map(str, BATCH_SIZES)),
                   help="comma list of batch sizes; every model runs at each (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=15, help="timed steps per framework and model")
    p.add_argument("--warmup", type=int, default=20,
                   help="untimed steps per framework first (xpnet's CPU pool times each call site split "
                        "and alone in its first passes: cpu_threads.SplitCheck; 20 steps cover that)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for both (default: all cores)")
    p.add_argument("--ops", choices=("fast", "reference"), default="fast", help="xpnet conv/pool ops")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="time steps by wall clock (default) or by the process's CPU time, which a "
                        "shared machine's load disturbs less (compare ratios only, with --threads 1)")
    p.add_argument("--load", type=int, default=0, metavar="N",
                   help="N busy CPU-bound processes run beside the benchmark (benchmarks/load.py)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the whole sweep this many times; each cell gets its ratios and their median")
    p.add_argument("--tag", default="", help="suffix for the result file name, e.g. threads1")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"),
                   help="folder for the JSON result ('' to skip writing)")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in args.models:
        if m not in MODELS + PER_SAMPLE:
            p.error(f"unknown model {m!r}; choose from {', '.join(MODELS + PER_SAMPLE)}")
    try:
        args.batch_size = [int(b) for b in str(args.batch_size).split(",") if b.strip()]
    except ValueError:
        p.error(f"--batch-size must be a comma list of integers, got {args.batch_size!r}")
    if not args.batch_size or min(args.batch_size) < 1 or args.repeats < 1 or args.warmup < 0 or args.load < 0 \
            or args.rounds < 1:
        p.error("--batch-size values, --repeats and --rounds must be >= 1, --warmup and --load >= 0")
    return args


def set_threads_env(threads):
    """Before NumPy is imported: fix the BLAS/OpenMP thread count of this process, and make idle
    OpenMP workers sleep instead of spinning (see the module docstring)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# -- models ---------------------------------------------------------------------------------------
def architecture(name):
    """(input shape, list of layer specs) of the benchmark's own networks; each spec is a tuple
    that build_xpnet understands. Zoo models (seed001-m8) are built by the zoo instead."""
    if name in ("big", "medium"):
        widths = (32, 64, 96, 128) if name == "big" else (16, 32, 48, 64)
        layers = []
        for i, f in enumerate(widths):
            layers += [("conv", f, 5, 2), ("relu",)]
            if i % 2 == 1:
                layers.append(("maxpool", 2))
            layers.append(("dropout", 0.2))
        return (1, 28, 28), layers + [("flatten",), ("dense", 10)]
    if name == "lenet5":
        return (1, 28, 28), [("conv", 6, 5, 2), ("relu",), ("maxpool", 2), ("conv", 16, 5, 0), ("relu",),
                             ("maxpool", 2), ("flatten",), ("dense", 120), ("relu",), ("dense", 84),
                             ("relu",), ("dense", 10)]
    if name == "cnn3x3":  # the most common small CNN: two valid 3x3 convolutions with pooling
        return (1, 28, 28), [("conv", 32, 3, 0), ("relu",), ("maxpool", 2), ("conv", 64, 3, 0), ("relu",),
                             ("maxpool", 2), ("flatten",), ("dense", 10)]
    raise ValueError(name)


def build_xpnet(xpnet, name, device, dtype, seed):
    if name.startswith("seed"):
        return xpnet.models.get(name).build(device=device, seed=seed, dtype=dtype)
    input_shape, specs = architecture(name)
    from xpnet.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
    make = {"conv": lambda f, k, p: Conv2D(f, k, padding=p, kernel_initializer="he_normal"),
            "relu": ReLU, "maxpool": MaxPool2D, "dropout": Dropout, "flatten": Flatten,
            "dense": lambda u: Dense(u, kernel_initializer="he_normal")}
    layers = [make[s[0]](*s[1:]) for s in specs]
    return xpnet.Sequential(layers, input_shape=input_shape, device=device, dtype=dtype, seed=seed)


def build_torch(torch, model):
    """The same network in torch.nn, in the model's dtype, with xpnet's weights copied in (conv
    weights as they are, dense weights transposed)."""
    nn = torch.nn
    dtype = getattr(torch, str(model.dtype))
    to_t = lambda a: torch.from_numpy(model.backend.to_numpy(a).copy())  # noqa: E731
    mods = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            top, bottom, left, right = layer.pads
            if top != bottom or left != right:
                raise ValueError(f"{layer.name}: asymmetric padding {layer.pads} has no nn.Conv2d twin")
            w = layer.params["W"]
            m = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=layer.strides,
                          padding=(top, left), dtype=dtype)
            m.weight.data.copy_(to_t(w))
            m.bias.data.copy_(to_t(layer.params["b"]))
        elif kind == "Dense":
            w = layer.params["W"]
            m = nn.Linear(w.shape[0], w.shape[1], dtype=dtype)
            m.weight.data.copy_(to_t(w).T)
            m.bias.data.copy_(to_t(layer.params["b"]))
        elif kind == "MaxPool2D":
            if any(layer.pads):
                raise ValueError(f"{layer.name}: padded pooling has no nn.MaxPool2d twin here")
            m = nn.MaxPool2d(layer.pool_size, layer.strides)
        elif kind == "Dropout":
            m = nn.Dropout(layer.rate)
        else:
            m = {"ReLU": nn.ReLU, "Tanh": nn.Tanh, "Flatten": nn.Flatten}[kind]()
        mods.append(m)
    return nn.Sequential(*mods)


def step_flops(model, batch):
    """Nominal FLOPs of one step: 2 per multiply-add of each conv/dense product, forward, weight
    gradient, and input gradient where one is needed (not before the first layer with weights,
    as in training). Pooling, activations and Adam excluded."""
    total, trained_before = 0, False
    for layer in model.layers:
        name = type(layer).__name__
        if name == "Conv2D":
            f, c, kh, kw = layer.params["W"].shape
            macs = batch * layer.output_shape[1] * layer.output_shape[2] * f * c * kh * kw
        elif name == "Dense":
            macs = batch * layer.params["W"].shape[0] * layer.params["W"].shape[1]
        else:
            continue
        total += 2 * macs * (3 if trained_before else 2)
        trained_before = True
    return total


# -- measuring ----------------------------------------------------------------------------------------
def _status_kb(field):
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss():
    """Reset the kernel's peak-RSS mark (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb():
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0


def cpu_identity(path="/proc/cpuinfo"):
    """The first CPU's name, vendor, family, model and vector extensions: "AMD EPYC" alone names
    several generations (AVX2 only, or AVX-512)."""
    from xpnet.backends.cpu_threads import cpu_identity as read  # after the thread settings
    ident = read(path)
    return {"cpu": ident["name"] or platform.processor() or "unknown", "vendor": ident["vendor"],
            "family": ident["family"], "model": ident["model"],
            "simd": sorted(f for f in ident["flags"] if f in SIMD_FLAGS)}


SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_tile")
# How NumPy's OpenBLAS was told to run: the core type pins its kernels (a machine may set
# OPENBLAS_CORETYPE=Haswell on a CPU with AVX-512, which halves its SGEMM: docs/benchmarks.md).
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def blas_kernels():
    """The BLAS libraries NumPy loaded, with the kernels they chose (threadpoolctl's architecture)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [{k: lib.get(k) for k in ("internal_api", "version", "architecture")}
            for lib in threadpool_info() if lib.get("user_api") == "blas"]


def machine_info(args, torch, np, backend):
    ident = cpu_identity()
    info = {"host": socket.gethostname(), **ident, "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "python": platform.python_version(), "platform": platform.platform(),
            "numpy": np.__version__, "torch": torch.__version__,
            "threads": {"requested": args.threads, "torch": torch.get_num_threads(),
                        **{v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                          "MKL_NUM_THREADS", "OMP_WAIT_POLICY",
                                                          "OPENBLAS_THREAD_TIMEOUT")}},
            "blas": {"kernels": blas_kernels(), **{v: os.environ.get(v) for v in BLAS_ENV}}}
    if args.device == "gpu":
        import cupy
        info.update(gpu=torch.cuda.get_device_name(0), cupy=cupy.__version__,
                    tf32={"torch_matmul": torch.backends.cuda.matmul.allow_tf32,
                          "torch_cudnn": torch.backends.cudnn.allow_tf32,
                          "CUPY_TF32": os.environ.get("CUPY_TF32")})
    return info


def race(name, batch, args, xpnet, torch, np):
    """Time one cell (model, batch size): xpnet's steps inside fit(), PyTorch's steps in between."""
    device = "gpu" if args.device == "gpu" else "cpu"
    model = build_xpnet(xpnet, name, device, args.dtype, args.seed)
    backend = model.backend
    tdev = torch.device("cuda" if args.device == "gpu" else "cpu")
    tdtype = getattr(torch, args.dtype)
    net = build_torch(torch, model).to(device=tdev, dtype=tdtype)
    net.train()

    # a small uint8 "dataset" of several batches, as MNIST arrives; fit converts it once, before
    # the first step; each framework shuffles it with its own generator
    steps = args.warmup + args.repeats
    rng = np.random.default_rng(args.seed)
    n = batch * min(steps, 8)
    images = rng.integers(0, 256, (n,) + tuple(model.input_shape), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    xt = torch.from_numpy(images).to(tdev).to(tdtype) / 255.0
    yt = torch.from_numpy(labels).to(tdev)
    gen = torch.Generator(device=tdev).manual_seed(args.seed)

    kind, hyper = OPTIMIZERS[args.optimizer]
    model.compile(loss="cross_entropy", optimizer=getattr(xpnet.optim, kind)(**hyper), metrics=("accuracy",))
    topt = getattr(torch.optim, kind)(net.parameters(), **hyper)
    sync_t = torch.cuda.synchronize if args.device == "gpu" else (lambda: None)
    tstate = {"order": None, "pos": 0, "loss_sum": torch.zeros((), dtype=torch.float64, device=tdev),
              "correct": torch.zeros((), dtype=torch.int64, device=tdev)}

    def torch_step():
        if tstate["order"] is None or tstate["pos"] + batch > n:
            tstate["order"], tstate["pos"] = torch.randperm(n, generator=gen, device=tdev), 0
        idx = tstate["order"][tstate["pos"]:tstate["pos"] + batch]
        tstate["pos"] += batch
        xb, yb = xt[idx], yt[idx]
        topt.zero_grad(set_to_none=True)
        out = net(xb)
        loss = torch.nn.functional.cross_entropy(out, yb)
        loss.backward()
        topt.step()
        with torch.no_grad():
            tstate["loss_sum"] += loss.detach().double() * xb.shape[0]
            tstate["correct"] += (out.argmax(1) == yb).sum()
        sync_t()

    times = {"xpnet": [], "torch": []}
    peaks = {"xpnet": 0.0, "torch": 0.0}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    class Alternate(xpnet.callbacks.Callback):
        """At the end of each xpnet step: stop its clock, run and time one PyTorch step, restart
        the clock for the next xpnet step."""

        def on_train_begin(self, logs=None):
            reset_peak_rss()
            self.t0 = clock()

        def on_batch_end(self, b, logs=None):
            backend.synchronize()
            t1 = clock()
            peaks["xpnet"] = max(peaks["xpnet"], peak_rss_mb())
            reset_peak_rss()
            t_torch = clock()   # the peak's read and reset (tens of us) are in neither framework's time
            torch_step()
            t2 = clock()
            peaks["torch"] = max(peaks["torch"], peak_rss_mb())
            if b >= args.warmup:
                times["xpnet"].append(t1 - self.t0)
                times["torch"].append(t2 - t_torch)
            reset_peak_rss()
            self.t0 = clock()

    check = getattr(getattr(backend, "_kernels", None), "check", None)  # the CPU pool's SplitCheck
    before = check.report() if check is not None else None
    model.fit(images, labels, epochs=1, batch_size=batch, steps_per_epoch=steps, verbose=0,
              callbacks=[Alternate()])

    flops = step_flops(model, batch)
    result = {"model": name, "layers": [type(l).__name__ for l in model.layers],
              "params": model.count_params(), "batch_size": batch, "dtype": args.dtype,
              "flops_per_step": flops,
              "optimizer": {"xpnet": type(model.optimizer).__name__, "torch": type(topt).__name__,
                            "momentum": getattr(model.optimizer, "momentum", None)}}
    for who in ("xpnet", "torch"):
        med = statistics.median(times[who])
        result[who] = {"median_s": med, "min_s": min(times[who]), "max_s": max(times[who]),
                       "images_per_s": batch / med, "gflops": flops / med / 1e9,
                       "peak_rss_mb": round(peaks[who], 1), "times_s": times[who]}
    result["ratio"] = result["xpnet"]["median_s"] / result["torch"]["median_s"]
    if check is not None:  # this cell's passes split and kept on one thread, the last verdicts' gains
        after = check.report()
        result["xpnet"]["split_check"] = {k: after[k] - before[k] for k in ("split_passes", "alone_passes", "holds")}
        result["xpnet"]["split_check"]["last_gains"] = after["last_gains"]
    ratios = [a / b for a, b in zip(times["xpnet"], times["torch"])]
    result["ratio_of_pairs_median"] = statistics.median(ratios)
    from xpnet.ops import fast
    result["conv_methods"] = [fast.choose((batch,) + tuple(l.input_shape), tuple(l.params["W"].shape),
                                          l.strides, l.pads)
                              for l in model.layers if type(l).__name__ == "Conv2D"]
    return result


def main(argv=None):
    args = parse_args(argv)
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    set_threads_env(args.threads)
    os.environ["XPNET_OPS"] = args.ops
    if args.device == "gpu":
        os.environ.setdefault("CUPY_TF32", "1")
    sys.path.insert(0, ROOT)
    import numpy as np
    import torch
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    except ImportError:
        pass
    torch.set_num_threads(args.threads)
    if args.device == "gpu":   # TF32 for both frameworks or for neither, as CUPY_TF32 says
        tf32 = os.environ.get("CUPY_TF32") == "1"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
    import xpnet
    from xpnet import ops

    from load import BusyLoad  # benchmarks/load.py, beside this file

    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    results = []
    cells = [(m, b) for m in args.models for b in args.batch_size]
    with BusyLoad(args.load) as load:
        for round_ in range(args.rounds):
            if args.rounds > 1:
                print(f"round {round_ + 1} of {args.rounds}", flush=True)
            for i, (name, batch) in enumerate(cells):
                r = race(name, batch, args, xpnet, torch, np)
                if round_ == 0:
                    results.append(r)
                summary = {"xpnet_s": r["xpnet"]["median_s"], "torch_s": r["torch"]["median_s"], "ratio": r["ratio"]}
                results[i].setdefault("rounds", []).append(summary)
                print(f"{name:>10} b{batch:<3}: xpnet {r['xpnet']['median_s'] * 1e3:8.1f} ms  torch {r['torch']['median_s'] * 1e3:8.1f} ms"
                      f"  ratio {r['ratio']:.3f}  ({r['xpnet']['images_per_s']:.0f} vs {r['torch']['images_per_s']:.0f} img/s,"
                      f" {r['xpnet']['gflops']:.1f} vs {r['torch']['gflops']:.1f} GFLOP/s, peak RSS"
                      f" {r['xpnet']['peak_rss_mb']:.0f} / {r['torch']['peak_rss_mb']:.0f} MB)", flush=True)
    for r in results:
        r["ratio_rounds"] = [x["ratio"] for x in r["rounds"]]
        r["ratio_median"] = statistics.median(r["ratio_rounds"])
    if args.rounds > 1:
        print(f"median of {args.rounds} rounds: " + ", ".join(
            f"{r['model']} b{r['batch_size']} {r['ratio_median']:.2f}" for r in results), flush=True)
    report = {"date": started.isoformat(timespec="seconds"), "device": args.device,
              "command": " ".join([os.path.basename(sys.executable), "benchmarks/run.py"] + sys.argv[1:]),
              "settings": {k: v for k, v in vars(args).items() if k != "out"},
              "xpnet_ops": ops.current(), "machine": machine_info(args, torch, np, None),
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              # the busy processes of --load: how many, and the CPU seconds each got while timing ran
              "load": load.report(),
              # xpnet's own CPU threads and what its backend did to NumPy's BLAS (backends/cpu_threads.py)
              "xpnet_cpu": _xpnet_cpu(args),
              "seconds": round(time.time() - started.timestamp(), 1), "results": results,
              # what a measuring backend (the GPU) timed and chose per convolution shape
              "conv_choices": __import__("xpnet.ops.autotune", fromlist=["choices"]).choices()}
    if args.load:
        print(f"load: {args.load} busy processes, CPU s each: {report['load']['cpu_s']}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        tag = "-".join(t for t in (f"load{args.load}" if args.load else "", args.tag) if t)
        write_report(report, os.path.join(args.out, f"{started:%Y-%m-%d}-{args.device}-"
                                                   f"{socket.gethostname()}{'-' + tag if tag else ''}.json"))
    return report


def write_report(report, path):
    """The result JSON at ``path`` (benchmarks/run.py and benchmarks/threads.py)."""
    with open(path, "w") as fh:
        json.dump(report, fh, indent=1)
    print("wrote", os.path.relpath(path))


def _xpnet_cpu(args):
    if args.device != "cpu":
        return None
    from xpnet.backends import compiled, cpu_threads, get_backend
    return {"threads": get_backend("cpu").threads, "blas": cpu_threads.blas_report(),
            "compiled_kernels": compiled.describe()}


if __name__ == "__main__":
    main()
