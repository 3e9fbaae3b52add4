"""xpnet: a from-scratch neural-network library written against an ``xp`` array module.

The same code trains with NumPy on the CPU and with CuPy on a CUDA GPU.
"""
import os as _os

# In a source checkout that is not installed, ``backends/`` sits beside ``xpnet/``; make it
# importable as ``xpnet.backends`` (an installed package maps it there through pyproject.toml).
_root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "backends")) and \
        _os.path.isfile(_os.path.join(_root, "backends", "strict_backend.py")):
    __path__.append(_root)  # noqa: F821  (the package's own search path)

from .errors import BackendError, ConfigError, DataError, ShapeError, TrainingError, XpnetError  # noqa: E402
from .backends import available as available_backends, get_backend  # noqa: E402
from .model import Sequential  # noqa: E402
from .graph import Input, Model  # noqa: E402
from . import models  # noqa: E402
from . import viz  # noqa: E402  (matplotlib is imported only when a plot is drawn)
from .io import load_model as load, save_model  # noqa: E402
from . import datasets  # noqa: E402
from . import augment  # noqa: E402
from .augment import ElasticDistortion, KerasAffine, RandomAffine  # noqa: E402
from . import initializers, losses, optim, regularizers  # noqa: E402
from . import callbacks, schedules  # noqa: E402
from .callbacks import History  # noqa: E402
from .onnx_export import export_onnx  # noqa: E402  (onnx is imported only when exporting)

__version__ = "0.1.0"

__all__ = ["callbacks", "schedules", "History", "Input", "Model", "models", "viz", "initializers", "losses", "optim", "regularizers", "Sequential", "datasets", "augment", "RandomAffine", "KerasAffine", "ElasticDistortion", "load", "save_model", "export_onnx", "get_backend", "available_backends", "XpnetError", "ShapeError",
           "BackendError", "ConfigError", "DataError", "TrainingError", "__version__"]
