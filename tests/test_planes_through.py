"""A Conv2D or MaxPool2D whose output reaches a Conv2D through nothing but ReLU and Dropout layers
hands it on as the NCHW view of its planes on the NumPy backend (xpnet/model.py, _link_planes):
ReLU and Dropout keep the layout, the next convolution reads the planes without a transpose and
gives its input's gradient back as planes. Everything must keep the bits of the NCHW path, and
the transposes must really go (the spies below count them)."""
import numpy as np
import pytest

import xpnet
from xpnet import model as model_module
from xpnet.backends import get_backend
from xpnet.layers import BatchNorm, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from xpnet.ops import autotune, layout, pooling, spectral

from .helpers import assert_fits_alike, assert_steps_alike
from .test_conv_pool_planes import as_planes_view


def chain():
    return [Conv2D(6, 5, padding=2), ReLU(), Dropout(0.3),           # -> conv: planes
            Conv2D(8, 5, padding=2), ReLU(), MaxPool2D(2), Dropout(0.25),   # pool -> conv: planes
            Conv2D(7, 5, padding=2), ReLU(), Dropout(0.2),           # -> conv: planes
            Conv2D(5, 3, padding=1), ReLU(), Flatten(), Dense(4)]    # -> Flatten: NCHW


def models(layers_fn, input_shape, monkeypatch, seed=3):
    """The model with the links of _link_planes and the same model without them."""
    linked = xpnet.Sequential(layers_fn(), input_shape=input_shape, seed=seed)
    with monkeypatch.context() as m:
        m.setattr(model_module, "_link_planes", lambda layers, backend: None)
        plain = xpnet.Sequential(layers_fn(), input_shape=input_shape, seed=seed)
    return linked, plain


def routes(monkeypatch, by_kernel):
    """autotune.method_for by kernel size (these small shapes would all take the columns route)."""
    monkeypatch.setattr(autotune, "method_for", lambda xp, x, W, *args: by_kernel[W.shape[2]])


def test_which_layers_hand_on_planes_through_relu_and_dropout():
    m = xpnet.Sequential([Conv2D(4, 5, padding=2), ReLU(), Dropout(0.5), Dropout(0.1),   # yes
                          Conv2D(4, 5, padding=2), MaxPool2D(2), Dropout(0.5),            # conv: yes (pooling), pooling: yes
                          Conv2D(4, 3, padding=1), BatchNorm(),                           # no: BatchNorm reads it
                          Conv2D(4, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(),      # conv: yes (pooling); pooling: no
                          Dense(2)],
                         input_shape=(1, 16, 16))
    flags = [(type(layer).__name__, layer.planes_out) for layer in m.layers if isinstance(layer, (Conv2D, MaxPool2D))]
    assert flags == [("Conv2D", True), ("Conv2D", True), ("MaxPool2D", True), ("Conv2D", False),
                     ("Conv2D", True), ("MaxPool2D", False)]
    s = xpnet.Sequential([Conv2D(4, 5, padding=2), ReLU(), Dropout(0.5), Conv2D(4, 5, padding=2)],
                         input_shape=(1, 8, 8), device="strict")   # launches cost there: NCHW everywhere
    assert not any(layer.planes_out for layer in s.layers if isinstance(layer, Conv2D))


class Transposes:
    """Counts the layout passes that copy: NCHW -> planes (to_planes of an array that is not already
    the view of planes) and planes -> NCHW (from_planes), in the modules that call them."""

    def __init__(self, monkeypatch):
        self.into = self.out_of = 0
        for module in (spectral, pooling):
            monkeypatch.setattr(module, "to_planes", self.to_planes)
            monkeypatch.setattr(module, "from_planes", self.from_planes)

    def to_planes(self, xp, x):
        self.into += layout.planes_of(x) is None
        return layout.to_planes(xp, x)

    def from_planes(self, xp, a, view=False):
        self.out_of += not view   # a view is no copy
        return layout.from_planes(xp, a, view=view)


@pytest.mark.parametrize("size", [8, 9])   # 9: the pooling leaves a row and a column uncovered
def test_models_give_the_same_bits_with_planes_through(monkeypatch, size):
    routes(monkeypatch, {5: "spectral", 3: "spectral"})
    linked, plain = models(chain, (3, size, size), monkeypatch)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, size, size)).astype(np.float32)
    grad = lambda shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    assert_steps_alike(linked, plain, x, grad, rng)
    # the links were used, not only set: each convolution after the first read planes, and each
    # Dropout before one kept its mask laid out as its input
    linked.forward(x, training=True)
    plain.forward(x, training=True)
    convs = [layer for layer in linked.layers if isinstance(layer, Conv2D)]
    assert [c.cache["planes_in"] for c in convs] == [False, True, True, True]
    drops = [layer for layer in linked.layers if isinstance(layer, Dropout)]
    assert all(layout.planes_of(d.keep) is not None for d in drops)
    assert not any(c.cache["planes_in"] for c in plain.layers if isinstance(c, Conv2D))


def test_the_links_take_the_transposes_out(monkeypatch):
    """One training step of the chain: the plain model transposes NCHW <-> planes around every
    spectral convolution (two each way per convolution, less the first layer's input gradient and
    the pooling's links); the linked model only at its edges. (With _link_planes a no-op for the
    linked model too, the counts were equal and this failed: checked.)"""
    routes(monkeypatch, {5: "spectral", 3: "spectral"})
    linked, plain = models(chain, (3, 8, 8), monkeypatch)
    counts = {}
    for name, model in (("linked", linked), ("plain", plain)):
        spy = Transposes(monkeypatch)
        for layer in model._input_grad_free():
            layer.need_input_grad = False
        model.forward(np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32), training=True)
        model.backward(np.ones((4, 4), np.float32))
        counts[name] = (spy.into, spy.out_of)
    # into planes: the first convolution's input, and the last one's output gradient (through the
    # Flatten: NCHW), in both; the plain model also each later convolution's input (3), the
    # pooling's output gradient and the gradients of the outputs the links hand on (2)
    assert counts["linked"] == (2, 1), counts   # out of planes: the last convolution's output
    assert counts["plain"][0] >= counts["linked"][0] + 6 and counts["plain"][1] >= counts["linked"][1] + 6, counts


def test_a_columns_convolution_after_a_planes_link_gives_the_same_bits(monkeypatch):
    """The route is chosen when the layer runs: a convolution on the columns route reads the planes
    view as an ordinary NCHW array (and hands on NCHW: its planes_out does nothing there)."""
    routes(monkeypatch, {5: "spectral", 3: "columns"})
    linked, plain = models(chain, (3, 8, 8), monkeypatch)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    assert_steps_alike(linked, plain, x, lambda shape: rng.standard_normal(shape).astype(np.float32), rng)
    assert linked.layers[-4].cache["method"] == "columns"


def test_a_fit_gives_the_same_weights_with_planes_through(monkeypatch):
    routes(monkeypatch, {5: "spectral", 3: "spectral"})
    linked, plain = models(chain, (3, 8, 8), monkeypatch)
    assert_fits_alike(linked, plain, (3, 8, 8), classes=4)
    assert get_backend("cpu").few_launches is False


def test_the_element_wise_kernels_keep_the_layout_of_planes():
    """ReLU, the gradients' multiply and Dropout on the NCHW view of planes give outputs (and masks)
    laid out as their input, with the values of the contiguous arrays' passes. (With the outputs
    made C-contiguous, as before, the layout checks failed: checked.)"""
    backend = get_backend("cpu")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 6, 5)).astype(np.float32)
    v = as_planes_view(x)
    y, mask = backend.relu_forward(v)
    y0, mask0 = backend.relu_forward(x)
    assert layout.planes_of(y) is not None and layout.planes_of(mask) is not None
    assert np.array_equal(y, y0) and np.array_equal(mask, mask0)
    g = backend.multiply(v, mask)
    assert layout.planes_of(g) is not None and np.array_equal(g, backend.multiply(x, mask0))
    keep = rng.random(x.shape) < 0.7
    out = backend.dropout(v, as_planes_view(keep), 1 / 0.7)
    out0 = backend.dropout(x, keep, 1 / 0.7)
    assert layout.planes_of(out) is not None
    assert out.tobytes(order="C") == out0.tobytes()


def test_element_wise_passes_run_over_the_planes_in_memory_order():
    """The kernels cut a pass over the first axis of the arrays' memory order: for the NCHW view
    of planes that is H, whose pieces are long contiguous rows (over N, a piece of the view has
    runs of a few images' channels). Arrays laid out differently are passed on as they are. (With
    the reordering left out, or done for mixed layouts too, this failed: checked.)"""
    from xpnet.backends.numpy_kernels import in_memory_order
    x = np.zeros((4, 3, 6, 5), np.float32)
    v, w = as_planes_view(x), as_planes_view(x + 1)
    pv, pw = in_memory_order(v, w)
    assert pv.shape == (6, 5, 4, 3) and pv.flags.c_contiguous and np.shares_memory(pv, v)
    assert pw.flags.c_contiguous and np.shares_memory(pw, w)
    assert all(a is b for a, b in zip(in_memory_order(v, x), (v, x))), "mixed layouts: as they are"
    assert in_memory_order(x, x)[0] is x
