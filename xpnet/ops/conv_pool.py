"""A columns-route convolution and the max pooling after it, in one pass over bands of images
(the CPU only; ``ops.fast``).

Unlinked, the convolution writes its whole output (11 MB for 32 filters of 26x26 at batch 128),
the pooling reads it back, and in backward the pooling writes the whole input gradient for the
convolution to read back. Here the batch is cut into bands of blocks (``_band_blocks``: about
pooling.CHUNK_BYTES of output each, one piece of the backend's split each); a band is convolved
into a buffer group by group (the groups of blocks the columns route handles in one go) and
pooled there; only the pooled output and each window's winning offset (pooling.Winners) are
kept. Backward scatters the band's pooled gradient into a buffer and takes the columns route's
products of it there, group by group. The full-size output and its gradient never exist.

The same operations on the same values as the two layers apart: each block's GEMM, the bias, the
fold over window offsets (``pooling._fold``: ties to the first maximum, NaN wins), the ReLU after
the pooling (``model._link_relu_pool``), the scatter (``pooling._scatter``: 0 * dy elsewhere), the
blocks' weight gradients summed over the blocks in order, and db summed per image plane and then
over the images, the order of NumPy's ``dy.sum(axis=(0, 2, 3))``. So the same bits, on any number
of threads (tests/test_conv_pool_fused.py). For 2x2 windows the fold (with the bias of one-image
blocks) and the scatter are one compiled pass each where the backend has them
(backends/compiled.py, the same bits). Only where launches are cheap (not
``backend.few_launches``): a GPU runs the two layers' kernels.
"""
from ..backends import backend_of
from . import columns, pooling
from .pooling import Winners, _fold_windows, _unpool

# 0 runs the layers apart everywhere (the same bits, only slower): for benchmarks/ab_setting.py's
# in-process comparison and for telling the two paths apart when debugging
ENABLED = 1

# Bytes of a band's columns up to which a band is one group: its im2col in one call over all its
# images, then its blocks' GEMMs, instead of columns.GROUP_BYTES (512 KiB) at a time. A group's
# im2col is about ten NumPy copies whatever its size, so LeNet-5's groups of 6 images made 220
# short calls a forward pass, which two threads ran slower than one (the im2col of 128 images: 1.5
# ms alone in groups of 6, 2.0 ms on two threads at once; 0.85 and 0.58 ms in one call per 64
# images). Whole bands took 0.89x (LeNet-5 at 128) and 0.91x (at 64) the step on two threads, 0.94x
# and 0.96x on one; LeNet-5 at 16 and the 3x3 CNN 0.97-1.02x (its groups held 21 images already;
# benchmarks/results/2026-12-03-s22-whole-bands-ab.log). The columns
# are then read back from L3 rather than L2 by the GEMMs: a bound keeps bands of wide columns (many
# channels, large kernels) in groups. 0 turns it off. Results do not depend on it (bits).
BAND_COLUMN_BYTES = 8 << 20


def applies(x, W, pool, backend):
    """Whether the fused pass takes x (N, C, H, W) and W (F, C, kh, kw) into a ``pool`` (ph, pw)
    pooling whose windows tile the output (stride == pool, no padding): where launches are cheap
    (a GPU runs the layers' own kernels) and the window has at most 256 offsets (a uint8 index).
    What the pass saves is the output's trip through memory, so it gains most with many filters:
    the 3x3 CNN's first layer (32 filters on 9 column rows) 0.71-0.87x the time of the two layers
    apart at batch 64 and 128, 16 and 32 filters of 5x5 0.87-0.98x, LeNet-5's 6 filters of 5x5
    0.90-0.98x alone and its whole step 0.95-1.02x (benchmarks/results/2026-12-01-s11-conv-pool-fused.log)."""
    ph, pw = pool
    return bool(ENABLED) and not backend.few_launches and ph * pw <= 256


def _pooled_hw(g, pool):
    return g.ho // pool[0], g.wo // pool[1]


def _band_blocks(count, size, g, itemsize, threads):
    """Blocks per band: the unit a thread takes, convolved and pooled in turn. About
    pooling.CHUNK_BYTES of output each, so that the pooling's passes are as long as when it runs on
    its own, and as many bands as a multiple of the thread count (each band is one piece of the
    pool's split, one NumPy call per pass: the more pieces, the shorter the calls and the more
    often two threads wait for each other's GIL; on a VM such a wait costs 20-80 us); one thread's
    layout while the pool is loaded (``Backend.split_threads``; beside a busy process the
    two-thread bands made the 3x3 CNN's step about 1 % slower with nothing split). Results do not
    depend on the bands: every pass is per image or per block."""
    total = count * size * g.f * g.p * itemsize
    bands = max(1, -(-total // pooling.CHUNK_BYTES))
    if threads > 1 and count >= threads:
        bands = -(-bands // threads) * threads
    return -(-count // min(bands, count))


def _layout(g, m, itemsize, backend):
    """(blocks, images per block, blocks per group, blocks per band) for a batch chunk of m images:
    a group is the whole band where its columns fit in BAND_COLUMN_BYTES."""
    count, size = g.blocks(m)
    per_band = _band_blocks(count, size, g, itemsize, backend.split_threads())
    group = g.group(size, itemsize)
    if per_band * size * g.k * g.p * itemsize <= BAND_COLUMN_BYTES:
        group = max(group, per_band)
    return count, size, group, per_band


def _bands(count, size, m, group, per_band, r):
    """(first image, end image, groups) of the bands r of ``per_band`` blocks: each band's groups
    as columns._groups gives them (group blocks at a time)."""
    for q0 in range(0, count, per_band)[r]:
        q1 = min(q0 + per_band, count)
        yield q0 * size, min(q1 * size, m), list(columns._groups(count, size, m, group, slice(q0, q1)))


def forward(xp, x, W, b, stride, padding, pool, relu):
    """(y, kept): y (N, F, Ho // ph, Wo // pw) the max pooling of the convolution of x (plus b),
    then its ReLU when ``relu``; kept: what ``backward`` needs (the inputs, the weights, the
    columns when one batch chunk held them, the winners, the ReLU's mask)."""
    g = columns.Shape(x.shape, W.shape, stride, padding)
    (ph, pw), (hq, wq) = pool, _pooled_hw(g, pool)
    wm = W.reshape(g.f, g.k)
    bias = None if b is None else b.astype(x.dtype).reshape(g.f, 1)
    backend = backend_of(x)
    y = xp.empty((g.n * g.f, hq, wq), dtype=x.dtype)
    index = xp.empty((g.n * g.f, hq, wq), dtype=xp.uint8)
    step = g.chunk(x)
    for s in range(0, g.n, step):
        part = x[s:s + step]
        m = part.shape[0]
        count, size, group, per_band = _layout(g, m, x.itemsize, backend)
        cols = columns._column_buffer(xp, g, count, size, x.dtype)
        # blocks of one image get their bias in the fold's pass (the GEMM writes their output in
        # place, so it would be a pass of its own); larger blocks add it in their layout copy
        late = bias if size == 1 else None

        def run(r, part=part, cols=cols, s=s, m=m, count=count, size=size, group=group, per_band=per_band,
                late=late):
            out, kept = None, {}
            for a, z, groups in _bands(count, size, m, group, per_band, r):
                if out is None or out.shape[0] != z - a:
                    out = xp.empty((z - a, g.f, g.p), dtype=x.dtype)
                for q, end, ga, gz in groups:
                    columns._forward_blocks(xp, part[ga:gz], cols[q:end], wm, None if late is not None else bias,
                                            out[ga - a:gz - a], g)
                planes = out.reshape((z - a) * g.f, g.ho, g.wo)
                t = slice((s + a) * g.f, (s + z) * g.f)
                _fold_windows(xp, backend, y[t], index[t], planes, pool, kept, late)

        backend.split(run, -(-count // per_band), m * g.p * (g.k + g.f))
    kept = {"inputs": x, "weights": W, "columns": cols if step >= g.n else None,
            "winners": Winners(index.reshape(g.n, g.f, hq, wq), (g.n, g.f, g.ho, g.wo), (ph, pw)),
            "relu_mask": None}
    y = y.reshape(g.n, g.f, hq, wq)
    if relu:
        y, kept["relu_mask"] = backend.relu_forward(y)
    return y, kept


def backward(xp, dy, cache, need_dx):
    """(dx or None, dW, db or None) for the pooled (and ReLU'd) output's gradient dy."""
    x, W, winners = cache["inputs"], cache["weights"], cache["winners"]
    g = columns.Shape(x.shape, W.shape, cache["stride"], cache["padding"])
    (ph, pw), (hq, wq) = winners.pool, _pooled_hw(g, winners.pool)
    backend = backend_of(dy)
    if cache["relu_mask"] is not None:   # the ReLU's gradient first, on the pooled cells
        dy = backend.multiply(dy, cache["relu_mask"])
    dys = dy.reshape(g.n * g.f, hq, wq)
    index = winners.index.reshape(g.n * g.f, hq, wq)
    wt = W.reshape(g.f, g.k).T
    dx = xp.empty((g.n, g.c, g.h, g.w), dtype=dy.dtype) if need_dx else None
    wide = xp.result_type(dy.dtype, xp.float32)   # each image plane's sum for db (see _image_sum)
    planes_sum = xp.empty((g.n, g.f), dtype=wide) if cache["has_bias"] else None
    step = g.chunk(dy)
    total = None
    for s in range(0, g.n, step):
        part = x[s:s + step]
        m = part.shape[0]
        count, size, group, per_band = _layout(g, m, dy.itemsize, backend)
        cols = cache["columns"] if step >= g.n and cache["columns"] is not None else None
        fresh = cols is None
        if fresh:
            cols = columns._column_buffer(xp, g, count, size, dy.dtype)
        per_block = xp.empty((count, g.f, g.k), dtype=xp.result_type(dy.dtype, xp.float32))

        def run(r, part=part, cols=cols, fresh=fresh, per_block=per_block, s=s, m=m, count=count,
                size=size, group=group, per_band=per_band):
            grads, kept = None, {}
            for a, z, groups in _bands(count, size, m, group, per_band, r):
                if grads is None or grads.shape[0] != (z - a) * g.f:
                    grads = xp.empty(((z - a) * g.f, g.ho, g.wo), dtype=dy.dtype)
                t = slice((s + a) * g.f, (s + z) * g.f)
                _unpool(xp, backend, index[t], dys[t], grads, (ph, pw), kept)
                band = grads.reshape(z - a, g.f, g.p)
                if planes_sum is not None:
                    band.sum(axis=2, dtype=planes_sum.dtype, out=planes_sum[s + a:s + z])
                for q, end, ga, gz in groups:
                    columns._backward_blocks(xp, part[ga:gz], band[ga - a:gz - a], cols[q:end], fresh, wt,
                                             per_block[q:end], None if dx is None else dx[s + ga:s + gz], g,
                                             False)

        backend.split(run, -(-count // per_band), m * g.p * (g.k + 2 * g.f))
        summed = per_block.sum(axis=0)       # one call over the blocks in order, as columns.backward
        total = summed if total is None else total + summed
    db = None if planes_sum is None else _image_sum(planes_sum, dy.dtype)
    return dx, total.astype(dy.dtype).reshape(g.f, g.c, g.kh, g.kw), db


def _image_sum(planes_sum, dtype):
    """db (F,) from the planes' sums (N, F), the images added in order as NumPy's
    dy.sum(axis=(0, 2, 3)) adds them. NumPy sums a float16 plane in float32 and rounds the total to
    float16 after each plane, so float16's planes come in float32 and each is added to the float16
    total on its own (summing rounded float16 plane sums gave other bits in 24 of 35 random cases)."""
    if planes_sum.dtype == dtype:
        return planes_sum.sum(axis=0)
    db = planes_sum[0].astype(dtype)
    for row in planes_sum[1:]:
        db = (db.astype(planes_sum.dtype) + row).astype(dtype)
    return db
