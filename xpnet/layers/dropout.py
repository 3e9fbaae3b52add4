"""Inverted dropout: in training, zero each unit with probability ``rate`` and scale the kept ones
by 1 / (1 - rate); in evaluation the layer is the identity."""
import numbers

from ..errors import ConfigError
from .base import Layer


class Dropout(Layer):
    def __init__(self, rate, name=None):
        super().__init__(name)
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0.0 <= rate < 1.0:
            raise ConfigError(f"Dropout: rate must be a number in [0, 1), got {rate!r}")
        self.rate = float(rate)

    def create_params(self, ctx):
        self.rng = ctx.rng(self.name, purpose=1)
        self._multiply = ctx.backend.kernel("multiply")  # a backend's fast kernels, or None
        self._dropout = ctx.backend.kernel("dropout_forward")

    def _apply(self, a):
        return self._multiply(a, self.mask) if self._multiply is not None else a * self.mask

    def forward(self, x, training=False):
        self.mask = None
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        # data-parallel: this rank's rows of the global batch's mask (the same masks as one process)
        rng = self.rng if self.distributed is None else self.distributed.rows(self.rng)
        if self._dropout is not None:
            y, self.mask = self._dropout(x, rng.bernoulli_mask(keep, x.shape), 1.0 / keep)
            return y
        self.mask = rng.bernoulli(keep, x.shape, x.dtype, value=1.0 / keep)
        return self._apply(x)

    def backward(self, grad):
        if not self.need_input_grad:
            return None
        return grad if self.mask is None else self._apply(grad)

    def get_config(self):
        return {"name": self.name, "rate": self.rate}
