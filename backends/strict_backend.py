"""A CPU backend that is as strict as CuPy, so CI proves array-agnosticism without a GPU.

Its arrays wrap NumPy arrays but refuse to be turned into NumPy arrays implicitly, exactly where
CuPy raises ``TypeError: Implicit conversion to a NumPy array is not allowed``: ``numpy.asarray(a)``,
``numpy.mean(a)``, mixing with a plain NumPy array in arithmetic, or indexing with one. Reductions
return 0-d arrays (as CuPy does), not NumPy scalars. Every host sync (``float(a)``, ``bool(a)``,
``a.item()``, ``a.get()``) and every host-to-device transfer is counted in ``COUNTERS`` so tests
can assert that nothing syncs per batch. ``LAUNCHES["calls"]`` counts array operations (kernel
launches on a GPU): every call of an ``xp`` function, ufunc or array method, every arithmetic or
comparison operator, every assignment into an array and every gather by an index array. Views
(reshape, transpose, basic slicing), attribute reads and ``empty`` (an allocation, no kernel) are
free on a GPU and are not counted; a reshape that has to copy (of a non-contiguous array) is. A fused backend method (``relu_forward``, ``adam_update``, the
max-pool and warp kernels, ...) runs its pure-``xp`` reference here but counts as the launches its
CuPy implementation makes (``LAUNCHES`` in backends/cupy_kernels.py), see ``fused()``.
"""
import contextlib
import operator
import types

import numpy

from .base import Backend, adam_reference
from .random import splitmix64_reference

MESSAGE = ("Implicit conversion to a NumPy array is not allowed. "
           "Please use `.get()` to construct a NumPy array explicitly.")
COUNTERS = {"syncs": 0, "h2d": 0}
LAUNCHES = {"calls": 0}
# When a list: every counted operation appends (name, shapes and dtypes of its arrays, the values of
# its scalars). Two steps with equal traces can be captured once and replayed: a scalar that
# changes from step to step (a host-side counter or learning rate) would be baked into the graph.
TRACE = None  # kept apart from COUNTERS: syncs and transfers are what tests pin per epoch
# array methods and xp functions that only make a view or read metadata: no launch on a GPU
VIEWS = frozenset({"reshape", "view", "transpose", "swapaxes", "squeeze", "expand_dims",
                   "broadcast_to", "moveaxis", "dtype", "result_type", "iinfo", "finfo", "shape",
                   "ndim", "can_cast", "isscalar"})
FREE = frozenset({"empty", "empty_like"})  # allocations: traced (their shapes matter), not counted


def _unwrap(x):
    if type(x) is StrictArray:
        return x._a
    if isinstance(x, numpy.ndarray) and x.ndim > 0:
        raise TypeError(f"Unsupported type {type(x)} (a NumPy array mixed with a device array; "
                        "move it with backend.asarray first)")
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _wrap(r):
    if isinstance(r, numpy.ndarray):
        return StrictArray(r)
    if isinstance(r, numpy.generic) and not isinstance(r, (numpy.dtype,)):
        return StrictArray(numpy.asarray(r))
    if isinstance(r, tuple):
        return tuple(_wrap(v) for v in r)
    if isinstance(r, list):
        return [_wrap(v) for v in r]
    return r


def _signature(v):
    if type(v) is StrictArray:
        return ("array", v._a.shape, v._a.dtype.str)
    if isinstance(v, (list, tuple)):
        return tuple(_signature(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _signature(x)) for k, x in v.items()))
    if isinstance(v, slice):
        return ("slice", v.start, v.stop, v.step)
    return repr(v)


def _record(name, *args):
    if TRACE is not None:
        TRACE.append((name, _signature(args)))


_QUIET = [0]  # > 0 inside fused(): the reference's operations are not counted one by one


@contextlib.contextmanager
def fused(name):
    """Run a fused method's pure-``xp`` reference inside, counted as the number of launches the
    CuPy backend's kernel for ``name`` makes (backends/cupy_kernels.py ``LAUNCHES``). The trace
    (``TRACE``) still records every operation of the reference."""
    from .cupy_kernels import LAUNCHES as FUSED
    n = FUSED[name]
    _QUIET[0] += 1
    try:
        yield
    finally:
        _QUIET[0] -= 1
        if not _QUIET[0]:
            for _ in range(n):
                _launch()


def _call(fn, args, kwargs):
    _launch()
    if TRACE is not None:
        _record(getattr(fn, "__name__", repr(fn)), args, kwargs)
    return _wrap(fn(*_unwrap(args), **_unwrap(kwargs)))


def _launch():
    if not _QUIET[0]:
        LAUNCHES["calls"] += 1


def _view_call(fn, args, kwargs):
    out = fn(*_unwrap(args), **_unwrap(kwargs))
    sources = [a._a for a in args if type(a) is StrictArray]
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, numpy.ndarray):
        sources.append(owner)
    if isinstance(out, numpy.ndarray) and out.size > 1 and sources and not any(
            numpy.may_share_memory(out, a) for a in sources):
        _launch()  # a reshape of a non-contiguous array copies: a kernel on a GPU
        if TRACE is not None:
            _record("copy", *args)
    return _wrap(out)


def _free_call(fn, args, kwargs):
    if TRACE is not None:
        _record(getattr(fn, "__name__", repr(fn)), args, kwargs)
    return _wrap(fn(*_unwrap(args), **_unwrap(kwargs)))


def _kind(name):
    return _view_call if name in VIEWS else _free_call if name in FREE else _call


def _gathers(index):
    """Whether ``index`` selects by an index array (a gather kernel), not a view."""
    if type(index) is StrictArray:
        return True
    return isinstance(index, tuple) and any(type(i) is StrictArray for i in index)


def _sync():
    COUNTERS["syncs"] += 1


class StrictArray:
    """A NumPy array in a CuPy-like coat."""

    __slots__ = ("_a",)
    __array_ufunc__ = None  # numpy ufuncs refuse us; numpy binary operators defer to our reflected ones

    def __init__(self, a):
        self._a = a

    # -- refusals ---------------------------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError(MESSAGE)

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(MESSAGE)

    # -- explicit host access (each one a sync on a GPU) ------------------------------------------
    def get(self):
        _sync()
        return self._a.copy()

    def item(self):
        _sync()
        return self._a.item()

    def tolist(self):
        _sync()
        return self._a.tolist()

    def tobytes(self):
        _sync()
        return self._a.tobytes()

    def __float__(self):
        _sync()
        return float(self._a)

    def __int__(self):
        _sync()
        return int(self._a)

    def __bool__(self):
        _sync()
        return bool(self._a)

    def __repr__(self):
        return "strict" + repr(self._a)

    __str__ = __repr__

    # -- plain attributes -------------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: StrictArray(self._a.T))
    real = property(lambda self: StrictArray(self._a.real))
    imag = property(lambda self: StrictArray(self._a.imag))

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        for i in range(len(self._a)):
            yield _wrap(self._a[i])

    def __getitem__(self, index):
        if _gathers(index):
            _launch()
            _record("gather", self, index)
        return _wrap(self._a[_unwrap(index)])

    def __setitem__(self, index, value):
        _launch()
        _record("setitem", self, index, value)
        self._a[_unwrap(index)] = _unwrap(value)

    def __copy__(self):
        _launch()
        return StrictArray(self._a.copy())

    def __deepcopy__(self, memo):
        _launch()
        return StrictArray(self._a.copy())

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if callable(attr):
            call = _kind(name)
            return lambda *args, **kwargs: call(attr, args, kwargs)
        return _wrap(attr)


def _binary(op):
    def forward(self, other):
        _launch()
        _record(op.__name__, self, other)
        return _wrap(op(self._a, _unwrap(other)))

    def reflected(self, other):
        _launch()
        _record(op.__name__, other, self)
        return _wrap(op(_unwrap(other), self._a))

    return forward, reflected


def _inplace(op):
    def method(self, other):
        _launch()
        _record(op.__name__, self, other)
        self._a = op(self._a, _unwrap(other))
        return self

    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul",
              "and", "or", "xor", "lshift", "rshift"):
    _op = getattr(operator, _name + "_" if _name in ("and", "or") else _name)
    _f, _r = _binary(_op)
    setattr(StrictArray, f"__{_name}__", _f)
    setattr(StrictArray, f"__r{_name}__", _r)
    setattr(StrictArray, f"__i{_name}__", _inplace(getattr(operator, f"i{_name}")))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(StrictArray, f"__{_name}__", _binary(getattr(operator, _name))[0])
for _name in ("neg", "pos", "abs", "invert"):
    setattr(StrictArray, f"__{_name}__", (lambda op: lambda self: (_launch(), _wrap(op(self._a)))[1])(getattr(operator, _name)))
StrictArray.__hash__ = None


class _StrictUfunc:
    def __init__(self, ufunc):
        self._u = ufunc

    def __call__(self, *args, **kwargs):
        return _call(self._u, args, kwargs)

    def __getattr__(self, name):
        attr = getattr(self._u, name)
        if callable(attr):
            return lambda *args, **kwargs: _call(attr, args, kwargs)
        return attr


class StrictNamespace:
    """Looks like the ``numpy`` module (and its submodules) but speaks StrictArray."""

    ndarray = StrictArray

    def __init__(self, module):
        self._mod = module
        self.__name__ = "xpnet.strict." + module.__name__

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(self._mod, name)
        if isinstance(attr, types.ModuleType):
            value = StrictNamespace(attr)
        elif isinstance(attr, numpy.ufunc):
            value = _StrictUfunc(attr)
        elif isinstance(attr, type) or not callable(attr):
            value = attr
        else:
            call = _kind(name)
            value = (lambda fn, call: lambda *args, **kwargs: call(fn, args, kwargs))(attr, call)
        setattr(self, name, value)
        return value

    # explicit transfers, as in CuPy
    def asarray(self, a, dtype=None, order=None):
        if type(a) is StrictArray:
            if (dtype is not None and numpy.dtype(dtype) != a.dtype) or order not in (None, "K", "A"):
                _launch()
            return StrictArray(numpy.asarray(a._a, dtype=dtype, order=order))
        COUNTERS["h2d"] += 1
        return StrictArray(numpy.array(a, dtype=dtype, order=order, copy=True))

    def array(self, a, dtype=None, copy=True, order="K", ndmin=0):
        if type(a) is StrictArray:
            _launch()
            return StrictArray(numpy.array(a._a, dtype=dtype, copy=copy, order=order, ndmin=ndmin))
        COUNTERS["h2d"] += 1
        return StrictArray(numpy.array(a, dtype=dtype, copy=True, order=order, ndmin=ndmin))

    def asnumpy(self, a):
        return a.get() if type(a) is StrictArray else numpy.asarray(a)


strict_xp = StrictNamespace(numpy)


class StrictBackend(Backend):
    name = "strict"

    def __init__(self):
        super().__init__(strict_xp)

    @classmethod
    def owns(cls, array):
        return type(array) is StrictArray

    @property
    def syncs(self):
        return COUNTERS["syncs"]

    @property
    def transfers(self):
        return COUNTERS["h2d"]

    @property
    def calls(self):
        """Array operations so far (kernel launches on a GPU; see the module docstring)."""
        return LAUNCHES["calls"]

    def ignore_float_errors(self):
        return numpy.errstate(over="ignore", invalid="ignore")

    # -- the fused methods: the pure-xp reference, counted as the CuPy kernels' launches ----------
    def relu_forward(self, x):
        with fused("relu_forward"):
            return super().relu_forward(x)

    def dropout(self, x, keep, scale):
        with fused("dropout"):
            return super().dropout(x, keep, scale)

    def spectral_matrices(self, spec):
        with fused("spectral_matrices"):
            return super().spectral_matrices(spec)

    def bias_relu(self, y, b, axis=1):
        with fused("bias_relu"):
            return super().bias_relu(y, b, axis)

    def maxpool2d_forward(self, x, pool, stride, planes_out=False):
        with fused("maxpool2d_forward"):
            return super().maxpool2d_forward(x, pool, stride, planes_out)

    def maxpool2d_backward(self, dy, cache):
        with fused("maxpool2d_backward"):
            return super().maxpool2d_backward(dy, cache)

    def affine_warp(self, x, matrices, fill=0.0, mode="constant"):
        with fused("affine_warp"):
            return super().affine_warp(x, matrices, fill, mode)

    def softmax_labels(self, z, labels):
        with fused("softmax_labels"):
            return super().softmax_labels(z, labels)

    def softmax_labels_grad(self, p, labels, n):
        with fused("softmax_labels_grad"):
            return super().softmax_labels_grad(p, labels, n)

    def batchnorm_train(self, *args):
        with fused("batchnorm_train"):
            return super().batchnorm_train(*args)

    def batchnorm_grad(self, *args):
        with fused("batchnorm_grad"):
            return super().batchnorm_grad(*args)

    def keras_affine_matrices(self, u, angle, shift_x, shift_y, zoom):
        with fused("keras_affine_matrices"):
            return super().keras_affine_matrices(u, angle, shift_x, shift_y, zoom)

    def adam_update(self, *args):
        with fused("adam_update"):
            adam_reference(self.xp, *args)

    def rng(self, seed=0, stream=0):
        r = super().rng(seed, stream)
        r._fused = self._splitmix64
        return r

    def _splitmix64(self, start, n):
        with fused("splitmix64"):
            return splitmix64_reference(self.xp, start, n)

    def to_numpy(self, array):
        if type(array) is StrictArray:
            return array.get()
        return numpy.asarray(array)
