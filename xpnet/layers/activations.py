"""Activation layers (element-wise or along one axis, no parameters)."""
import numbers

from ..errors import ConfigError, ShapeError
from .base import Layer


class ReLU(Layer):
    _fused = None  # the output of the layer before it, when that layer applied this ReLU (see take)

    def forward(self, x, training=False):
        if x is self._fused:  # the bias and this ReLU already ran in one pass (bias_relu)
            self._fused = None
            return x
        y, self.mask = self.backend.relu_forward(x)  # one pass; NaN stays NaN
        return y

    def take(self, fused):
        """(relu(y + b), mask) computed by the Conv2D or Dense before this layer in a Sequential
        (backend.bias_relu, one launch on a GPU): keep the mask for backward and pass y on."""
        y, self.mask = fused
        self._fused = y
        return y

    def backward(self, grad):
        return self.backend.multiply(grad, self.mask) if self.need_input_grad else None


class LeakyReLU(Layer):
    """x for x > 0, alpha * x otherwise."""

    def __init__(self, alpha=0.01, name=None):
        super().__init__(name)
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not alpha >= 0:
            raise ConfigError(f"LeakyReLU: alpha must be a number >= 0, got {alpha!r}")
        self.alpha = float(alpha)

    def forward(self, x, training=False):
        self.slope = self.xp.where(x > 0, 1.0, self.alpha).astype(x.dtype)
        return x * self.slope

    def backward(self, grad):
        return grad * self.slope if self.need_input_grad else None

    def get_config(self):
        return {"name": self.name, "alpha": self.alpha}


class Tanh(Layer):
    def forward(self, x, training=False):
        self.y = self.xp.tanh(x)
        return self.y

    def backward(self, grad):
        return grad * (1.0 - self.y * self.y) if self.need_input_grad else None


class Sigmoid(Layer):
    """1 / (1 + exp(-x)), computed from exp(-|x|) so it never overflows."""

    def forward(self, x, training=False):
        e = self.xp.exp(-abs(x))
        self.y = self.xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        return self.y

    def backward(self, grad):
        return grad * self.y * (1.0 - self.y) if self.need_input_grad else None


class _AxisLayer(Layer):
    def __init__(self, axis=-1, name=None):
        super().__init__(name)
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or axis == 0:
            raise ConfigError(f"{type(self).__name__}: axis must be a nonzero int (axis 0 is the batch), "
                              f"got {axis!r}")
        self.axis = int(axis)

    def compute_output_shape(self, input_shape):
        rank = len(input_shape) + 1
        if not -rank <= self.axis < rank:
            raise ShapeError(f"layer {self.name!r} ({type(self).__name__}): axis {self.axis} does not exist "
                             f"for inputs of shape {('batch',) + tuple(input_shape)}")
        if self.axis % rank == 0:
            raise ShapeError(f"layer {self.name!r} ({type(self).__name__}): axis {self.axis} is the batch "
                             f"axis for inputs of shape {('batch',) + tuple(input_shape)}")
        return input_shape

    def get_config(self):
        return {"name": self.name, "axis": self.axis}


def _float32_up(layer, x):
    """Half-precision input (mixed precision) -> float32, as PyTorch's autocast runs softmax."""
    layer.in_dtype = x.dtype
    return x.astype(layer.xp.float32) if x.dtype.itemsize < 4 else x


def _back_down(layer, dx):
    return dx if dx.dtype == layer.in_dtype else dx.astype(layer.in_dtype)


class Softmax(_AxisLayer):
    """exp(x) / sum(exp(x)) along ``axis`` (the features by default), shifted by the max.
    A float16 input is computed in float32 and gives float32 (mixed precision)."""

    def forward(self, x, training=False):
        x = _float32_up(self, x)
        e = self.xp.exp(x - x.max(axis=self.axis, keepdims=True))
        self.y = e / e.sum(axis=self.axis, keepdims=True)
        return self.y

    def backward(self, grad):
        if not self.need_input_grad:
            return None
        return _back_down(self, self.y * (grad - (grad * self.y).sum(axis=self.axis, keepdims=True)))


class LogSoftmax(_AxisLayer):
    """x - log(sum(exp(x))) along ``axis``, computed as (x - max) - log(sum(exp(x - max))).
    A float16 input is computed in float32 and gives float32 (mixed precision)."""

    def forward(self, x, training=False):
        x = _float32_up(self, x)
        shifted = x - x.max(axis=self.axis, keepdims=True)
        y = shifted - self.xp.log(self.xp.exp(shifted).sum(axis=self.axis, keepdims=True))
        self.softmax = self.xp.exp(y)
        return y

    def backward(self, grad):
        if not self.need_input_grad:
            return None
        return _back_down(self, grad - self.softmax * grad.sum(axis=self.axis, keepdims=True))
