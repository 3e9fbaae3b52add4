"""Reader for the IDX format of MNIST and Fashion-MNIST (raw or gzip-compressed).

Header: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions, then one
big-endian uint32 per dimension. Labels are magic 0x00000801 (1-d), images 0x00000803 (3-d).
The expected payload size is computed from the header and checked before anything is allocated.
"""
import gzip
import math
import os
import struct
import zlib

import numpy as np

from ..errors import DataError

LABELS_MAGIC = 0x00000801
IMAGES_MAGIC = 0x00000803
MAX_BYTES = 1 << 32  # 4 GiB: far above any IDX dataset; a larger header is corrupt
_CHUNK = 1 << 20


def _open(path):
    """(file object, size in bytes for a raw file or None for gzip)."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"\x1f\x8b":
        return gzip.open(path, "rb"), None
    return open(path, "rb"), os.path.getsize(path)


def _read_exact(f, n, path, what):
    data = f.read(n)
    if len(data) != n:
        raise DataError(f"{path}: truncated {what}: expected {n} bytes, found {len(data)}")
    return data


def read_idx(path, magic=None):
    """Read one IDX file into a uint8 NumPy array shaped by its header.

    ``magic`` (LABELS_MAGIC or IMAGES_MAGIC) is the header value the caller expects.
    """
    path = os.fspath(path)
    try:
        f, size = _open(path)
        with f:
            return _parse(f, path, magic, size)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip stream ({exc}) where an IDX "
                        "header was expected; delete the file and fetch it again") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc


def _parse(f, path, magic, size):
    head = _read_exact(f, 4, path, "IDX header")
    found = struct.unpack(">I", head)[0]
    if magic is not None and found != magic:
        raise DataError(f"{path}: IDX magic number 0x{found:08X}, expected 0x{magic:08X} "
                        f"({'labels' if magic == LABELS_MAGIC else 'images'})")
    if head[:2] != b"\x00\x00" or head[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (header bytes {head.hex()}, "
                        "expected 0000 08 <ndim>)")
    ndim = head[3]
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    dims = struct.unpack(f">{ndim}I", _read_exact(f, 4 * ndim, path, "IDX dimensions"))
    if 0 in dims:
        raise DataError(f"{path}: IDX dimensions {dims} hold no data")
    nbytes = math.prod(dims)
    if nbytes > MAX_BYTES:
        raise DataError(f"{path}: IDX dimensions {dims} declare {nbytes} bytes, more than the "
                        f"{MAX_BYTES}-byte limit: the header is corrupt")
    if size is not None and size - 4 - 4 * ndim < nbytes:
        raise DataError(f"{path}: truncated payload: header dimensions {dims} need {nbytes} "
                        f"bytes, the file holds {size - 4 - 4 * ndim}")
    out = np.empty(nbytes, dtype=np.uint8)
    view = memoryview(out)
    got = 0
    try:
        while got < nbytes:
            n = f.readinto(view[got:got + _CHUNK])
            if not n:
                break
            got += n
    except (EOFError, zlib.error) as exc:
        raise DataError(f"{path}: gzip stream breaks off ({exc}): header dimensions {dims} "
                        f"need {nbytes} bytes; delete the file and fetch it again") from exc
    if got != nbytes:
        raise DataError(f"{path}: truncated payload: header dimensions {dims} need {nbytes} "
                        f"bytes, the file holds {got}")
    if f.read(1):
        raise DataError(f"{path}: more data than the header dimensions {dims} "
                        f"({nbytes} bytes) describe")
    return out.reshape(dims)
