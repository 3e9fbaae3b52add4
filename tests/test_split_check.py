"""The CPU pool keeps a pass on the calling thread while splitting it does not gain (beside a busy
process the worker waits for a core), and tries the pool again later (backends/cpu_threads.py
SplitCheck). Results never depend on the choice; only which thread runs the pieces does."""
import threading
import time

import numpy as np
import pytest

import xpnet.backends.numpy_kernels as nk
from xpnet.backends.cpu_threads import SplitCheck, split_mode


def record_passes(check, key, gain, passes):
    for _ in range(passes):
        assert check.split(key)
        check.record(key, cpu_s=gain * 1e-3, wall_s=1e-3)


def alone_passes(check, key):
    """How many passes in a row the site now runs alone (the split() that ends the count is the
    next try's first pass)."""
    n = 0
    while not check.split(key):
        n += 1
        assert n < 10_000
    return n


def test_a_site_that_does_not_gain_runs_alone_then_is_tried_again():
    C = SplitCheck
    check = C()
    record_passes(check, "a", gain=1.0, passes=C.PASSES - 1)
    assert check.split("a"), "no verdict before PASSES passes"
    check.record("a", 1e-3, 1e-3)                            # the 8th: no gain
    assert not check.split("a") and check.split("b")         # only that site waits
    assert alone_passes(check, "a") == C.HOLD_PASSES - 1
    check.record("a", 0.9e-3, 1e-3)                          # a retry takes RETRY_PASSES passes
    record_passes(check, "a", gain=0.9, passes=C.RETRY_PASSES - 1)
    assert alone_passes(check, "a") == 2 * C.HOLD_PASSES, "the second wait is twice as long"
    check.record("a", 1.8e-3, 1e-3)
    record_passes(check, "a", gain=1.8, passes=C.RETRY_PASSES - 1)   # the core came back: the pool wins
    record_passes(check, "a", gain=1.8, passes=3 * C.PASSES)
    record_passes(check, "a", gain=1.0, passes=C.PASSES)     # a new failure waits the first hold again
    assert alone_passes(check, "a") == C.HOLD_PASSES
    r = check.report()
    assert r["holds"] == 3 and r["sites"] == 1 and r["sites_alone_now"] == 0 and r["last_gains"] == [1.0]
    assert r["alone_passes"] == 4 * C.HOLD_PASSES


def test_the_wait_stops_growing_at_its_bound():
    C = SplitCheck
    check = C()
    record_passes(check, "a", gain=0.5, passes=C.PASSES)
    waits = []
    for _ in range(8):
        waits.append(alone_passes(check, "a"))
        check.record("a", 0.5e-3, 1e-3)
        record_passes(check, "a", gain=0.5, passes=C.RETRY_PASSES - 1)
    assert waits == [8, 16, 32, 64, 64, 64, 64, 64]
    assert C.RETRY_PASSES / (C.RETRY_PASSES + C.MAX_HOLD_PASSES) < 0.035


def test_a_pass_that_gains_stays_split_and_a_verdict_needs_all_its_passes():
    check = SplitCheck()
    record_passes(check, "a", gain=SplitCheck.GAIN + 0.01, passes=5 * SplitCheck.PASSES)
    assert check.split("a") and check.report()["holds"] == 0
    record_passes(check, "b", gain=0.1, passes=SplitCheck.PASSES - 1)
    assert check.split("b")


def slow_worker_passes(kernels, passes):
    """Passes whose pieces wait (without using the CPU) 1 ms on the calling thread and 5 ms on any
    other: as when the worker's core is busy with another process. Returns, per pass, the threads
    that ran a piece and the slices they ran."""
    main = threading.get_ident()
    seen = []
    x = np.arange(40.0)
    out = np.empty_like(x)

    def part(s):
        seen[-1].append((threading.get_ident() == main, s))
        time.sleep(0.001 if threading.get_ident() == main else 0.005)
        np.negative(x[s], out=out[s])

    for _ in range(passes):
        seen.append([])
        kernels.split(part, 40, nk.MIN_ELEMENTS)
        np.testing.assert_array_equal(out, -x)
    return seen


def test_the_pool_stops_splitting_a_pass_that_only_waits_for_its_worker():
    """With the check off (nk.ADAPTIVE = False) every pass stays split and this test fails (checked)."""
    kernels = nk.ElementwiseKernels(2)
    seen = slow_worker_passes(kernels, SplitCheck.PASSES + 3)
    assert any(not on_main for on_main, _ in seen[0]), "the first passes use the worker"
    for later in seen[SplitCheck.PASSES:]:
        assert later == [(True, slice(None))], "a pass that did not gain still went to the pool"
    assert kernels.check.report()["holds"] == 1


def test_always_keeps_splitting(monkeypatch):
    monkeypatch.setattr(nk, "ADAPTIVE", False)
    seen = slow_worker_passes(nk.ElementwiseKernels(2), SplitCheck.PASSES + 3)
    assert all(len(p) > 1 for p in seen)


def test_split_mode_reads_the_environment(monkeypatch):
    monkeypatch.delenv("XPNET_SPLIT", raising=False)
    assert split_mode() == "auto"
    monkeypatch.setenv("XPNET_SPLIT", "Always")
    assert split_mode() == "always"
    monkeypatch.setenv("XPNET_SPLIT", "sometimes")
    with pytest.raises(ValueError, match="XPNET_SPLIT must be 'auto' or 'always', got 'sometimes'"):
        split_mode()


def test_the_pool_reports_its_threads_cpu_time():
    """DaemonPool.run returns the pieces' CPU seconds and the batch's wall seconds."""
    pool = nk.DaemonPool(1)
    a = np.random.default_rng(0).standard_normal((2, 400, 400)).astype(np.float32)

    def part(s):
        for _ in range(3):
            np.matmul(a[s], a[s])

    cpu, wall = pool.run(part, [slice(0, 1), slice(1, 2)])
    assert 0 < cpu and 0 < wall and cpu < 3 * wall + 0.05
