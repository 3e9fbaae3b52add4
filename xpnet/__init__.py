"""xpnet: a from-scratch neural-network library written against an ``xp`` array module.

The same code trains with NumPy on the CPU and with CuPy on a CUDA GPU.
"""
import importlib.util as _util
import os as _os
import sys as _sys


def _map_checkout_backends():
    """An installed xpnet finds ``xpnet.backends`` through pyproject.toml's ``package-dir``. In a
    source checkout that is not installed, map the top-level ``backends/`` folder to that one name
    (and nothing else), exactly as the installed package does."""
    name = __name__ + ".backends"
    if _util.find_spec(name) is not None:
        return
    folder = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "backends")
    init = _os.path.join(folder, "__init__.py")
    if not _os.path.isfile(init):
        raise ImportError(f"xpnet.backends not found: expected {folder}/ beside the xpnet package; "
                          "install xpnet with `pip install -e .` in the checkout")
    spec = _util.spec_from_file_location(name, init, submodule_search_locations=[folder])
    module = _util.module_from_spec(spec)
    _sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del _sys.modules[name]
        raise


_map_checkout_backends()
del _map_checkout_backends, _util, _os, _sys

from .errors import BackendError, ConfigError, DataError, ShapeError, TrainingError, XpnetError  # noqa: E402
from .backends import available as available_backends, get_backend  # noqa: E402
from .model import Sequential  # noqa: E402
from .graph import Input, Model  # noqa: E402
from . import models  # noqa: E402
from . import viz  # noqa: E402  (matplotlib is imported only when a plot is drawn)
from .io import load_model, save_model  # noqa: E402
from .io import load_model as load  # noqa: E402  (the short name; load_model as in Keras)
from . import datasets  # noqa: E402
from . import augment  # noqa: E402
from .augment import ElasticDistortion, KerasAffine, RandomAffine  # noqa: E402
from . import initializers, losses, optim, regularizers  # noqa: E402
from . import callbacks, schedules  # noqa: E402
from . import mixed  # noqa: E402
from .mixed import MixedPrecision  # noqa: E402
from .callbacks import History  # noqa: E402
from .onnx_export import export_onnx  # noqa: E402  (onnx is imported only when exporting)

__version__ = "0.1.0"

__all__ = ["callbacks", "schedules", "mixed", "MixedPrecision", "History", "Input", "Model", "models", "viz", "initializers", "losses", "optim", "regularizers", "Sequential", "datasets", "augment", "RandomAffine", "KerasAffine", "ElasticDistortion", "load", "load_model", "save_model", "export_onnx", "get_backend", "available_backends", "XpnetError", "ShapeError",
           "BackendError", "ConfigError", "DataError", "TrainingError", "__version__"]
