"""Layers. ``LAYERS`` maps a type name to its class; model files may only name these."""
from ..errors import ConfigError, XpnetError
from .activations import LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from .base import BuildContext, Layer
from .batchnorm import BatchNorm
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .merge import Add, Concatenate, Merge
from .pooling import AvgPool2D, MaxPool2D
from .shape import Flatten, Reshape

LAYERS = {cls.__name__: cls for cls in (Dense, ReLU, LeakyReLU, Tanh, Sigmoid, Softmax, LogSoftmax,
                                        Conv2D, MaxPool2D, AvgPool2D, Flatten, Reshape, Dropout,
                                        BatchNorm, Concatenate, Add)}


def layer_from_config(index, spec):
    """The layer a model config entry ``{"type": NAME, "config": {...}}`` describes. Only types in
    ``LAYERS`` are built; anything else, or a config the layer refuses, is a ConfigError naming
    the entry's position."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    if not isinstance(kind, str) or kind not in LAYERS:
        raise ConfigError(f"layer {index} has unknown type {kind!r}; model files may only name "
                          f"registered layers: {', '.join(sorted(LAYERS))}")
    config = spec.get("config")
    if not isinstance(config, dict):
        raise ConfigError(f"layer {index} ({kind}) is malformed: {spec!r}")
    try:
        return LAYERS[kind].from_config(dict(config))
    except (XpnetError, TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"layer {index} ({kind}) has an invalid config {config!r}: {exc}") from exc


def register(cls):
    """Register a Layer subclass by its class name, so that model files naming it load (a class
    decorator; returns ``cls``). Model files may only name registered layers."""
    from ..errors import ConfigError
    if not (isinstance(cls, type) and issubclass(cls, Layer)):
        raise ConfigError(f"register() takes a Layer subclass, got {cls!r}")
    known = LAYERS.get(cls.__name__)
    if known is not None and known is not cls:
        raise ConfigError(f"a different layer class is already registered as {cls.__name__!r} "
                          f"({known!r}); rename yours")
    LAYERS[cls.__name__] = cls
    return cls


__all__ = ["BuildContext", "Layer", "LAYERS", "Merge", "layer_from_config", "register"] + sorted(LAYERS)
