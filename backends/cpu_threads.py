"""The CPU backend's threads: how many, and keeping NumPy's BLAS from spinning beside them.

xpnet spreads a step over its own small pool of daemon threads (numpy_kernels.py): the element-wise
passes, the copies, and the GEMMs, cut into independent pieces (``NumpyBackend.matmul``). The BLAS
under NumPy then runs each piece on one thread. Its own threads are worse on a shared machine:
OpenBLAS's pthreads server (NumPy 2.x's wheels, OpenBLAS 0.3.31 here) busy-waits. After every
threaded call each idle worker spins in user space for 2**28 cycles (about 0.1 s; measured here:
0.05-0.07 s of CPU per call with no work), and inside a threaded GEMM the threads spin on one
another at every block. With another CPU-bound process running, a spinning thread takes the core
the descheduled partner needs, and a 2-thread step of the 16-32-48-64 model went from 0.13-0.4 s to
1.3-1.8 s on this 2-core machine. xpnet's pool waits on a queue (a futex: the waiting thread
sleeps), so a preempted piece costs only its own share.

So the first CPU backend a process creates limits the process's BLAS libraries to one thread
(threadpoolctl, the ``threads`` extra: ``pip install xpnet[threads]``). ``$XPNET_BLAS_THREADS``
chooses another count, or ``keep`` leaves BLAS as it is (to compare). Without threadpoolctl the
BLAS keeps its own threads, and ``blas_report()`` says so (``xpnet info`` prints it).

Threads of xpnet's pool: ``$XPNET_NUM_THREADS``, else ``$OMP_NUM_THREADS``, else the usable cores
(``os.sched_getaffinity``, so a container's or ``taskset``'s CPU set counts, not the host's).
"""
import os


def thread_count():
    for var in ("XPNET_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def blas_threads_wanted():
    """The BLAS thread count xpnet sets: $XPNET_BLAS_THREADS (a number, or None for ``keep``), else 1."""
    value = os.environ.get("XPNET_BLAS_THREADS", "").strip().lower()
    if value == "keep":
        return None
    if value.isdigit() and int(value) > 0:
        return int(value)
    if value:
        raise ValueError(f"XPNET_BLAS_THREADS must be a positive whole number or 'keep', got {value!r}")
    return 1


_REPORT = None


def limit_blas():
    """Set the process's BLAS threads as blas_threads_wanted() says (once per process); the report."""
    global _REPORT
    if _REPORT is not None:
        return _REPORT
    wanted = blas_threads_wanted()
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        _REPORT = {"controlled": False, "wanted": wanted, "libraries": [],
                   "why": "threadpoolctl is not installed (pip install 'xpnet[threads]'): BLAS keeps its own threads"}
        return _REPORT
    blas = ThreadpoolController().select(user_api="blas")
    libraries = []
    for lib in blas.lib_controllers:
        info = lib.info()
        libraries.append({k: info.get(k) for k in ("internal_api", "version", "threading_layer", "filepath")}
                         | {"threads_before": info.get("num_threads")})
        if wanted is not None:
            lib.set_num_threads(wanted)
    _REPORT = {"controlled": wanted is not None, "wanted": wanted, "libraries": libraries,
               "why": "XPNET_BLAS_THREADS=keep" if wanted is None else ""}
    return _REPORT


def blas_report():
    """What limit_blas() did (None before the first CPU backend was created)."""
    return _REPORT
