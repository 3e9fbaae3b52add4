"""Inverted dropout: in training, zero each unit with probability ``rate`` and scale the kept ones
by 1 / (1 - rate); in evaluation the layer is the identity."""
import numbers

from ..errors import ConfigError
from ..ops.layout import laid_out_as
from .base import Layer


class Dropout(Layer):
    def __init__(self, rate, name=None):
        super().__init__(name)
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0.0 <= rate < 1.0:
            raise ConfigError(f"Dropout: rate must be a number in [0, 1), got {rate!r}")
        self.rate = float(rate)

    def create_params(self, ctx):
        self.rng = ctx.rng(self.name, purpose=1)

    relu_mask = None   # after forward(..., relu=True): the mask of the ReLU applied to the input

    def forward(self, x, training=False, relu=False):
        """The dropout of x; with ``relu`` that of relu(x), in one pass with the ReLU: Sequential
        leaves the ReLU before this layer to it so (model._link_relu_dropout)."""
        self.keep = self.relu_mask = None
        if not training or self.rate == 0.0:
            if relu:
                x, self.relu_mask = self.backend.relu_forward(x)
            return x
        # data-parallel: this rank's rows of the global batch's mask (the same masks as one process)
        rng = self.rng if self.distributed is None else self.distributed.rows(self.rng)
        # x may be the NCHW view of planes (model._link_planes): the mask laid out as x. Kept as
        # booleans (a byte an element, not x's dtype): forward and backward multiply by
        # where(keep, 1 / (1 - rate), 0) in one pass each (backend.dropout)
        self.keep = laid_out_as(self.xp, rng.bernoulli_mask(1.0 - self.rate, x.shape), x)
        if relu:
            y, self.relu_mask = self.backend.relu_dropout(x, self.keep, self.scale)
            return y
        return self.backend.dropout(x, self.keep, self.scale)

    @property
    def scale(self):
        """What a kept value is multiplied by: 1 / (1 - rate)."""
        return 1.0 / (1.0 - self.rate)

    def backward(self, grad):
        if not self.need_input_grad:
            return None
        if self.keep is None:
            return grad if self.relu_mask is None else self.backend.multiply(grad, self.relu_mask)
        if self.relu_mask is not None:   # then the ReLU's gradient, in the same pass
            return self.backend.relu_dropout_grad(grad, self.keep, self.scale, self.relu_mask)
        return self.backend.dropout(grad, self.keep, self.scale)

    def get_config(self):
        return {"name": self.name, "rate": self.rate}
