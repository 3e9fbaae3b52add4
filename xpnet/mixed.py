"""Mixed precision: float16 (or bfloat16) compute, float32 master weights, dynamic loss scaling.

``model.compile(..., mixed_precision="float16")`` (Keras's policy name "mixed_float16" is accepted
too) makes every training step of fit():

1. cast the float32 master weights (one flat buffer, see TrainingMixin._flat_parameters) into a
   float16 copy in one operation, and let the layers see that copy while the step runs;
2. run the forward and backward passes in float16 (activations, GEMMs, convolutions, pooling,
   dropout), except BatchNorm, which keeps its parameters and computes its statistics in float32,
   and Softmax / LogSoftmax, which compute (and return) float32, as PyTorch's autocast does;
3. compute the loss in float32 (the outputs are cast up; cross-entropy's log-softmax is float32)
   and multiply its gradient by the loss scale before it enters the float16 backward pass;
4. unscale the gradients into float32, check them all for inf/NaN, and let the optimizer update
   the float32 master weights and its float32 state, or leave everything unchanged (the step is
   skipped: weights, moments, the step count and the learning-rate decay do not move);
5. update the scale as PyTorch's GradScaler and Keras's LossScaleOptimizer do: halve it on a
   skipped step, double it after ``growth_interval`` (2000) finite steps in a row; it starts at
   ``initial_scale`` (2**15).

The finite check, the skip and the scale update are array operations (``xp.where`` on a 0-d
flag): no host sync, so the step stays capturable (fit(graph=True)). The host learns the number
of skipped steps at the epoch's one sync and corrects the optimizer's step counters then; the
log gets ``loss_scale``. Evaluation and prediction use the float32 weights (as a saved model
does). A saved model records the policy, and with its optimizer the loss scale (xpnet/io.py):
load_model compiles with both, so training goes on in mixed precision. A checkpoint (fit's
resume) continues only under the policy it was written with: another compute type, or for
float16 other loss-scale settings, is refused (xpnet/checkpoint.py), since the saved scale
replaces initial_scale while the other settings would apply. bfloat16 has float32's
exponent range, so it needs no loss scaling (scale 1, no skipping, as in Keras's
"mixed_bfloat16"); which compute types a backend offers is the backend's business
(``Backend.compute_dtype``): NumPy and the strict backend have float16 only.
"""
import contextlib
import math
import numbers

from .errors import ConfigError, TrainingError

NAMES = {"float16": "float16", "mixed_float16": "float16", "bfloat16": "bfloat16",
         "mixed_bfloat16": "bfloat16"}
OFF = (None, False, "float32", "off")


class MixedPrecision:
    """The policy: compute type and the dynamic loss scale's settings (PyTorch GradScaler's
    defaults: start at 2**15, x0.5 on inf/NaN gradients, x2 after 2000 finite steps)."""

    def __init__(self, compute="float16", initial_scale=2.0 ** 15, growth_interval=2000,
                 growth_factor=2.0, backoff_factor=0.5):
        if not isinstance(compute, str) or compute.lower() not in NAMES:
            raise ConfigError(f"unknown mixed precision {compute!r}; expected one of "
                              f"{', '.join(sorted(NAMES))}, or None/'float32' for none")
        self.compute = NAMES[compute.lower()]
        self.initial_scale = _positive("initial_scale", initial_scale)
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, numbers.Integral) \
                or growth_interval < 1:
            raise ConfigError(f"mixed precision: growth_interval must be a positive integer, got "
                              f"{growth_interval!r}")
        self.growth_interval = int(growth_interval)
        self.growth_factor = _positive("growth_factor", growth_factor)
        self.backoff_factor = _positive("backoff_factor", backoff_factor)
        if self.growth_factor <= 1.0 or self.backoff_factor >= 1.0:
            raise ConfigError(f"mixed precision: growth_factor must be > 1 and backoff_factor < 1, "
                              f"got {growth_factor!r} and {backoff_factor!r}")

    @property
    def dynamic(self):
        """Whether the loss is scaled dynamically (float16; bfloat16 needs no scaling)."""
        return self.compute == "float16"

    def get_config(self):
        return {"compute": self.compute, "initial_scale": self.initial_scale,
                "growth_interval": self.growth_interval, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor}

    def __repr__(self):
        return "MixedPrecision(" + ", ".join(f"{k}={v!r}" for k, v in self.get_config().items()) + ")"


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise ConfigError(f"mixed precision: {name} must be a positive finite number, got {value!r}")
    return float(value)


def get(value):
    """None (off) for None/False/"float32", a MixedPrecision for a name or one; else ConfigError."""
    if isinstance(value, MixedPrecision):
        return value
    if value in OFF or (isinstance(value, str) and value.lower() in OFF):
        return None
    if isinstance(value, str):
        return MixedPrecision(value)
    raise ConfigError(f"mixed_precision must be a name ({', '.join(sorted(NAMES))}), a "
                      f"xpnet.mixed.MixedPrecision or None, got {type(value).__name__} {value!r}")


class MixedStep:
    """A model's mixed-precision training state: the half-precision copy of the weights and the
    loss scale, a float32 device array [scale, finite steps in a row, skipped steps in all]."""

    def __init__(self, model, policy):
        if model.dtype != model.xp.float32:
            raise ConfigError(f"mixed precision keeps float32 master weights; model {model.name!r} "
                              f"is {model.dtype.name} (build it with dtype='float32')")
        self.policy = policy
        self.model = model
        self.xp = model.xp
        self.dtype = model.backend.compute_dtype(policy.compute)  # ConfigError where unsupported
        self.state = self.xp.zeros((3,), dtype=self.xp.float32)
        self.state[0] = policy.initial_scale if policy.dynamic else 1.0
        self.skipped_seen = 0  # skipped steps the host knows of (read at an epoch's sync)
        self.half = None

    # -- the half-precision weights ---------------------------------------------------------
    def _half_views(self, flat, views):
        if self.half is None or self.half[0].shape != flat.shape or self.half[2] is not flat:
            buf = self.xp.empty(flat.shape, dtype=self.dtype)
            half, offset = {}, 0
            for k, p in views.items():
                half[k] = buf[offset:offset + p.size].reshape(p.shape)
                offset += p.size
            self.half = (buf, half, flat)
        return self.half

    @contextlib.contextmanager
    def half_weights(self):
        """Within: the layers' parameters are float16 views of one buffer cast from the master
        weights (BatchNorm's stay float32) and the model takes float16 inputs."""
        model = self.model
        flat, views = model._flat_buffer, model._flat_views
        buf, half, _ = self._half_views(flat, views)
        buf[...] = flat  # one cast of every weight
        swapped = []
        for layer in model.layers:
            if getattr(layer, "keeps_float32", False):
                continue
            for k in layer.params:
                layer.params[k] = half[f"{layer.name}.{k}"]
                swapped.append((layer, k))
        model.compute_dtype = self.dtype
        try:
            yield
        finally:
            model.compute_dtype = model.dtype
            for layer, k in swapped:
                layer.params[k] = views[f"{layer.name}.{k}"]

    # -- one step -----------------------------------------------------------------------------
    def train_step(self, xb, yb, dp=None):
        """Forward and backward in half precision, the loss and the update in float32; returns
        (loss value, outputs) as device arrays. No host sync. With ``dp`` (data-parallel), the
        unscaled float32 gradients are all-reduced before the finite check, so every rank sees
        the same flag and skips the same steps."""
        model, xp = self.model, self.xp
        model._flat_parameters()
        if getattr(model, "_flat_buffer", None) is None:
            raise TrainingError("mixed precision needs the model's parameters in one flat float32 "
                                "buffer, which this optimizer does not support")
        scale = self.state[0]
        with model.backend.ignore_float_errors(), self.half_weights():  # overflow: the scaler's job
            out = model.forward(xb, training=True)
            out32 = out if out.dtype == xp.float32 else out.astype(xp.float32)
            value = model.loss.forward(out32, yb)
            grad = model.loss.backward()
            if dp is not None:  # the gradient of the global batch's mean loss
                grad = grad * dp.scale
            if self.policy.dynamic:
                grad = grad * scale
            model.backward(grad.astype(self.dtype))
            g = self._unscale(scale)
        if dp is not None:
            dp.reduce_gradients()  # one float32 all-reduce
            g = None
        finite = self._finite(g) if self.policy.dynamic else None
        value = value + model.regularization_loss()
        model.add_regularization_grads()
        model.optimizer.step(model.parameters, model.gradients, finite=finite)
        if finite is not None:
            self._update_scale(finite)
        return value, out

    def _unscale(self, scale):
        """Gradients -> float32 views of one buffer (returned), divided by the scale."""
        g = self._gathered(self.xp.float32)
        if self.policy.dynamic:
            g *= 1.0 / scale
        self._share(g)
        return g

    def _finite(self, g=None):
        """The 0-d flag "every gradient is finite"; non-finite entries become 0 (the step is then
        skipped anyway), so the optimizer's arithmetic stays quiet. ``g``: the gradients' flat
        buffer, None to gather them (after an all-reduce)."""
        xp = self.xp
        g = self._gathered(None) if g is None else g
        finite = xp.isfinite(g).all()
        self._share(xp.where(finite, g, xp.float32(0)))
        return finite

    def _gathered(self, dtype):
        grads = self.model.gradients
        return self.xp.concatenate([grads[k].reshape(-1) for k in self.model._flat_views], dtype=dtype)

    def _share(self, g):
        """Every layer's grads become views of ``g`` (in the flat buffer's order)."""
        offset = 0
        for layer in self.model.layers:
            for k, p in layer.params.items():
                n = int(p.size)
                layer.grads[k] = g[offset:offset + n].reshape(p.shape)
                offset += n

    def _update_scale(self, finite):
        """Halve on a skipped step, double after growth_interval finite steps in a row."""
        xp, s, policy = self.xp, self.state, self.policy
        good = xp.where(finite, s[1] + 1, 0)
        grow = good >= policy.growth_interval
        s[0] = xp.where(finite, xp.where(grow, s[0] * policy.growth_factor, s[0]),
                        s[0] * policy.backoff_factor)
        s[1] = xp.where(grow, 0, good)
        s[2] += ~finite

    # -- the host's view, once per epoch ----------------------------------------------------
    def epoch_values(self):
        """Device values for the epoch's sync: [scale, skipped steps in all]."""
        return [self.state[0], self.state[2]]

    def after_sync(self, scale, skipped, epoch=None, steps=None, quiet=False):
        """Correct the optimizer's host step counters by the steps skipped since the last sync;
        returns the loss scale for the log. A RuntimeWarning when every one of the epoch's
        ``steps`` was skipped: the weights did not move, which the log alone does not show (not on
        data-parallel ranks other than 0, ``quiet``: rank 0 gives it for the job)."""
        new = int(round(skipped)) - self.skipped_seen
        if new > 0:
            self.model.optimizer.uncount(new)
        self.skipped_seen = int(round(skipped))
        if steps and new >= steps and not quiet:
            import warnings
            where = "" if epoch is None else f" of epoch {epoch + 1}"
            warnings.warn(f"mixed precision: all {steps} steps{where} were skipped because the "
                          f"float16 gradients were not finite (inf/NaN), so the weights did not "
                          f"change; the loss scale, halved at each skip, is now {float(scale):g}. "
                          f"A smaller MixedPrecision(initial_scale=...) gets there sooner; if it "
                          f"keeps happening, the gradients overflow float16 at any scale (check the "
                          f"inputs' range and the learning rate, or train without mixed precision)",
                          RuntimeWarning, stacklevel=2)
        return float(scale)

    # -- checkpoints ----------------------------------------------------------------------------
    def get_state(self):
        return {"scale_state": self.model.backend.to_numpy(self.state), "policy": self.policy.get_config()}

    def set_state(self, values):
        self.state[...] = self.model.backend.asarray(values).astype(self.xp.float32)
        self.skipped_seen = int(round(float(values[2])))


def describe(policy, dtype, backend):
    """What a run folder records about precision: compute and master types, loss scaling, and
    TF32 for float32 products (a CuPy setting, CUPY_TF32; None on the CPU backends)."""
    settings = backend.settings() if hasattr(backend, "settings") else {}
    return {"compute": str(dtype) if policy is None else policy.compute,
            "master_weights": str(dtype),
            "loss_scaling": (policy.get_config() if policy is not None and policy.dynamic else None),
            "tf32": settings.get("tf32")}
