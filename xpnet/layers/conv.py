"""2-D convolution on NCHW inputs: W (filters, channels, kh, kw), b (filters,)."""
import numbers

from .. import ops
from ..checks import flag
from ..ops import geometry
from ..ops.geometry import resolve_padding
from ..errors import ConfigError, ShapeError
from .base import Layer, positive_int


def pair(value, what, owner, minimum=1):
    """An int or a pair of ints -> (a, b), each >= minimum; ConfigError otherwise."""
    items = (value, value) if isinstance(value, numbers.Integral) else value
    try:
        a, b = (int(v) for v in items)
        ok = all(int(v) == v and not isinstance(v, bool) for v in items)
    except (TypeError, ValueError):
        ok = False
    if not ok or a < minimum or b < minimum:
        raise ConfigError(f"{owner}: {what} must be an int >= {minimum} or a pair of them, got {value!r}")
    return a, b


def padding_spec(padding, owner):
    """"valid", "same" or an explicit (ph, pw) pair (an int means the same on both axes)."""
    if isinstance(padding, str):
        if padding.lower() not in ("valid", "same"):
            raise ConfigError(f"{owner}: padding must be 'valid', 'same', an int or (ph, pw), "
                              f"got {padding!r}")
        return padding.lower()
    return pair(padding, "padding", owner, minimum=0)


def spatial_input(layer, input_shape):
    """Check that a per-sample shape is (C, H, W); ShapeError naming the layer otherwise."""
    if len(input_shape) != 3:
        raise ShapeError(f"layer {layer.name!r} ({type(layer).__name__}) expects images (batch, C, H, W), "
                         f"got per-sample shape {tuple(input_shape)} (rank {len(input_shape)}); "
                         f"use Reshape((C, H, W)) first")
    return input_shape


def output_hw(layer, input_shape, kernel, stride, padding):
    """Spatial output size, or a ShapeError naming the layer when the window does not fit."""
    return geometry.output_hw(input_shape[1:], kernel, stride, padding,
                              f"layer {layer.name!r} ({type(layer).__name__})")


def _config_value(v):
    return list(v) if isinstance(v, tuple) else v


def planes_kwargs(layer):
    """{"planes_out": True} for a Conv2D or MaxPool2D that hands its output on as planes (a max
    pooling or a convolution that reads planes comes next: model._link_conv_pool, _link_planes),
    with the fast ops (the reference ops take no such hint), else {}."""
    return {"planes_out": True} if layer.planes_out and ops.current() == "fast" else {}


class Conv2D(Layer):
    """y = conv(x, W) + b with stride and "valid" / "same" / explicit zero padding."""

    planes_out = False   # set by Sequential when a max pooling or a convolution reads planes next
    pool_link = None     # (that MaxPool2D, whether it applies a ReLU): see forward_pooled

    def __init__(self, filters, kernel_size, strides=1, padding="valid", use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", kernel_regularizer=None,
                 name=None):
        super().__init__(name)
        self.filters = positive_int(filters, "filters", "Conv2D")
        self.kernel_size = pair(kernel_size, "kernel_size", "Conv2D")
        self.strides = pair(strides, "strides", "Conv2D")
        self.padding = padding_spec(padding, "Conv2D")
        self.use_bias = flag(use_bias, "Conv2D", "use_bias")
        self._kernel_and_bias(kernel_initializer, bias_initializer, kernel_regularizer)

    def compute_output_shape(self, input_shape):
        spatial_input(self, input_shape)
        self.pads = resolve_padding(self.padding, input_shape[1:], self.kernel_size, self.strides)
        return (self.filters,) + output_hw(self, input_shape, self.kernel_size, self.strides, self.pads)

    def create_params(self, ctx):
        rng = ctx.rng(self.name)
        shape = (self.filters, self.input_shape[0]) + self.kernel_size
        self.params["W"] = self._initializer("kernel_initializer")(rng, shape, self.dtype)
        if self.use_bias:
            self.params["b"] = self._initializer("bias_initializer")(rng, (self.filters,), self.dtype)

    def forward(self, x, training=False):
        relu = getattr(self, "relu_after", None)
        if relu is not None and self.use_bias and ops.current() == "fast":
            # the bias and the following ReLU in one pass (Sequential links them on GPU-like
            # backends); backward still finds db from dy
            y, self.cache = ops.conv2d_forward(self.xp, x, self.params["W"], None, self.strides, self.pads)
            self.cache["has_bias"] = True
            return relu.take(self.backend.bias_relu(y, self.params["b"], 1))
        y, self.cache = ops.conv2d_forward(self.xp, x, self.params["W"], self.params.get("b"),
                                           self.strides, self.pads, **planes_kwargs(self))
        return y

    def forward_pooled(self, x, training=False):
        """The output of the max pooling in ``pool_link`` (with the ReLU it applies), computed with
        this convolution in one pass over bands of images (ops/conv_pool.py: the
        columns route on the CPU, the same bits), or None where that pass does not apply (the
        spectral route, a GPU, the reference ops): then Sequential runs the layers one by one.
        Sequential links the two (model._link_conv_pool) and skips the pooling, and the ReLU,
        after a pass that took them; ``backward`` then takes the pooled output's gradient."""
        if self.pool_link is None or ops.current() != "fast":
            return None
        from ..ops import fast
        pool, relu = self.pool_link
        done = fast.conv2d_pool_forward(self.xp, x, self.params["W"], self.params.get("b"), self.strides,
                                        self.pads, pool.pool_size, relu)
        if done is None:
            return None
        y, self.cache = done
        return y

    def backward(self, grad):
        dx, dW, db = ops.conv2d_backward(self.xp, grad, self.cache, need_dx=self.need_input_grad)
        self.grads["W"] = dW
        if self.use_bias:
            self.grads["b"] = db
        return dx if self.need_input_grad else None

    def get_config(self):
        init = lambda v: v if isinstance(v, str) else getattr(v, "__name__", str(v))  # noqa: E731
        return {"name": self.name, "filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides), "padding": _config_value(self.padding),
                "use_bias": self.use_bias, "kernel_initializer": init(self.kernel_initializer),
                "bias_initializer": init(self.bias_initializer),
                "kernel_regularizer": (self.regularizers["W"].get_config()
                                       if "W" in self.regularizers else None)}
