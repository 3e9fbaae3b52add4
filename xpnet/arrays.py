"""Which ``xp`` module an array belongs to, for code handed arrays but no backend (losses,
optimizers)."""
from .backends import get_backend
from .errors import ShapeError


def array_module(a):
    """The ``xp`` of the backend that owns ``a`` (numpy, strict or cupy); no data is touched."""
    cls = type(a)
    if cls.__name__ == "StrictArray":
        return get_backend("strict").xp
    root = cls.__module__.partition(".")[0]
    if root == "cupy":
        return get_backend("cupy").xp
    if root == "numpy":
        return get_backend("numpy").xp
    raise ShapeError(f"expected an array of a backend (numpy, cupy or strict), got {cls.__name__}; "
                     "move host data to the device with backend.asarray first")
