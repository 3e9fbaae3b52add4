"""NCHW <-> planes (H, W, N, C): the layout of the spectral route's transforms.

The spectral convolution works on planes, spatial axes first, so that its DFTs are
left-multiplications of large contiguous blocks; NCHW <-> planes is then one 2-D transpose of
(N*C, H*W). A layer may also hand on its output as the NCHW *view* of a planes array (no copy:
``x.transpose(2, 3, 0, 1)``): max pooling then pools the planes, where every window offset is a
slice of long contiguous rows, and returns its gradient the same way, so that the convolution's
backward reads it as planes without a transpose (``planes_of``); a spectral convolution reads such
an input as it is, and gives its gradient back so (model._link_planes: through ReLU and Dropout,
whose CPU kernels keep the layout). Any other consumer reads the view as an ordinary NCHW array
(same values, only slower strides).
"""
from ..backends import backend_of

TRANSPOSE_BLOCK = 12   # positions per block of the transpose back to NCHW: 12-16 were 1.5-2.6x faster than 64 here
# planes per block of the transpose into planes (to_planes): 256-512 were 1.7-3.2x faster than the
# strided copy by rows of H it replaced (2026-12-01, one thread; blocks of positions gained nothing)
TO_PLANES_BLOCK = 512


def planes_of(x):
    """The contiguous (H, W, N, C) array of which the NCHW array ``x`` is the transposed view, or
    None when ``x`` is laid out otherwise (a C-contiguous NCHW array, a slice)."""
    if x.ndim != 4 or x.flags.c_contiguous:
        return None
    planes = x.transpose(2, 3, 0, 1)
    return planes if planes.flags.c_contiguous else None


def to_planes(xp, x):
    """(N, C, H, W) -> (H, W, N, C) contiguous: the array under ``x`` when ``x`` is already the
    NCHW view of planes (read it, do not write it), else a 2-D transpose of (N*C, H*W). On the CPU
    in blocks of TO_PLANES_BLOCK planes on the backend's threads (each block's planes read once,
    whole, and written as runs of the block's width); where launches cost more
    (``backend.few_launches``: GPUs) one strided copy."""
    planes = planes_of(x)
    if planes is not None:
        return planes
    n, c, h, w = x.shape
    out = xp.empty((h, w, n, c), dtype=x.dtype)
    backend = backend_of(x)
    if backend.few_launches or not x.flags.c_contiguous:
        out[...] = x.transpose(2, 3, 0, 1)
        return out
    src, rows = x.reshape(n * c, h * w), out.reshape(h * w, n * c)

    def blocks(s):   # blocks of planes s
        for b in range(0, n * c, TO_PLANES_BLOCK)[s]:
            rows[:, b:b + TO_PLANES_BLOCK] = src[b:b + TO_PLANES_BLOCK].T

    backend.split(blocks, -(-n * c // TO_PLANES_BLOCK), x.size)
    return out


def from_planes(xp, a, view=False):
    """(H, W, N, C) -> (N, C, H, W) contiguous: a 2-D transpose of (H*W, N*C). On the CPU in blocks
    of positions (cache-sized) on the backend's threads; where launches cost more than strided
    copies (``backend.few_launches``: GPUs) one strided copy. With ``view`` (a layer next reads
    planes: model.py's links), on the CPU the NCHW view of ``a`` instead, no copy."""
    h, w, n, c = a.shape
    backend = backend_of(a)
    if view and not backend.few_launches:
        return a.transpose(2, 3, 0, 1)
    if backend.few_launches:
        return xp.ascontiguousarray(a.transpose(2, 3, 0, 1))
    cols = a.reshape(h * w, n * c)
    out = xp.empty((n * c, h * w), dtype=a.dtype)

    def blocks(s):   # blocks of positions s
        for b in range(0, h * w, TRANSPOSE_BLOCK)[s]:
            out[:, b:b + TRANSPOSE_BLOCK] = cols[b:b + TRANSPOSE_BLOCK].T

    backend.split(blocks, -(-h * w // TRANSPOSE_BLOCK), a.size)
    return out.reshape(n, c, h, w)


def laid_out_as(xp, a, like):
    """The NCHW array ``a`` laid out as ``like``: where ``like`` is the NCHW view of planes, a's
    values as such a view too (one to_planes copy), else ``a`` itself."""
    if planes_of(like) is None:
        return a
    return from_planes(xp, to_planes(xp, a), view=True)
