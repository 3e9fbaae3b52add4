"""Activation layers (element-wise, no parameters)."""
from .base import Layer


class ReLU(Layer):
    def forward(self, x, training=False):
        self.mask = x > 0
        return x * self.mask

    def backward(self, grad):
        return grad * self.mask
