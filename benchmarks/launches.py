"""Array operations (kernel launches on a GPU) per training step, counted on the strict backend.

    python benchmarks/launches.py --models seed001-tf --batch-sizes 16,64 --out benchmarks/results/

On a GPU a small CNN is limited by launches, not FLOPs: each array operation is a kernel launch of
5-15 us. The strict backend counts every array operation (see xpnet.backends.strict_backend), so
this figure is measured on the CPU and holds for CuPy, where each counted call is one launch (or
more). One step is what fit() runs per batch: gather the batch, augment it with the recipe's
augmentation, forward, loss, backward, optimizer update. The first step is not counted (it
allocates the optimizer state); the step after it is, with the functions that made the calls.
The JSON result records the machine and versions.
"""
import argparse
import collections
import datetime
import json
import os
import platform
import socket
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def count_step(model_name="seed001-tf", batch_size=16, by_function=False):
    """{"launches": n, "syncs": n, "transfers": n, "by_function": {...}} for one training step."""
    import numpy

    from xpnet import augment as aug_mod
    from xpnet import models
    from xpnet.backends import strict_backend as sb

    spec = models.get(model_name)
    model = spec.build(device="strict", seed=0)
    model.compile(loss=spec.recipe["loss"], optimizer=spec.recipe["optimizer"])
    augment = aug_mod.from_config(spec.recipe["augment"])
    n = 2 * batch_size
    host = numpy.random.default_rng(0)
    x = model.backend.asarray(host.random((n,) + spec.input_shape, dtype=numpy.float32))
    y = model.backend.asarray(host.integers(0, 10, n))
    rngs = model._training_rngs()
    for layer in model._input_grad_free():   # as fit() sets them: no gradient for the input images
        layer.need_input_grad = False
    order = rngs["shuffle"].permutation(n)

    def step(b):
        idx = order[b * batch_size:(b + 1) * batch_size]
        xb, yb = x[idx], y[idx]
        if augment is not None:
            xb = augment(xb, rngs["augment"])
        model._train_step(xb, yb)

    step(0)
    where = collections.Counter()
    counters = sb.LAUNCHES
    if by_function:
        class Tracing(dict):
            def __setitem__(self, key, value):
                for frame in reversed(traceback.extract_stack(limit=12)[:-1]):
                    if "strict_backend" not in frame.filename and "contextlib" not in frame.filename:
                        where[f"{os.path.basename(frame.filename)}:{frame.name}"] += 1
                        break
                dict.__setitem__(self, key, value)
        sb.LAUNCHES = Tracing(counters)
    try:
        before = (sb.LAUNCHES["calls"], sb.COUNTERS["syncs"], sb.COUNTERS["h2d"])
        step(1)
        after = (sb.LAUNCHES["calls"], sb.COUNTERS["syncs"], sb.COUNTERS["h2d"])
    finally:
        if by_function:
            counters["calls"] = sb.LAUNCHES["calls"]
            sb.LAUNCHES = counters
    out = {"launches": after[0] - before[0], "syncs": after[1] - before[1],
           "transfers": after[2] - before[2]}
    if by_function:
        out["by_function"] = dict(where.most_common())
    return out


def machine():
    import numpy
    return {"host": socket.gethostname(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "numpy": numpy.__version__}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="seed001-tf", help="comma list of zoo names")
    p.add_argument("--batch-sizes", default="16,64")
    p.add_argument("--tag", default="", help="suffix for the result file name")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"),
                   help="folder for the JSON result ('' to skip writing)")
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        for bs in [int(b) for b in args.batch_sizes.split(",") if b.strip()]:
            r = count_step(name, bs, by_function=True)
            rows.append({"model": name, "batch_size": bs, **r})
            top = ", ".join(f"{k} {v}" for k, v in list(r["by_function"].items())[:6])
            print(f"{name} batch {bs}: {r['launches']} launches per step, {r['syncs']} syncs, "
                  f"{r['transfers']} transfers (top: {top})")
    result = {"benchmark": "launches per training step (strict backend call counter)",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "results": rows}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        stamp = datetime.date.today().isoformat()
        path = os.path.join(args.out, f"{stamp}-launches{('-' + args.tag) if args.tag else ''}.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
