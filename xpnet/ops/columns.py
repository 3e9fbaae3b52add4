"""The columns (im2col) convolution route of ``ops.fast``.

The images of a batch are cut into blocks of B images (B from the shape: enough output positions
for an efficient GEMM, ``BLOCK_COLUMNS``). A block's columns are a (C*kh*kw, B*Ho*Wo) matrix (one
strided slice per kernel offset), and each product is one GEMM per block:

* forward: W (F, C*kh*kw) times the block's columns, copied into NCHW (written there directly when
  B is 1), the bias added to the block's output while it is in cache. (Folding the bias into the
  GEMM as a row of ones would save that pass, but round differently from the fused bias + ReLU of
  the few-launch backends, and the NumPy and strict backends must give the same bits.)
* dW: dy of the block as (F, B*Ho*Wo) times the columns transposed, one (F, C*kh*kw) product per
  block, then one sum over the blocks in their order.
* dx: W^T dy of the block, added back into the images with one slice per kernel offset (col2im),
  or by whole rows of the padded frame for stride 1 with many channels (``_dx_by_rows``).
* db (ops.fast): dy summed over images and positions, as before.

On the CPU the blocks are what the backend's threads take: im2col, the GEMMs, the layout copies and
col2im of one block run in one go while its arrays are in cache, and nothing has to be transposed
over the whole batch. The blocks depend on the shape only, every product is one block's GEMM on
whichever thread, and the blocks' weight gradients are summed in one call over a fixed array, so
the results have the same bits on any number of threads. A last block with fewer images is
filled with zeros to B, so that every block's GEMM has the same shape. Where launches cost more
(``backend.few_launches``: GPUs, the strict backend) each step is one operation over all blocks
(a gather of the columns, batched GEMMs): the same products and the same sum, so the same bits.

Batch chunks keep the column buffer under ``COLUMN_BYTES``. Used when the spectral route costs
more (few input channels, small kernels, large strides).
"""
from ..backends import backend_of
from .geometry import out_size, pad, padded_hw, window

# Largest im2col buffer (with the blocks' weight gradients) per batch chunk on the CPU: bigger
# chunks gain nothing, smaller ones bound the memory of a large batch. Backward rebuilds the
# columns per chunk unless a single chunk held the whole batch, so a backend with memory to spare
# sets a larger ``column_bytes`` (CuPy: backends/cupy_backend.py).
COLUMN_BYTES = 32 * 2 ** 20

# Output positions (B * Ho * Wo) a block's GEMMs should have at least: the weight gradient's GEMM
# sums over them, and much fewer than this runs at a fraction of the GEMM's speed.
BLOCK_COLUMNS = 512
# Column bytes the CPU handles in one go (a group of blocks: one strided copy per kernel offset,
# one stacked GEMM per product): about a core's L2 cache, and enough images per call that the
# calls' own cost stays small.
GROUP_BYTES = 512 * 2 ** 10
DX_BY_ROWS = True


def _chunk(n, per_image, like):
    limit = getattr(backend_of(like), "column_bytes", None) or COLUMN_BYTES
    return max(1, min(n, limit // max(1, per_image)))


_OFFSETS = {}  # (backend, geometry) -> the flat input position of every (kernel offset, output)


def _offsets(xp, backend, hp, wp, kh, kw, ho, wo, sh, sw):
    """(kh*kw*Ho*Wo,) positions in a flattened (Hp, Wp) frame, made on the device once per shape."""
    key = (backend.name, hp, wp, kh, kw, ho, wo, sh, sw)
    if key not in _OFFSETS:
        i = xp.arange(kh, dtype=xp.int64).reshape(kh, 1, 1, 1)
        j = xp.arange(kw, dtype=xp.int64).reshape(1, kw, 1, 1)
        r = xp.arange(ho, dtype=xp.int64).reshape(1, 1, ho, 1) * sh
        q = xp.arange(wo, dtype=xp.int64).reshape(1, 1, 1, wo) * sw
        _OFFSETS[key] = ((i + r) * wp + (j + q)).reshape(-1)
    return _OFFSETS[key]


class Shape:
    """The sizes of one convolution: k = C*kh*kw column rows, p = Ho*Wo output positions."""

    def __init__(self, x_shape, w_shape, stride, padding):
        self.n, self.c, self.h, self.w = x_shape
        self.f, _, self.kh, self.kw = w_shape
        (self.sh, self.sw), self.padding = tuple(stride), tuple(padding)
        self.hp, self.wp = padded_hw((self.h, self.w), self.padding)
        self.ho, self.wo = out_size(self.hp, self.kh, self.sh), out_size(self.wp, self.kw, self.sw)
        self.k = self.c * self.kh * self.kw
        self.p = self.ho * self.wo

    def image_bytes(self, itemsize):
        """Bytes of one image's columns and (an upper bound of) its share of the blocks' dW."""
        return self.k * (self.p + self.f) * itemsize

    def chunk(self, like):
        """Images per batch chunk."""
        return _chunk(self.n, self.image_bytes(like.itemsize), like)

    def blocks(self, m):
        """(blocks, images per block) for a chunk of m images: as few images per block as give
        BLOCK_COLUMNS output positions, evened out so that the last block is nearly full."""
        want = max(1, min(m, -(-BLOCK_COLUMNS // self.p)))
        count = -(-m // want)
        return count, -(-m // count)

    def group(self, size, itemsize):
        """Blocks of ``size`` images the CPU handles in one go."""
        return max(1, GROUP_BYTES // (self.k * size * self.p * itemsize))


def _fill(xp, part, cols, g, few):
    """cols (blocks, C*kh*kw, B, Ho*Wo) = the columns of the m images ``part`` (m, C, H, W,
    unpadded), B images a block; the last block's images beyond m get zero columns. Strided copies
    on the CPU, one gather by cached offsets where launches cost more (``few``)."""
    count, size = cols.shape[0], cols.shape[2]
    m = part.shape[0]
    xpad = pad(xp, part, g.padding)
    if few:
        idx = _offsets(xp, backend_of(xpad), g.hp, g.wp, g.kh, g.kw, g.ho, g.wo, g.sh, g.sw)
        gathered = xpad.reshape(m, g.c, g.hp * g.wp)[:, :, idx].reshape(m, g.k, g.p)
        if count * size > m:
            gathered = xp.concatenate([gathered, xp.zeros((count * size - m, g.k, g.p), dtype=cols.dtype)])
        cols[...] = gathered.reshape(count, size, g.k, g.p).transpose(0, 2, 1, 3)
        return
    blocks = cols.reshape(count, g.c, g.kh, g.kw, size, g.ho, g.wo)
    full = min(count, m // size)
    if g.sh == 1:
        _fill_by_rows(xp, xpad, blocks, full, g)
        return
    images = xpad[:full * size].reshape(full, size, g.c, g.hp, g.wp)
    rest = xpad[full * size:]
    for i in range(g.kh):
        for j in range(g.kw):
            at = window(i, j, g.ho, g.wo, g.sh, g.sw)
            if full:
                blocks[:full, :, i, j] = images[(slice(None),) + at].transpose(0, 2, 1, 3, 4)
            if full < count:
                blocks[full, :, i, j, :rest.shape[0]] = rest[at].transpose(1, 0, 2, 3)
    if full < count:
        blocks[full, :, :, :, rest.shape[0]:] = 0


def _fill_by_rows(xp, xpad, blocks, full, g):
    """_fill for a stride of 1 along H, in two copies with long runs instead of one with runs of
    Wo per (channel, kernel offset, output row): first the kw column shifts of every input row
    (m, C, kw, Hp, Wo), then for each kernel row i the Ho rows from row i on, which are Ho*Wo
    contiguous values for every (channel, column shift, image)."""
    count, size = blocks.shape[0], blocks.shape[4]
    m = xpad.shape[0]
    shifted = xp.empty((m, g.c, g.kw, g.hp, g.wo), dtype=xpad.dtype)
    for j in range(g.kw):
        shifted[:, :, j] = xpad[:, :, :, j:j + g.sw * (g.wo - 1) + 1:g.sw]
    images = shifted[:full * size].reshape(full, size, g.c, g.kw, g.hp, g.wo).transpose(0, 2, 3, 1, 4, 5)
    rest = shifted[full * size:].transpose(1, 2, 0, 3, 4)
    for i in range(g.kh):
        if full:
            blocks[:full, :, i] = images[..., i:i + g.ho, :]
        if full < count:
            blocks[full, :, i, :, :rest.shape[2]] = rest[..., i:i + g.ho, :]
    if full < count:
        blocks[full, :, :, :, rest.shape[2]:] = 0


def _columns(xp, part, cols, g):
    """Fill ``cols`` with the columns of the images ``part`` (see _fill)."""
    _fill(xp, part, cols, g, backend_of(part).few_launches)


def _column_buffer(xp, g, count, size, dtype):
    return xp.empty((count, g.k, size, g.p), dtype=dtype)


def _groups(count, size, m, group, r):
    """(first block, end block, first image, end image) of the groups of the blocks r."""
    blocks = range(count)[r]
    for q in range(blocks.start, blocks.stop, group):
        end = min(q + group, blocks.stop)
        yield q, end, q * size, min(end * size, m)


def _forward_blocks(xp, part, cols, wm, bias, ys, g):
    """ys (m, F, Ho*Wo) = the outputs of the images ``part`` (plus ``bias`` (F, 1) or None), whose
    blocks' columns cols fills."""
    _columns(xp, part, cols, g)
    count, _, size, _ = cols.shape
    flat = cols.reshape(count, g.k, size * g.p)
    if size == 1:
        xp.matmul(wm, flat, out=ys)
        if bias is not None:
            ys += bias
        return
    out = xp.matmul(wm, flat).reshape(count, g.f, size, g.p)       # (blocks, F, B, P)
    full = ys.shape[0] // size
    parts = []
    if full:
        parts.append((ys[:full * size].reshape(full, size, g.f, g.p), out[:full].transpose(0, 2, 1, 3)))
    if full < count:
        parts.append((ys[full * size:], out[full, :, :ys.shape[0] - full * size].transpose(1, 0, 2)))
    for target, blocks in parts:   # into NCHW, with the bias in the same pass
        if bias is None:
            target[...] = blocks
        else:
            xp.add(blocks, bias, out=target)


def forward(xp, x, W, b, stride, padding):
    """(y, what backward needs: the inputs, the weights, and the columns when one chunk held them)."""
    g = Shape(x.shape, W.shape, stride, padding)
    wm = W.reshape(g.f, g.k)
    bias = None if b is None else b.astype(x.dtype).reshape(g.f, 1)
    backend = backend_of(x)
    step = g.chunk(x)
    y = xp.empty((g.n, g.f, g.ho, g.wo), dtype=x.dtype)
    ys = y.reshape(g.n, g.f, g.p)
    for s in range(0, g.n, step):
        part = x[s:s + step]
        m = part.shape[0]
        count, size = g.blocks(m)
        cols = _column_buffer(xp, g, count, size, x.dtype)
        if backend.few_launches:
            _forward_blocks(xp, part, cols, wm, bias, ys[s:s + m], g)
            continue
        group = g.group(size, x.itemsize)

        def run(r, part=part, cols=cols, s=s, m=m, count=count, size=size, group=group):
            for q, end, a, z in _groups(count, size, m, group, r):
                _forward_blocks(xp, part[a:z], cols[q:end], wm, bias, ys[s + a:s + z], g)

        backend.split(run, count, m * g.p * (g.k + g.f))
    kept = cols if step >= g.n else None   # one chunk: backward reuses its columns
    return y, {"inputs": x, "weights": W, "columns": kept}


def _backward_blocks(xp, part, dyg, cols, fresh, wt, per_block, dx, g, few):
    """per_block (blocks, F, C*kh*kw) = each block's dW for the images ``part`` with output
    gradients dyg (m, F, Ho*Wo), and dx (m, C, H, W) when given; the columns are rebuilt into cols
    when ``fresh``."""
    if fresh:
        _columns(xp, part, cols, g)
    count, _, size, _ = cols.shape
    m = dyg.shape[0]
    if size == 1:
        dyb = dyg
    else:   # each block's dy as (F, B, P), the images beyond m zero
        dyb = xp.empty((count, g.f, size, g.p), dtype=dyg.dtype)
        full = m // size
        if full:
            dyb[:full] = dyg[:full * size].reshape(full, size, g.f, g.p).transpose(0, 2, 1, 3)
        if full < count:
            dyb[full, :, :m - full * size] = dyg[full * size:].transpose(1, 0, 2)
            dyb[full, :, m - full * size:] = 0
        dyb = dyb.reshape(count, g.f, size * g.p)
    flat = cols.reshape(count, g.k, size * g.p)
    grads, columns = dyb, flat
    if per_block.dtype != dyg.dtype:   # half precision: the blocks' dW in float32 (see backward)
        grads, columns = dyb.astype(per_block.dtype), flat.astype(per_block.dtype)
    if few:
        per_block[...] = backend_of(dyg).matmul_t(grads, columns, trans_b=True)
    else:
        xp.matmul(grads, columns.transpose(0, 2, 1), out=per_block)
    if dx is None:
        return
    if DX_BY_ROWS and g.sh == g.sw == 1 and g.k > g.f:
        _dx_by_rows(xp, wt, dyg, count, size, dx, g)
    else:
        _col2im(xp, xp.matmul(wt, dyb).reshape(count, g.k, size, g.p), dx, g)


def _dx_by_rows(xp, wt, dyg, count, size, out, g):
    """out (m, C, H, W) = dx of a stride-1 convolution with many more column rows than filters:
    each block's dy widened to the padded frame's width (zeros in the kw-1 extra columns), so that
    W^T dy gives every kernel offset's gradient as one run of Ho*Wp positions per image and
    channel, added into the flat frame in one contiguous stretch (col2im's short rows of Wo cost
    more than the wider GEMM). The extra columns add exact zeros."""
    m = dyg.shape[0]
    run = g.ho * g.wp
    wide = xp.empty((count, g.f, size, g.ho, g.wp), dtype=dyg.dtype)
    wide[..., g.wo:] = 0
    full = m // size
    if full:
        wide[:full, :, :, :, :g.wo] = dyg[:full * size].reshape(full, size, g.f, g.ho, g.wo).transpose(0, 2, 1, 3, 4)
    if full < count:
        wide[full, :, :m - full * size, :, :g.wo] = dyg[full * size:].reshape(-1, g.f, g.ho, g.wo).transpose(1, 0, 2, 3)
        wide[full, :, m - full * size:] = 0
    dcols = xp.matmul(wt, wide.reshape(count, g.f, size * run)).reshape(count, g.c, g.kh, g.kw, size, run)
    frame = xp.zeros((count, size, g.c, g.hp * g.wp + g.wp), dtype=dyg.dtype)   # + one row: the last run's tail
    for i in range(g.kh):
        for j in range(g.kw):
            at = i * g.wp + j
            frame[:, :, :, at:at + run] += dcols[:, :, i, j].transpose(0, 2, 1, 3)
    top, left = g.padding[0], g.padding[2]
    images = frame[:, :, :, :g.hp * g.wp].reshape(count * size, g.c, g.hp, g.wp)
    out[...] = images[:m, :, top:top + g.h, left:left + g.w]


def backward(xp, dy, cache, need_dx):
    """(dx or None, dW) from the cache of ``forward`` (kept by ops.fast)."""
    x, W = cache["inputs"], cache["weights"]
    g = Shape(x.shape, W.shape, cache["stride"], cache["padding"])
    backend = backend_of(dy)
    wt = W.reshape(g.f, g.k).T                                           # (C*kh*kw, F)
    dys = dy.reshape(g.n, g.f, g.p)
    dx = xp.empty((g.n, g.c, g.h, g.w), dtype=dy.dtype) if need_dx else None
    step = g.chunk(dy)
    total = None
    for s in range(0, g.n, step):
        part, dyc = x[s:s + step], dys[s:s + step]
        m = part.shape[0]
        count, size = g.blocks(m)
        cols = cache["columns"] if step >= g.n and cache["columns"] is not None else None
        fresh = cols is None
        if fresh:
            cols = _column_buffer(xp, g, count, size, dy.dtype)
        # float16 keeps the blocks' dW and their sum in float32 and rounds once at the end, as one
        # GEMM over the batch would: a block's partial sum may exceed float16's range (65504)
        # where the whole batch's does not
        per_block = xp.empty((count, g.f, g.k), dtype=xp.result_type(dy.dtype, xp.float32))
        dxc = dx[s:s + m] if need_dx else None
        if backend.few_launches:
            _backward_blocks(xp, part, dyc, cols, fresh, wt, per_block, dxc, g, True)
        else:
            group = g.group(size, dy.itemsize)

            def run(r, part=part, dyc=dyc, cols=cols, fresh=fresh, per_block=per_block, dxc=dxc,
                    m=m, count=count, size=size, group=group):
                for q, end, a, z in _groups(count, size, m, group, r):
                    _backward_blocks(xp, part[a:z], dyc[a:z], cols[q:end], fresh, wt, per_block[q:end],
                                     None if dxc is None else dxc[a:z], g, False)

            backend.split(run, count, m * g.p * (g.k + 2 * g.f))
        summed = per_block.sum(axis=0)       # one call over the blocks in order: same bits anywhere
        total = summed if total is None else total + summed
    return dx, total.astype(dy.dtype).reshape(g.f, g.c, g.kh, g.kw)


def _col2im(xp, dcols, out, g):
    """out (m, C, H, W) = the column gradients dcols (blocks, C*kh*kw, B, Ho*Wo) of m <= blocks*B
    images added back into the images (col2im): one slice per kernel offset into a zeroed frame
    (padded, or the output itself), then the frame's inside."""
    count, _, size, _ = dcols.shape
    m = out.shape[0]
    grads = dcols.reshape(count, g.c, g.kh, g.kw, size, g.ho, g.wo)
    direct = not any(g.padding) and m == count * size
    frame = out if direct else xp.zeros((count * size, g.c, g.hp, g.wp), dtype=dcols.dtype)
    if direct:
        frame[...] = 0
    blocks = frame.reshape(count, size, g.c, g.hp, g.wp)
    for i in range(g.kh):
        for j in range(g.kw):
            blocks[(slice(None),) + window(i, j, g.ho, g.wo, g.sh, g.sw)] += grads[:, :, i, j].transpose(0, 2, 1, 3, 4)
    if not direct:
        top, left = g.padding[0], g.padding[2]
        out[...] = frame[:m, :, top:top + g.h, left:left + g.w]
