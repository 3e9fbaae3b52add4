"""Layers. ``LAYERS`` maps a type name to its class; model files may only name these."""
from .activations import ReLU
from .base import BuildContext, Layer
from .dense import Dense

LAYERS = {cls.__name__: cls for cls in (Dense, ReLU)}

__all__ = ["BuildContext", "Layer", "LAYERS"] + sorted(LAYERS)
