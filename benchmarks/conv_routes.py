"""Spectral against columns, shape by shape, and the range of chooser.KERNEL_PASS_FLOPS that
picks the faster route for every decisive shape.

    python benchmarks/conv_routes.py                    # batch 16, 64, 128; one BLAS thread
    python benchmarks/conv_routes.py --batch-size 16 --repeats 3

Each shape runs forward + backward by both routes, alternating, ``--repeats`` times after one
warm-up; the figure is the smallest CPU time of the process (``time.process_time``), which a
shared machine's load disturbs far less than wall time (the routes' relative cost is what the
chooser needs). A shape whose routes are within 15 % of each other is a tie and constrains
nothing (on the shared machine the same shape's ratio moved by up to ~0.15 between runs). For the others the chooser picks spectral iff SPECTRAL_ADVANTAGE * (spectral FLOPs +
KERNEL_PASS_FLOPS * kernel-matrix elements) < direct FLOPs, which bounds KERNEL_PASS_FLOPS from
one side; the script prints the bounds' intersection.
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V, S1, S2 = (0, 0, 0, 0), (1, 1, 1, 1), (2, 2, 2, 2)
# (C, H, W), (F, C, kh, kw), padding: 3x3 CNNs (MNIST and CIFAR sizes), 5x5 (the seed models, LeNet)
SHAPES = [((32, 13, 13), (64, 32, 3, 3), V), ((32, 26, 26), (64, 32, 3, 3), V), ((64, 11, 11), (64, 64, 3, 3), V),
          ((32, 14, 14), (64, 32, 3, 3), S1), ((64, 7, 7), (128, 64, 3, 3), S1), ((3, 32, 32), (32, 3, 3, 3), S1),
          ((32, 16, 16), (64, 32, 3, 3), S1), ((64, 8, 8), (128, 64, 3, 3), S1), ((16, 28, 28), (32, 16, 3, 3), S1),
          ((6, 14, 14), (16, 6, 5, 5), V), ((8, 14, 14), (16, 8, 5, 5), S2), ((16, 28, 28), (32, 16, 5, 5), S2),
          ((32, 14, 14), (48, 32, 5, 5), S2), ((64, 14, 14), (96, 64, 5, 5), S2)]


def time_routes(np, fast, x_shape, w_shape, padding, repeats):
    rng = np.random.default_rng(0)
    x = rng.random(x_shape, dtype=np.float32)
    W = rng.random(w_shape, dtype=np.float32)
    b = np.zeros(w_shape[0], np.float32)
    best = {"spectral": float("inf"), "columns": float("inf")}
    for r in range(repeats + 1):
        for method in best:
            t0 = time.process_time()
            y, cache = fast.conv2d_forward(np, x, W, b, (1, 1), padding, method=method)
            fast.conv2d_backward(np, np.ones_like(y), cache, True)
            if r:
                best[method] = min(best[method], time.process_time() - t0)
    return best["spectral"], best["columns"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", default="16,64,128")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    sys.path.insert(0, ROOT)
    import numpy as np
    from xpnet.ops import chooser, fast
    from xpnet.ops.geometry import out_size, padded_hw, spectral_frame
    from xpnet.ops.spectral import three_multiply
    lo, hi = 0.0, float("inf")
    print("| batch | input | kernel | pad | chosen | spectral ms | columns ms | spectral/columns | bound |")
    print("|---:|---|---|---:|---|---:|---:|---:|---|")
    for n in [int(b) for b in args.batch_size.split(",")]:
        for (c, h, w), w_shape, padding in SHAPES:
            f, _, kh, kw = w_shape
            s, col = time_routes(np, fast, (n, c, h, w), w_shape, padding, args.repeats)
            hp, wp = padded_hw((h, w), padding)
            ho, wo = out_size(hp, kh, 1), out_size(wp, kw, 1)
            fh, fw = spectral_frame((h, w), (kh, kw), (1, 1), padding)   # the spectral route's frame
            direct = chooser.direct_flops(n, c, f, kh, kw, ho, wo)
            spectral = chooser.spectral_flops(n, c, f, h, w, ho, wo, fh, fw, gauss=three_multiply(n, 4))
            per_unit = chooser.kernel_side(c, f, fh, fw) / chooser.KERNEL_PASS_FLOPS
            threshold = (direct / chooser.SPECTRAL_ADVANTAGE - spectral) / per_unit
            ratio = s / col
            bound = ""
            if ratio < 0.85:
                hi, bound = min(hi, threshold), f"< {threshold:.0f}"
            elif ratio > 1.15:
                lo, bound = max(lo, threshold), f"> {threshold:.0f}"
            chosen = chooser.choose((n, c, h, w), w_shape, (1, 1), padding)
            print(f"| {n} | {c}x{h}x{w} | {f}@{kh}x{kw} | {padding[0]} | {chosen} | {s * 1e3:.1f} | "
                  f"{col * 1e3:.1f} | {ratio:.2f} | {bound} |", flush=True)
    print(f"\nKERNEL_PASS_FLOPS that picks the faster route for every decisive shape: {lo:.0f} .. {hi:.0f} "
          f"(now {chooser.KERNEL_PASS_FLOPS}); load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
