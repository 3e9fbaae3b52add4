"""Where a training step's time goes, layer by layer, and how much of it is fit()'s own loop.

    python benchmarks/profile_layers.py --threads 2                     # both tables, markdown
    python benchmarks/profile_layers.py --models big --batch-size 64 --repeats 10
    python benchmarks/profile_layers.py --overhead-only                 # just fit's overhead at batch 16

Per-layer table (big and medium, batch 64 by default). Each step is a real ``fit()`` step on the
NumPy backend; every layer's forward and backward, the loss, the optimizer update and the step as
a whole (``on_batch_end`` to ``on_batch_end``) are timed, and the table gives medians over the
timed steps. The GEMMs a layer executes are found by running one step on the strict backend with
its operation trace on (every ``@``/``matmul``/``dot`` with its operand shapes, attributed to the
layer running at the time), made to take the NumPy backend's code paths (its blocks and chunks, not
the GPU's whole GEMMs); each distinct GEMM is then replayed alone on the NumPy backend with
operands of those shapes (contiguous, float32) to time it, as the step runs it (see replay_ms).
So per layer:

* route: ``spectral`` or ``columns`` for a convolution (xpnet.ops.chooser), ``columns+pool`` where
  it ran with the max pooling after it in one pass (ops/conv_pool.py: the pooling's and the ReLU's
  time are then in the convolution's row), ``gemm`` for Dense;
* GFLOP: FLOPs the GEMMs really execute (2 per multiply-add; the spectral route's DFTs are GEMMs
  too and are counted), beside the nominal direct-convolution count;
* GEMM ms and GFLOP/s: the replayed GEMM time and the rate it implies, against the machine's
  SGEMM peak (best of NumPy float32 square matmuls of 1024-3072, measured at the start; with
  ``--clock cpu`` every time is CPU time of the process, so with T threads rates are per T cores);
* other ms: the layer's measured time minus its GEMM time: transforms' reshapes and layout
  copies, im2col, element-wise passes, pooling, allocation and Python.

Rows after the layers: the loss, the optimizer update (Adam on the flat buffer), the glue inside
the training step (model.forward/backward loops, the flat-buffer check), and fit's own loop
(everything between two training steps: the batch's rows from the shuffled order, augmentation,
the device-side loss/accuracy sums, progress and callbacks).

Overhead table: fit's own per-step overhead (everything in a fit step except ``_train_step``,
i.e. forward, loss, backward and update) for the batch-16 recipes of seed 001 (model 8, an MLP,
and model 12, the 16-32-48-64 CNN = "medium"), with their recipes' augmentation, as a share of
the whole step; the issue's bound is 10 %. The medians leave out the steps where the augmentation
warps a block of the next batches at once; the last column (the loop's share of the summed time
of all ``--overhead-steps`` steps) counts them.
"""
import argparse
import os
import statistics
import sys
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEMM_NAMES = ("matmul", "dot")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter  # --clock cpu: the process's CPU time (all threads), steadier on a shared machine


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="big,medium", help="comma list (benchmarks/run.py names)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--overhead-models", default="seed001-m8,seed001-m12",
                   help="zoo models whose batch-16 recipe step is split into fit's loop and the rest")
    p.add_argument("--overhead-batch", type=int, default=16)
    p.add_argument("--overhead-steps", type=int, default=200,
                   help="timed fit steps per overhead model (the recipe's augmentation warps blocks of "
                        "batches now and then: the total-time column counts them, the medians do not)")
    p.add_argument("--overhead-samples", type=int, default=60000,
                   help="size of the overhead models' training set (random images; 60,000 as MNIST's, "
                        "so that fit's blocks and shuffles come as often as in the recipe's run; the "
                        "tables before 2026-12-01 18:45 used 8 batches)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=20,
                   help="untimed steps first (SplitCheck times each site both ways in a step's first "
                        "passes, as in benchmarks/run.py)")
    p.add_argument("--threads", type=int, default=None,
                   help="xpnet's CPU threads (its pool; NumPy's BLAS runs on one; default: all cores)")
    p.add_argument("--overhead-only", action="store_true", help="skip the per-layer table")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall time (default) or the process's CPU time (steadier under load)")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.overhead_models = [m for m in args.overhead_models.split(",") if m]
    if args.repeats < 1 or args.warmup < 1 or args.batch_size < 1 or args.overhead_batch < 1 \
            or args.overhead_steps < 1 or args.overhead_samples < args.overhead_batch:
        p.error("--repeats, --warmup, --overhead-steps and the batch sizes must be >= 1, "
                "and --overhead-samples at least one batch")
    return args


# -- the machine's SGEMM peak ------------------------------------------------------------------------
def sgemm_peak(np, sizes=(1024, 2048, 3072), tries=3):
    """Best GFLOP/s of float32 square matmuls (NumPy's BLAS at the process's thread count)."""
    best = 0.0
    for n in sizes:
        a = np.ones((n, n), np.float32)
        b = np.ones((n, n), np.float32)
        a @ b
        for _ in range(tries):
            t0 = clock()
            a @ b
            best = max(best, 2 * n ** 3 / (clock() - t0) / 1e9)
    return best


# -- GEMMs per layer, from the strict backend's trace -------------------------------------------------
def _gemm_shapes(sig):
    """(a shape, b shape, dtype) of a traced matmul/dot call, or None."""
    arrays = []

    def walk(v):
        if isinstance(v, tuple) and len(v) == 3 and v[0] == "array":
            arrays.append(v)
        elif isinstance(v, tuple):
            for x in v:
                walk(x)
    walk(sig)
    if len(arrays) < 2:
        return None
    return tuple(arrays[0][1]), tuple(arrays[1][1]), arrays[0][2]


def gemm_flops(a, b):
    """2 * multiply-adds of matmul(a, b) (batch dims broadcast; 1-D operands as in NumPy)."""
    import numpy as np
    a2 = a if len(a) > 1 else (1,) + a
    b2 = b if len(b) > 1 else b + (1,)
    batch = np.broadcast_shapes(a2[:-2], b2[:-2])
    return 2 * int(np.prod(batch, dtype=np.int64)) * a2[-2] * a2[-1] * b2[-1]


def trace_gemms(build, batch):
    """{layer name or phase: [(a shape, b shape, dtype, in a piece), ...]} of one fit step on the
    strict backend, made to take the CPU backend's code paths (``few_launches`` off: blocks, chunks
    and Gauss's three products as the NumPy backend runs them, not the GPU's whole GEMMs). "In a
    piece": the GEMM ran inside ``backend.split`` (a piece of a pass that the NumPy backend spreads
    over its threads, each GEMM on one thread)."""
    import numpy as np
    from xpnet.backends import strict_backend as sb
    model = build("strict")
    backend = model.backend
    marks = []
    found = defaultdict(list)
    _instrument(model, lambda key: marks.append(key), lambda key: marks.pop())
    pieces = []
    base_split = type(backend).split

    def split(self, part, length, size, shape=None):
        pieces.append(True)
        try:
            base_split(self, part, length, size, shape)
        finally:
            pieces.pop()
    backend.few_launches = False   # this instance only (get_backend's shared one: removed below)
    backend.split = split.__get__(backend)
    x = np.random.default_rng(0).integers(0, 256, (batch,) + tuple(model.input_shape), dtype=np.uint8)
    y = np.random.default_rng(1).integers(0, 10, batch)

    original = sb._record

    def record(name, *args):
        if name in GEMM_NAMES:
            shapes = _gemm_shapes(sb._signature(args))
            if shapes is not None:
                found[marks[-1] if marks else "fit loop"].append(shapes + (bool(pieces),))
    try:
        # one warm-up fit (caches, DFT matrices), then one traced step
        model.fit(x, y, epochs=1, batch_size=batch, steps_per_epoch=1, verbose=0)
        sb._record, sb.TRACE = record, []  # _call records only while a TRACE list exists
        model.fit(x, y, epochs=1, batch_size=batch, steps_per_epoch=1, verbose=0)
    finally:
        sb._record, sb.TRACE = original, None
        del backend.few_launches, backend.split
    return found


def replay_ms(np, shapes, cache, tries=5):
    """Median ms of one matmul with operands of these shapes (contiguous), cached per shape, run as
    the CPU backend runs it in a step: one made inside a pass's piece with numpy.matmul on one
    thread, its time divided by the pool's thread count (the pieces run side by side); the others
    with stacked products split over the pool, 2-D ones by gemm.wide_matmul (column pieces on the
    pool). NumPy's BLAS itself is on one thread. (Before 2026-12-02 a plain numpy.matmul, on one
    thread whatever --threads said; until 2026-12-02 15:00 the shapes were the strict backend's
    whole GEMMs, not the blocks and chunks the CPU runs.)"""
    if shapes not in cache:
        from xpnet.backends import get_backend
        from xpnet.ops.gemm import wide_matmul
        backend = get_backend("cpu")
        a_shape, b_shape, dtype, in_piece = shapes
        a = np.ones(a_shape, np.dtype(dtype))
        b = np.ones(b_shape, np.dtype(dtype))
        if in_piece:
            run = lambda: np.matmul(a, b)   # noqa: E731
        elif len(a_shape) == len(b_shape) == 2:
            run = lambda: wide_matmul(np, a, b)   # noqa: E731
        else:
            run = lambda: backend.matmul(a, b)   # noqa: E731
        run()
        ts = []
        for _ in range(tries):
            t0 = clock()
            run()
            ts.append(clock() - t0)
        cache[shapes] = statistics.median(ts) * 1e3 / (backend.threads if in_piece else 1)
    return cache[shapes]


# -- timing a real fit step ---------------------------------------------------------------------------
def _instrument(model, enter, leave, layers=True):
    """Compile the model (Adam 1e-3, cross-entropy, accuracy) and call enter(key)/leave(key) around
    the whole training step and, with ``layers``, every layer's forward/backward, the loss and the
    update (about 1 us each: the overhead table leaves them out, they would lengthen the
    training step it divides by)."""
    from xpnet.optim import Adam
    model.compile(loss="cross_entropy", optimizer=Adam(lr=1e-3), metrics=("accuracy",))

    def wrap(obj, attr, key):
        fn = getattr(obj, attr)

        def timed(*a, **k):
            enter(key)
            try:
                return fn(*a, **k)
            finally:
                leave(key)
        setattr(obj, attr, timed)

    if layers:
        for layer in model.layers:
            wrap(layer, "forward", layer.name)
            wrap(layer, "backward", layer.name)
            if hasattr(layer, "forward_pooled"):   # with the pooling after it (route "columns+pool")
                wrap(layer, "forward_pooled", layer.name)
        wrap(model.loss, "forward", "loss")
        wrap(model.loss, "backward", "loss")
        wrap(model.optimizer, "step", "update")
    wrap(model, "_train_step", "train_step")


class _Timed:
    """The augmenter, timed as "augment": its call, and its ``fit_batch`` where it has one (fit then
    hands it the batch's rows and it gathers them itself, so that time counts as augmentation)."""

    def __init__(self, aug, enter, leave):
        self.aug, self.enter, self.leave = aug, enter, leave
        if hasattr(aug, "fit_batch"):
            self.fit_batch = lambda *args: self._timed(aug.fit_batch, *args)

    def _timed(self, fn, *args):
        self.enter("augment")
        try:
            return fn(*args)
        finally:
            self.leave("augment")

    def __call__(self, xb, rng):
        return self._timed(self.aug, xb, rng)


def time_fit_steps(build, batch, repeats, warmup, augment=None, samples=None, layers=True):
    """Per-step seconds of each part of a real fit() on the NumPy backend: list of dicts with
    keys layer names, "loss", "update" (with ``layers``), "train_step", "augment", "step".
    ``samples``: the training set's size (default 8 batches)."""
    import numpy as np
    import xpnet
    model = build("numpy")
    acc = defaultdict(float)
    started = {}

    def enter(key):
        started[key] = clock()

    def leave(key):
        acc[key] += clock() - started.pop(key)
    _instrument(model, enter, leave, layers)
    if augment is not None:
        augment = _Timed(augment, enter, leave)
    steps = []

    class Clock(xpnet.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.t0 = clock()

        def on_batch_end(self, b, logs=None):
            t1 = clock()
            if b >= warmup:
                steps.append(dict(acc, step=t1 - self.t0))
            acc.clear()
            self.t0 = clock()

    n = samples or batch * 8
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n,) + tuple(model.input_shape), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    model.fit(x, y, epochs=1, batch_size=batch, steps_per_epoch=warmup + repeats, verbose=0,
              callbacks=[Clock()], augment=augment)
    return model, steps


def median_of(steps, key):
    return statistics.median(s.get(key, 0.0) for s in steps)


# -- the two tables -----------------------------------------------------------------------------------
def layer_table(name, args, np, xpnet, run, peak):
    from xpnet.ops import chooser
    from xpnet.ops.geometry import out_size, padded_hw

    def build(device):
        return run.build_xpnet(xpnet, name, device, "float32", 0)
    model, steps = time_fit_steps(build, args.batch_size, args.repeats, args.warmup)
    gemms = trace_gemms(build, args.batch_size)
    cache = {}
    rows, totals = [], defaultdict(float)
    n = args.batch_size
    for i, layer in enumerate(model.layers):
        kind = type(layer).__name__
        ms = median_of(steps, layer.name) * 1e3
        route, nominal = "", 0
        if kind == "Conv2D":
            shape = (n,) + tuple(layer.input_shape)
            route = chooser.choose(shape, tuple(layer.params["W"].shape), layer.strides, layer.pads)
            ran = layer.cache.get("method") if isinstance(getattr(layer, "cache", None), dict) else None
            route = ran or route   # "columns+pool": this layer's time holds the pooling's (and ReLU's)
            f, c, kh, kw = layer.params["W"].shape
            hp, wp = padded_hw(layer.input_shape[1:], layer.pads)
            ho, wo = out_size(hp, kh, layer.strides[0]), out_size(wp, kw, layer.strides[1])
            nominal = chooser.direct_flops(n, c, f, kh, kw, ho, wo) * (2 if i == 0 else 3) // 3
        elif kind == "Dense":
            route = "gemm"
            nominal = 2 * n * layer.params["W"].size * (2 if i == 0 else 3)
        g = gemms.get(layer.name, [])
        flops = sum(gemm_flops(a, b) for a, b, *_ in g)
        gemm_ms = sum(replay_ms(np, s, cache) for s in g)
        rows.append((f"{layer.name} ({kind})", route, nominal, flops, ms, gemm_ms))
    for key, label in (("loss", "loss (softmax cross-entropy)"), ("update", "Adam update (flat buffer)")):
        g = gemms.get(key, [])
        rows.append((label, "", 0, sum(gemm_flops(a, b) for a, b, *_ in g), median_of(steps, key) * 1e3,
                     sum(replay_ms(np, s, cache) for s in g)))
    inner = [sum(s.get(l.name, 0.0) for l in model.layers) + s.get("loss", 0.0) + s.get("update", 0.0)
             for s in steps]
    glue = statistics.median(s["train_step"] - v for s, v in zip(steps, inner)) * 1e3
    loop = statistics.median(s["step"] - s["train_step"] for s in steps) * 1e3
    step = median_of(steps, "step") * 1e3
    rows.append(("glue in the training step (model loops, flat-buffer check)", "", 0, 0, glue, 0.0))
    rows.append(("fit's own loop (rows of the order, loss/accuracy sums, callbacks)", "", 0, 0, loop, 0.0))
    lines = [f"### {name}, batch {n}",
             "",
             f"Whole fit step (median of {len(steps)}): **{step:.1f} ms**; SGEMM peak {peak:.0f} GFLOP/s.",
             "",
             "| part | route | nominal GFLOP | executed GFLOP | ms | GEMM ms | GEMM GFLOP/s | % of peak | other ms |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, route, nominal, flops, ms, gemm_ms in rows:
        rate = flops / gemm_ms / 1e6 if gemm_ms else 0.0
        totals["nominal"] += nominal
        totals["flops"] += flops
        totals["ms"] += ms
        totals["gemm"] += gemm_ms
        lines.append(f"| {label} | {route} | {nominal / 1e9:.3f} | {flops / 1e9:.3f} | {ms:.1f} | "
                     f"{gemm_ms:.1f} | {rate:.0f} | {100 * rate / peak:.0f} | {max(ms - gemm_ms, 0.0):.1f} |"
                     if flops else
                     f"| {label} | {route} | | | {ms:.1f} | | | | {ms:.1f} |")
    rate = totals["flops"] / totals["gemm"] / 1e6 if totals["gemm"] else 0.0
    lines.append(f"| **sum** | | {totals['nominal'] / 1e9:.2f} | {totals['flops'] / 1e9:.2f} | "
                 f"{totals['ms']:.1f} | {totals['gemm']:.1f} | {rate:.0f} | {100 * rate / peak:.0f} | "
                 f"{totals['ms'] - totals['gemm']:.1f} |")
    lines.append("")
    lines.append(f"Outside the GEMMs: {totals['ms'] - totals['gemm']:.1f} ms of {step:.1f} ms "
                 f"({100 * (totals['ms'] - totals['gemm']) / step:.0f} %); the parts sum to "
                 f"{totals['ms']:.1f} ms (the rest is timer overhead and noise).")
    return "\n".join(lines), rows


def overhead_table(args, xpnet):
    from xpnet.augment import from_config
    lines = [f"### fit's own overhead per step, batch {args.overhead_batch}",
             "",
             f"{args.overhead_steps} steps on a training set of {args.overhead_samples:,} random images.",
             "",
             "| model | augmentation | step ms | train step ms | fit's loop ms | of which augmentation ms "
             "| overhead % | without augmentation % | overhead % of the total time |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    results = []
    for name in args.overhead_models:
        spec = xpnet.models.get(name)
        aug_cfg = spec.recipe.get("augment")
        augment = from_config(aug_cfg) if aug_cfg else None

        def build(device):
            return spec.build(device=device, seed=0, dtype="float32")
        _, steps = time_fit_steps(build, args.overhead_batch, args.overhead_steps, args.warmup, augment,
                                  args.overhead_samples, layers=False)
        step = median_of(steps, "step") * 1e3
        train = median_of(steps, "train_step") * 1e3
        loop = statistics.median(s["step"] - s["train_step"] for s in steps) * 1e3
        aug = median_of(steps, "augment") * 1e3
        pct = 100 * loop / step
        bare = 100 * (loop - aug) / (step - aug)
        total = 100 * sum(s["step"] - s["train_step"] for s in steps) / sum(s["step"] for s in steps)
        desc = "none" if not aug_cfg else f"{aug_cfg['type']} p={aug_cfg.get('probability', 1.0)}"
        lines.append(f"| {name} | {desc} | {step:.2f} | {train:.2f} | {loop:.2f} | {aug:.2f} | "
                     f"{pct:.1f} | {bare:.1f} | {total:.1f} |")
        results.append({"model": name, "step_ms": step, "train_step_ms": train, "loop_ms": loop,
                        "augment_ms": aug, "overhead_percent": pct, "overhead_percent_of_total": total,
                        "steps": len(steps), "samples": args.overhead_samples})
    return "\n".join(lines), results


def main(argv=None):
    global clock
    args = parse_args(argv)
    clock = CLOCKS[args.clock]
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import run  # the benchmark's models and thread settings
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    run.set_threads_env(args.threads)
    import numpy as np
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)
    except ImportError:
        pass
    import xpnet
    print(f"clock {args.clock}, threads {args.threads}, load average {os.getloadavg()[0]:.2f}, numpy {np.__version__}", flush=True)
    out = []
    if not args.overhead_only:
        peak = sgemm_peak(np)
        print(f"SGEMM peak (NumPy float32 matmul, {args.threads} threads): {peak:.0f} GFLOP/s", flush=True)
        for name in args.models:
            out.append(layer_table(name, args, np, xpnet, run, peak)[0])
            print(out[-1] + "\n", flush=True)
    text, results = overhead_table(args, xpnet)
    print(text, flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return out, results


if __name__ == "__main__":
    main()
