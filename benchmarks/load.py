"""Busy processes beside a benchmark: a shared laptop or CI runner, on purpose.

    with BusyLoad(2) as load:   # two CPU-bound processes, running before the block starts
        ...                     # time something
    load.report()               # {"processes": 2, "cpu_s": [...], "wall_s": ...}

Each process is a fresh interpreter (``python -S -c``: nothing of the benchmark's threads or
libraries) spinning a pure-Python arithmetic loop, one core's worth of demand with no BLAS, no
threads and little memory traffic. The block starts only once every process has said it runs;
leaving the block (also on an exception or Ctrl-C) stops them with SIGTERM, on which each prints
the CPU seconds it got and exits (SIGKILL for any that has not within 5 s), so the result shows
that the load really ran. A process whose parent dies without stopping it notices within about a
second (its parent id changes) and exits: no load is ever left running.

Each process starts a session of its own, as another program would: Linux's autogroup scheduling
(``/proc/sys/kernel/sched_autogroup_enabled``, on by default on desktops and on this VM) shares the
CPU between sessions first and between a session's threads second, so load started in the
benchmark's own session would only compete inside the benchmark's share. For the same reason a
benchmark on a machine where another session is busy gets about one core of two whatever its
thread count: compare thread counts on an otherwise idle machine.
"""
import os
import signal
import subprocess
import sys
import time

_SPIN = """
import os, signal, sys, time
parent = int(sys.argv[1])
def stop(*_):
    print(time.process_time(), flush=True)
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
print("running", flush=True)
x = 1.0
while os.getppid() == parent:
    for _ in range(200000):
        x = x * 1.0000001 + 1e-9
"""


class BusyLoad:
    """``n`` busy processes for the duration of a ``with`` block (n = 0: nothing is started)."""

    def __init__(self, n):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"load must be a whole number of processes >= 0, got {n!r}")
        self.n = n
        self.procs = []
        self._cpu = []
        self._t0 = self._wall = None

    def __enter__(self):
        try:
            for _ in range(self.n):
                p = subprocess.Popen([sys.executable, "-S", "-c", _SPIN, str(os.getpid())],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
                self.procs.append(p)
            for p in self.procs:
                if p.stdout.readline().strip() != "running":
                    raise RuntimeError(f"a busy-load process exited with code {p.wait()} before it ran")
        except BaseException:
            self._stop()
            raise
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self._t0 is not None:
            self._wall = time.perf_counter() - self._t0
        self._stop()
        return False

    def _stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                out, _ = p.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            try:
                self._cpu.append(float(out.strip()))
            except ValueError:
                self._cpu.append(None)
        self.procs = []

    def report(self):
        """What ran: the number of processes, the CPU seconds each got, the block's wall time."""
        return {"processes": self.n, "wall_s": None if self._wall is None else round(self._wall, 2),
                "cpu_s": [None if c is None else round(c, 2) for c in self._cpu]}
