"""What every communicator offers, and the deadline that keeps a job from hanging forever.

A communicator joins the processes (ranks) of one data-parallel job:

    comm.rank, comm.size, comm.local_rank (rank among the processes of this machine), comm.backend
    comm.allreduce(buf, op="sum" | "mean")   in place, on ONE flat array of the backend
    comm.broadcast(buf, root=0)              in place
    comm.barrier()
    comm.broadcast_text(text, root=0)        a str from ``root`` (host-side control: run folders)

Every collective waits at most ``comm.timeout`` seconds; when another rank has died or hangs it
raises :class:`DistributedError` naming the operation, and an unhandled exception on any rank of a
job of several ranks aborts the whole job (``MPI_Abort``), so no rank waits forever.
"""
import os
import sys
import threading
import time

from ..errors import ConfigError, TrainingError

DEFAULT_TIMEOUT = 300.0  # seconds a rank waits in one collective before it gives up
TIMEOUT_ENV = "XPNET_DIST_TIMEOUT"


class DistributedError(TrainingError):
    """Another rank died or hung, or the ranks disagree (a missing checkpoint on one of them)."""


def resolve_timeout(timeout):
    """``timeout`` seconds, else $XPNET_DIST_TIMEOUT, else DEFAULT_TIMEOUT (must be > 0)."""
    if timeout is None:
        timeout = os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT
    try:
        value = float(timeout)
    except (TypeError, ValueError):
        raise ConfigError(f"distributed timeout must be a number of seconds, got {timeout!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ConfigError(f"distributed timeout must be a finite number of seconds > 0, got {timeout!r}")
    return value


class Communicator:
    """Base class: rank/size bookkeeping and the parts shared by the MPI and NCCL communicators."""

    kind = "base"

    def __init__(self, rank, size, local_rank, backend, timeout=None):
        self.rank = int(rank)
        self.size = int(size)
        self.local_rank = int(local_rank)
        self.backend = backend
        self.timeout = resolve_timeout(timeout)
        self.operations = 0  # collectives issued so far (named in timeout errors)

    @property
    def is_root(self):
        return self.rank == 0

    def allreduce(self, buf, op="sum"):
        raise NotImplementedError

    def broadcast(self, buf, root=0):
        raise NotImplementedError

    def barrier(self):
        raise NotImplementedError

    def broadcast_text(self, text, root=0):
        raise NotImplementedError

    def abort(self, code=1):
        """End every rank of the job now."""
        raise NotImplementedError

    def _check_buffer(self, buf, what):
        if getattr(buf, "ndim", None) != 1:
            raise ConfigError(f"{what} works in place on one flat (1-d) array, got "
                              f"{type(buf).__name__} of shape {getattr(buf, 'shape', None)}")
        if not isinstance(buf, self.backend.xp.ndarray):
            raise ConfigError(f"{what}: the buffer must be an array of the {self.backend.name} "
                              f"backend, got {type(buf).__name__}")

    @staticmethod
    def _check_op(op):
        if op not in ("sum", "mean"):
            raise ConfigError(f"allreduce op must be 'sum' or 'mean', got {op!r}")

    def _timeout_error(self, what):
        return DistributedError(
            f"rank {self.rank} of {self.size}: {what} (collective #{self.operations}) did not complete "
            f"within {self.timeout:g} s: another rank has died or hangs. Stopping the job; resume "
            f"from the last checkpoint (fit(..., checkpoint=DIR, resume=True)). The limit is "
            f"timeout= of xpnet.distributed.init() or ${TIMEOUT_ENV}.")

    def __repr__(self):
        return (f"<xpnet {self.kind} communicator rank {self.rank}/{self.size} local rank "
                f"{self.local_rank} on {self.backend.name}>")


def wait(test, deadline, on_timeout, spin=0.02):
    """Poll ``test()`` until it returns True; past ``deadline`` (time.monotonic) raise on_timeout().

    MPI advances a non-blocking collective only while it is polled, so the first ``spin`` seconds
    poll without pause (as a blocking MPI call would); after that short sleeps, growing to 2 ms,
    leave the cores to the ranks that still compute (the one being waited for, on a shared machine).
    """
    calm = time.monotonic() + spin
    pause = 0.0
    while not test():
        now = time.monotonic()
        if now > deadline:
            raise on_timeout()
        if now > calm:
            time.sleep(pause)
            pause = min(0.002, pause * 2 or 0.00005)


_INSTALLED = []   # the AbortOnError guards of this process's jobs of several ranks


ROOT_GRACE = 30.0  # seconds another rank leaves rank 0 to report an error they all raise (10 s was
# not always enough for MPI_Abort to end the other ranks on a loaded 2-core CI runner)


def job_rank():
    """This process's rank in its job of several ranks (an installed AbortOnError), else None."""
    return _INSTALLED[-1].rank if _INSTALLED else None


def leave_to_root(exc):
    """For an error that every rank raises alike (``exc.every_rank``) on a rank other than 0:
    wait up to ROOT_GRACE seconds for rank 0 to report it and end the job (which ends this
    process), so the job prints one line, not one per rank. Returns if rank 0 did not end it."""
    if getattr(exc, "every_rank", False) and job_rank() not in (None, 0):
        for stream in (sys.stdout, sys.stderr):   # rank 0's abort may end this process in the sleep
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        time.sleep(ROOT_GRACE)


def abort_job(code):
    """End the whole job when this process is a rank of a job of several (an installed
    AbortOnError); otherwise do nothing. For a caller that handles an exception itself instead of
    letting it reach sys.excepthook: the CLI prints a user error as one line and would otherwise
    exit alone while the other ranks wait for it in a collective."""
    if _INSTALLED:
        _INSTALLED[-1].abort_now(code)


class AbortOnError:
    """While installed, an unhandled exception on this rank prints its traceback and aborts the job
    (as ``python -m mpi4py`` does), so the other ranks stop at once instead of waiting for it
    (``abort_job`` does the same for an exception that a caller has handled)."""

    def __init__(self, abort, rank=0):
        self._abort = abort
        self.rank = int(rank)
        self._previous = None

    def install(self):
        if self._previous is None:
            self._previous = sys.excepthook
            sys.excepthook = self._hook
            _INSTALLED.append(self)

    def uninstall(self):
        if self._previous is not None and sys.excepthook == self._hook:
            sys.excepthook = self._previous
        self._previous = None
        if self in _INSTALLED:
            _INSTALLED.remove(self)

    def abort_now(self, code):
        try:
            sys.stderr.flush()
        finally:
            self._abort(code)

    def _hook(self, kind, value, tb):
        (self._previous or sys.__excepthook__)(kind, value, tb)
        self.abort_now(1)


class Watchdog:
    """Aborts the job when a queued device collective does not finish in time.

    Device collectives (NCCL) are queued on a stream and never waited for on the host during a
    step, so a dead peer would only show as a hang at the next host sync. ``watch(done, what)``
    registers a completion test (a CUDA event's ``done``); a thread polls the oldest pending one and
    calls ``on_timeout(message)`` when it is older than ``timeout`` seconds.
    """

    def __init__(self, timeout, on_timeout, poll=0.05, clock=time.monotonic, thread_init=None):
        self.timeout = float(timeout)
        self.thread_init = thread_init  # run first in the watchdog thread (e.g. select the GPU)
        self.on_timeout = on_timeout
        self.poll = float(poll)
        self.clock = clock
        self._pending = []  # (start, done, what)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self.fired = None

    def watch(self, done, what):
        with self._lock:
            self._pending.append((self.clock(), done, what))
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="xpnet-dist-watchdog", daemon=True)
            self._thread.start()

    def pending(self):
        with self._lock:
            return len(self._pending)

    def check(self):
        """Drop finished entries; return the message for an overdue one (or None). One poll."""
        with self._lock:
            while self._pending and self._pending[0][1]():
                self._pending.pop(0)
            if self._pending and self.clock() - self._pending[0][0] > self.timeout:
                return self._pending[0][2]
        return None

    def _run(self):
        if self.thread_init is not None:
            self.thread_init()
        while not self._stop.wait(self.poll):
            try:
                what = self.check()
            except Exception as exc:  # e.g. NCCL reporting an asynchronous error
                what = f"a collective failed: {exc}"
            if what is not None:
                self.fired = what
                self.on_timeout(what)
                return

    def close(self):
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)
        self._thread = None
