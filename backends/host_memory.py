"""Keep freed host memory for reuse instead of handing it back to the kernel after every array.

glibc's malloc serves large blocks (above an adaptive threshold that starts at 128 KiB) with a
fresh mmap, and gives the heap's free top back to the kernel once it exceeds the trim threshold.
A training step makes and drops dozens of temporary arrays of a few MiB (gradients, the
optimizer's moments, im2col columns), so each step then touches brand-new pages, and every page
costs a page fault: measured on a 2-core VM, seed000-adam (866,798 parameters, one image a step)
spent about 80 % of its step in the faults of Adam's five temporaries. With the mmap threshold at
its 64-bit maximum (32 MiB) and the heap kept (trim threshold 1 GiB, 64 MiB top pad), the same
blocks are reused step after step without faults; the process keeps what it once needed, as
PyTorch's and CuPy's caching allocators do.

Applied once per process by the NumPy backend, on glibc only (other C libraries are left as
they are). XPNET_HOST_MALLOC=system leaves glibc's defaults alone.
"""
import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20   # glibc's largest allowed value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 64 << 20

_applied = None


def keep_freed_memory():
    """Set glibc's malloc to reuse freed blocks (see the module doc). Returns a dict of what was
    set, or {"skipped": reason}; runs once per process, later calls return the first answer."""
    global _applied
    if _applied is not None:
        return _applied
    if os.environ.get("XPNET_HOST_MALLOC", "").strip().lower() == "system":
        _applied = {"skipped": "XPNET_HOST_MALLOC=system"}
        return _applied
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only: mallopt's parameter numbers are glibc's
    except (OSError, AttributeError, TypeError):
        _applied = {"skipped": "not glibc"}
        return _applied
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = {"mmap_threshold": (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                "trim_threshold": (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                "top_pad": (M_TOP_PAD, TOP_PAD)}
    _applied = {name: value for name, (param, value) in settings.items() if mallopt(param, value) == 1}
    return _applied
