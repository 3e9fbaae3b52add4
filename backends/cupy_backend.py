"""The CUDA backend: CuPy. Imported only when asked for, so CPU machines never need CuPy."""
import sys

from xpnet.errors import BackendError

from .base import Backend

INSTALL_HINT = (
    "install CuPy for your CUDA version with the matching extra: "
    "pip install 'xpnet[cuda12]' (CUDA 12.x) or pip install 'xpnet[cuda13]' (CUDA 13.x)"
)


def _import_cupy():
    try:
        import cupy
    except ImportError as exc:
        raise BackendError(f"the 'gpu' backend needs CuPy, which is not installed: {INSTALL_HINT}") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken
        raise BackendError(f"CuPy is installed but no usable CUDA GPU was found ({exc}); "
                           f"use device='cpu', or check the NVIDIA driver and {INSTALL_HINT}") from exc
    if count < 1:
        raise BackendError("CuPy is installed but no CUDA GPU is visible; use device='cpu'")
    return cupy


class CupyBackend(Backend):
    name = "cupy"
    is_gpu = True

    def __init__(self, device_id=0):
        cupy = _import_cupy()
        super().__init__(cupy)
        self.device_id = int(device_id)
        cupy.cuda.Device(self.device_id).use()

    @classmethod
    def owns(cls, array):
        cupy = sys.modules.get("cupy")  # no CuPy array exists before CuPy is imported
        return cupy is not None and isinstance(array, cupy.ndarray)

    @classmethod
    def is_out_of_memory(cls, exc):
        """CuPy's OutOfMemoryError, or a CUDA/cuBLAS error from CuPy reporting an allocation
        failure; matched by name, so CuPy need not be imported."""
        if any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__):
            return True
        module = type(exc).__module__ or ""
        return module.startswith("cupy") and any(s in str(exc) for s in ("OUT_OF_MEMORY", "ALLOC_FAILED"))

    def to_numpy(self, array):
        return self.xp.asnumpy(array)

    def synchronize(self):
        self.xp.cuda.Device(self.device_id).synchronize()

    def memory_info(self):
        free, total = self.xp.cuda.runtime.memGetInfo()
        pool = self.xp.get_default_memory_pool()
        props = self.xp.cuda.runtime.getDeviceProperties(self.device_id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        return {"gpu": name, "free_bytes": int(free), "total_bytes": int(total),
                "pool_used_bytes": int(pool.used_bytes()), "pool_total_bytes": int(pool.total_bytes()),
                "cuda_runtime": int(self.xp.cuda.runtime.runtimeGetVersion()),
                "cupy": self.xp.__version__}


def gpu_available():
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        _import_cupy()
        return True
    except BackendError:
        return False
