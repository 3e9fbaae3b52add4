"""The Layer contract: lazy shape inference, forward, backward, params/grads dicts."""
import inspect
import numbers
import os
import zlib

from ..errors import ConfigError, ShapeError


def positive_int(value, what, owner):
    """``value`` if it is an int > 0 (not a bool, float or string), else ConfigError naming the
    layer and the argument: every layer validates its constructor arguments this way."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ConfigError(f"{owner}: {what} must be a positive integer, got {value!r}")
    return int(value)


_USER_CLASSES = {}   # layer class -> whether it is a user's (not defined in xpnet itself)
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the xpnet folder


def xpnet_class(cls):
    """True for a class defined in a file of the xpnet package itself (its layers), False for a
    user's (a script's, a test's, a notebook's)."""
    try:
        path = inspect.getfile(cls)
    except (TypeError, OSError):   # defined interactively
        return False
    return os.path.abspath(path).startswith(_PACKAGE + os.sep)


def user_layer(layer):
    """True for a layer of a class written outside xpnet. Models check the forward/backward
    contract (check_forward, check_backward) of these only: xpnet's own layers are tested against
    it, and checking them on every step cost about 1.4 us a layer (3 % of a batch-16 MLP step)."""
    cls = type(layer)
    user = _USER_CLASSES.get(cls)
    if user is None:
        user = _USER_CLASSES[cls] = not xpnet_class(cls)
    return user


def check_forward(layer, y):
    """ShapeError naming ``layer`` unless its forward returned an array shaped (batch,) +
    ``layer.output_shape``: a user's layer whose forward disagrees with compute_output_shape would
    otherwise fail in the next layer, far from the cause."""
    shape = getattr(y, "shape", None)
    if shape is None or tuple(shape)[1:] != tuple(layer.output_shape):
        got = f"shape {tuple(shape)}" if shape is not None else type(y).__name__
        batch = shape[0] if shape else "batch"
        raise ShapeError(f"{layer._what()}: forward returned {got}, but compute_output_shape says "
                         f"{(batch,) + tuple(layer.output_shape)}")


def check_backward(layer, grad_in, batch, dtypes):
    """ShapeError/ConfigError naming ``layer`` when its backward broke the contract: every
    parameter needs a gradient in ``self.grads`` shaped like it, and the returned input gradient
    (unless None or a list, as merge layers return) must be shaped (batch,) + input_shape. Without
    this a wrong gradient fails in another layer or the optimizer, or (mixed precision, which
    gathers the gradients into one buffer) silently updates the wrong weights. ``dtypes``: the
    model's (master dtype, compute dtype), equal but under mixed precision; the input gradient
    must be of one of them, or a float64 one in a float32 model turns every layer below it float64
    (their gradients and the work on them), and a float32 one in a float64 model loses precision;
    not checked where the model does not use it (``need_input_grad`` off: the layers below have
    nothing to train, e.g. the first layer in fit)."""
    for k, p in layer.params.items():
        g = layer.grads.get(k)
        if g is None:
            raise ConfigError(f"{layer._what()}: backward set no gradient for its parameter {k!r}; "
                              f"set self.grads[{k!r}] (shaped like self.params[{k!r}], "
                              f"{tuple(p.shape)}) in backward, or keep arrays that are not trained "
                              f"out of self.params")
        if tuple(getattr(g, "shape", ())) != tuple(p.shape):
            raise ShapeError(f"{layer._what()}: backward set grads[{k!r}] of shape "
                             f"{tuple(getattr(g, 'shape', ()))}, but params[{k!r}] has shape "
                             f"{tuple(p.shape)}")
    if grad_in is None:
        return
    used = getattr(layer, "need_input_grad", True)
    if isinstance(grad_in, (list, tuple)):  # a layer called on a list: one gradient an input
        for i, g in enumerate(grad_in):
            if g is not None and used:
                _check_dtype(layer, g, dtypes, f"its input gradient {i} (of {len(grad_in)})")
        return
    expected = (batch,) + tuple(layer.input_shape)
    shape = getattr(grad_in, "shape", None)
    if shape is None or tuple(shape) != expected:
        got = f"shape {tuple(shape)}" if shape is not None else type(grad_in).__name__
        raise ShapeError(f"{layer._what()}: backward returned an input gradient of {got}, but "
                         f"its input has shape {expected}: backward must return d(loss)/d(input), "
                         f"shaped like the input")
    if used:
        _check_dtype(layer, grad_in, dtypes, "an input gradient")


def _check_dtype(layer, grad_in, dtypes, what):
    dtype = getattr(grad_in, "dtype", None)
    if dtype is None or dtype not in dtypes:  # (None first: NumPy reads dtype(None) as float64)
        got = type(grad_in).__name__ if dtype is None else f"dtype {dtype}"
        raise ConfigError(f"{layer._what()}: backward returned {what} of {got}, but the "
                          f"model computes in {_dtype_names(dtypes)}: return it in the dtype of "
                          f"the input forward received (x.dtype)")


def _dtype_names(dtypes):
    """"float32", or "float16 or float32 (mixed precision)" where compute and master dtypes differ."""
    master, compute = dtypes
    if compute == master:
        return str(master)
    return f"{compute} or {master} (mixed precision)"


def check_initialised(layer):
    """ConfigError naming ``layer``'s class when its ``__init__`` skipped ``Layer.__init__`` (a
    subclass that forgot ``super().__init__(name)``): it has no name, params or grads, which
    otherwise surfaces as an AttributeError far from the cause."""
    if not all(k in vars(layer) for k in ("name", "params", "grads", "buffers")):
        raise ConfigError(f"{type(layer).__name__}: its __init__ did not call Layer.__init__, so the "
                          f"layer has no name, params or grads; begin __init__ with "
                          f"super().__init__(name)")


def output_shape_of(layer, input_shape):
    """``layer.compute_output_shape(input_shape)`` as a tuple of ints, else ShapeError naming the
    layer: a user's compute_output_shape that returns None or a bare int would otherwise fail as a
    TypeError inside the model."""
    shape = layer.compute_output_shape(input_shape)
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    if not dims or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0
                           for d in dims):
        raise ShapeError(f"{layer._what()}: compute_output_shape({tuple(input_shape)}) "
                         f"returned {shape!r}; it must return the per-sample output shape, a tuple "
                         f"of positive ints (without the batch axis)")
    return tuple(int(d) for d in dims)


class BuildContext:
    """What a model hands each layer when it builds: the backend, its xp, dtype and seed."""

    def __init__(self, backend, dtype, seed):
        self.backend = backend
        self.xp = backend.xp
        self.dtype = dtype
        self.seed = int(seed)

    def rng(self, name, purpose=0):
        """A generator owned by one layer, the same on every backend for the same seed."""
        return self.backend.rng(self.seed, zlib.crc32(name.encode()) * 4 + purpose)


class Layer:
    """Base class. Shapes exclude the batch axis: (features,) or (C, H, W) in NCHW."""

    distributed = None  # while fit(distributed=...) trains: this rank's BatchShard (xpnet.distributed)

    def __init__(self, name=None):
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{type(self).__name__}: name must be a string or None, got "
                              f"{type(name).__name__} {name!r}")
        self.name = name
        self.params = {}
        self.grads = {}
        self.buffers = {}  # non-trainable state that is saved (e.g. BatchNorm running statistics)
        self.input_shape = None
        self.output_shape = None
        self.built = False
        self.need_input_grad = True  # the model turns this off for the first layer when training
        self.regularizers = {}  # param name -> regularizer (xpnet.regularizers), e.g. {"W": L2(1e-4)}

    # -- construction -------------------------------------------------------------------------
    def build(self, input_shape, ctx):
        """Infer shapes, create parameters; returns the output shape.

        A layer that is already built keeps its parameters (a second model that lists it shares
        them, as in Keras) when ``input_shape``, backend and dtype are those it was built with;
        otherwise it is a ConfigError: the layer's weights belong to the model that built it."""
        shape = tuple(int(d) for d in input_shape)
        if self.built:
            self._check_rebuild(shape, ctx)
            return self.output_shape
        self.input_shape = shape
        self.ctx = ctx
        self.backend = ctx.backend
        self.xp = ctx.xp
        self.dtype = ctx.dtype
        self.output_shape = output_shape_of(self, self.input_shape)
        before = dict(vars(self))
        self.create_params(ctx)
        self._warn_stray_arrays(before)
        self.built = True
        return self.output_shape

    constants = ()  # names of float arrays create_params keeps on purpose outside params/buffers

    def _warn_stray_arrays(self, before):
        """A UserWarning naming every floating-point array attribute create_params made that is
        neither in ``self.params`` (trained, saved) nor ``self.buffers`` (saved) nor listed in the
        class's ``constants``: a weight kept as ``self.w`` is silently never trained or saved."""
        kept = {id(v) for v in list(self.params.values()) + list(self.buffers.values())}
        stray = [k for k, v in vars(self).items()
                 if before.get(k) is not v and k not in self.constants and id(v) not in kept
                 and getattr(getattr(v, "dtype", None), "kind", None) == "f"
                 and getattr(v, "ndim", 0) > 0]
        if stray:
            import warnings
            names = ", ".join(f"self.{k}" for k in stray)
            warnings.warn(f"{self._what()}: create_params made {names}, which is not in self.params "
                          f"or self.buffers, so fit() will not train it and save() will not keep it; "
                          f"store weights as self.params[name] (and their gradients in "
                          f"self.grads[name]), or list a fixed array in the class's "
                          f"constants = ({', '.join(repr(k) for k in stray)},)",
                          UserWarning, stacklevel=3)

    def _kernel_and_bias(self, kernel_initializer, bias_initializer, kernel_regularizer):
        """Keep and check a weight layer's initializers (kernel W, bias b) and W's regularizer;
        ConfigErrors name this layer and the argument."""
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self._initializer("kernel_initializer")
        self._initializer("bias_initializer")
        if kernel_regularizer is not None:
            from ..regularizers import get as get_regularizer
            self.regularizers["W"] = get_regularizer(kernel_regularizer)

    def _initializer(self, argument):
        """The initializer held in ``self.<argument>`` (a name or a callable f(rng, shape, dtype)),
        else a ConfigError naming this layer, the argument and what it expects. A callable's
        result is checked when it is called (initializers.check_result; at build, never per step)."""
        from .. import initializers
        held = getattr(self, argument)
        fn = initializers.get(held, self._what(), argument)
        label = f"{self._what()}: {argument} {getattr(held, '__name__', type(held).__name__)}"

        def checked(rng, shape, dtype):
            initializers.check_size(shape, f"{self._what()}'s {argument} weights")   # loading a file
            if not callable(held):   # a built-in, by name
                return fn(rng, shape, dtype)
            return initializers.check_result(fn(rng, shape, dtype), shape, dtype, self.backend, label)
        return checked

    def _what(self):
        kind = type(self).__name__
        return f"layer {self.name!r} ({kind})" if self.name else f"a {kind} layer"

    def _check_rebuild(self, shape, ctx):
        label = self._what()
        if shape != tuple(self.input_shape):
            raise ConfigError(f"{label} is already built for input shape "
                              f"{('batch',) + tuple(self.input_shape)} (by another model or an earlier "
                              f"build), so it cannot be built again for {('batch',) + shape}; a layer "
                              f"cannot be rebuilt: create a new layer for the new model")
        if ctx.backend is not self.backend or ctx.dtype != self.dtype:
            raise ConfigError(f"{label} is already built on backend {self.backend.name} with "
                              f"{self.dtype}; this model uses {ctx.backend.name} with {ctx.dtype}; "
                              f"create a new layer for it")

    def unbuild(self):
        """Back to the unbuilt state (a model whose build failed part way calls this)."""
        self.params, self.grads, self.buffers = {}, {}, {}
        self.input_shape = self.output_shape = None
        self.built = False

    def compute_output_shape(self, input_shape):
        return input_shape

    def create_params(self, ctx):
        """Create ``self.params`` (and ``self.buffers``); nothing for parameter-free layers."""

    # -- computation --------------------------------------------------------------------------
    def forward(self, x, training=False):
        raise ConfigError(f"{self._what()} does not define forward(self, x, training=False); a Layer "
                          f"subclass must define forward and backward (docs/custom_layers.md)")

    def backward(self, grad):
        raise ConfigError(f"{self._what()} does not define backward(self, grad), which training "
                          f"needs; it returns d(loss)/d(input) and sets self.grads for each "
                          f"parameter (docs/custom_layers.md)")

    def __call__(self, x, training=False):
        if getattr(x, "_xpnet_symbolic", False) or (isinstance(x, (list, tuple)) and x and
                                                    getattr(x[0], "_xpnet_symbolic", False)):
            from ..graph import call_symbolic  # functional API: record a node, compute nothing
            return call_symbolic(self, x)
        self.check_input(x)
        return self.forward(x, training)

    def check_input(self, x):
        """Raise ShapeError naming this layer when x does not fit its input shape."""
        if not self.built:
            raise ConfigError(f"{self._what()} is not built, so it cannot "
                              f"be called on an array; put it in a model (Sequential([...], "
                              f"input_shape=...)) or call it on Input(...) to build a functional Model")
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise ShapeError(f"{self._what()} takes a NumPy or CuPy array, "
                             f"got {type(x).__name__}" + ("; convert it with np.asarray(x)"
                                                          if isinstance(x, (list, tuple)) else ""))
        shape = tuple(x.shape)
        expected = ("batch",) + tuple(self.input_shape)
        if len(shape) != len(expected) or shape[1:] != tuple(self.input_shape):
            raise ShapeError(f"layer {self.name!r} ({type(self).__name__}) expected input of shape "
                             f"{expected} (rank {len(expected)}), got {shape} (rank {len(shape)})")

    # -- weight penalties (L1/L2) -------------------------------------------------------------
    def regularization_loss(self):
        """Sum of this layer's weight penalties as a 0-d array (or 0.0 when it has none)."""
        total = 0.0
        for name, reg in self.regularizers.items():
            total = total + reg(self.xp, self.params[name])
        return total

    def add_regularization_grads(self):
        """Add each penalty's gradient to ``self.grads`` (call after backward)."""
        for name, reg in self.regularizers.items():
            self.grads[name] = self.grads[name] + reg.grad(self.xp, self.params[name])

    # -- description ----------------------------------------------------------------------------
    def count_params(self):
        return sum(int(p.size) for p in self.params.values())

    def get_config(self):
        """Constructor arguments as JSON-able values; ``type(self)(**config)`` rebuilds the layer."""
        return {"name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"
