"""benchmarks/load.py: the busy processes of `benchmarks/run.py --load N` run while the block
runs, get CPU time, and are gone when it ends, also after an exception."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from load import BusyLoad  # noqa: E402


def busy_for(seconds):
    import time
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        pass


def test_load_runs_and_stops():
    with BusyLoad(2) as load:
        procs = list(load.procs)
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
        busy_for(0.5)
    assert all(p.poll() is not None for p in procs)     # stopped, and reaped
    report = load.report()
    assert report["processes"] == 2 and report["wall_s"] >= 0.5
    assert all(c is not None and c > 0.05 for c in report["cpu_s"]), report   # they really ran


def test_load_stops_after_an_exception():
    with pytest.raises(KeyError):
        with BusyLoad(1) as load:
            procs = list(load.procs)
            raise KeyError("boom")
    assert all(p.poll() is not None for p in procs)


def test_no_load_and_bad_values():
    with BusyLoad(0) as load:
        assert load.procs == []
    assert load.report()["processes"] == 0 and load.report()["cpu_s"] == []
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="whole number of processes"):
            BusyLoad(bad)
