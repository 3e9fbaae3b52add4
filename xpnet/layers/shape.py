"""Layers that only change the per-sample shape: Flatten and Reshape."""
import math
import numbers

from ..errors import ConfigError, ShapeError
from .base import Layer


class Flatten(Layer):
    """(batch, d1, d2, ...) -> (batch, d1 * d2 * ...), in C (row-major) order."""

    def compute_output_shape(self, input_shape):
        return (math.prod(input_shape),)

    def forward(self, x, training=False):
        return x.reshape(x.shape[0], -1)

    def backward(self, grad):
        return grad.reshape((grad.shape[0],) + self.input_shape) if self.need_input_grad else None


class Reshape(Layer):
    """(batch, ...) -> (batch,) + target_shape; one entry may be -1 (inferred)."""

    def __init__(self, target_shape, name=None):
        super().__init__(name)
        if isinstance(target_shape, numbers.Integral):
            target_shape = (target_shape,)
        try:
            shape = tuple(int(d) for d in target_shape)
            ok = len(shape) > 0 and all(int(d) == d for d in target_shape)
        except (TypeError, ValueError):
            ok = False
        if not ok or any(d == 0 or d < -1 for d in shape) or shape.count(-1) > 1:
            raise ConfigError(f"Reshape: target_shape must be a tuple of positive ints with at most one "
                              f"-1, got {target_shape!r}")
        self.target_shape = shape

    def compute_output_shape(self, input_shape):
        size = math.prod(input_shape)
        known = math.prod(d for d in self.target_shape if d != -1)
        if -1 in self.target_shape:
            if size % known:
                raise ShapeError(f"layer {self.name!r} (Reshape): cannot reshape per-sample shape "
                                 f"{tuple(input_shape)} ({size} values) to {self.target_shape}: "
                                 f"{size} is not a multiple of {known}")
            return tuple(size // known if d == -1 else d for d in self.target_shape)
        if known != size:
            raise ShapeError(f"layer {self.name!r} (Reshape): cannot reshape per-sample shape "
                             f"{tuple(input_shape)} ({size} values) to {self.target_shape} ({known} values)")
        return self.target_shape

    def forward(self, x, training=False):
        return x.reshape((x.shape[0],) + self.output_shape)

    def backward(self, grad):
        return grad.reshape((grad.shape[0],) + self.input_shape) if self.need_input_grad else None

    def get_config(self):
        return {"name": self.name, "target_shape": list(self.target_shape)}
