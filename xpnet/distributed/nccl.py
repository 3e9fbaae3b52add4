"""The NCCL communicator (``cupy.cuda.nccl``): device buffers, one GPU per rank, made through MPI.

Rank 0 asks NCCL for a unique id, MPI broadcasts it, and every rank joins with
``NcclCommunicator(size, id, rank)`` on the GPU chosen by its local rank. Collectives are queued on
the current CuPy stream: the host does not wait for them, so training keeps its one host sync per
epoch. A watchdog thread records a CUDA event after each collective and aborts the job (NCCL
``abort`` then ``MPI_Abort``) when one has not completed within the timeout, which is how a dead
or hung peer is noticed without a host sync per step. Control messages (run folders, barriers)
go over the MPI communicator it was made from.

Not yet run on a GPU: the code follows CuPy's documented API and is tested on the CPU through a
fake ``nccl`` module (tests/test_distributed_units.py).
"""
import json
import sys
import threading

from ..errors import BackendError, NoGPUError
from .base import Communicator, Watchdog

INSTALL_HINT = ("NCCL comes with CuPy's CUDA wheels (pip install -e '.[cuda12]' from the checkout); check "
                "`python -c 'from cupy.cuda import nccl'`")


def import_nccl():
    try:
        from cupy.cuda import nccl
    except ImportError as exc:
        raise BackendError(f"multi-GPU training needs NCCL through CuPy, which is not available "
                           f"({exc}): {INSTALL_HINT}") from exc
    if not getattr(nccl, "available", True):
        raise BackendError(f"CuPy was built without NCCL: {INSTALL_HINT}")
    return nccl


def select_device(local_rank, local_size, device_count):
    """The GPU of a rank: its local rank. More ranks on a machine than GPUs is an error; none is a
    NoGPUError, which the command line words "--device cpu" and the API "device='cpu'"."""
    if device_count < 1:
        raise NoGPUError("no CUDA GPU is visible to this rank",
                         "use {cpu} instead (data-parallel over MPI on the CPUs)")
    if local_size > device_count:
        raise BackendError(f"{local_size} ranks run on this machine but it has {device_count} visible "
                           f"GPU(s); start at most {device_count} ranks per machine (one GPU each), "
                           f"e.g. mpirun -n {device_count}, or check CUDA_VISIBLE_DEVICES")
    return int(local_rank)


def encode_id(uid):
    """NCCL's unique id (bytes in new CuPy, a tuple of ints in old) as JSON text for MPI."""
    if isinstance(uid, (bytes, bytearray)):
        return json.dumps({"bytes": bytes(uid).hex()})
    return json.dumps({"ints": [int(v) for v in uid]})


def decode_id(text):
    data = json.loads(text)
    return bytes.fromhex(data["bytes"]) if "bytes" in data else tuple(data["ints"])


class NCCLCommunicator(Communicator):
    """NCCL all-reduce/broadcast on device arrays; ``mpi`` is the MPICommunicator it is made from."""

    kind = "NCCL"

    def __init__(self, mpi, backend, timeout=None, nccl=None):
        super().__init__(mpi.rank, mpi.size, mpi.local_rank, backend,
                         mpi.timeout if timeout is None else timeout)
        self.mpi = mpi
        self.nccl_module = nccl or import_nccl()
        nccl = self.nccl_module
        self._dtypes = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64,
                        "int64": nccl.NCCL_INT64, "int32": nccl.NCCL_INT32}
        self.watchdog = Watchdog(self.timeout, self._on_timeout, thread_init=self._use_device)
        uid = mpi.broadcast_text(encode_id(nccl.get_unique_id()) if mpi.rank == 0 else "")
        joined = threading.Event()  # NcclCommunicator() blocks until every rank has joined
        self.watchdog.watch(joined.is_set, "creating the NCCL communicator")
        self.comm = nccl.NcclCommunicator(self.size, decode_id(uid), self.rank)
        joined.set()

    def _use_device(self):
        """The watchdog thread queries events of this rank's GPU: make it the thread's device."""
        device = getattr(self.backend, "device_id", None)
        if device is not None:
            self.backend.xp.cuda.Device(device).use()

    # -- collectives -------------------------------------------------------------------------
    def _stream(self):
        return self.backend.xp.cuda.get_current_stream()

    def _dtype(self, buf):
        name = str(buf.dtype)
        if name not in self._dtypes:
            raise BackendError(f"NCCL collectives here take {', '.join(self._dtypes)} buffers, got {name}")
        return self._dtypes[name]

    def _queued(self, stream, what):
        """Record an event after the collective just queued; the watchdog waits for it."""
        self.operations += 1
        event = self.backend.xp.cuda.Event(block=False, disable_timing=True, interprocess=False)
        event.record(stream)
        comm = self.comm

        def done():
            comm.check_async_error()
            return event.done
        self.watchdog.watch(done, f"{what} (collective #{self.operations})")

    def allreduce(self, buf, op="sum"):
        """Sum (or average) ``buf`` over all GPUs in place, queued on the current stream."""
        self._check_buffer(buf, "allreduce")
        self._check_op(op)
        stream = self._stream()
        ptr = buf.data.ptr
        self.comm.allReduce(ptr, ptr, buf.size, self._dtype(buf), self.nccl_module.NCCL_SUM, stream.ptr)
        self._queued(stream, f"allreduce of {buf.size} values")
        if op == "mean":
            buf /= self.size
        return buf

    def broadcast(self, buf, root=0):
        self._check_buffer(buf, "broadcast")
        stream = self._stream()
        self.comm.bcast(buf.data.ptr, buf.size, self._dtype(buf), int(root), stream.ptr)
        self._queued(stream, f"broadcast of {buf.size} values")
        return buf

    def barrier(self):
        """Wait for this GPU's queued work, then for every rank (over MPI)."""
        self.backend.synchronize()
        self.mpi.barrier()

    def broadcast_text(self, text, root=0):
        return self.mpi.broadcast_text(text, root)

    # -- failure -----------------------------------------------------------------------------
    def _on_timeout(self, what):
        print(f"xpnet.distributed: rank {self.rank} of {self.size}: {what} did not complete within "
              f"{self.timeout:g} s: another rank has died or hangs; aborting the job. Resume from the "
              f"last checkpoint.", file=sys.stderr, flush=True)
        try:
            self.comm.abort()
        finally:
            self.mpi.abort(1)

    def abort(self, code=1):
        try:
            self.comm.abort()
        finally:
            self.mpi.abort(code)

    def close(self):
        self.backend.synchronize()
        self.watchdog.close()
        self.comm.destroy()
        self.mpi.close()
