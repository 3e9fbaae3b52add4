"""Layers. ``LAYERS`` maps a type name to its class; model files may only name these."""
from ..errors import ConfigError, XpnetError
from .activations import LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from .base import BuildContext, Layer, xpnet_class
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
                          f"registered layers: {', '.join(sorted(LAYERS))}"
                          + (f"; if {kind} is a layer class of your own, import it and register it "
                             f"(@xpnet.layers.register) before loading" if isinstance(kind, str) else ""))
    config = spec.get("config")
    if not isinstance(config, dict):
        raise ConfigError(f"layer {index} ({kind}) is malformed: {spec!r}")
    try:
        return LAYERS[kind].from_config(dict(config))
    except (XpnetError, TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"layer {index} ({kind}) has an invalid config {config!r}: {exc}") from exc


def savable_initializers(specs):
    """Model-file layer entries ``{"type", "config"}`` (in place): an xpnet layer made with an
    initializer function of the user's has the function's name in its config, which no model file
    can name (loading refuses initializer names it does not know), so the file saved but never
    loaded. Such a name is replaced by the layer's default initializer, with a warning naming the
    layer: an initializer only makes the starting weights, and the file holds the trained ones."""
    import inspect
    import warnings
    from .. import initializers
    for spec in specs:
        cls, config = LAYERS.get(spec.get("type")), spec.get("config")
        if cls is None or not xpnet_class(cls) or not isinstance(config, dict):
            continue
        for key, value in list(config.items()):
            if key.endswith("_initializer") and isinstance(value, str) \
                    and value.lower() not in initializers.INITIALIZERS:
                default = inspect.signature(cls.__init__).parameters[key].default
                config[key] = default
                warnings.warn(f"layer {config.get('name')!r} ({spec['type']}): its {key} {value!r} is "
                              f"a function, which a model file cannot name; the file records the "
                              f"default {default!r} (the saved weights are the trained ones; only a "
                              f"model built anew from the config would start from the default)",
                              UserWarning, stacklevel=4)
    return specs


def check_config(layer):
    """``layer.get_config()`` once it is known that a model file can rebuild the layer from it,
    else ConfigError naming the layer: the config must be JSON data and, for a layer class of the
    user's own, ``from_config`` must accept it (else the file would not load) and, unless the class
    has its own ``from_config``, it must give every ``__init__`` argument (one left out would come
    back at its default: a loaded model that silently computes something else). ``save_model``
    checks every layer before writing."""
    import inspect
    import json
    cls = type(layer)
    what = f"layer {layer.name!r} ({cls.__name__})"
    config = layer.get_config()
    if not isinstance(config, dict):
        raise ConfigError(f"cannot save {what}: get_config() must return a dict of its constructor "
                          f"arguments, got {type(config).__name__}")
    try:
        json.dumps(config)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot save {what}: get_config() must return JSON values (numbers, "
                          f"strings, lists, dicts; no NumPy scalars or arrays), got "
                          f"{config!r}: {exc}") from None
    if xpnet_class(cls):
        return config  # xpnet's own layers: their configs are tested; one with a callable
        # initializer is still saved as before (the weights are in the file), loading names it
    if cls.from_config.__func__ is Layer.from_config.__func__:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        left_out = [p.name for p in params if p.name not in config
                    and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if left_out:
            raise ConfigError(f"cannot save {what}: its get_config() leaves out the constructor "
                              f"argument{'s' if len(left_out) > 1 else ''} {', '.join(left_out)}, so "
                              f"loading would rebuild it with the default{'s' if len(left_out) > 1 else ''}"
                              f"; return every __init__ argument from get_config() "
                              f"(docs/custom_layers.md)")
    try:
        cls.from_config(dict(config))
    except (XpnetError, TypeError, ValueError) as exc:
        raise ConfigError(f"cannot save {what}: the file would not load, because {cls.__name__}."
                          f"from_config(get_config()) fails: {exc}") from exc
    return config


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


__all__ = ["BuildContext", "Layer", "LAYERS", "Merge", "check_config", "layer_from_config",
           "register"] + sorted(LAYERS)
