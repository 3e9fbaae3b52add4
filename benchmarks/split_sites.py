"""The pool's passes in one fit() step and the SplitCheck sites they fall in.

    python benchmarks/split_sites.py --model big --batch-size 128

Runs two training steps of the model on two threads (the first untimed) and lists every pass of
the second that is large enough for the pool (backends/numpy_kernels.py ``_run``): its piece
function, size (elements, or multiply-adds for a GEMM) and the shape its caller gives (a GEMM's
operand shapes), in step order. SplitCheck (backends/cpu_threads.py) compares a site's split
passes with its alone passes per unit of work, so a site should hold passes of one speed. The
listing groups the passes both ways: by today's site (function, size, shape) and by the site key
before 2026-12-03 (function, size rounded to a power of 2), and shows the old sites that held
passes of different sizes or shapes: their probe, alternating split and alone, could time one
layer's passes split and another's alone.
"""
import argparse
import collections
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="big", help="a benchmarks/run.py model name")
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    return args


def step_passes(model_name, batch_size):
    """[(site, size, shape)] of the pool-sized passes of one 2-thread fit step, in order."""
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import numpy as np
    import run
    import threads
    import xpnet
    from xpnet.backends import numpy_kernels as nk
    model = run.build_xpnet(xpnet, model_name, "cpu", "float32", 0)
    backend = model.backend
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.random((batch_size,) + tuple(model.input_shape)).astype("float32"))
    y = backend.asarray(rng.integers(0, 10, batch_size))
    step = threads.fit_step(model, x, y)
    kept_threads, kept_run = backend._kernels.threads, nk.ElementwiseKernels._run
    seen = []

    def _run(kernels, part, length, size, key_size=None, shape=None):
        if kernels.threads > 1 and size >= nk.MIN_ELEMENTS and length >= 2:
            code = part.__code__
            seen.append((f"{os.path.basename(code.co_filename)}:{code.co_firstlineno} {code.co_qualname}",
                         int(key_size or size), shape))
        return kept_run(kernels, part, length, size, key_size, shape)

    backend.set_threads(2)
    nk.ElementwiseKernels._run = _run
    try:
        step()
        seen.clear()
        step()
    finally:
        nk.ElementwiseKernels._run = kept_run
        backend.set_threads(kept_threads)
    return seen


def report(passes):
    """The listing as lines of text."""
    old = collections.defaultdict(list)
    for site, size, shape in passes:
        old[(site, size.bit_length())].append((size, shape))
    lines = [f"{len(passes)} passes in the step; {len(set(passes))} sites (function, size, shape); "
             f"{len(old)} sites by function and size to a power of 2 (the key before 2026-12-03)"]
    mixed = [(key, p) for key, p in old.items() if len(set(p)) > 1]
    for (site, bits), members in mixed:
        lines.append(f"old site {site}, size < 2**{bits}: {len(members)} passes a step, in step order:")
        lines += [f"    size {size:>11,d}  shapes {shape}" for size, shape in members]
    lines.append(f"{len(mixed)} of {len(old)} old sites held passes of more than one (size, shape)")
    return lines


def main(argv=None):
    args = parse_args(argv)
    lines = report(step_passes(args.model, args.batch_size))
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
