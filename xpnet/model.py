"""Sequential: a stack of layers with shape inference, forward, backward and a summary."""
import numbers

from . import checks, ops
from .backends import get_backend
from .errors import ConfigError, ShapeError
from .layers.activations import ReLU
from .layers.base import BuildContext, Layer, check_backward, check_forward, check_initialised, user_layer
from .training import TrainingMixin


def _snake(name):
    out = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    return out.replace("2_d", "2d").replace("_re_l_u", "_relu").replace("re_l_u", "relu")


def name_layers(layers):
    """Give every unnamed layer a unique snake_case name from its class (dense, dense_1, ...)."""
    seen = {layer.name for layer in layers if layer.name}
    counts = {}
    for layer in layers:
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
    if len(seen) != len(layers):
        raise ConfigError("layer names must be unique: " + ", ".join(l.name for l in layers))


def check_seed(seed, what, allow_none=False):
    """``seed`` as an int >= 0 (an integer, not a bool, float or string), else ConfigError."""
    if seed is None and allow_none:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError(f"{what} must be an integer >= 0{' or None' if allow_none else ''}, got "
                          f"{type(seed).__name__} {seed!r}")
    return int(seed)


def _link_token(model):
    """The object that marks the layers whose links (relu_after, pool_after, dropout_after,
    pool_link) this model set last: a layer shared with another model may carry that model's
    links instead."""
    token = getattr(model, "_links", None)
    if token is None:
        token = model._links = object()
    return token


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
        self.compute_dtype = self.dtype  # float16 while a mixed-precision step runs (xpnet/mixed.py)
        self.seed = check_seed(seed, f"{type(self).__name__}: seed")
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{type(self).__name__}: name must be a string or None, got "
                              f"{type(name).__name__} {name!r}")
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

    def state_arrays(self):
        """{"param/<layer>.<name>": array, "buffer/<layer>.<name>": array}: every parameter and
        buffer, the live arrays (what model files, checkpoints and best-weight copies hold)."""
        out = {"param/" + k: v for k, v in self.parameters.items()}
        out.update({"buffer/" + k: v for k, v in self.buffers.items()})
        return out

    def load_state_arrays(self, arrays, source="state", error=ShapeError, cast=False):
        """Copy ``arrays`` (host or device, named as :meth:`state_arrays` names them) into the
        model. Every name must be present, none may be extra (keys without a "param/" or "buffer/"
        prefix are ignored), and shapes must match; dtypes too unless ``cast``. Everything is
        checked before anything is written. Raises ``error`` naming ``source``."""
        targets = self.state_arrays()
        missing = sorted(k for k in targets if k not in arrays)
        if missing:
            raise error(f"{source}: the saved state does not match this model: missing arrays for "
                        f"{', '.join(missing)}")
        extra = sorted(k for k in arrays if k.split("/")[0] in ("param", "buffer") and k not in targets)
        if extra:
            raise error(f"{source}: the saved state does not match this model: it has arrays this model "
                        f"lacks: {', '.join(extra)}")
        for key, target in targets.items():
            got = arrays[key]
            if tuple(got.shape) != tuple(target.shape) or (not cast and got.dtype != target.dtype):
                raise error(f"{source}: array {key} has shape {tuple(got.shape)} and dtype {got.dtype}, "
                            f"but this model expects shape {tuple(target.shape)} and dtype {target.dtype}")
        for key, target in targets.items():
            target[...] = self.backend.asarray(arrays[key]).astype(target.dtype)

    def _weight_arrays(self):
        """[(name, live array)]: layer by layer, its parameters then its buffers (Keras's order)."""
        return [(f"{l.name}.{k}", v) for l in self.layers
                for k, v in list(l.params.items()) + list(l.buffers.items())]

    def get_weights(self):
        """Host copies of every parameter and buffer, as Keras's ``get_weights()``: a list, layer by
        layer, each layer's parameters then its buffers (BatchNorm: gamma, beta, running mean,
        running variance). Changing them changes nothing in the model."""
        return [self.backend.to_numpy(v).copy() for _, v in self._weight_arrays()]

    def set_weights(self, weights):
        """Copy a list like :meth:`get_weights` returns into the model (host or device arrays).
        Count and shapes are checked before anything is written; values are cast to the model's
        dtype and copied, so the caller's arrays and the model never share memory."""
        targets = self._weight_arrays()
        if not isinstance(weights, (list, tuple)):
            raise ConfigError(f"set_weights takes a list of arrays (as get_weights() returns), got "
                              f"{type(weights).__name__}")
        weights = list(weights)
        if len(weights) != len(targets):
            raise ShapeError(f"set_weights: model {self.name!r} has {len(targets)} weight arrays "
                             f"({', '.join(n for n, _ in targets)}), got {len(weights)}")
        for i, ((name, target), w) in enumerate(zip(targets, weights)):
            if not hasattr(w, "shape") or not hasattr(w, "dtype"):
                raise ShapeError(f"set_weights: weight {i} ({name}) must be an array of shape "
                                 f"{tuple(target.shape)}, got {type(w).__name__}"
                                 + ("; convert it with np.asarray" if isinstance(w, (list, tuple)) else ""))
            shape = tuple(w.shape)
            if shape != tuple(target.shape):
                raise ShapeError(f"set_weights: weight {i} ({name}) must have shape "
                                 f"{tuple(target.shape)}, got {shape}")
        for (_, target), w in zip(targets, weights):
            target[...] = self.backend.asarray(w).astype(target.dtype)

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
        check_print_fn(print_fn)
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


def check_print_fn(print_fn):
    if print_fn is not None and not callable(print_fn):
        raise ConfigError(f"summary: print_fn must be a callable such as print, or None (only return "
                          f"the text), got {type(print_fn).__name__} {print_fn!r}")


def unlink(layers, token):
    """Clear the links a Sequential set on ``layers`` (for a model that does not link them: the
    functional Model) and mark them as ``token``'s."""
    for layer in layers:
        for attr, off in (("relu_after", None), ("pool_after", None), ("dropout_after", None),
                          ("pool_link", None), ("planes_out", False)):
            if getattr(layer, attr, off) is not off:
                setattr(layer, attr, off)
        layer._linked_by = token


def _link_bias_relu(layers, backend):
    """On backends where a launch costs more than the arithmetic (GPUs, and the strict backend that
    counts them), a Conv2D or Dense with a bias directly followed by a ReLU adds the bias and applies
    the ReLU in one pass (backend.bias_relu): the layer gets ``relu_after``, and the ReLU passes on
    the array that layer made. The values are those of the two layers up to float rounding (the
    spectral convolution would otherwise add the bias in the frequency domain); on the CPU nothing
    changes."""
    from .layers.activations import ReLU
    from .layers.conv import Conv2D
    from .layers.dense import Dense
    for layer, after in zip(layers, layers[1:] + [None]):
        if isinstance(layer, (Conv2D, Dense)):
            fuse = (backend.few_launches and layer.use_bias and type(after) is ReLU)
            layer.relu_after = after if fuse else None


def _link_relu_pool(layers, backend):
    """A ReLU directly followed by a MaxPool2D whose windows tile the input (strides ==
    pool_size) runs after the pooling, on a quarter of the elements for 2x2 windows:
    max(relu(x)) == relu(max(x)), and the gradients agree (a window whose maximum is > 0 sends it
    to the same first maximum; one whose maximum is <= 0 or NaN sends 0 * dy to every cell either
    way). Only where the two orders give the same bits (backend.pool_before_relu, with the fast
    ops; tests/test_relu_pool.py) and where the ReLU is not already fused into the layer before it
    (_link_bias_relu). The ReLU gets ``pool_after``; Sequential's forward then skips it and calls
    the pooling with relu=True, and backward leaves it out when the pooling applied its mask."""
    from .layers.activations import ReLU
    from .layers.pooling import MaxPool2D
    for before, layer, after in zip([None] + layers[:-1], layers, layers[1:] + [None]):
        if type(layer) is ReLU:
            link = (backend.pool_before_relu and type(after) is MaxPool2D
                    and after.strides == after.pool_size and getattr(before, "relu_after", None) is not layer)
            layer.pool_after = after if link else None


def _link_relu_dropout(layers, backend):
    """Where launches are cheap (the CPU), a ReLU directly followed by a Dropout with a rate > 0
    runs inside that Dropout in training: forward one pass makes relu(x), its mask and the dropout
    of it (backend.relu_dropout), backward one pass the gradient through both
    (backend.relu_dropout_grad), without the ReLU's output and the Dropout's gradient written and
    read between them (the big model at 128: about 90 MB of traffic a step). The same expressions
    in the same order, so the same bits (tests/test_relu_dropout.py). Not where the ReLU is
    already fused into the layer before it (_link_bias_relu) or applied by a pooling
    (_link_relu_pool): there a MaxPool2D that a ReLU's ``pool_after`` names and that a Dropout
    follows passes the ReLU on to that Dropout instead (the pooled values' ReLU and dropout in one
    pass). The ReLU (or that pooling) gets ``dropout_after``; Sequential's forward then skips the
    ReLU in training (the pooling pools without it) and calls the Dropout with relu=True, and
    backward leaves the ReLU out when the Dropout applied its mask."""
    from .layers.dropout import Dropout
    from .layers.pooling import MaxPool2D
    for before, layer, after in zip([None] + layers[:-1], layers, layers[1:] + [None]):
        if type(layer) is ReLU:
            link = (getattr(before, "relu_after", None) is not layer
                    and getattr(layer, "pool_after", None) is None)
        elif type(layer) is MaxPool2D:
            link = getattr(before, "pool_after", None) is layer   # it applies the ReLU before it
        else:
            continue
        link = link and not backend.few_launches and type(after) is Dropout and after.rate > 0
        layer.dropout_after = after if link else None


def _link_conv_pool(layers, backend):
    """A Conv2D whose output goes only to a MaxPool2D with windows that tile it and no padding
    (directly, or through a ReLU that the pooling applies: _link_relu_pool), where launches are
    cheap (the CPU), is linked to that pooling. On the spectral route it hands its output on as
    the NCHW view of its planes: the pooling then works on planes, transposes only its pooled
    output, and sends its gradient back as planes that the convolution's backward reads without a
    transpose (ops/layout.py; tests/test_conv_pool_planes.py). On the columns route the two (and
    the ReLU) run as one pass over bands of images (``pool_link``: Conv2D's
    forward_pooled, ops/conv_pool.py; tests/test_conv_pool_fused.py), and Sequential skips the
    pooling and the ReLU. The same bits as the layers apart, either way."""
    from .layers.activations import ReLU
    from .layers.conv import Conv2D
    from .layers.pooling import MaxPool2D
    for i, layer in enumerate(layers):
        if type(layer) is not Conv2D:
            continue
        after = layers[i + 1] if i + 1 < len(layers) else None
        relu = type(after) is ReLU and getattr(after, "pool_after", None) is not None
        if relu:
            after = after.pool_after
        layer.planes_out = (not backend.few_launches and getattr(layer, "relu_after", None) is None
                            and type(after) is MaxPool2D and after.strides == after.pool_size
                            and not any(after.pads))
        layer.pool_link = (after, relu) if layer.planes_out else None


def _link_planes(layers, backend):
    """Where launches are cheap (the CPU), a Conv2D or a MaxPool2D whose output reaches a Conv2D
    through nothing but ReLU and Dropout layers hands it on as the NCHW view of its planes
    (``planes_out``; ops/layout.py): the ReLU and Dropout passes keep the layout (the backend's
    element-wise kernels write their outputs and masks laid out as their inputs; Dropout lays its
    keep mask out so), and the next convolution, on the spectral route, reads the planes without a
    transpose. Backward, that convolution gives its input's gradient as planes again (its input was
    planes), so the layers before read it without a transpose either. This takes two transposes
    forward and two backward out of each such link (the big model at 128: 16 of the 24 million
    elements its layout passes moved a step), with the same values in the same order, so the same
    bits (tests/test_planes_through.py). A convolution on the columns route gives NCHW output
    whatever the flag; a pooling gives planes only where it pooled planes (the input was planes)."""
    from .layers.activations import ReLU
    from .layers.conv import Conv2D
    from .layers.dropout import Dropout
    from .layers.pooling import MaxPool2D
    if backend.few_launches:
        return
    for i, layer in enumerate(layers):
        if type(layer) not in (Conv2D, MaxPool2D):
            continue
        j = i + 1
        while j < len(layers) and type(layers[j]) in (ReLU, Dropout):
            j += 1
        if j < len(layers) and type(layers[j]) is Conv2D:
            layer.planes_out = True


class Sequential(LayerStack, TrainingMixin):
    """Layers applied in order. ``input_shape`` excludes the batch axis, e.g. (1, 28, 28)."""

    layers_in_a_chain = True   # each layer feeds only the next (TrainingMixin._input_grad_free)

    def __init__(self, layers, input_shape=None, device="cpu", dtype="float32", seed=0, name=None):
        self._setup(device, dtype, seed, name)
        self.name = name or "sequential"
        if isinstance(layers, Layer):
            raise ConfigError(f"Sequential takes a list of layers, got a single {type(layers).__name__}; "
                              f"write Sequential([{type(layers).__name__}(...)])")
        if not isinstance(layers, (list, tuple)):
            raise ConfigError(f"Sequential takes a list of layers, got {type(layers).__name__} {layers!r}")
        self.layers = list(layers)
        for layer in self.layers:
            if not isinstance(layer, Layer):
                raise ConfigError(f"Sequential takes Layer objects, got {type(layer).__name__}")
            check_initialised(layer)
            if getattr(layer, "multi_input", False):
                kind = type(layer).__name__
                raise ConfigError(f"{kind} merges several tensors, so it cannot be a layer of a "
                                  f"Sequential (each layer there has one input); build a functional "
                                  f"Model: x = Input(shape); ...; {kind}()([a, b])")
        name_layers(self.layers)
        self.input_shape = None
        self.output_shape = None
        if input_shape is not None:
            self.build(input_shape)

    # -- building -------------------------------------------------------------------------------
    def build(self, input_shape):
        """Build every layer for ``input_shape`` (without the batch axis). On a model that is
        already built this is a no-op for the same shape (the weights are kept, as in Keras) and a
        ConfigError for another one. A layer that another model already built is shared with it
        (its weights are not re-initialised) when the shapes agree (xpnet.layers.base.Layer.build)."""
        shape = checks.input_dims(input_shape, "input_shape")
        if self.input_shape is not None:
            if shape != tuple(self.input_shape):
                raise ConfigError(f"model {self.name!r} is already built for input shape "
                                  f"{('batch',) + tuple(self.input_shape)}; it cannot be rebuilt for "
                                  f"{('batch',) + shape} (that would re-initialise its weights): make a "
                                  f"new model")
            return self
        ctx = BuildContext(self.backend, self.dtype, self.seed)
        fresh = [layer for layer in self.layers if not layer.built]
        out = shape
        try:
            for layer in self.layers:
                out = layer.build(out, ctx)
        except BaseException:
            for layer in fresh:   # a failed build leaves the new layers unbuilt (a retry may fix it)
                layer.unbuild()
            raise
        self.input_shape = shape
        self.output_shape = out
        self._link()
        return self

    def _link(self):
        """Link fused neighbours (a bias and its ReLU, a ReLU and its pooling or its Dropout, a
        convolution and its pooling) and mark the layers as linked by this model."""
        _link_bias_relu(self.layers, self.backend)
        _link_relu_pool(self.layers, self.backend)
        _link_relu_dropout(self.layers, self.backend)
        _link_conv_pool(self.layers, self.backend)
        _link_planes(self.layers, self.backend)
        token = _link_token(self)
        for layer in self.layers:
            layer._linked_by = token

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
        return x if x.dtype == self.compute_dtype else x.astype(self.compute_dtype)

    def forward(self, x, training=False):
        x = self.check_input(x)
        token = _link_token(self)
        if any(getattr(layer, "_linked_by", None) is not token for layer in self.layers):
            self._link()   # a layer shared with another model carries that model's links
        swap = ops.current() == "fast"   # the reference pooling's gradient differs in -0.0 vs 0.0
        relu = False
        self._taken = set()   # ids of the layers a convolution's fused pass ran (backward skips them)
        until = None
        for layer in self.layers:
            if until is not None:   # the ReLU and the pooling that the convolution before ran
                self._taken.add(id(layer))
                until = None if layer is until else until
                continue
            if swap and getattr(layer, "pool_after", None) is not None:
                relu = True   # the MaxPool2D after this ReLU applies it (see _link_relu_pool)
                continue
            if training and getattr(layer, "dropout_after", None) is not None:
                if relu:   # a pooling that leaves the ReLU to the Dropout after it (relu stays True)
                    x = layer.forward(x, training)
                    continue
                if type(layer) is ReLU:
                    relu = True   # the Dropout after this ReLU applies it (see _link_relu_dropout)
                    continue
            if swap and getattr(layer, "pool_link", None) is not None:
                y = layer.forward_pooled(x, training)   # None where the fused pass does not apply
                if y is not None:
                    x, until = y, layer.pool_link[0]
                    continue
            x = layer.forward(x, training, relu=True) if relu else layer.forward(x, training)
            if user_layer(layer):
                check_forward(layer, x)
            relu = False
        return x

    __call__ = forward

    def backward(self, grad):
        """Propagate d(loss)/d(output) back through every layer; returns d(loss)/d(input)."""
        taken = getattr(self, "_taken", ())
        batch = int(grad.shape[0])
        # work whose results only the weight gradients need may run beside the rest (the CPU's
        # idle workers: Backend.deferring); all of it is done when the with block ends
        with self.backend.deferring():
            for layer in reversed(self.layers):
                if id(layer) in taken:   # run by the convolution before it, whose backward takes grad
                    continue
                by = getattr(layer, "pool_after", None)   # the layer that applied this ReLU, if any
                if by is not None and by.relu_mask is None:   # the pooling may have passed it on
                    by = getattr(by, "dropout_after", None)
                elif by is None and type(layer) is ReLU:
                    by = getattr(layer, "dropout_after", None)
                if by is not None and by.relu_mask is not None:   # a pooling or a Dropout applied it
                    grad = grad if layer.need_input_grad else None
                    continue
                grad = layer.backward(grad)
                if user_layer(layer):
                    check_backward(layer, grad, batch, (self.dtype, self.compute_dtype))
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
    def get_config(self):
        """The architecture as JSON-able data: name, input shape and each layer's type and config."""
        shape = None if self.input_shape is None else list(self.input_shape)
        return {"name": self.name, "input_shape": shape,
                "layers": [{"type": type(l).__name__, "config": l.get_config()} for l in self.layers]}

    @classmethod
    def from_config(cls, config, device="cpu", dtype="float32", seed=0):
        """Rebuild a model from :meth:`get_config` (registered layer types only, ConfigError
        otherwise)."""
        from .layers import layer_from_config
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ConfigError(f"a Sequential config needs a list of layers, got {config!r}")
        layers = [layer_from_config(i, spec) for i, spec in enumerate(config["layers"])]
        if not layers:
            raise ConfigError("the model config lists no layers")
        shape = config.get("input_shape")
        return cls(layers, input_shape=None if shape is None else tuple(shape), device=device,
                   dtype=dtype, seed=seed, name=config.get("name"))

    def save(self, path, include_optimizer=True):
        """Write this model (architecture, weights, optionally optimizer state) to one .npz file."""
        from .io import save_model
        return save_model(self, path, include_optimizer=include_optimizer)
