"""Layers. ``LAYERS`` maps a type name to its class; model files may only name these."""
from .activations import LeakyReLU, LogSoftmax, ReLU, Sigmoid, Softmax, Tanh
from .base import BuildContext, Layer
from .batchnorm import BatchNorm
from .conv import Conv2D
from .dense import Dense
from .dropout import Dropout
from .pooling import AvgPool2D, MaxPool2D
from .shape import Flatten, Reshape

LAYERS = {cls.__name__: cls for cls in (Dense, ReLU, LeakyReLU, Tanh, Sigmoid, Softmax, LogSoftmax,
                                        Conv2D, MaxPool2D, AvgPool2D, Flatten, Reshape, Dropout,
                                        BatchNorm)}

__all__ = ["BuildContext", "Layer", "LAYERS"] + sorted(LAYERS)
