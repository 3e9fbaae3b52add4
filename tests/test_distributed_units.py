"""xpnet.distributed piece by piece, in this process: the RNG row views, flat buffers, epoch
reduction, the deadline and the watchdog, the MPI communicator on one rank, and the NCCL
communicator's GPU-only logic (device selection, buffer pointers, NCCL types and ops, the unique
id, the event watchdog) through a fake ``cupy.cuda.nccl`` and a fake CuPy backend: no GPU here,
so the NCCL path has not run on real hardware."""
import ctypes
import threading
import time
import types

import numpy as np
import pytest

from xpnet import distributed
from xpnet.backends import get_backend
from xpnet.distributed import base
from xpnet.distributed.data_parallel import DataParallel, FlatBuffer, agree_sizes, check_batches, shard_bounds
from xpnet.distributed.nccl import NCCLCommunicator, decode_id, encode_id, select_device
from xpnet.errors import BackendError, BatchSizeError, ConfigError, on_every_rank


# -- generators: rows of a global batch -------------------------------------------------------
@pytest.mark.parametrize("draw", ["bernoulli_mask", "random64", "random32", "normal", "integers"])
@pytest.mark.parametrize("shape", [(7, 3, 5), (5,), (6, 1)])
def test_row_views_give_the_rows_of_the_whole_draw(backend, draw, shape):
    def make(gen, s):
        return {"bernoulli_mask": lambda: gen.bernoulli_mask(0.7, s),
                "random64": lambda: gen.random(s, "float64"),
                "random32": lambda: gen.random(s, "float32"),
                "normal": lambda: gen.normal(0.0, 1.0, s),
                "integers": lambda: gen.integers(0, 10, s)}[draw]()

    whole_rng = backend.rng(3, 5)
    whole_rng.counter = 13
    whole = backend.to_numpy(make(whole_rng, shape))
    n = shape[0]
    for cuts in ([0, n], [0, n // 2, n], list(range(n + 1))):
        parts = []
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            r = backend.rng(3, 5)
            r.counter = 13
            parts.append(backend.to_numpy(make(r.rows(lo, hi, n), (hi - lo,) + shape[1:])))
            assert r.counter == whole_rng.counter  # advanced past the whole draw: ranks stay in step
        assert np.array_equal(np.concatenate(parts), whole)


def test_row_view_refuses_a_draw_without_the_batch_rows():
    view = get_backend("numpy").rng(0).rows(2, 5, 8)
    with pytest.raises(ValueError, match="3 rows"):
        view.random((6, 3))
    with pytest.raises(ValueError):
        get_backend("numpy").rng(0).rows(5, 2, 8)


def test_shards_cover_the_batch():
    for n in (1, 2, 7, 15, 16):
        for size in (1, 2, 3, 4):
            bounds = [shard_bounds(n, r, size) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1


def test_flat_buffer_packs_and_gives_views(backend):
    xp = backend.xp
    arrays = [xp.arange(6, dtype=xp.float64).reshape(2, 3), xp.ones((4,), dtype=xp.float64)]
    buf = FlatBuffer(xp, arrays, xp.float64)
    flat = buf.pack(arrays)
    assert flat.shape == (10,)
    flat *= 2.0
    views = buf.views()
    assert [tuple(v.shape) for v in views] == [(2, 3), (4,)]
    assert np.array_equal(backend.to_numpy(views[0]), 2 * np.arange(6.0).reshape(2, 3))


# -- a fake 2-rank communicator: what the other rank contributes is given ----------------------
class PeerComm:
    """Rank ``rank`` of 2; the other rank's buffer is ``peer`` (host values) in every all-reduce."""

    def __init__(self, backend, rank, peer):
        self.backend, self.rank, self.size, self.peer = backend, rank, 2, peer
        self.calls = []

    def allreduce(self, buf, op="sum"):
        self.calls.append(("allreduce", int(buf.shape[0])))
        buf[...] = buf + self.backend.asarray(np.asarray(self.peer(int(buf.shape[0]))))
        return buf

    def broadcast(self, buf, root=0):
        self.calls.append(("broadcast", int(buf.shape[0])))
        return buf


def _model(backend):
    import xpnet
    from xpnet.layers import Dense
    m = xpnet.Sequential([Dense(3)], input_shape=(4,), device=backend, dtype="float64")
    return m.compile(optimizer="sgd")


def test_epoch_sums_are_reduced_once_and_first_bad_batch_is_the_earliest(backend):
    xp = backend.xp
    # rank 1's sums: loss 5, correct 2, no bad batch (slot 0), val 1 and 1; its slot says batch 3 went bad
    comm = PeerComm(backend, 0, lambda k: [5.0, 2.0, 0.0, 1.0, 1.0, 0.0, 4.0])
    dp = DataParallel(_model(backend), comm, batch_size=4, n=8, steps_per_epoch=None)
    host = dp.reduce_epoch(xp.asarray([1.0, 3.0, 6.0, 2.0, 0.0]), bad_index=2)
    assert comm.calls == [("allreduce", 7)]
    assert list(host) == [6.0, 5.0, 3.0, 3.0, 1.0]  # batch 3 of rank 1 comes before batch 6 of rank 0
    comm = PeerComm(backend, 0, lambda k: [0.0] * k)
    dp = DataParallel(_model(backend), comm, batch_size=4, n=8, steps_per_epoch=None)
    assert dp.reduce_epoch(xp.asarray([1.0, 3.0, -1.0]), bad_index=2)[2] == -1.0


def test_gradients_go_in_one_allreduce(backend):
    model = _model(backend)
    xp = backend.xp
    model.layers[0].grads = {"W": xp.ones((4, 3), dtype=xp.float64), "b": xp.ones((3,), dtype=xp.float64)}
    comm = PeerComm(backend, 1, lambda k: np.arange(k, dtype=np.float64))
    dp = DataParallel(model, comm, batch_size=4, n=8, steps_per_epoch=None)
    dp.reduce_gradients()
    assert comm.calls == [("allreduce", 15)]
    grads = {k: backend.to_numpy(v) for k, v in model.gradients.items()}
    assert np.array_equal(grads["dense.W"], 1 + np.arange(12.0).reshape(4, 3))
    assert np.array_equal(grads["dense.b"], 1 + np.arange(12.0, 15.0))


def test_data_parallel_refuses_what_cannot_be_sharded():
    model = _model(get_backend("numpy"))
    comm = PeerComm(get_backend("numpy"), 0, None)
    with pytest.raises(ConfigError, match="at least 2"):
        DataParallel(model, comm, batch_size=1, n=8, steps_per_epoch=None)
    with pytest.raises(ConfigError, match="last batch"):
        DataParallel(model, comm, batch_size=4, n=9, steps_per_epoch=None)
    DataParallel(model, comm, batch_size=4, n=9, steps_per_epoch=2)  # full batches only: fine
    with pytest.raises(ConfigError, match="device=comm.backend"):
        DataParallel(model, PeerComm(get_backend("strict"), 0, None), 4, 8, None)
    with pytest.raises(ConfigError, match="communicator"):
        DataParallel(model, object(), 4, 8, None)


def test_ranks_with_other_sizes_are_refused_naming_each_ranks_value():
    """Rank 1 holds 1024 training samples where rank 0 holds 256 (one all-reduce of every size):
    a ConfigError naming both, before any step; agreeing ranks go on."""
    backend = get_backend("numpy")
    sizes = [("the number of training samples", 256), ("the steps per epoch", 4)]
    comm = PeerComm(backend, 0, lambda k: [0.0, 1024.0, 0.0, 4.0])
    with pytest.raises(ConfigError, match="the ranks disagree on the number of training samples: "
                                          "rank 0: 256, rank 1: 1024; every rank must train on"):
        agree_sizes(comm, sizes)
    assert comm.calls == [("allreduce", 4)]
    comm = PeerComm(backend, 1, lambda k: [256.0, 0.0, 4.0, 0.0])
    agree_sizes(comm, sizes)


def test_fit_compares_the_sizes_before_the_batch_check():
    """A rank whose 9 samples leave a last batch of 1 for 2 ranks raised BatchSizeError alone,
    while the rank holding 8 waited in the size agreement for it until the collectives' deadline:
    the sizes are compared first, so both ranks name the disagreement. On sizes the ranks agree
    on, the batch check fails on every rank alike, marked so (rank 0 alone prints it)."""
    backend = get_backend("numpy")
    x, y = np.ones((9, 4)), np.zeros(9, dtype=np.int64)
    comm = PeerComm(backend, 0, lambda k: np.r_[0.0, 8.0, np.zeros(k - 2)])
    with pytest.raises(ConfigError, match="training samples: rank 0: 9, rank 1: 8") as info:
        _model(backend).fit(x, y, epochs=1, batch_size=4, verbose=0, distributed=comm)
    assert not isinstance(info.value, BatchSizeError)
    # rank 1's slots of the agreement (rank r's value i at i * 2 + r): samples 9, validation 0,
    # batch 4, steps 3, epochs 1, as rank 0's
    comm = PeerComm(backend, 0, lambda k: [0.0, 9.0, 0.0, 0.0, 0.0, 4.0, 0.0, 3.0, 0.0, 1.0])
    with pytest.raises(BatchSizeError, match="last batch of each epoch would hold 1 of 9") as info:
        _model(backend).fit(x, y, epochs=1, batch_size=4, verbose=0, distributed=comm)
    assert getattr(info.value, "every_rank", False)


def test_fit_checks_the_sizes_before_the_first_step():
    """fit(distributed=) with a rank of other data stops before its first collective of a step."""
    backend = get_backend("numpy")
    model = _model(backend)
    x, y = np.ones((8, 4)), np.zeros(8, dtype=np.int64)
    comm = PeerComm(backend, 0, lambda k: np.r_[0.0, 16.0, np.zeros(k - 2)])
    with pytest.raises(ConfigError, match="training samples: rank 0: 8, rank 1: 16"):
        model.fit(x, y, epochs=1, batch_size=4, verbose=0, distributed=comm)
    assert comm.calls == [("allreduce", 10)]


# -- deadlines ---------------------------------------------------------------------------------
def test_wait_gives_up_at_the_deadline():
    import time
    start = time.monotonic()
    with pytest.raises(base.DistributedError, match="gave up"):
        base.wait(lambda: False, time.monotonic() + 0.2,
                  lambda: base.DistributedError("gave up"))
    assert 0.2 <= time.monotonic() - start < 2.0
    calls = iter([False, False, True])
    base.wait(lambda: next(calls), time.monotonic() + 5, lambda: AssertionError("not reached"))


def test_timeout_setting(monkeypatch):
    monkeypatch.delenv(base.TIMEOUT_ENV, raising=False)
    assert base.resolve_timeout(None) == base.DEFAULT_TIMEOUT
    monkeypatch.setenv(base.TIMEOUT_ENV, "12.5")
    assert base.resolve_timeout(None) == 12.5
    assert base.resolve_timeout(3) == 3.0
    for bad in (0, -1, "soon", float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="timeout"):
            base.resolve_timeout(bad)


def test_watchdog_fires_only_for_an_overdue_collective():
    now = [0.0]
    fired = []
    dog = base.Watchdog(10.0, fired.append, clock=lambda: now[0])
    finished = [False]
    dog._thread = object()  # drive it by hand: no thread
    dog.watch(lambda: finished[0], "allreduce #1")
    now[0] = 9.0
    assert dog.check() is None
    finished[0] = True
    now[0] = 50.0
    assert dog.check() is None and dog.pending() == 0
    dog.watch(lambda: False, "allreduce #2")
    now[0] = 61.0
    assert dog.check() == "allreduce #2"


def test_watchdog_thread_calls_on_timeout():
    import threading
    fired = threading.Event()
    messages, started = [], []
    dog = base.Watchdog(0.1, lambda what: (messages.append(what), fired.set()), poll=0.02,
                        thread_init=lambda: started.append(threading.current_thread().name))
    dog.watch(lambda: False, "broadcast #7")
    assert fired.wait(5.0)
    assert messages == ["broadcast #7"] and started == ["xpnet-dist-watchdog"]
    dog.close()


def test_unhandled_error_aborts_the_job(monkeypatch):
    import sys
    aborted, shown = [], []
    monkeypatch.setattr(sys, "excepthook", lambda *a: shown.append(a[0]))
    guard = base.AbortOnError(aborted.append)
    guard.install()
    try:
        sys.excepthook(RuntimeError, RuntimeError("boom"), None)
    finally:
        guard.uninstall()
    assert shown == [RuntimeError] and aborted == [1]


# -- the MPI communicator on one rank (this process) --------------------------------------------
@pytest.fixture(scope="module")
def mpi_comm():
    from tests.mpi_helpers import require_mpi
    require_mpi()   # mpi4py that imports but whose MPI library does not load: a skip, not an error
    return distributed.init("cpu", timeout=30)


def test_mpi_communicator_on_one_rank(mpi_comm, backend):
    comm = mpi_comm
    assert (comm.rank, comm.size, comm.local_rank) == (0, 1, 0) and comm.kind == "MPI"
    comm.backend = backend
    try:
        xp = backend.xp
        buf = xp.asarray([1.0, 2.0, 4.0])
        assert comm.allreduce(buf) is buf
        assert comm.allreduce(buf, "mean") is buf
        assert np.array_equal(backend.to_numpy(buf), [1.0, 2.0, 4.0])
        assert comm.broadcast(buf) is buf
        comm.barrier()
        assert comm.broadcast_text("runs/20261130-x") == "runs/20261130-x"
        assert comm.broadcast_text("") == ""
        with pytest.raises(ConfigError, match="flat"):
            comm.allreduce(xp.ones((2, 2)))
        with pytest.raises(ConfigError, match="'sum' or 'mean'"):
            comm.allreduce(buf, "max")
        with pytest.raises(ConfigError, match="backend"):
            other = get_backend("strict").xp.ones((2,)) if backend.name == "numpy" else np.ones(2)
            comm.allreduce(other)
        assert comm.operations >= 4
    finally:
        comm.backend = get_backend("cpu")


def test_init_rejects_unknown_devices():
    with pytest.raises(BackendError, match="unknown device"):
        distributed.init("tpu")


# -- NCCL through fakes --------------------------------------------------------------------------
class FakeArray:
    """A device array as NCCLCommunicator sees it: .data.ptr, .size, .dtype, in-place division."""

    def __init__(self, a):
        self.a = a
        self.data = types.SimpleNamespace(ptr=a.ctypes.data)
        self.size, self.dtype, self.ndim, self.shape = a.size, a.dtype, a.ndim, a.shape

    def __itruediv__(self, k):
        self.a /= k
        return self


class FakeEvent:
    def __init__(self, **kwargs):
        self.kwargs, self.stream, self.done = kwargs, None, True

    def record(self, stream):
        self.stream = stream


STREAM = types.SimpleNamespace(ptr=4242)
USED_DEVICES = []
DEVICE_THREADS = []   # the thread that made each USED_DEVICES entry


class FakeDevice:
    def __init__(self, device):
        self.device = device

    def use(self):
        USED_DEVICES.append(self.device)
        DEVICE_THREADS.append(threading.current_thread())


FAKE_CUPY = types.SimpleNamespace(ndarray=FakeArray, cuda=types.SimpleNamespace(
    get_current_stream=lambda: STREAM, Event=FakeEvent, Device=FakeDevice))


class FakeGPUBackend:
    name, is_gpu, xp, device_id = "cupy", True, FAKE_CUPY, 3

    def __init__(self):
        self.syncs = 0

    def synchronize(self):
        self.syncs += 1


class FakeNccl:
    """cupy.cuda.nccl's surface; the communicator adds a second rank's values (``peer``)."""
    NCCL_SUM, NCCL_INT32, NCCL_INT64, NCCL_FLOAT32, NCCL_FLOAT64 = 0, 2, 4, 7, 8
    UID = bytes(range(128))

    def __init__(self, peer):
        fake = self

        class NcclCommunicator:
            def __init__(self, ndev, uid, rank):
                fake.created = (ndev, uid, rank)
                self.calls, self.aborted, self.destroyed = [], False, False

            def allReduce(self, send, recv, count, dtype, op, stream):
                self.calls.append(("allReduce", send, recv, count, dtype, op, stream))
                ctype = {7: ctypes.c_float, 8: ctypes.c_double}[dtype]
                np.ctypeslib.as_array((ctype * count).from_address(recv))[:] += peer[:count]

            def bcast(self, buff, count, dtype, root, stream):
                self.calls.append(("bcast", buff, count, dtype, root, stream))

            def check_async_error(self):
                pass

            def abort(self):
                self.aborted = True

            def destroy(self):
                self.destroyed = True

        self.NcclCommunicator = NcclCommunicator

    def get_unique_id(self):
        return self.UID


class FakeControl:
    """The MPI communicator an NCCL one is made through (rank 1 of 2 here)."""

    def __init__(self, rank=1):
        self.rank, self.size, self.local_rank, self.local_size, self.timeout = rank, 2, 0, 2, 30.0
        self.texts, self.aborted, self.barriers, self.closed = [], [], 0, False

    def broadcast_text(self, text, root=0):
        self.texts.append(text)
        return encode_id(FakeNccl.UID)  # what rank 0 sent

    def barrier(self):
        self.barriers += 1

    def abort(self, code=1):
        self.aborted.append(code)

    def close(self):
        self.closed = True


def test_nccl_communicator_passes_device_pointers_types_and_the_stream():
    nccl = FakeNccl(peer=np.array([10.0, 20.0, 30.0]))
    control = FakeControl()
    comm = distributed.communicator_for(FakeGPUBackend(), control, nccl=nccl)
    assert isinstance(comm, NCCLCommunicator) and comm.kind == "NCCL"
    assert nccl.created == (2, FakeNccl.UID, 1)  # rank 0's id, received over MPI
    assert control.texts == [""]  # rank 1 sends nothing
    host = np.array([1.0, 2.0, 3.0])
    buf = FakeArray(host)
    assert comm.allreduce(buf, "mean") is buf
    call = comm.comm.calls[-1]
    assert call == ("allReduce", host.ctypes.data, host.ctypes.data, 3, 8, 0, 4242)  # in place
    assert np.array_equal(host, [5.5, 11.0, 16.5])
    f32 = FakeArray(np.ones(2, dtype=np.float32))
    comm.allreduce(f32)
    assert comm.comm.calls[-1][4] == 7 and np.array_equal(f32.a, [11.0, 21.0])
    comm.broadcast(buf, root=0)
    assert comm.comm.calls[-1] == ("bcast", host.ctypes.data, 3, 8, 0, 4242)
    with pytest.raises(BackendError, match="float16"):
        comm.allreduce(FakeArray(np.ones(2, dtype=np.float16)))
    comm.barrier()
    assert control.barriers == 1 and comm.backend.syncs == 1
    comm._use_device()  # what the watchdog thread runs first: this rank's GPU
    assert USED_DEVICES and set(USED_DEVICES) == {3}
    # and the watchdog thread itself runs it (its thread_init): calling it here alone could not
    # fail when the communicator left it out of its Watchdog
    deadline = time.monotonic() + 10
    while comm.watchdog._thread not in DEVICE_THREADS and time.monotonic() < deadline:
        time.sleep(0.01)
    assert comm.watchdog._thread in DEVICE_THREADS, "the watchdog thread never chose the rank's GPU"
    comm.close()
    assert comm.comm.destroyed and control.closed


def test_nccl_watchdog_aborts_nccl_then_mpi():
    comm = distributed.communicator_for(FakeGPUBackend(), FakeControl(),
                                        nccl=FakeNccl(peer=np.zeros(3)))
    comm._on_timeout("allreduce of 3 values (collective #5)")
    assert comm.comm.aborted and comm.mpi.aborted == [1]
    comm.watchdog.close()


def test_rank_zero_creates_the_unique_id():
    control = FakeControl(rank=0)
    comm = NCCLCommunicator(control, FakeGPUBackend(), nccl=FakeNccl(peer=np.zeros(1)))
    assert decode_id(control.texts[0]) == FakeNccl.UID
    assert decode_id(encode_id((1, -2, 3))) == (1, -2, 3)  # old CuPy: a tuple of ints
    comm.watchdog.close()


def test_cpu_backends_keep_the_mpi_communicator():
    control = FakeControl()
    strict = get_backend("strict")
    assert distributed.communicator_for(strict, control) is control and control.backend is strict


def test_one_gpu_per_rank_by_local_rank():
    assert [select_device(r, 4, 8) for r in range(4)] == [0, 1, 2, 3]
    with pytest.raises(BackendError, match="3 ranks run on this machine but it has 2"):
        select_device(2, 3, 2)
    with pytest.raises(BackendError, match="no CUDA GPU"):
        select_device(0, 1, 0)


def test_no_gpu_for_a_rank_says_how_to_ask_for_the_cpu_in_the_callers_words(capsys):
    """It said "use --device cpu (MPI)" to xpnet.distributed.init("gpu") callers too: the API now
    reads device='cpu' and the command line --device cpu."""
    from xpnet.errors import NoGPUError
    with pytest.raises(NoGPUError) as caught:
        select_device(0, 1, 0)
    assert str(caught.value) == ("no CUDA GPU is visible to this rank; use device='cpu' instead "
                                 "(data-parallel over MPI on the CPUs)")
    assert "--device" not in str(caught.value)
    from xpnet import cli
    assert cli.guarded("xpnet train", lambda: select_device(0, 1, 0)) == 2
    assert capsys.readouterr().err == ("xpnet train: error: no CUDA GPU is visible to this rank; use "
                                       "--device cpu instead (data-parallel over MPI on the CPUs)\n")


def test_a_user_error_on_a_rank_of_the_cli_aborts_the_job(monkeypatch, capsys):
    """The CLI prints an XpnetError (a DistributedError included) as one line instead of letting it
    reach sys.excepthook; in a job of several ranks it must still abort the job, or the other
    ranks wait for this one in their next collective. Outside a job nothing is aborted."""
    from xpnet import cli

    def fail():
        raise base.DistributedError("rank 1 of 2: allreduce of 8 values did not complete")
    assert cli.guarded("xpnet train", fail) == 2   # no job: a plain status
    aborted = []
    guard = base.AbortOnError(aborted.append)
    guard.install()
    try:
        assert cli.guarded("xpnet train", fail) == 2
    finally:
        guard.uninstall()
    assert aborted == [2]
    assert "xpnet train: error: rank 1 of 2" in capsys.readouterr().err
    assert cli.guarded("xpnet train", fail) == 2 and aborted == [2]   # uninstalled: no abort


def test_ctrl_c_or_sigterm_on_a_rank_of_the_cli_aborts_the_job(monkeypatch, capsys):
    """A signal that stops one rank (its KeyboardInterrupt) ends the whole job with the rank's own
    status (130, or 143 for SIGTERM) after its line, instead of leaving the others to wait for it
    until their deadline."""
    from xpnet import cli

    def interrupted():
        raise KeyboardInterrupt
    aborted = []
    guard = base.AbortOnError(aborted.append)
    guard.install()
    try:
        assert cli.guarded("xpnet train", interrupted) == 130
        monkeypatch.setattr(cli, "_TERMINATED", [True])
        assert cli.guarded("xpnet train", interrupted) == 143
    finally:
        guard.uninstall()
    assert aborted == [130, 143]
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["xpnet train: interrupted", "xpnet train: stopped by SIGTERM"]


def test_batches_the_ranks_cannot_share_are_worded_for_the_api_and_the_command_line():
    """check_batches said batch_size (and steps_per_epoch, which the command line has not) to
    `xpnet train --distributed --batch-size ...` too: the command line words it --batch-size."""
    with pytest.raises(BatchSizeError) as small:
        check_batches(1, 300, 2)
    assert str(small.value) == "batch_size is the global batch over all 2 ranks and must be at least 2, got 1"
    assert small.value.worded("--batch-size").startswith("--batch-size is the global batch over all 2 ranks")
    with pytest.raises(BatchSizeError) as last:
        check_batches(64, 257, 2)
    assert str(last.value).endswith("; choose a batch_size that divides 257 or leaves at least 2 "
                                    "samples over, or pass steps_per_epoch")
    assert last.value.worded("--batch-size").endswith("; choose a --batch-size that divides 257 or "
                                                      "leaves at least 2 samples over")
    check_batches(64, 257, 2, steps_per_epoch=4)   # steps_per_epoch: no short last batch


class AgreeingComm:
    """Rank ``rank`` of ``size`` whose peers hold what it holds (every all-reduce agrees)."""

    def __init__(self, backend, rank, size):
        self.backend, self.rank, self.size = backend, rank, size

    def allreduce(self, buf, op="sum"):
        groups = buf.reshape(-1, self.size)
        groups[...] = groups[:, self.rank:self.rank + 1]
        return buf


def test_a_resume_on_ranks_that_cannot_share_the_batch_names_the_rank_counts_not_batch_size():
    """A run resumed (--resume, which takes no --batch-size) on more ranks than its batch allows
    was told to choose another --batch-size; it is now told how many ranks can take it."""
    from xpnet import runner
    config = {"recipe": {"batch_size": 50}, "distributed": {"ranks": 2},
              "resumed": [{"device": "numpy"}]}   # the sitting being started
    comm = AgreeingComm(get_backend("numpy"), 0, 3)
    with pytest.raises(ConfigError) as caught:
        runner._check_resume_ranks(config, "runs/x", 302, comm)
    assert not isinstance(caught.value, BatchSizeError)   # nothing the CLI would word --batch-size
    assert str(caught.value) == (
        "runs/x cannot be resumed on 3 ranks: the last batch of each epoch would hold 2 of 302 "
        "samples, fewer than the 3 ranks; --resume keeps the run's batch size (50), so resume it on "
        "at most 2 ranks (it last trained on 2 ranks)")
    config = {"recipe": {"batch_size": 2}, "resumed": [{"distributed": {"ranks": 2}}, {}]}
    with pytest.raises(ConfigError, match=r"the global batch of 2 samples is smaller than the 3 ranks; "
                       r"--resume keeps the run's batch size \(2\), so resume it on at most 2 ranks "
                       r"\(it last trained on 2 ranks\)"):
        runner._check_resume_ranks(config, "runs/x", 300, comm)
    with pytest.raises(ConfigError, match=r"at most 2 ranks \(it last trained on 1 rank\)"):
        runner._check_resume_ranks({"recipe": {"batch_size": 2}, "resumed": [{}]}, "runs/x", 300, comm)
    runner._check_resume_ranks({"recipe": {"batch_size": 50}, "resumed": [{}]}, "runs/x", 303, comm)


@pytest.mark.parametrize("rank", [0, 1])
def test_an_error_every_rank_raises_is_printed_by_rank_zero_only(monkeypatch, capsys, rank):
    """A refusal decided on values the ranks agree on (agree_sizes, the batch check) is raised by
    every rank, and each printed the same line: a rank other than 0 now leaves the line to rank 0,
    whose MPI_Abort ends it while it waits (here: the wait raises in its stead). Should rank 0 not
    end the job within the grace period, it says the line itself and ends the job."""
    from xpnet import cli

    class Ended(BaseException):
        pass

    def end_by_rank_zero(seconds):
        assert seconds == base.ROOT_GRACE
        raise Ended
    monkeypatch.setattr(base.time, "sleep", end_by_rank_zero)
    comm = PeerComm(get_backend("numpy"), rank, lambda k: np.r_[8.0, 8.0][:k] * (np.arange(k) != rank))
    aborted = []
    guard = base.AbortOnError(aborted.append, rank)
    guard.install()
    try:
        if rank == 0:
            assert cli.guarded("xpnet train", lambda: agree_sizes(comm, [("the batch size", 4)])) == 2
        else:
            with pytest.raises(Ended):
                cli.guarded("xpnet train", lambda: agree_sizes(comm, [("the batch size", 4)]))
    finally:
        guard.uninstall()
    err = capsys.readouterr().err
    if rank == 0:
        assert err.startswith("xpnet train: error: the ranks disagree on the batch size: rank 0: 4, rank 1: 8")
        assert aborted == [2]
    else:
        assert err == "" and aborted == []


def test_a_rank_that_rank_zero_leaves_running_reports_the_shared_error_itself(monkeypatch, capsys):
    from xpnet import cli
    waited = []
    monkeypatch.setattr(base.time, "sleep", waited.append)
    aborted = []
    guard = base.AbortOnError(aborted.append, 1)
    guard.install()
    try:
        def shared():
            raise on_every_rank(BatchSizeError("{batch_size} is too small"))

        def own():
            raise base.DistributedError("rank 1 of 2: allreduce of 8 values did not complete")
        assert cli.guarded("xpnet train", shared) == 2
        assert cli.guarded("xpnet train", own) == 2
    finally:
        guard.uninstall()
    assert waited == [base.ROOT_GRACE]   # only the shared error waits for rank 0; the own one does not
    assert capsys.readouterr().err.splitlines() == [
        "xpnet train: error: --batch-size is too small",
        "xpnet train: error: rank 1 of 2: allreduce of 8 values did not complete"]
    assert aborted == [2, 2]
