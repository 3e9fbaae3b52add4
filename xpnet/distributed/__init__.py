"""Data-parallel training over MPI (CPUs) and NCCL (GPUs).

    comm = xpnet.distributed.init("cpu")     # or "gpu": one GPU per rank, chosen by local rank
    model = xpnet.Sequential([...], device=comm.backend, seed=0)
    model.fit(x, y, batch_size=256, distributed=comm)   # 256 = the GLOBAL batch over all ranks

launched as ``mpirun -n 2 python train.py``. This package is the only part of xpnet that imports
mpi4py or NCCL (tests/test_array_agnostic.py checks it). See docs/scaling.md.
"""
from ..errors import BackendError
from .base import DEFAULT_TIMEOUT, Communicator, DistributedError

__all__ = ["init", "communicator_for", "Communicator", "DistributedError", "DEFAULT_TIMEOUT"]


def init(device="cpu", timeout=None, comm=None):
    """Join the job started by mpirun and return its communicator.

    ``device``: "cpu"/"numpy" or "strict" give an MPI communicator on that backend; "gpu"/"cupy"
    puts each rank on the GPU of its local rank and gives an NCCL communicator; "auto" is "gpu"
    when a GPU is usable, else "cpu"; a Backend instance is used as it is. ``timeout``: seconds a
    rank waits in one collective before the job is stopped (default $XPNET_DIST_TIMEOUT or 300).
    ``comm``: an mpi4py communicator to use instead of MPI_COMM_WORLD.
    """
    from ..backends import ALIASES, Backend, get_backend
    from .mpi import MPICommunicator
    if not isinstance(device, Backend):
        key = ALIASES.get(device.lower()) if isinstance(device, str) else None
        if key is None:
            raise BackendError(f"unknown device {device!r}; expected cpu, gpu, strict or auto")
        if key == "auto":
            from ..backends.cupy_backend import gpu_available
            key = "cupy" if gpu_available() else "numpy"
    control = MPICommunicator(get_backend("cpu"), comm, timeout)
    if isinstance(device, Backend):
        backend = device
    else:
        backend = _gpu_backend(control) if key == ALIASES["gpu"] else get_backend(key)
    return communicator_for(backend, control)


def _gpu_backend(control):
    """A CuPy backend on the GPU of this rank's local rank."""
    from ..backends.cupy_backend import CupyBackend, _import_cupy
    from .nccl import select_device
    cupy = _import_cupy()
    device = select_device(control.local_rank, control.local_size,
                           cupy.cuda.runtime.getDeviceCount())
    return CupyBackend(device_id=device)


def communicator_for(backend, control, timeout=None, nccl=None):
    """The communicator a backend calls for: NCCL on a GPU backend, else ``control`` (MPI) itself.

    ``control`` is the MPICommunicator the NCCL one is made through (and its control channel).
    """
    if getattr(backend, "is_gpu", False):
        from .nccl import NCCLCommunicator
        return NCCLCommunicator(control, backend, timeout, nccl=nccl)
    control.backend = backend
    return control
