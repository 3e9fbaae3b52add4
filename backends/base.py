"""What every backend provides. A backend is the only place that knows which array library runs."""
from .random import CounterRandom


class Backend:
    """One array library. Layers get ``xp`` from here and never import numpy or cupy themselves."""

    name = "base"
    is_gpu = False

    def __init__(self, xp):
        self.xp = xp

    # -- moving data --------------------------------------------------------------------------
    def asarray(self, array, dtype=None):
        """Host (or device) array -> this backend's array. Called once per run for a dataset."""
        return self.xp.asarray(array, dtype=dtype)

    def to_numpy(self, array):
        """This backend's array -> a NumPy array on the host (a sync on GPUs)."""
        raise NotImplementedError

    def to_scalar(self, array):
        """A 0-d array -> a Python float (a sync on GPUs)."""
        return float(self.to_numpy(array))

    def synchronize(self):
        """Wait until all queued device work is done (nothing to do on the CPU)."""

    # -- randomness ---------------------------------------------------------------------------
    def rng(self, seed=0, stream=0):
        """A seeded generator whose numbers are the same on every backend."""
        return CounterRandom(self.xp, seed, stream)

    # -- kernels --------------------------------------------------------------------------------
    def kernel(self, name):
        """A hand-written fast kernel by name, or None to use the pure-``xp`` fallback."""
        return None

    def memory_info(self):
        """A dict describing device memory (empty on the CPU)."""
        return {}

    def __repr__(self):
        return f"<xpnet backend {self.name!r}>"
