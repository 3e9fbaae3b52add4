"""The functional API: ``Input``, symbolic tensors, multi-input layers and ``Model``.

    x = Input((1, 28, 28))
    h = Dense(10)(Flatten()(x))                   # calling a layer on a symbolic tensor records a node
    y = Add()([h, Dense(10)(h)])
    model = Model(x, y, device="cpu", seed=0)     # builds every layer, in order

``Model`` has the surface of ``Sequential`` (forward, backward, parameters, gradients, buffers,
layers, summary, get_config/from_config, compile/fit/evaluate/predict), so training and model
files work the same. Where a tensor feeds several layers, backward sums their gradients. A layer
object may appear only once in a graph (it keeps the inputs of its last forward pass). A layer
built by another model joins a graph with its weights (shared) when its input shape agrees.
fit/evaluate/predict take one input array: a Model with several inputs is not supported by them
yet (forward takes the list).
"""
from . import checks
from .errors import ConfigError, ShapeError
from .layers import layer_from_config
from .layers.base import (BuildContext, check_backward, check_forward, check_initialised,
                          output_shape_of, user_layer)
from .layers.merge import Add, Concatenate, Merge  # noqa: F401  (part of the functional API)
from .model import LayerStack, _link_token, name_layers, unlink
from .training import TrainingMixin


class SymbolicTensor:
    """A placeholder for the batch a layer will produce. ``shape`` excludes the batch axis."""

    _xpnet_symbolic = True

    def __init__(self, shape, layer=None, inputs=(), name=None):
        self.shape = tuple(int(d) for d in shape)
        self.layer = layer            # the layer producing it; None for an Input
        self.inputs = list(inputs)    # the tensors that layer was called on
        self.name = name              # Inputs only; layers are named when the Model is made

    @property
    def is_input(self):
        return self.layer is None

    def __repr__(self):
        source = f"Input {self.name!r}" if self.is_input else type(self.layer).__name__
        return f"<SymbolicTensor shape={('batch',) + self.shape} from {source}>"


def Input(shape, name=None):
    """A model input: ``shape`` excludes the batch axis, e.g. ``(1, 28, 28)`` or ``784``."""
    dims = checks.input_dims(shape, "Input: shape")
    return SymbolicTensor(dims, name=name)


def call_symbolic(layer, x):
    """Record ``layer(x)`` for symbolic ``x``; returns the output tensor (Layer.__call__ uses this)."""
    check_initialised(layer)
    multi = isinstance(x, (list, tuple))
    inputs = list(x) if multi else [x]
    label = f"layer {layer.name!r} ({type(layer).__name__})" if layer.name else type(layer).__name__
    if multi != bool(getattr(layer, "multi_input", False)):
        got, want = ("a list", "one tensor") if multi else ("one tensor", "a list of tensors")
        raise ConfigError(f"{label} was called on {got}; it takes {want}")
    shape = [t.shape for t in inputs] if multi else inputs[0].shape
    if layer.built:
        expected = layer.input_shape
        if (list(map(tuple, expected)) if multi else tuple(expected)) != shape:
            raise ShapeError(f"{label} was built for input {expected}, but was called on {shape}")
        out = layer.output_shape
    elif not multi:
        out = output_shape_of(layer, shape)
    else:
        try:
            out = layer.compute_output_shape(shape)
        except ShapeError as exc:  # say where each mismatched input comes from
            sources = ", ".join(f"{_source_label(t)} {('batch',) + t.shape}" for t in inputs)
            raise ShapeError(f"{exc}; the inputs come from {sources}") from None
    return SymbolicTensor(out, layer, inputs)


def _source_label(t):
    """What produced symbolic tensor ``t``, for messages: Input 'name', layer 'name' (Kind), or
    'a Kind layer' (layers are named only when the Model is made)."""
    if t.is_input:
        return f"Input {t.name!r}" if t.name else "an Input"
    return t.layer._what()


# -- the model ------------------------------------------------------------------------------------
def _as_list(x, what):
    items = list(x) if isinstance(x, (list, tuple)) else [x]
    if not items or not all(isinstance(t, SymbolicTensor) for t in items):
        raise ConfigError(f"Model: {what} must be symbolic tensors (from Input(...) and layer calls), "
                          f"got {x!r}")
    return items


class Model(LayerStack, TrainingMixin):
    """A graph of layers from ``inputs`` to ``outputs`` (symbolic tensors, or lists of them)."""

    built = True  # every layer is built when the Model is made

    def __init__(self, inputs, outputs, device="cpu", dtype="float32", seed=0, name=None):
        self._setup(device, dtype, seed, name or "model")
        self._multi_in = isinstance(inputs, (list, tuple))
        self._multi_out = isinstance(outputs, (list, tuple))
        self.inputs = _as_list(inputs, "inputs")
        self.outputs = _as_list(outputs, "outputs")
        if any(not t.is_input for t in self.inputs):
            raise ConfigError("Model: every entry of inputs must come from Input(...)")
        if len(set(map(id, self.inputs))) != len(self.inputs):
            raise ConfigError("Model: the same Input is listed twice in inputs")
        self.nodes = self._topological_order()
        self.layers = [t.layer for t in self.nodes]
        self._name_everything()
        self._build()

    # -- structure --------------------------------------------------------------------------------
    def _topological_order(self):
        order, state = [], {}
        known_inputs = set(map(id, self.inputs))
        for out in self.outputs:
            stack = [(out, False)]
            while stack:
                t, done = stack.pop()
                if done:
                    if state.get(id(t)) != 2:
                        state[id(t)] = 2
                        order.append(t)
                    continue
                if state.get(id(t)) == 2:
                    continue
                if t.is_input:
                    if id(t) not in known_inputs:
                        raise ConfigError(f"Model: the outputs depend on Input {t.name or ''} of shape "
                                          f"{t.shape} that is not listed in inputs")
                    state[id(t)] = 2
                    continue
                state[id(t)] = 1
                stack.append((t, True))
                for parent in reversed(t.inputs):
                    if state.get(id(parent)) != 2:
                        stack.append((parent, False))
        seen = {}
        for t in order:
            if id(t.layer) in seen:
                raise ConfigError(f"Model: layer {type(t.layer).__name__} (name {t.layer.name!r}) is "
                                  "used twice; a layer keeps the inputs of its last call, so create "
                                  "one layer per use")
            seen[id(t.layer)] = t
        if not order:
            raise ConfigError("Model: the outputs are Inputs; add at least one layer")
        return order

    def _name_everything(self):
        taken = {l.name for l in self.layers if l.name} | {t.name for t in self.inputs if t.name}
        for i, t in enumerate(self.inputs):
            if not t.name:
                t.name = "input" if "input" not in taken else f"input_{i}"
                taken.add(t.name)
        name_layers(self.layers)  # the same naming as Sequential (dense, dense_1, ...)
        names = [t.name for t in self.inputs] + [l.name for l in self.layers]
        if len(set(names)) != len(names):
            raise ConfigError("Model: input and layer names must be unique: " + ", ".join(names))

    def _build(self):
        ctx = BuildContext(self.backend, self.dtype, self.seed)
        for t in self.nodes:
            layer = t.layer
            shape = [p.shape for p in t.inputs] if getattr(layer, "multi_input", False) else t.inputs[0].shape
            if layer.built:
                if layer.ctx.backend is not self.backend or layer.dtype != self.dtype:
                    raise ConfigError(f"layer {layer.name!r} was built on backend "
                                      f"{layer.ctx.backend.name} with {layer.dtype}; the model uses "
                                      f"{self.backend.name} with {self.dtype.name}")
            else:
                layer.build(shape, ctx)
            if tuple(layer.output_shape) != t.shape:
                raise ShapeError(f"layer {layer.name!r} built with output {layer.output_shape}, but "
                                 f"its symbolic call gave {t.shape}")
        shapes = [t.shape for t in self.inputs]
        self.input_shape = shapes if self._multi_in else shapes[0]
        outs = [t.shape for t in self.outputs]
        self.output_shape = outs if self._multi_out else outs[0]

    # -- computation ------------------------------------------------------------------------------
    def check_input(self, x):
        """Validate the batch (a list of arrays for several inputs); returns it in the model dtype."""
        xs = list(x) if self._multi_in and isinstance(x, (list, tuple)) else [x]
        if len(xs) != len(self.inputs):
            raise ShapeError(f"model {self.name!r} takes {len(self.inputs)} inputs "
                             f"({', '.join(t.name for t in self.inputs)}), got {len(xs)}")
        out = []
        for a, t in zip(xs, self.inputs):
            dtype = getattr(a, "dtype", None)
            if dtype is None or getattr(dtype, "kind", "") != "f":
                raise ShapeError(f"input {t.name!r} of model {self.name!r} expected a floating-point "
                                 f"array ({self.dtype.name}), got {type(a).__name__} of dtype {dtype}; "
                                 "convert images with x.astype('float32') / 255")
            shape = tuple(a.shape)
            if len(shape) != len(t.shape) + 1 or shape[1:] != t.shape:
                raise ShapeError(f"input {t.name!r} of model {self.name!r} expected shape "
                                 f"{('batch',) + t.shape}, got {shape}")
            out.append(a if a.dtype == self.compute_dtype else a.astype(self.compute_dtype))
        if len({int(a.shape[0]) for a in out}) > 1:
            raise ShapeError(f"model {self.name!r}: inputs have different batch sizes "
                             f"{[int(a.shape[0]) for a in out]}")
        return out if self._multi_in else out[0]

    def forward(self, x, training=False):
        xs = self.check_input(x)
        token = _link_token(self)
        if any(getattr(layer, "_linked_by", None) is not token for layer in self.layers):
            unlink(self.layers, token)   # a layer shared with a Sequential carries its links
        values = dict(zip(map(id, self.inputs), xs if self._multi_in else [xs]))
        for t in self.nodes:
            args = [values[id(p)] for p in t.inputs]
            multi = getattr(t.layer, "multi_input", False)
            values[id(t)] = t.layer.forward(args if multi else args[0], training)
            if user_layer(t.layer):
                check_forward(t.layer, values[id(t)])
        outs = [values[id(t)] for t in self.outputs]
        return outs if self._multi_out else outs[0]

    __call__ = forward

    def backward(self, grad):
        """d(loss)/d(outputs) -> d(loss)/d(inputs); gradients of shared tensors are summed.

        An input gradient is None when a layer fed by that input skips it (need_input_grad=False).
        """
        grads = list(grad) if self._multi_out else [grad]
        if len(grads) != len(self.outputs):
            raise ShapeError(f"model {self.name!r} has {len(self.outputs)} outputs, got "
                             f"{len(grads)} gradients")
        acc, missing = {}, set()
        batch = int(grads[0].shape[0])

        def add(t, g):
            if g is None:
                if not t.is_input:
                    raise ConfigError(f"layer {t.layer.name!r} received no gradient from a layer "
                                      "with need_input_grad=False; only layers fed by Inputs may "
                                      "skip their input gradient")
                missing.add(id(t))
            elif id(t) in acc:
                acc[id(t)] = acc[id(t)] + g
            else:
                acc[id(t)] = g

        for t, g in zip(self.outputs, grads):
            add(t, g)
        with self.backend.deferring():   # as Sequential.backward
            for t in reversed(self.nodes):
                g = acc.pop(id(t))
                back = t.layer.backward(g)
                if user_layer(t.layer):
                    check_backward(t.layer, back, batch, (self.dtype, self.compute_dtype))
                multi = getattr(t.layer, "multi_input", False)
                for parent, pg in zip(t.inputs, back if multi else [back]):
                    add(parent, pg)
        result = [None if id(t) in missing else acc.get(id(t)) for t in self.inputs]
        return result if self._multi_in else result[0]

    def _source(self, t):
        return t.name if t.is_input else t.layer.name

    def summary(self, print_fn=print):
        """Print (and return) a table: layer, output shape, parameters, inbound layers."""
        rows = [("Layer (type)", "Output shape", "Params", "Connected to")]
        for t in self.inputs:
            rows.append((f"{t.name} (Input)", str(("batch",) + t.shape), "0", ""))
        for t in self.nodes:
            rows.append((f"{t.layer.name} ({type(t.layer).__name__})", str(("batch",) + t.shape),
                         f"{t.layer.count_params():,}", ", ".join(self._source(p) for p in t.inputs)))
        rows = [tuple(c.replace("'", "") for c in r) for r in rows]
        return self._table(f"Model: {self.name}  ({self.dtype.name}, backend {self.backend.name})",
                           rows, print_fn)

    # -- files ------------------------------------------------------------------------------------
    def get_config(self):
        """The graph as JSON-able data: inputs, layers with their inbound tensors, outputs."""
        return {"name": self.name,
                "inputs": [{"name": t.name, "shape": list(t.shape)} for t in self.inputs],
                "multi_input": self._multi_in, "multi_output": self._multi_out,
                "layers": [{"type": type(t.layer).__name__, "config": t.layer.get_config(),
                            "inbound": [self._source(p) for p in t.inputs]} for t in self.nodes],
                "outputs": [self._source(t) for t in self.outputs]}

    @classmethod
    def from_config(cls, config, device="cpu", dtype="float32", seed=0):
        """Rebuild a model from :meth:`get_config` (registered layer types only, ConfigError
        otherwise)."""
        try:
            tensors = {}
            inputs = []
            for spec in config["inputs"]:
                t = Input(tuple(spec["shape"]), name=spec["name"])
                tensors[spec["name"]] = t
                inputs.append(t)
            for index, spec in enumerate(config["layers"]):
                layer = layer_from_config(index, spec)
                args = [tensors[name] for name in spec["inbound"]]
                multi = getattr(layer, "multi_input", False)
                tensors[layer.name] = call_symbolic(layer, args if multi else args[0])
            outputs = [tensors[name] for name in config["outputs"]]
        except KeyError as exc:
            raise ConfigError(f"model config is missing or refers to an unknown entry {exc.args[0]!r}") from None
        return cls(inputs if config.get("multi_input") else inputs[0],
                   outputs if config.get("multi_output") else outputs[0],
                   device=device, dtype=dtype, seed=seed, name=config.get("name"))

    def save(self, path, include_optimizer=True):
        """Write this model (graph, weights, optionally optimizer state) to one .npz file."""
        from .io import save_model
        return save_model(self, path, include_optimizer=include_optimizer)
