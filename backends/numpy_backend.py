"""The CPU backend: plain NumPy."""
import numpy

from .base import Backend
from .numpy_kernels import ElementwiseKernels


class NumpyBackend(Backend):
    name = "numpy"

    def __init__(self):
        super().__init__(numpy)
        self._kernels = ElementwiseKernels()

    def kernel(self, name):
        """Threaded element-wise kernels (numpy_kernels.py): relu_forward, multiply, dropout_forward."""
        known = ("relu_forward", "multiply", "dropout_forward")
        return getattr(self._kernels, name) if name in known else None

    def to_numpy(self, array):
        return numpy.asarray(array)
