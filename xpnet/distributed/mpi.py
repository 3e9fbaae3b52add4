"""The MPI communicator (mpi4py): host buffers, non-blocking collectives polled against a deadline.

NumPy arrays are handed to MPI as they are. Arrays of other backends (strict, CuPy) go through the
backend's ``to_numpy`` and ``asarray`` around each collective; on GPUs the NCCL communicator is
the one to use (xpnet.distributed.init chooses it).
"""
import time

from ..errors import BackendError
from .base import AbortOnError, Communicator, wait

INSTALL_HINT = "install mpi4py and an MPI library: pip install 'xpnet[mpi]' (mpi4py + mpich)"


def import_mpi():
    """mpi4py's MPI module (initialising MPI), or BackendError naming the extra to install."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise BackendError(f"distributed training needs mpi4py, which is not installed: {INSTALL_HINT}") \
            from exc
    return MPI


class MPICommunicator(Communicator):
    """Data-parallel collectives over MPI. ``comm`` defaults to a duplicate of MPI_COMM_WORLD."""

    kind = "MPI"

    def __init__(self, backend, comm=None, timeout=None):
        MPI = import_mpi()
        self.MPI = MPI
        self.comm = (comm or MPI.COMM_WORLD).Dup()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.comm.Get_rank())
        local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        super().__init__(self.comm.Get_rank(), self.comm.Get_size(), local_rank, backend, timeout)
        self._guard = AbortOnError(self.abort, self.rank)
        if self.size > 1:
            self._guard.install()

    # -- collectives -------------------------------------------------------------------------
    def _complete(self, request, what):
        self.operations += 1
        wait(request.Test, time.monotonic() + self.timeout, lambda: self._timeout_error(what))

    def _host(self, buf):
        """(host array to hand to MPI, whether it must be copied back into ``buf``)."""
        host = self.backend.to_numpy(buf)
        return host, host is not buf

    def allreduce(self, buf, op="sum"):
        """Sum (or average) ``buf`` over all ranks, in place."""
        self._check_buffer(buf, "allreduce")
        self._check_op(op)
        host, copied = self._host(buf)
        self._complete(self.comm.Iallreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM),
                       f"allreduce of {host.size} values")
        if op == "mean":
            host /= self.size
        if copied:
            buf[...] = self.backend.asarray(host)
        return buf

    def broadcast(self, buf, root=0):
        """Replace ``buf`` on every rank by rank ``root``'s, in place."""
        self._check_buffer(buf, "broadcast")
        host, copied = self._host(buf)
        self._complete(self.comm.Ibcast(host, root=root), f"broadcast of {host.size} values")
        if copied and self.rank != root:
            buf[...] = self.backend.asarray(host)
        return buf

    def barrier(self):
        self._complete(self.comm.Ibarrier(), "barrier")

    def broadcast_text(self, text, root=0):
        """``text`` (a str) of rank ``root`` on every rank: length, then UTF-8 bytes (no pickle)."""
        data = text.encode() if self.rank == root else b""
        size = bytearray(len(data).to_bytes(8, "little"))
        self._complete(self.comm.Ibcast([size, self.MPI.BYTE], root=root), "broadcast of a text length")
        payload = bytearray(data) if self.rank == root else bytearray(int.from_bytes(size, "little"))
        if payload:
            self._complete(self.comm.Ibcast([payload, self.MPI.BYTE], root=root), "broadcast of a text")
        return payload.decode()

    def abort(self, code=1):
        import sys
        sys.stderr.flush()
        sys.stdout.flush()
        self.comm.Abort(int(code))

    def close(self):
        """Give the MPI communicator back (MPI itself is finalised at exit by mpi4py)."""
        self._guard.uninstall()
        if self.comm is not None and self.comm != self.MPI.COMM_NULL:
            self.comm.Free()
        self.comm = None
