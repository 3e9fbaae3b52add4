"""Export a Sequential or functional Model to an ONNX file (needs the ``xpnet[onnx]`` extra).

    xpnet.export_onnx(model, "model.onnx")          # or: xpnet export runs/.../model.npz model.onnx

The graph takes float32 NCHW images scaled to [0, 1] (or flat float32 features, as the model
does) with a dynamic batch axis, and returns what ``model.predict`` returns: logits for the zoo's
classifiers (apply a softmax for probabilities). Pixel scaling is not in the graph: divide uint8
images by 255 before feeding them, as xpnet does. Weights are written as float32 whatever the
model's dtype. Dropout is left out (the identity at inference); BatchNorm uses its running
statistics. A layer without an ONNX mapping raises ConfigError naming it.
"""
import numpy as np

from .errors import ConfigError

DEFAULT_OPSET = 17
MIN_OPSET = 13  # Softmax/LogSoftmax act on one axis from opset 13 on (earlier: flattened to 2-D)
INPUT_SCALING = "float32 in [0, 1]: divide uint8 pixels by 255 before the model"
EXTRA_HINT = "ONNX export needs the onnx package: pip install 'xpnet[onnx]'"


def _onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(f"{EXTRA_HINT} ({exc})") from exc
    return onnx


class _Graph:
    """Collects nodes and initializers, hands out unique tensor names."""

    def __init__(self, onnx, backend):
        self.onnx, self.helper, self.backend = onnx, onnx.helper, backend
        self.nodes, self.initializers = [], []
        self.used = set()

    def name(self, base):
        name, n = base, 1
        while name in self.used:
            name, n = f"{base}_{n}", n + 1
        self.used.add(name)
        return name

    def const(self, base, value, dtype=np.float32):
        name = self.name(base)
        array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def weight(self, layer, key, store="params"):
        return self.const(f"{layer.name}.{key}", self.backend.to_numpy(getattr(layer, store)[key]))

    def node(self, op, inputs, layer, **attrs):
        out = self.name(layer.name)
        self.nodes.append(self.helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out


# -- one function per layer type: (graph, layer, input names) -> output name ---------------------
def _dense(g, layer, xs):
    w = g.weight(layer, "W")
    if layer.use_bias:
        return g.node("Gemm", [xs[0], w, g.weight(layer, "b")], layer)
    return g.node("MatMul", [xs[0], w], layer)


def _onnx_pads(layer):
    top, bottom, left, right = layer.pads
    return [top, left, bottom, right]


def _conv(g, layer, xs):
    inputs = [xs[0], g.weight(layer, "W")] + ([g.weight(layer, "b")] if layer.use_bias else [])
    return g.node("Conv", inputs, layer, kernel_shape=list(layer.kernel_size),
                  strides=list(layer.strides), pads=_onnx_pads(layer))


def _maxpool(g, layer, xs):
    return g.node("MaxPool", xs, layer, kernel_shape=list(layer.pool_size),
                  strides=list(layer.strides), pads=_onnx_pads(layer))


def _avgpool(g, layer, xs):  # padded cells are left out of the count, as in xpnet
    return g.node("AveragePool", xs, layer, kernel_shape=list(layer.pool_size),
                  strides=list(layer.strides), pads=_onnx_pads(layer), count_include_pad=0)


def _flatten(g, layer, xs):
    return g.node("Flatten", xs, layer, axis=1)


def _reshape(g, layer, xs):  # 0 keeps the batch size of the input
    shape = g.const(f"{layer.name}.shape", [0] + list(layer.output_shape), np.int64)
    return g.node("Reshape", [xs[0], shape], layer)


def _dropout(g, layer, xs):
    return xs[0]


def _batchnorm(g, layer, xs):
    inputs = [xs[0], g.weight(layer, "gamma"), g.weight(layer, "beta"),
              g.weight(layer, "running_mean", "buffers"), g.weight(layer, "running_var", "buffers")]
    return g.node("BatchNormalization", inputs, layer, epsilon=layer.epsilon)


def _simple(op, **fixed):
    return lambda g, layer, xs: g.node(op, xs, layer, **fixed)


def _leaky(g, layer, xs):
    return g.node("LeakyRelu", xs, layer, alpha=layer.alpha)


def _axis(op):
    return lambda g, layer, xs: g.node(op, xs, layer, axis=layer.axis)


def _concat(g, layer, xs):
    return g.node("Concat", xs, layer, axis=layer._axis)


def _add(g, layer, xs):
    out = xs[0]
    for x in xs[1:]:  # in xpnet's order, so float32 sums round the same way
        out = g.node("Add", [out, x], layer)
    return out


MAPPINGS = {"Dense": _dense, "Conv2D": _conv, "MaxPool2D": _maxpool, "AvgPool2D": _avgpool,
            "Flatten": _flatten, "Reshape": _reshape, "Dropout": _dropout, "BatchNorm": _batchnorm,
            "ReLU": _simple("Relu"), "LeakyReLU": _leaky, "Tanh": _simple("Tanh"),
            "Sigmoid": _simple("Sigmoid"), "Softmax": _axis("Softmax"),
            "LogSoftmax": _axis("LogSoftmax"), "Concatenate": _concat, "Add": _add}


def _mapping(layer):
    """The export function for this exact layer class (a subclass may compute something else)."""
    from .layers import LAYERS
    kind = type(layer).__name__
    if kind not in MAPPINGS or LAYERS.get(kind) is not type(layer):
        raise ConfigError(f"cannot export layer {layer.name!r} ({kind}) to ONNX: it has no ONNX "
                          f"mapping; supported layers: {', '.join(MAPPINGS)}")
    return MAPPINGS[kind]


def _steps(model):
    """(inputs [(name, shape)], steps [(layer, [source ids], id)], output ids) for either model kind."""
    if hasattr(model, "nodes"):  # functional Model
        inputs = [(t.name, t.shape) for t in model.inputs]
        names = {id(t): t.name for t in model.inputs}
        steps = [(t.layer, [id(p) for p in t.inputs], id(t)) for t in model.nodes]
        return inputs, names, steps, [id(t) for t in model.outputs]
    if not getattr(model, "built", False):
        raise ConfigError("cannot export a model that is not built: give it an input_shape first")
    steps, previous = [], "input"
    for i, layer in enumerate(model.layers):
        steps.append((layer, [previous], i))
        previous = i
    return [("input", model.input_shape)], {"input": "input"}, steps, [previous]


def to_onnx(model, opset=DEFAULT_OPSET):
    """The ONNX ModelProto of ``model`` (checked with ``onnx.checker.check_model``)."""
    onnx = _onnx()
    helper = onnx.helper
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or \
            not MIN_OPSET <= opset <= newest:
        raise ConfigError(f"opset must be an integer from {MIN_OPSET} to {newest} (this onnx "
                          f"package's newest), got {opset!r}")
    if not hasattr(model, "layers") or not model.layers:
        raise ConfigError(f"cannot export {type(model).__name__}: expected a Sequential or a "
                          "functional Model with at least one layer")
    inputs, names, steps, output_ids = _steps(model)
    for layer, _, _ in steps:
        _mapping(layer)  # an unsupported layer is named before anything is built
    g = _Graph(onnx, model.backend)
    for name, _ in inputs:
        g.used.add(name)
    # the graph's output names are reserved before any layer is named, as the inputs' are: a layer
    # called "output" gets "output_1" for its tensor (an Input called "output" makes the graph's
    # output "output_1"); a name made twice is not single static assignment and fails the checker
    outputs = [g.name("output" if len(output_ids) == 1 else f"output_{i}")
               for i in range(len(output_ids))]
    for layer, sources, key in steps:
        names[key] = _mapping(layer)(g, layer, [names[s] for s in sources])
    for name, key in zip(outputs, output_ids):  # Identity gives each output its own name
        g.nodes.append(helper.make_node("Identity", [names[key]], [name], name=name))
    out_shapes = model.output_shape if len(outputs) > 1 else [model.output_shape]
    f32 = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        g.nodes, model.name,
        [helper.make_tensor_value_info(n, f32, ["batch"] + list(s)) for n, s in inputs],
        [helper.make_tensor_value_info(n, f32, ["batch"] + list(s)) for n, s in zip(outputs, out_shapes)],
        initializer=g.initializers)
    from . import __version__
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", int(opset))],
                              producer_name="xpnet", producer_version=__version__,
                              doc_string=f"xpnet model {model.name!r}; input {INPUT_SCALING}")
    helper.set_model_props(proto, {"xpnet_model": model.name, "input_scaling": INPUT_SCALING})
    # the IR version that came with this opset, so runtimes of that time can read the file
    proto.ir_version = helper.find_min_ir_version_for(list(proto.opset_import))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:  # its message runs over many lines
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ConfigError(f"cannot export {model.name!r} to ONNX: the ONNX checker refuses the "
                          f"graph: {first}") from exc
    return proto


def export_onnx(model, path, opset=DEFAULT_OPSET):
    """Write ``model`` to ``path`` as ONNX (atomically); returns the path. See the module doc."""
    from .serialization import atomic_write_bytes, check_destination, file_name
    path = file_name(path, "export_onnx")   # before the whole ONNX model is built
    check_destination(path)
    proto = to_onnx(model, opset)
    atomic_write_bytes(path, proto.SerializeToString())
    return path
