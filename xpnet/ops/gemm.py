"""Wide 2-D products ``a @ b`` (a few rows of ``a`` against thousands of columns of ``b``) cut into
fixed column pieces that the backend may run on its threads (``Backend.split``).

The pieces depend on the shape only (``column_pieces``), never on the thread count, so a product
has the same bits on one thread and on many: splitting a product differently changes OpenBLAS's
rounding, so a split that followed the thread count would make results depend on it. Where a
launch costs more than it saves (``backend.few_launches``: GPUs, the strict backend) the product
is one call.
"""
from ..backends import backend_of

PIECE_COLUMNS = 512    # narrowest piece worth a call of its own
MAX_PIECES = 8         # enough pieces to balance 2, 4 or 8 threads
MIN_MACS = 1 << 22     # smaller products (multiply-adds) are one call: a split would cost more


def column_pieces(n):
    """How many equal column pieces a product with ``n`` columns is cut into (1: one call)."""
    return max(1, min(MAX_PIECES, n // PIECE_COLUMNS))


def wide_matmul(xp, a, b, split=True):
    """a (m, k) @ b (k, n) as column pieces on the backend's threads (without ``split``: the same
    pieces one after another, on the calling thread); one call on GPUs."""
    backend = backend_of(b)
    n = b.shape[1]
    pieces = column_pieces(n)
    if backend.few_launches or pieces == 1 or a.shape[0] * a.shape[1] * n < MIN_MACS:
        return a @ b
    out = xp.empty((a.shape[0], n), dtype=xp.result_type(a, b))
    width = -(-n // pieces)

    def part(s):
        for p in range(pieces)[s]:
            cols = slice(p * width, (p + 1) * width)
            xp.matmul(a, b[:, cols], out=out[:, cols])

    # shape: (32, 28) @ (28, n) and (28, 32) @ (32, n) touch as many elements at different speeds
    if split:
        backend.split(part, pieces, a.shape[0] * n + b.size, shape=(a.shape, b.shape))
    else:
        part(slice(None))
    return out
