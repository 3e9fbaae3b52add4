"""Layers called on a list of tensors (the functional API): Concatenate and Add."""
from ..errors import ConfigError, ShapeError
from .base import Layer


class Merge(Layer):
    """Base class of layers called on a list of tensors. ``input_shape`` is a list of shapes."""

    multi_input = True

    def build(self, input_shape, ctx):
        shapes = [tuple(int(d) for d in s) for s in input_shape]
        self.ctx, self.backend, self.xp, self.dtype = ctx, ctx.backend, ctx.xp, ctx.dtype
        self.output_shape = tuple(int(d) for d in self.compute_output_shape(shapes))
        self.input_shape = shapes
        self.create_params(ctx)
        self.built = True
        return self.output_shape

    def compute_output_shape(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) < 2 or \
                not all(isinstance(s, (list, tuple)) for s in input_shape):
            raise ShapeError(f"{self._label()} needs a list of at least two inputs, got {input_shape!r}")
        return self.merged_shape([tuple(s) for s in input_shape])

    def _label(self):
        """The layer for messages: its name, or (unnamed: a layer is named when the Model is made,
        after its shape checks) its class."""
        if self.name:
            return f"layer {self.name!r} ({type(self).__name__})"
        return f"{type(self).__name__} layer (unnamed)"

    def check_input(self, xs):
        if not isinstance(xs, (list, tuple)) or len(xs) != len(self.input_shape):
            raise ShapeError(f"{self._label()} expected a list of {len(self.input_shape)} arrays, "
                             f"got {type(xs).__name__}")
        for i, (x, want) in enumerate(zip(xs, self.input_shape)):
            got = tuple(getattr(x, "shape", ()))
            if got[1:] != want or len(got) != len(want) + 1:
                raise ShapeError(f"{self._label()} input {i}: expected shape {('batch',) + want}, "
                                 f"got {got}")

    def get_config(self):
        return {"name": self.name}


class Concatenate(Merge):
    """Join inputs along ``axis`` (counted with the batch axis 0: 1 is features or channels)."""

    def __init__(self, axis=1, name=None):
        super().__init__(name)
        if isinstance(axis, bool) or not isinstance(axis, int) or axis == 0:
            raise ConfigError(f"Concatenate: axis must be a non-zero integer (axis 0 is the batch), "
                              f"got {axis!r}")
        self.axis = axis

    def merged_shape(self, shapes):
        rank = len(shapes[0]) + 1
        if any(len(s) + 1 != rank for s in shapes):
            raise ShapeError(f"{self._label()}: inputs must have the same rank, got {shapes}")
        axis = self.axis if self.axis > 0 else rank + self.axis
        if not 0 < axis < rank:
            raise ShapeError(f"{self._label()}: axis {self.axis} is out of range for inputs of rank "
                             f"{rank} (batch included)")
        self._axis = axis
        keep = [[d for i, d in enumerate(s) if i != axis - 1] for s in shapes]
        if any(k != keep[0] for k in keep):
            raise ShapeError(f"{self._label()}: input shapes {shapes} differ outside axis {self.axis}")
        out = list(shapes[0])
        out[axis - 1] = sum(s[axis - 1] for s in shapes)
        return tuple(out)

    def forward(self, xs, training=False):
        self.sizes = [int(x.shape[self._axis]) for x in xs]
        return self.xp.concatenate(list(xs), axis=self._axis)

    def backward(self, grad):
        if not self.need_input_grad:
            return [None] * len(self.sizes)
        out, start = [], 0
        for size in self.sizes:
            index = [slice(None)] * grad.ndim
            index[self._axis] = slice(start, start + size)
            out.append(grad[tuple(index)])
            start += size
        return out

    def get_config(self):
        return {"name": self.name, "axis": self.axis}


class Add(Merge):
    """Element-wise sum of inputs of one shape."""

    def merged_shape(self, shapes):
        if any(s != shapes[0] for s in shapes):
            raise ShapeError(f"{self._label()}: inputs must have one shape, got {shapes}")
        return shapes[0]

    def forward(self, xs, training=False):
        self.count = len(xs)
        y = xs[0]
        for x in xs[1:]:
            y = y + x
        return y

    def backward(self, grad):
        return [grad if self.need_input_grad else None for _ in range(self.count)]
