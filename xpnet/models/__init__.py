"""The model zoo: the seed reports' architectures by name, each with its training recipe.

    from xpnet import models
    models.names()                          # every registered name
    spec = models.get("seed001-tf")         # ModelSpec: name, seed, description, recipe, build
    model = spec.build(device="cpu", seed=0)

``recipe`` holds optimizer, lr, decay, momentum, batch_size, epochs, schedule (a spec for
xpnet.schedules.get), augment (a spec for xpnet.augment: {"type": "RandomAffine", ...}),
early_stopping (EarlyStopping keyword arguments), loss, validation_split, dataset,
reported_error (the report's test error in percent, None where it gives none), notes, targets
("labels", or "one_hot" for MSE) and clipvalue.
"""
import difflib

from ..errors import ConfigError
from ..layers import Dense, Flatten, ReLU
from . import seed000, seed001, seed002, seed003, seed004
from .spec import DATASET_SHAPES, RECIPE_KEYS, ModelSpec, affine, recipe

DEFAULT = "seed001-tf"
QUICK = "quick-mlp"


def _quick_mlp(input_shape, num_classes):
    return [Flatten(), Dense(128, kernel_initializer="he_normal"), ReLU(), Dense(num_classes)]


_REGISTRY = {}


def register(spec):
    """Add a ModelSpec; its name must be new."""
    if not isinstance(spec, ModelSpec):
        raise ConfigError(f"register() takes a ModelSpec, got {type(spec).__name__}")
    if spec.name in _REGISTRY:
        raise ConfigError(f"a model named {spec.name!r} is already registered")
    missing = [k for k in RECIPE_KEYS if k not in spec.recipe]
    if missing:
        raise ConfigError(f"model {spec.name!r}: its recipe lacks {', '.join(missing)}")
    _REGISTRY[spec.name] = spec
    return spec


def names():
    """Every registered model name, in registration order (seed 000 first)."""
    return list(_REGISTRY)


def get(name):
    """The ModelSpec called ``name``; ConfigError listing the names otherwise."""
    if isinstance(name, ModelSpec):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3) if isinstance(name, str) else []
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ConfigError(f"unknown model {name!r}; {hint}expected one of: {', '.join(_REGISTRY)} "
                          "(see `xpnet models`)") from None


for _module in (seed000, seed001, seed002, seed003, seed004):
    for _spec in _module.SPECS:
        register(_spec)
register(ModelSpec(QUICK, None, "784-128-10 ReLU MLP for quick checks (not from a report)",
                   recipe("adam", 1e-3, 64, 3, notes="a smoke-test model: under a minute on a CPU"),
                   layers=_quick_mlp))

__all__ = ["DEFAULT", "QUICK", "DATASET_SHAPES", "RECIPE_KEYS", "ModelSpec", "affine", "get", "names",
           "recipe", "register"]
