"""Batch normalization over axis 1: per feature after Dense (input (F,)), per channel after
Conv2D (input (C, H, W)); statistics are taken over the batch and every other axis.

Training normalizes with the batch mean and the biased batch variance, then updates the running
statistics the Keras way, ``r = momentum * r + (1 - momentum) * batch_stat`` (PyTorch's momentum
is ``1 - momentum`` here). The running variance takes the UNBIASED batch variance (n / (n - 1)
times the biased one), as PyTorch does, so both libraries keep the same running statistics.
Evaluation normalizes with the running statistics.

Data-parallel training (fit(..., distributed=comm)) synchronises the statistics over the ranks
as PyTorch's SyncBatchNorm does: one all-reduce of the per-channel sums in forward and one of the
gradient sums in backward (``self.distributed``, see xpnet.distributed.data_parallel), unless fit
is asked for per-rank statistics.

Mixed precision (xpnet/mixed.py): a float16 input is normalized in float32 (statistics, running
statistics and parameters stay float32, ``keeps_float32``) and the output is float16 again, as
PyTorch's autocast and Keras's mixed policy do.
"""
import numbers

from ..errors import ConfigError, ShapeError
from .base import Layer


class BatchNorm(Layer):
    keeps_float32 = True  # mixed precision: parameters and statistics stay in the model dtype
    def __init__(self, momentum=0.99, epsilon=1e-3, gamma_initializer="ones", beta_initializer="zeros",
                 name=None):
        super().__init__(name)
        for arg, value, low in (("momentum", momentum, 0.0), ("epsilon", epsilon, 0.0)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= low:
                raise ConfigError(f"BatchNorm: {arg} must be a number >= {low}, got {value!r}")
        if momentum > 1.0:
            raise ConfigError(f"BatchNorm: momentum must be in [0, 1], got {momentum!r}")
        if epsilon <= 0.0:
            raise ConfigError(f"BatchNorm: epsilon must be > 0, got {epsilon!r}")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.gamma_initializer = gamma_initializer
        self.beta_initializer = beta_initializer
        self._initializer("gamma_initializer")
        self._initializer("beta_initializer")

    def compute_output_shape(self, input_shape):
        if len(input_shape) < 1:
            raise ShapeError(f"layer {self.name!r} (BatchNorm) needs at least one axis besides the batch, "
                             f"got per-sample shape {tuple(input_shape)}")
        self.axes = (0,) + tuple(range(2, len(input_shape) + 1))
        self.stat_shape = (1, input_shape[0]) + (1,) * (len(input_shape) - 1)
        return input_shape

    def create_params(self, ctx):
        rng = ctx.rng(self.name)
        n = self.input_shape[0]
        self.params["gamma"] = self._initializer("gamma_initializer")(rng, (n,), self.dtype)
        self.params["beta"] = self._initializer("beta_initializer")(rng, (n,), self.dtype)
        self.buffers["running_mean"] = self.xp.zeros((n,), dtype=self.dtype)
        self.buffers["running_var"] = self.xp.ones((n,), dtype=self.dtype)

    def forward(self, x, training=False):
        self.in_dtype = x.dtype
        if x.dtype != self.dtype:  # float16 under mixed precision: normalize in float32
            x = x.astype(self.dtype)
        count = x.size // x.shape[1]
        sync = training and self.distributed is not None and self.distributed.sync_batchnorm
        if sync:
            count = self.distributed.global_count(x)
        if training:
            if count < 2:
                raise ShapeError(f"layer {self.name!r} (BatchNorm) needs more than one value per channel "
                                 f"in training, got input of shape {tuple(x.shape)}")
            if not sync:  # one fused pass (one launch on a GPU), the reference below on the CPU
                out, xhat, inv_std = self.backend.batchnorm_train(
                    x, self.params["gamma"], self.params["beta"], self.buffers["running_mean"],
                    self.buffers["running_var"], self.momentum, self.epsilon)
                self.cache = (xhat, inv_std, training, count, sync)
                return out if out.dtype == self.in_dtype else out.astype(self.in_dtype)
            if sync:  # statistics of the global batch: one all-reduce
                mean, var = self.distributed.batch_moments(x, self.axes, self.buffers["running_mean"])
                centered = x - mean.reshape(self.stat_shape)
            else:
                mean = x.mean(axis=self.axes)
                centered = x - mean.reshape(self.stat_shape)
                var = (centered * centered).mean(axis=self.axes)
            m = self.momentum
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            rm[...] = m * rm + (1.0 - m) * mean
            rv[...] = m * rv + (1.0 - m) * (count / (count - 1)) * var
        else:
            var = self.buffers["running_var"]
            centered = x - self.buffers["running_mean"].reshape(self.stat_shape)
        inv_std = 1.0 / self.xp.sqrt(var + self.epsilon)
        xhat = centered * inv_std.reshape(self.stat_shape)
        self.cache = (xhat, inv_std, training, count, sync)
        gamma, beta = self.params["gamma"], self.params["beta"]
        y = xhat * gamma.reshape(self.stat_shape) + beta.reshape(self.stat_shape)
        return y if y.dtype == self.in_dtype else y.astype(self.in_dtype)

    def backward(self, grad):
        if grad.dtype != self.dtype:
            grad = grad.astype(self.dtype)
        dx = self._backward(grad)
        return dx if dx is None or dx.dtype == self.in_dtype else dx.astype(self.in_dtype)

    def _backward(self, grad):
        xhat, inv_std, training, count, sync = self.cache
        if training and not sync and self.need_input_grad:
            dgamma, dbeta, dx = self.backend.batchnorm_grad(grad, xhat, inv_std, self.params["gamma"], count)
            self.grads["gamma"], self.grads["beta"] = dgamma, dbeta
            return dx
        self.grads["gamma"] = (grad * xhat).sum(axis=self.axes)
        self.grads["beta"] = grad.sum(axis=self.axes)
        if not self.need_input_grad:
            return None
        scale = (self.params["gamma"] * inv_std).reshape(self.stat_shape)
        if not training:
            return grad * scale
        g_sum, gx_sum = self.grads["beta"], self.grads["gamma"]
        if sync:  # sums over the global batch: one all-reduce (the param grads stay this rank's)
            g_sum, gx_sum = self.distributed.sum_pair(g_sum, gx_sum)
        g_mean = (g_sum / count).reshape(self.stat_shape)
        gx_mean = (gx_sum / count).reshape(self.stat_shape)
        return scale * (grad - g_mean - xhat * gx_mean)

    def get_config(self):
        init = lambda v: v if isinstance(v, str) else getattr(v, "__name__", str(v))  # noqa: E731
        return {"name": self.name, "momentum": self.momentum, "epsilon": self.epsilon,
                "gamma_initializer": init(self.gamma_initializer),
                "beta_initializer": init(self.beta_initializer)}
