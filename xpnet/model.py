"""Sequential: a stack of layers with shape inference, forward, backward and a summary."""
from .backends import get_backend
from .errors import ConfigError, ShapeError
from .layers.base import BuildContext, Layer
from .training import TrainingMixin


def _snake(name):
    out = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    return out.replace("2_d", "2d").replace("_re_l_u", "_relu").replace("re_l_u", "relu")


class LayerStack:
    """What every model offers over its ``self.layers``: named parameters, gradients, buffers,
    weight penalties and counts. Shared by Sequential and the functional Model."""

    def _setup(self, device, dtype, seed, name):
        """Backend, dtype (float32 or float64), seed and name: how every model starts."""
        self.backend = get_backend(device)
        self.xp = self.backend.xp
        if str(dtype) not in ("float32", "float64"):
            raise ConfigError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        self.dtype = self.xp.dtype(str(dtype))
        self.seed = int(seed)
        self.name = name

    # -- parameters -----------------------------------------------------------------------------
    @property
    def parameters(self):
        """{"layer.param": array}; the arrays are the layers' own, updated in place by optimizers."""
        return {f"{l.name}.{k}": v for l in self.layers for k, v in l.params.items()}

    @property
    def gradients(self):
        return {f"{l.name}.{k}": v for l in self.layers for k, v in l.grads.items()}

    @property
    def buffers(self):
        return {f"{l.name}.{k}": v for l in self.layers for k, v in l.buffers.items()}

    def regularization_loss(self):
        """Sum of every layer's L1/L2 weight penalty (0.0 when none is configured)."""
        return sum((layer.regularization_loss() for layer in self.layers), 0.0)

    def add_regularization_grads(self):
        for layer in self.layers:
            layer.add_regularization_grads()

    def count_params(self):
        return sum(layer.count_params() for layer in self.layers)

    def _table(self, title, rows, print_fn):
        """The summary table: a header row, one row per layer (3rd column right-aligned), the total."""
        w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        line = "-" * (sum(w) + 3 * (len(w) - 1))
        out = [title, line]
        for i, r in enumerate(rows):
            cells = [f"{c:>{w[k]}}" if k == 2 else f"{c:<{w[k]}}" for k, c in enumerate(r)]
            out.append("   ".join(cells).rstrip())
            if i == 0:
                out.append(line)
        out += [line, f"Total params: {self.count_params():,}"]
        text = "\n".join(out)
        if print_fn:
            print_fn(text)
        return text


class Sequential(LayerStack, TrainingMixin):
    """Layers applied in order. ``input_shape`` excludes the batch axis, e.g. (1, 28, 28)."""

    def __init__(self, layers, input_shape=None, device="cpu", dtype="float32", seed=0, name=None):
        self._setup(device, dtype, seed, name or "sequential")
        self.layers = list(layers)
        for layer in self.layers:
            if not isinstance(layer, Layer):
                raise ConfigError(f"Sequential takes Layer objects, got {type(layer).__name__}")
        self._name_layers()
        self.input_shape = None
        self.output_shape = None
        if input_shape is not None:
            self.build(input_shape)

    def _name_layers(self):
        seen = {layer.name for layer in self.layers if layer.name}
        counts = {}
        for layer in self.layers:
            if layer.name:
                continue
            base = _snake(type(layer).__name__)
            while True:
                n = counts.get(base, 0)
                counts[base] = n + 1
                candidate = base if n == 0 else f"{base}_{n}"
                if candidate not in seen:
                    break
            layer.name = candidate
            seen.add(candidate)
        if len(seen) != len(self.layers):
            raise ConfigError("layer names must be unique: " + ", ".join(l.name for l in self.layers))

    # -- building -------------------------------------------------------------------------------
    def build(self, input_shape):
        if isinstance(input_shape, int):
            input_shape = (input_shape,)
        shape = tuple(int(d) for d in input_shape)
        if not shape or any(d <= 0 for d in shape):
            raise ShapeError(f"input_shape must be a tuple of positive sizes without the batch axis, "
                             f"got {input_shape!r}")
        self.input_shape = shape
        ctx = BuildContext(self.backend, self.dtype, self.seed)
        for layer in self.layers:
            shape = layer.build(shape, ctx)
        self.output_shape = shape
        return self

    @property
    def built(self):
        return self.input_shape is not None

    def _require_built(self):
        if not self.built:
            raise ConfigError("the model is not built: pass input_shape=... to Sequential or call build()")

    # -- computation ----------------------------------------------------------------------------
    def check_input(self, x):
        """Validate rank, shape and dtype of a batch; returns it cast to the model dtype."""
        self._require_built()
        dtype = getattr(x, "dtype", None)
        first = self.layers[0] if self.layers else None
        where = f"layer {first.name!r} ({type(first).__name__})" if first else f"model {self.name!r}"
        if dtype is None or getattr(dtype, "kind", "") != "f":
            raise ShapeError(f"{where} expected a floating-point array ({self.dtype.name}), got "
                             f"{type(x).__name__} of dtype {dtype}; convert images with "
                             f"x.astype('float32') / 255")
        if first is not None:
            first.check_input(x)
        elif tuple(x.shape[1:]) != self.input_shape:
            raise ShapeError(f"{where} expected input of shape {('batch',) + self.input_shape}, "
                             f"got {tuple(x.shape)}")
        return x if x.dtype == self.dtype else x.astype(self.dtype)

    def forward(self, x, training=False):
        x = self.check_input(x)
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    __call__ = forward

    def backward(self, grad):
        """Propagate d(loss)/d(output) back through every layer; returns d(loss)/d(input)."""
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
        return grad

    def summary(self, print_fn=print):
        """Print (and return) a table: layer, output shape, parameter count, total."""
        self._require_built()
        rows = [("Layer (type)", "Output shape", "Params")]
        for layer in self.layers:
            rows.append((f"{layer.name} ({type(layer).__name__})",
                         str(("batch",) + tuple(layer.output_shape)).replace("'", ""),
                         f"{layer.count_params():,}"))
        title = (f"Model: {self.name}  (input {('batch',) + self.input_shape}, "
                 f"{self.dtype.name}, backend {self.backend.name})").replace("'", "")
        return self._table(title, rows, print_fn)

    # -- files ------------------------------------------------------------------------------------
    def save(self, path, include_optimizer=True):
        """Write this model (architecture, weights, optionally optimizer state) to one .npz file."""
        from .io import save_model
        return save_model(self, path, include_optimizer=include_optimizer)
