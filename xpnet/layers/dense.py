"""Fully connected layer: y = x @ W + b with W of shape (in, out)."""
from ..checks import flag
from ..errors import ShapeError
from .base import Layer, positive_int


class Dense(Layer):
    def __init__(self, units, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, name=None):
        super().__init__(name)
        self.units = positive_int(units, "units", "Dense")
        self.use_bias = flag(use_bias, "Dense", "use_bias")
        self._kernel_and_bias(kernel_initializer, bias_initializer, kernel_regularizer)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ShapeError(f"layer {self.name!r} (Dense) expects flat inputs (batch, features), "
                             f"got per-sample shape {input_shape}; put a Flatten layer before it")
        return (self.units,)

    def create_params(self, ctx):
        rng = ctx.rng(self.name)
        shape = (self.input_shape[0], self.units)
        self.params["W"] = self._initializer("kernel_initializer")(rng, shape, self.dtype)
        if self.use_bias:
            self.params["b"] = self._initializer("bias_initializer")(rng, (self.units,), self.dtype)

    def forward(self, x, training=False):
        self.x = x
        y = x @ self.params["W"]
        if self.use_bias:
            relu = getattr(self, "relu_after", None)
            if relu is not None:  # the bias and the following ReLU in one pass (see Sequential)
                return relu.take(self.backend.bias_relu(y, self.params["b"], 1))
            y += self.params["b"]
        return y

    def backward(self, grad):
        if self.x.shape[0] == 1:  # one sample (per-sample training): an outer product
            self.grads["W"] = self.backend.outer(self.x, grad)
        else:
            self.grads["W"] = self.x.T @ grad
        if self.use_bias:
            self.grads["b"] = grad.sum(axis=0)
        return grad @ self.params["W"].T if self.need_input_grad else None

    def get_config(self):
        init = lambda v: v if isinstance(v, str) else getattr(v, "__name__", str(v))  # noqa: E731
        return {"name": self.name, "units": self.units, "use_bias": self.use_bias,
                "kernel_initializer": init(self.kernel_initializer),
                "bias_initializer": init(self.bias_initializer),
                "kernel_regularizer": self.regularizers["W"].get_config() if "W" in self.regularizers else None}
