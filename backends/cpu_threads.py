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


def split_mode():
    """``$XPNET_SPLIT``: ``auto`` (default: SplitCheck decides per pass), or ``always`` (split every
    pass that is large enough, whatever it gains: the behaviour before SplitCheck, to compare)."""
    value = os.environ.get("XPNET_SPLIT", "auto").strip().lower() or "auto"
    if value not in ("auto", "always"):
        raise ValueError(f"XPNET_SPLIT must be 'auto' or 'always', got {value!r}")
    return value


class SplitCheck:
    """Whether splitting a pass over the pool pays, learned per call site and size while it runs.

    Every split pass reports the CPU seconds its threads spent on the pieces and the wall seconds
    it took. The CPU seconds are about what one thread would need for the same pieces, so their
    ratio is the pass's speed-up over one thread. Idle, a 2-thread pass gains 1.5-1.9x; beside a
    busy process (and on Linux with autogroup, where each terminal session gets an equal share of
    the cores) the worker waits for a core, the caller waits for the worker, and the ratio falls to
    1 or below: the split then costs time. A site is the function that does a piece and the pass's
    size rounded to a power of 2. When ``PASSES`` split passes of a site together gained less than
    ``GAIN``, its next ``HOLD_PASSES`` passes run on the calling thread alone; then ``RETRY_PASSES``
    passes try the pool again: if they do not gain either, the site stays alone twice as long as
    before (up to ``MAX_HOLD_PASSES``, so retries are about 3 % of its passes); if they do, it
    is split again. Counting passes rather than seconds keeps that share the same for fast and slow
    steps. Results do not depend on the choice (the pieces give the same bits as one pass)."""
    PASSES = 8
    RETRY_PASSES = 2
    GAIN = 1.15
    HOLD_PASSES = 8
    MAX_HOLD_PASSES = 64

    def __init__(self):
        self.sites = {}   # key -> [cpu s, wall s, passes, passes left alone, next hold, passes per verdict]
        self.last_gain = {}   # key -> the gain its last verdict measured
        self.split_passes = self.alone_passes = self.holds = 0

    def split(self, key):
        """True when the pass ``key`` should be split over the pool now."""
        site = self.sites.get(key)
        if site is not None and site[3] > 0:
            site[3] -= 1
            self.alone_passes += 1
            return False
        self.split_passes += 1
        return True

    def record(self, key, cpu_s, wall_s):
        """A split pass of ``key`` took ``wall_s`` seconds while its threads spent ``cpu_s``."""
        site = self.sites.get(key)
        if site is None:
            site = self.sites[key] = [0.0, 0.0, 0, 0, self.HOLD_PASSES, self.PASSES]
        site[0] += cpu_s
        site[1] += wall_s
        site[2] += 1
        if site[2] < site[5]:
            return
        self.last_gain[key] = site[0] / site[1] if site[1] > 0 else float("inf")
        if site[0] < self.GAIN * site[1]:
            site[3], site[4], site[5] = site[4], min(2 * site[4], self.MAX_HOLD_PASSES), self.RETRY_PASSES
            self.holds += 1
        else:
            site[4], site[5] = self.HOLD_PASSES, self.PASSES
        site[0] = site[1] = site[2] = 0

    def report(self):
        """Counts for a benchmark's record: passes split, passes kept on one thread, failed tries,
        the sites that run alone now, and the gain each site's last verdict measured (sorted)."""
        gains = sorted(self.last_gain.values())
        return {"split_passes": self.split_passes, "alone_passes": self.alone_passes, "holds": self.holds,
                "sites": len(self.sites), "sites_alone_now": sum(s[3] > 0 for s in self.sites.values()),
                "last_gains": [round(g, 2) for g in gains]}
