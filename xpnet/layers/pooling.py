"""Max and average pooling over NCHW inputs, with "valid" or TensorFlow-style "same" padding.

"same" pads like TensorFlow: out = ceil(H / stride), extra padding at the bottom/right; padded
cells never win a max (they are -inf) and are left out of an average's count.
"""
from .. import ops
from ..ops.geometry import pad, resolve_padding
from ..errors import ConfigError
from .base import Layer
from .conv import output_hw, pair, planes_kwargs, spatial_input


class _Pool2D(Layer):
    kind = None  # "max" or "avg"
    relu_mask = None  # after forward(..., relu=True): the mask of the ReLU applied to the output
    planes_out = False  # set by Sequential when a convolution comes next (model._link_planes)
    constants = ("share",)  # avg pooling with padding: the share of real cells per window

    def __init__(self, pool_size=2, strides=None, padding="valid", name=None):
        super().__init__(name)
        owner = type(self).__name__
        self.pool_size = pair(pool_size, "pool_size", owner)
        self.strides = self.pool_size if strides is None else pair(strides, "strides", owner)
        if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
            raise ConfigError(f"{owner}: padding must be 'valid' or 'same', got {padding!r}")
        self.padding = padding.lower()

    def compute_output_shape(self, input_shape):
        spatial_input(self, input_shape)
        self.pads = resolve_padding(self.padding, input_shape[1:], self.pool_size, self.strides)
        return (input_shape[0],) + output_hw(self, input_shape, self.pool_size, self.strides, self.pads)

    def create_params(self, ctx):
        self.share = None
        if self.kind == "avg" and any(self.pads):
            # fraction of real (unpadded) cells in each window, to average over those only
            ones = self._pad(self.xp.ones((1, 1) + self.input_shape[1:], dtype=self.dtype), 0.0)
            self.share = ops.avgpool2d_forward(self.xp, ones, self.pool_size, self.strides)[0]

    def _pad(self, x, value):
        return pad(self.xp, x, self.pads, value)

    def forward(self, x, training=False, relu=False):
        """The pooling of x; with ``relu`` (max pooling, strides == pool_size) that of relu(x),
        computed as relu of the pooled values: Sequential applies the ReLU before this layer so
        (model._link_relu_pool)."""
        self.relu_mask = None
        if relu and (self.kind != "max" or self.strides != self.pool_size):
            raise ConfigError(f"{type(self).__name__}: relu=True needs max pooling with strides equal "
                              f"to pool_size, got strides {self.strides} and pool_size {self.pool_size}")
        if any(self.pads):
            x = self._pad(x, -self.xp.inf if self.kind == "max" else 0.0)
        if self.kind == "max":
            y, self.cache = ops.maxpool2d_forward(self.xp, x, self.pool_size, self.strides,
                                                  **planes_kwargs(self))
            if relu:
                y, self.relu_mask = self.backend.relu_forward(y)
            return y
        y, self.cache = ops.avgpool2d_forward(self.xp, x, self.pool_size, self.strides)
        return y if self.share is None else y / self.share

    def backward(self, grad):
        if not self.need_input_grad:
            return None
        if self.kind == "max":
            if self.relu_mask is not None:   # the ReLU's gradient first, on the pooled cells
                grad = self.backend.multiply(grad, self.relu_mask)
            dx = ops.maxpool2d_backward(self.xp, grad, self.cache)
        else:
            g = grad if self.share is None else grad / self.share
            dx = ops.avgpool2d_backward(self.xp, g, self.cache)
        if any(self.pads):
            top, _, left, _ = self.pads
            h, w = self.input_shape[1:]
            dx = self.xp.ascontiguousarray(dx[:, :, top:top + h, left:left + w])
        return dx

    def get_config(self):
        return {"name": self.name, "pool_size": list(self.pool_size), "strides": list(self.strides),
                "padding": self.padding}


class MaxPool2D(_Pool2D):
    """Maximum over each pool window; on ties the gradient goes to the first maximum (row-major)."""

    kind = "max"


class AvgPool2D(_Pool2D):
    """Mean over each pool window."""

    kind = "avg"
