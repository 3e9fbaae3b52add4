"""The CPU backend: plain NumPy."""
import numpy

from .base import Backend


class NumpyBackend(Backend):
    name = "numpy"

    def __init__(self):
        super().__init__(numpy)

    def to_numpy(self, array):
        return numpy.asarray(array)
