"""Array backends: the one place that knows whether NumPy or CuPy does the work.

    get_backend("cpu" | "numpy" | "gpu" | "cupy" | "strict" | "auto") -> Backend

The folder sits at the top of the repository and is installed as ``xpnet.backends``; that is its
only name. Imported as plain ``backends`` (the repository root on ``sys.path``) it would be a second
copy with its own strict-backend counters, so that import is refused.
"""
if __name__ != "xpnet.backends":
    raise ImportError(f"import the backends as 'xpnet.backends', not as {__name__!r}: a second copy "
                      "would keep its own strict-backend counters")

from xpnet.errors import BackendError, ShapeError

from .base import Backend
from .random import CounterRandom

ALIASES = {"cpu": "numpy", "numpy": "numpy", "gpu": "cupy", "cupy": "cupy", "cuda": "cupy",
           "strict": "strict", "auto": "auto"}
_cache = {}


def get_backend(name="cpu"):
    """Return the backend for ``name`` (a Backend instance is returned unchanged)."""
    if isinstance(name, Backend):
        return name
    if name is None:
        name = "cpu"
    if not isinstance(name, str) or name.lower() not in ALIASES:
        raise BackendError(f"unknown backend {name!r}; expected one of: "
                           + ", ".join(sorted(ALIASES)))
    key = ALIASES[name.lower()]
    if key == "auto":
        from .cupy_backend import gpu_available
        key = "cupy" if gpu_available() else "numpy"
    if key not in _cache:
        if key == "numpy":
            from .numpy_backend import NumpyBackend
            _cache[key] = NumpyBackend()
        elif key == "strict":
            from .strict_backend import StrictBackend
            _cache[key] = StrictBackend()
        else:
            from .cupy_backend import CupyBackend
            _cache[key] = CupyBackend()
    return _cache[key]


def _classes():
    if not _classes_cache:  # imported once: backend_of runs per batch (losses, augmentation)
        from .cupy_backend import CupyBackend
        from .numpy_backend import NumpyBackend
        from .strict_backend import StrictBackend
        _classes_cache.update(strict=StrictBackend, cupy=CupyBackend, numpy=NumpyBackend)
    return _classes_cache


_classes_cache = {}


def backend_of(array):
    """The backend whose array ``array`` is (for a loss or optimizer used on its own, without a
    model's compile() handing it one); no data is touched. Raises ShapeError for host lists and
    other objects."""
    for key, cls in _classes().items():
        if cls.owns(array):
            return get_backend(key)
    raise ShapeError(f"expected an array of a backend (numpy, cupy or strict), got "
                       f"{type(array).__name__}; move host data to the device with backend.asarray first")


def is_out_of_memory(exc):
    """True when a backend recognises ``exc`` as its device running out of memory."""
    return any(cls.is_out_of_memory(exc) for cls in _classes().values())


def available():
    """Names of the backends that work on this machine."""
    from .cupy_backend import gpu_available
    names = ["numpy", "strict"]
    if gpu_available():
        names.append("cupy")
    return names


__all__ = ["Backend", "BackendError", "CounterRandom", "available", "backend_of", "get_backend",
           "is_out_of_memory"]
