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
import collections
import os
import statistics
import threading
import time
import weakref

from xpnet.errors import ConfigError


def _whole(value):
    """True for ASCII digits only ("12"): str.isdigit() also takes "²", which int() refuses."""
    return value.isascii() and value.isdigit()


def thread_count():
    """$XPNET_NUM_THREADS (a positive whole number, else a ConfigError), else $OMP_NUM_THREADS when
    it is one number (other forms, such as OpenMP's "4,2" lists, are left to OpenMP), else the usable
    cores."""
    value = os.environ.get("XPNET_NUM_THREADS", "").strip()
    if value:
        if _whole(value) and int(value) > 0:
            return int(value)
        raise ConfigError(f"XPNET_NUM_THREADS must be a positive whole number, got {value!r}")
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if _whole(value) and int(value) > 0:
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def blas_threads_wanted():
    """The BLAS thread count xpnet sets: $XPNET_BLAS_THREADS (a number, or None for ``keep``), else 1."""
    value = os.environ.get("XPNET_BLAS_THREADS", "").strip().lower()
    if value == "keep":
        return None
    if _whole(value) and int(value) > 0:
        return int(value)
    if value:
        raise ConfigError(f"XPNET_BLAS_THREADS must be a positive whole number or 'keep', got {value!r}")
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
        libraries.append({k: info.get(k) for k in ("internal_api", "version", "threading_layer", "architecture", "filepath")}
                         | {"threads_before": info.get("num_threads")})
        if wanted is not None:
            lib.set_num_threads(wanted)
    _REPORT = {"controlled": wanted is not None, "wanted": wanted, "libraries": libraries,
               "why": "XPNET_BLAS_THREADS=keep" if wanted is None else ""}
    return _REPORT


# OpenBLAS's x86 kernels of the AVX2 generation and before, and the AVX-512 subsets its SkylakeX kernels use.
PRE_AVX512_KERNELS = {"haswell", "zen", "sandybridge", "nehalem", "core2", "penryn", "dunnington",
                      "prescott", "atom", "barcelona", "bulldozer", "piledriver", "steamroller",
                      "excavator"}
AVX512_FOR_SKYLAKEX = ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")


def cpu_identity(path="/proc/cpuinfo"):
    """The first CPU's {"name", "vendor", "family", "model", "flags"} (None and empty where the file
    cannot be read or does not say)."""
    ident = {"name": None, "vendor": None, "family": None, "model": None, "flags": frozenset()}
    fields = {"model name": "name", "vendor_id": "vendor", "cpu family": "family", "model": "model"}
    try:
        with open(path) as fh:
            for line in fh:
                if not line.strip():
                    break  # the first processor's block ends here
                key, _, value = (part.strip() for part in line.partition(":"))
                if key in fields:
                    ident[fields[key]] = int(value) if _whole(value) else value
                elif key == "flags":
                    ident["flags"] = frozenset(value.split())
    except OSError:
        pass
    return ident


def cpu_flags(path="/proc/cpuinfo"):
    """The first CPU's feature flags (empty where the file cannot be read)."""
    return cpu_identity(path)["flags"]


def pinned_kernels_hint(libraries, environ=None, flags=None):
    """A warning when ``$OPENBLAS_CORETYPE`` holds OpenBLAS to kernels older than AVX-512 on a CPU
    that has it, else "". Some machines set the variable for all their programs; OpenBLAS left to
    choose picks its SkylakeX kernels there, which ran SGEMM about twice as fast on an AVX-512 AMD
    EPYC (docs/benchmarks.md). xpnet does not change the variable (it is the machine's choice, and
    it is read when NumPy loads), it only says what it costs."""
    environ = os.environ if environ is None else environ
    core = environ.get("OPENBLAS_CORETYPE", "").strip()
    if not core:
        return ""
    flags = cpu_flags() if flags is None else flags
    if any(f not in flags for f in AVX512_FOR_SKYLAKEX):
        return ""
    pinned = sorted({lib.get("architecture") for lib in libraries if lib.get("internal_api") == "openblas"
                     and str(lib.get("architecture")).lower() in PRE_AVX512_KERNELS})
    if not pinned:
        return ""
    return (f"OPENBLAS_CORETYPE={core} holds OpenBLAS to its {', '.join(pinned)} kernels on a CPU with "
            "AVX-512: unset it (before Python starts) to let OpenBLAS choose; its SkylakeX kernels ran "
            "SGEMM about 2x as fast on an AVX-512 AMD EPYC")


def blas_report():
    """What limit_blas() did (None before the first CPU backend was created)."""
    return _REPORT


_NO_STAT = []   # set when /proc/stat could not be read once: not read again


def idle_cpu_seconds(path="/proc/stat"):
    """Seconds the CPUs this process may run on (``os.sched_getaffinity``) spent idle or waiting for
    I/O since boot, from Linux's /proc/stat, or None where that cannot be read (another system; a
    missing or unreadable file is not tried again)."""
    if _NO_STAT and path == "/proc/stat":
        return None
    try:
        cpus = os.sched_getaffinity(0)
        with open(path, "rb") as fh:
            text = fh.read()
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, AttributeError, ValueError):
        if path == "/proc/stat":
            _NO_STAT.append(True)
        return None
    total, seen = 0, 0
    for line in text.splitlines():
        fields = line.split()
        if not fields or not fields[0].startswith(b"cpu") or not fields[0][3:].isdigit():
            continue
        if int(fields[0][3:]) in cpus and len(fields) >= 6 and fields[4].isdigit() and fields[5].isdigit():
            total += int(fields[4]) + int(fields[5])
            seen += 1
    return total / ticks if seen and ticks > 0 else None


def split_mode():
    """``$XPNET_SPLIT``: ``auto`` (default: SplitCheck decides per pass), or ``always`` (split every
    pass that is large enough, whatever it gains: the behaviour before SplitCheck, to compare)."""
    value = os.environ.get("XPNET_SPLIT", "auto").strip().lower() or "auto"
    if value not in ("auto", "always"):
        raise ConfigError(f"XPNET_SPLIT must be 'auto' or 'always', got {value!r}")
    return value


class SplitCheck:
    """Whether splitting a pass over the pool pays, learned per call site and size while it runs.

    Beside a busy process (and on Linux with autogroup, where each terminal session gets an equal
    share of the cores) the worker waits for a core, the caller waits for the worker, and a split
    costs time; on a VM whose idle cores wake slowly and whose two cores share little memory
    bandwidth a split of a memory-bound pass loses even when nothing else runs (docs/benchmarks.md,
    benchmarks/handoff.py). So each site's passes are timed both ways, by the wall clock: a site is
    the function that does a piece, the pass's size (elements, or multiply-adds for a GEMM) and,
    where the caller gives it, a shape (a GEMM's operand shapes: (32, 28) @ (28, n) and (28, 32) @
    (32, n) have one size and differ in speed), so that a site's passes are the same work at the
    same speed. (Until 2026-12-03 the size was rounded to a power of 2, which put passes of
    different layers and shapes in one site; a probe alternating in step with them compared one
    layer's split passes with another's alone passes.) A pass's time per unit of work is compared.
    A new site alternates (split first) until it has ``PROBES`` passes of each kind; the verdict
    splits when the median time per unit alone is at least ``GAIN`` times the median split one,
    else keeps the site on the calling thread. At most ``MAX_SITES`` sites are kept (the oldest
    goes first: sizes that came once, such as a last short batch, or a server's odd batches).

    A verdict holds for a number of passes, then ``RETRY_PASSES`` passes of the other kind try again
    against the held kind's latest ``PROBES`` passes. Each verdict that repeats the last one holds
    twice as long (four times as long when it splits with a gain of at least ``CLEAR_GAIN``: a
    retry alone of a pass that gains 1.5-2x costs as much as the gain of a few split passes), one
    that changes it starts over: alone from ``HOLD_PASSES`` up to ``MAX_HOLD_PASSES`` (the split
    tries are then about 3 % of the site's passes), or further where the tries lose more: up to
    the hold whose tries cost ``RETRY_SHARE`` of the site's time at the measured loss (a split
    pass taking twice the alone time: 200 passes; at most ``LOAD_HOLD_PASSES``; small steps lost
    3-5 % to tries of a pass that ran 2x slower split), split from ``HOLD_PASSES`` up to
    ``MAX_SPLIT_HOLD_PASSES`` (a pass that gains is rarely run alone to check).
    While split, a cheaper alarm watches every pass: when over ``PROBES`` split passes the pieces'
    CPU seconds were less than ``GAIN`` times the wall seconds (the worker waited for a core: load
    came), the hold ends at once and the alone passes are tried. Counting passes rather than seconds
    keeps these shares the same for fast and slow steps. Results do not depend on the choice (the
    pieces give the same bits as one pass).

    Load as such is seen pool-wide: a split pass whose pieces ran at least ``PARALLEL`` CPU seconds a
    wall second had a second core. After ``LOAD_PASSES`` split passes in a row without one, the
    check is ``loaded`` (beside a busy process, on Linux with autogroup, a session's threads share
    one core whatever their number: measured here, no split pass of any model went over 1.00 with
    one busy process, while idle most passes of every model that splits did). While loaded, an
    alone verdict holds ``LOAD_HOLD_PASSES`` (the 2-pass retries of every 64 cost 1-2 % of a step
    under load), the backend gives no pieces to idle workers (``later``: each wake of a worker
    then costs the caller its core), and one alone pass in ``LOAD_PROBE_PASSES`` (over all sites)
    is split to see whether the load left. The first split pass with a second core ends the load,
    and every site held alone by it is tried split at once. Such a probe costs a wait for a core
    (a few ms on this VM: 28 probes in 300 steps of the medium model at 16 made its two-thread step
    about 1 % slower than one with no split at all), so where the machine says how long its CPUs
    were idle (Linux's /proc/stat, the CPUs the process may use: ``idle_cpu_seconds``) a probe is
    made only when they were idle at least ``SPARE_IDLE`` of a core since the last look (at least
    ``IDLE_WINDOW`` seconds before): while none was, the pool rests (``resting``: every pass alone
    and untimed, no site's probe or retry, the load's probe moments counted as ``load_rests``).
    Where /proc/stat cannot be read, every probe moment probes.

    (Until 2026-12-01 CPU over wall seconds was the only measure. It only shows waiting: on this
    project's VM two pieces running at once each take 2-3x as long as alone, and that ratio counts
    it as gain: LeNet-5's pooling and GEMM passes read 1.4-1.6 while splitting them made them
    0.7-0.9x as fast as one thread.)"""
    PROBES = 4
    RETRY_PASSES = 2
    GAIN = 1.1
    CLEAR_GAIN = 1.3
    HOLD_PASSES = 8
    MAX_HOLD_PASSES = 64
    RETRY_SHARE = 0.01
    MAX_SPLIT_HOLD_PASSES = 512
    MAX_SITES = 1024
    PARALLEL = 1.05
    LOAD_PASSES = 16
    LOAD_HOLD_PASSES = 1024
    LOAD_PROBE_PASSES = 256
    IDLE_WINDOW = 0.1
    SPARE_IDLE = 0.5

    def __init__(self):
        self.sites = {}   # key -> _Site
        self.last_gain = {}   # key -> the gain its last verdict measured
        self.split_passes = self.alone_passes = self.holds = self.alarms = 0
        self.loaded = False
        self.loads = self.load_probes = self.load_rests = 0
        self.resting = False   # loaded, and the CPUs were not idle at the last look
        self._serial = 0     # split passes in a row without a second core
        self._unprobed = 0   # alone passes since the last load probe
        self._looked = None  # (monotonic time, idle_cpu_seconds()) at the last look
        self._lock = threading.Lock()   # one backend used by several threads (needed without a GIL)
        _CHECKS.add(self)

    def split(self, key):
        """True when the pass ``key`` should be split over the pool now."""
        return self.next_pass(key) is SPLIT

    def next_pass(self, key):
        """How to run the pass ``key`` now: SPLIT over the pool, ALONE on the calling thread and
        timed (``record`` it), or UNTIMED alone: a pass of an alone hold whose time no verdict will
        read (a verdict reads the latest ``PROBES`` of each kind; timing and recording the others
        cost 1-2 us a pass, 1-4 % of a small model's step)."""
        with self._lock:
            if self._split(key):
                return SPLIT
            site = self.sites[key]
            if self.resting or (site.verdict is False and len(site.plan) > self.PROBES + self.RETRY_PASSES):
                return UNTIMED
            return ALONE

    def record(self, key, wall_s, work, cpu_s=None):
        """A pass of ``key`` over ``work`` units took ``wall_s`` seconds: split over the pool when
        ``cpu_s`` (its pieces' CPU seconds) is given, else alone on the calling thread."""
        with self._lock:
            self._record(key, wall_s, work, cpu_s)

    def _split(self, key):
        site = self.sites.get(key)
        if site is None:
            if len(self.sites) >= self.MAX_SITES:
                oldest = next(iter(self.sites))
                del self.sites[oldest]
                self.last_gain.pop(oldest, None)
            site = self.sites[key] = _Site()
        if not self.resting and site.next_split():
            self.split_passes += 1
            return True
        if self.loaded:
            self._unprobed += 1
            if self._unprobed >= self.LOAD_PROBE_PASSES:   # has the load left?
                probe = self._probe_now()
                if probe is not None:
                    self._unprobed = 0
                if probe:
                    self.load_probes += 1
                    self.split_passes += 1
                    return True
        self.alone_passes += 1
        return False

    def idle_seconds(self):
        """The machine's idle CPU seconds so far (``idle_cpu_seconds``), or None: unknown."""
        return idle_cpu_seconds()

    def _probe_now(self):
        """At a probe moment of the loaded pool: True to split this pass (the CPUs were idle at
        least SPARE_IDLE of a core since the last look, or the machine does not say), False to keep
        it alone and rest (they were not), None when the last look was under IDLE_WINDOW ago (too
        soon to tell: look again at the next alone pass)."""
        now = time.monotonic()
        last = self._looked
        if last is not None and last[1] is not None and now - last[0] < self.IDLE_WINDOW:
            return None
        idle = self.idle_seconds()
        self._looked = (now, idle)
        if idle is None or last is None or last[1] is None:
            self.resting = False
            return True
        self.resting = idle - last[1] < self.SPARE_IDLE * (now - last[0])
        self.load_rests += self.resting
        return not self.resting

    def _seen(self, wall_s, cpu_s):
        """A split pass's CPU and wall seconds: the pool's load state."""
        if cpu_s >= self.PARALLEL * wall_s:
            self._serial = 0
            if self.loaded:
                self.loaded = self.resting = False
                for site in self.sites.values():   # the load left: try its alone sites split now
                    if site.verdict is False and site.under_load:
                        site.plan = collections.deque([True] * self.RETRY_PASSES)
                        site.under_load = False
        else:
            self._serial += 1
            if self._serial >= self.LOAD_PASSES and not self.loaded:
                self.loaded = True
                self.loads += 1
                self._unprobed = 0
                self._looked = (time.monotonic(), self.idle_seconds())   # the first look's start

    def _record(self, key, wall_s, work, cpu_s):
        site = self.sites.get(key)
        if site is None:   # the site was never asked about (a caller outside the pool's plan)
            return
        split = cpu_s is not None
        if split:
            self._seen(wall_s, cpu_s)
        site.times[split].append(wall_s / max(work, 1))
        if split and site.verdict:   # a pass of a split hold: the alarm
            site.cpu += cpu_s
            site.wall += wall_s
            site.watched += 1
            if site.watched == self.PROBES:   # these passes are the split kind's times now
                if site.cpu < self.GAIN * site.wall:
                    site.plan = collections.deque([False] * self.RETRY_PASSES)
                    self.alarms += 1
                site.cpu = site.wall = site.watched = 0
        if not site.due():
            return
        gain = statistics.median(site.times[False]) / max(statistics.median(site.times[True]), 1e-30)
        self.last_gain[key] = gain
        verdict = gain >= self.GAIN
        longest = self.MAX_SPLIT_HOLD_PASSES if verdict else self._alone_bound(gain)
        growth = 4 if verdict and gain >= self.CLEAR_GAIN else 2
        hold = min(growth * site.hold, longest) if verdict is site.verdict else self.HOLD_PASSES
        if not verdict:
            self.holds += 1
            if self.loaded:
                hold = self.LOAD_HOLD_PASSES
        site.decide(verdict, hold, self.RETRY_PASSES)
        site.under_load = not verdict and self.loaded

    def _alone_bound(self, gain):
        """The longest alone hold after a verdict that measured ``gain`` (< GAIN): MAX_HOLD_PASSES,
        or the hold at which RETRY_PASSES split passes, each 1/gain - 1 alone passes longer, cost
        RETRY_SHARE of the hold's time, up to LOAD_HOLD_PASSES."""
        loss = 1.0 / max(gain, 1e-9) - 1.0
        share_bound = -(-self.RETRY_PASSES * loss // self.RETRY_SHARE)
        return int(min(self.LOAD_HOLD_PASSES, max(self.MAX_HOLD_PASSES, share_bound)))

    def report(self):
        """Counts for a benchmark's record: passes split, passes kept on one thread, verdicts that
        kept a site alone, alarms (split holds ended by waiting), the load state (whether loaded,
        times it began, its probes, and its probe moments that rested: no idle core), the sites
        that run alone now, and the gain each site's last verdict measured (sorted)."""
        gains = sorted(self.last_gain.values())
        return {"split_passes": self.split_passes, "alone_passes": self.alone_passes, "holds": self.holds,
                "alarms": self.alarms, "loaded": self.loaded, "loads": self.loads,
                "load_probes": self.load_probes, "load_rests": self.load_rests, "sites": len(self.sites),
                "sites_alone_now": sum(s.verdict is False for s in self.sites.values()),
                "last_gains": [round(g, 2) for g in gains]}


SPLIT, ALONE, UNTIMED = "split", "alone", "untimed"   # SplitCheck.next_pass
_CHECKS = weakref.WeakSet()


def _unlock_in_child():
    """After os.fork: every SplitCheck gets a new lock. A thread of the parent (the background
    thread's random draws split too) may have held one at the fork; the child has no such thread
    to release it, and its next split pass would wait forever."""
    for check in list(_CHECKS):
        check._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_unlock_in_child)


class _Site:
    """One site's state: its latest times per unit of work split (``times[True]``) and alone, the
    verdict in force (None while probing) and its hold, the passes planned until the next verdict
    (each taken when its pass starts; the verdict comes when the last one's time is recorded), and
    the alarm's sums over the current split passes."""

    def __init__(self):
        # maxlen PROBES: when the alarm ends a split hold, the split times are the watched passes
        self.times = {True: collections.deque(maxlen=SplitCheck.PROBES),
                      False: collections.deque(maxlen=SplitCheck.PROBES)}
        self.verdict = None
        self.hold = 0
        self.plan = collections.deque([True, False] * SplitCheck.PROBES)   # the probe: alternating
        self.cpu = self.wall = 0.0
        self.watched = 0
        self.under_load = False   # held alone by a verdict made while the pool was loaded

    def next_split(self):
        return self.plan.popleft() if self.plan else bool(self.verdict)

    def due(self):
        """True when the plan is done and both kinds have times (a pass that raised is not
        recorded: a kind without times gets one more pass)."""
        if self.plan:
            return False
        for kind in (True, False):
            if not self.times[kind]:
                self.plan.append(kind)
                return False
        return True

    def decide(self, verdict, hold, retry):
        """Hold ``verdict`` for ``hold`` passes, then try the other kind ``retry`` times against the
        held kind's latest passes (the other kind's older times are dropped: conditions may have
        changed since)."""
        self.verdict, self.hold = verdict, hold
        self.times[not verdict].clear()
        self.plan = collections.deque([verdict] * hold + [not verdict] * retry)
        self.cpu = self.wall = 0.0
        self.watched = 0
