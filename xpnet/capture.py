"""fit(..., graph=True): the training step captured once as a CUDA graph and replayed.

A step (augmentation, forward, loss, backward, optimizer update) launches hundreds of small
kernels; on a GPU their launch cost exceeds their arithmetic for small models. Captured once with
the backend's stream capture, the whole step is replayed by one graph launch per batch.

What makes the step capturable (and what tests/test_capture.py checks on the strict backend):
no host sync, no host-to-device copy, the same array shapes every step (full batches; a last
partial batch runs as an ordinary step), and no per-step Python value baked into a launch: the
optimizer's learning rate and step count (Optimizer._device_scalars) and the random generators'
counters (CounterRandom.device_counter) live in device arrays that the step itself advances.
After each replay the host's records of those counters are advanced by what the capture drew,
so checkpoints, schedules and callbacks see the same state as after an ordinary step.

On backends that cannot capture (NumPy, strict) the flag runs the ordinary step.
"""
from .backends import CounterRandom


class CapturedStep:
    """Runs training steps on full batches of one shape: the first ordinary (warm-up: caches,
    flat buffers and optimizer state are made), the second captured and replayed, every later
    one a replay of it. ``__call__(xb, yb)`` returns (loss value, outputs) as device arrays."""

    def __init__(self, model, augment, rng):
        self.model, self.augment, self.rng = model, augment, rng
        self.backend = model.backend
        self.enabled = self.backend.can_capture
        self.replay = None
        self.xs = self.ys = self.outputs = None
        self.warm = False
        self.rngs = [rng] + [layer.rng for layer in model.layers
                             if isinstance(getattr(layer, "rng", None), CounterRandom)]
        self.drawn = None
        if self.enabled:
            for r in self.rngs:
                r.device_counter(True)

    def _body(self):
        xb = self.xs if self.augment is None else self.augment(self.xs, self.rng)
        self.outputs = self.model._train_step(xb, self.ys)

    def _ordinary(self, xb, yb):
        if self.augment is not None:
            xb = self.augment(xb, self.rng)
        return self.model._train_step(xb, yb)

    def __call__(self, xb, yb):
        if not self.enabled:
            return self._ordinary(xb, yb)
        if self.xs is not None and (xb.shape != self.xs.shape or yb.shape != self.ys.shape):
            return self._ordinary(xb, yb)  # a partial batch: outside the graph
        if self.xs is None:
            self.xs, self.ys = xb.copy(), yb.copy()
        else:
            self.xs[...] = xb
            self.ys[...] = yb
        if self.replay is not None:
            self.replay()
            self._advance()
            return self.outputs
        if not self.warm:  # an ordinary step; it tells how many numbers each generator draws
            self.warm = True
            before = [r.counter for r in self.rngs]
            with self.backend.capture_memory():
                self._body()
            self.drawn = [r.counter - b for r, b in zip(self.rngs, before)]
            return self.outputs
        host = self._host_state()
        with self.backend.capture_memory():
            self.replay = self.backend.capture(self._body)  # records the step; runs nothing
        self._restore(host)  # whatever the recording's Python did to the host records
        self.replay()  # runs the recorded step for this batch
        self._advance()
        return self.outputs

    def _host_state(self):
        opt = self.model.optimizer
        return ([r.get_state() for r in self.rngs], opt.iterations, dict(opt.steps),
                list(getattr(opt, "_device", [None, []])[1]))

    def _restore(self, host):
        rng_states, iterations, steps, mirror = host
        opt = self.model.optimizer
        for r, state in zip(self.rngs, rng_states):
            r.counter = state["counter"]
            r._device[1] = r.counter
        opt.iterations, opt.steps = iterations, steps
        if getattr(opt, "_device", None) is not None:
            opt._device[1] = mirror

    def _advance(self):
        """The host's records of what one replay did on the device."""
        for r, n in zip(self.rngs, self.drawn):
            r.advance(n)
        self.model.optimizer.advance(1)

    def close(self):
        """Back to host-side counters (the device ones stay correct but cost launches)."""
        if self.enabled:
            for r in self.rngs:
                r.device_counter(False)
