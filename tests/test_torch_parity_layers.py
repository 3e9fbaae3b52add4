"""Layers against PyTorch (float64, CPU) with identical weights: outputs, input gradients, every
parameter gradient and BatchNorm's running statistics agree to a relative error below 1e-8. (1e-6
let a float64 model's Softmax and LogSoftmax computed in float32 pass; the largest error here is
1.1e-11, seed001's dense.b gradient, rounding noise where the exact gradient is 0; the rest < 1e-12.)"""
import numpy as np
import pytest

from xpnet.layers import (AvgPool2D, BatchNorm, Conv2D, Dense, Dropout, Flatten, LeakyReLU, LogSoftmax,
                          MaxPool2D, ReLU, Reshape, Sigmoid, Softmax, Tanh)
from xpnet.losses import CrossEntropy

from .helpers import build, to_np

torch = pytest.importorskip("torch")
nn = torch.nn
TOL = 1e-8


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rel(a, b):
    """||a - b|| / ||b||, or ||a - b|| / 1e-4 when ||b|| < 1e-4: gradients that are zero in exact
    arithmetic (a bias right before BatchNorm in training) are rounding noise on both sides (about
    1e-15, which over a floor of 1e-6 read 1.1e-9, too near TOL for other CPUs' rounding)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-4)


def tensor(a):
    return torch.tensor(np.asarray(a, dtype=np.float64))


class MaskDropout(nn.Module):
    """Torch stand-in for a Dropout layer that applies the mask xpnet drew (already scaled)."""

    def __init__(self):
        super().__init__()
        self.mask = None

    def forward(self, x):
        return x if self.mask is None else x * self.mask


def twin(model):
    """A torch.nn.Sequential mirroring ``model`` with the same weights; also returns
    [(xpnet key, torch tensor, transposed)] for every parameter and buffer, and the dropouts."""
    backend = model.backend
    mods, pairs, dropouts = [], [], []

    def link(key, t, transposed=False):
        value = to_np(backend, (model.parameters | model.buffers)[key])
        t.data.copy_(tensor(value.T if transposed else value))
        pairs.append((key, t, transposed))

    for layer in model.layers:
        name, kind = layer.name, type(layer).__name__
        if kind == "Dense":
            m = nn.Linear(layer.input_shape[0], layer.units, bias=layer.use_bias).double()
            link(f"{name}.W", m.weight, transposed=True)
            if layer.use_bias:
                link(f"{name}.b", m.bias)
        elif kind == "Conv2D":
            top, bottom, left, right = layer.pads
            conv = nn.Conv2d(layer.input_shape[0], layer.filters, layer.kernel_size, layer.strides,
                             bias=layer.use_bias).double()
            link(f"{name}.W", conv.weight)
            if layer.use_bias:
                link(f"{name}.b", conv.bias)
            m = nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), conv)
        elif kind == "MaxPool2D":
            top, bottom, left, right = layer.pads
            m = nn.Sequential(nn.ConstantPad2d((left, right, top, bottom), float("-inf")),
                              nn.MaxPool2d(layer.pool_size, layer.strides))
        elif kind == "AvgPool2D":
            top, bottom, left, right = layer.pads
            assert top == bottom and left == right, "torch's AvgPool2d pads symmetrically only"
            m = nn.AvgPool2d(layer.pool_size, layer.strides, padding=(top, left), count_include_pad=False)
        elif kind == "BatchNorm":
            cls = nn.BatchNorm1d if len(layer.input_shape) == 1 else nn.BatchNorm2d
            m = cls(layer.input_shape[0], eps=layer.epsilon, momentum=1.0 - layer.momentum).double()
            link(f"{name}.gamma", m.weight)
            link(f"{name}.beta", m.bias)
            link(f"{name}.running_mean", m.running_mean)
            link(f"{name}.running_var", m.running_var)
        elif kind == "Dropout":
            m = MaskDropout()
            dropouts.append((layer, m))
        else:
            m = {"Flatten": lambda: nn.Flatten(),
                 "Reshape": lambda: nn.Unflatten(1, layer.output_shape),
                 "ReLU": lambda: nn.ReLU(),
                 "LeakyReLU": lambda: nn.LeakyReLU(getattr(layer, "alpha", 0.0)),
                 "Tanh": lambda: nn.Tanh(),
                 "Sigmoid": lambda: nn.Sigmoid(),
                 "Softmax": lambda: nn.Softmax(dim=getattr(layer, "axis", -1)),
                 "LogSoftmax": lambda: nn.LogSoftmax(dim=getattr(layer, "axis", -1))}[kind]()
        mods.append(m)
    return nn.Sequential(*mods), pairs, dropouts


def compare(model, x, training, loss=None, labels=None, seed=0):
    """Forward and backward through ``model`` and its torch twin; returns {what: rel error}."""
    backend = model.backend
    tmodel, pairs, dropouts = twin(model)
    tmodel.train(training)
    out = model.forward(backend.asarray(x), training=training)
    for layer, m in dropouts:
        m.mask = (tensor(to_np(backend, layer.keep) * layer.scale) if training and layer.keep is not None
                  else None)
    tx = tensor(x).requires_grad_(True)
    tout = tmodel(tx)
    errors = {"output": rel(to_np(backend, out), tout.detach().numpy())}
    if loss is None:
        g = np.random.default_rng(seed).standard_normal(tuple(out.shape))
        grad = backend.asarray(g)
        tout.backward(tensor(g))
    else:
        value = loss.forward(out, backend.asarray(labels))
        tloss = nn.functional.cross_entropy(tout, torch.tensor(labels))
        errors["loss"] = rel(to_np(backend, value), tloss.detach().numpy())
        grad = loss.backward()
        tloss.backward()
    dx = model.backward(grad)
    errors["input grad"] = rel(to_np(backend, dx), tx.grad.numpy())
    grads, buffers = model.gradients, model.buffers
    for key, t, transposed in pairs:
        if key in buffers:
            errors[key] = rel(to_np(backend, buffers[key]), t.numpy())
        else:
            g = to_np(backend, grads[key])
            errors[key + " grad"] = rel(g.T if transposed else g, t.grad.numpy())
    return errors


def assert_close(errors):
    bad = {k: v for k, v in errors.items() if not v < TOL}
    assert not bad, f"relative errors above {TOL}: {bad}"


# -- one layer type at a time ------------------------------------------------------------------------
IMG = (3, 8, 7)
CASES = {
    "dense": ([Dense(5)], (6,)),
    "dense-nobias": ([Dense(4, use_bias=False)], (6,)),
    "conv-valid": ([Conv2D(4, 3)], IMG),
    "conv-same": ([Conv2D(4, (3, 4), padding="same")], IMG),
    "conv-same-stride2": ([Conv2D(3, 3, strides=2, padding="same")], IMG),
    "conv-explicit-pad": ([Conv2D(2, (2, 3), strides=(1, 2), padding=(2, 1), use_bias=False)], IMG),
    "maxpool": ([MaxPool2D()], IMG),
    "maxpool-3s1": ([MaxPool2D(3, strides=1)], IMG),
    "maxpool-same": ([MaxPool2D((2, 3), strides=2, padding="same")], IMG),
    "avgpool": ([AvgPool2D((2, 3))], IMG),
    "avgpool-same": ([AvgPool2D(3, strides=1, padding="same")], IMG),
    "flatten": ([Flatten(), Dense(3)], IMG),
    "reshape": ([Dense(12), Reshape((3, -1)), Tanh()], (5,)),
    "relu": ([ReLU()], IMG),
    "leakyrelu": ([LeakyReLU(0.2)], IMG),
    "tanh": ([Tanh()], (7,)),
    "sigmoid": ([Sigmoid()], (7,)),
    "softmax": ([Softmax()], (7,)),
    "softmax-axis1": ([Softmax(axis=1)], (4, 5)),
    "logsoftmax": ([LogSoftmax()], (7,)),
    "logsoftmax-axis1": ([LogSoftmax(axis=1)], (4, 5)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_matches_torch(backend, rng, case):
    layers, shape = CASES[case]
    layers = [type(l)(**l.get_config()) for l in layers]  # fresh layers for each backend
    model = build(layers, shape, backend, seed=3)
    for p in model.parameters.values():  # non-zero biases
        p[...] = backend.asarray(rng.standard_normal(tuple(p.shape)) * 0.5)
    x = 2.0 * rng.standard_normal((3,) + shape)
    x.flat[::7] = 0.0   # ReLU's and LeakyReLU's kinks: torch's gradient there is 0 and alpha
    assert_close(compare(model, x, training=True))


def test_same_padding_matches_tensorflow_geometry(backend):
    """Explicit TF values: 8 rows, kernel 3, stride 2 -> pad (0, 1); 7 columns, kernel 4 -> (1, 2)."""
    model = build([Conv2D(1, (3, 4), strides=(2, 1), padding="same")], (1, 8, 7), backend)
    assert model.layers[0].pads == (0, 1, 1, 2)
    assert model.output_shape == (1, 4, 7)


@pytest.mark.parametrize("conv", [False, True], ids=["dense", "conv"])
def test_batchnorm_matches_torch_train_then_eval(backend, rng, conv):
    shape = IMG if conv else (6,)
    model = build([BatchNorm(momentum=0.9, epsilon=1e-3)], shape, backend)
    bn = model.layers[0]
    bn.params["gamma"][...] = backend.asarray(rng.uniform(0.5, 1.5, bn.params["gamma"].shape))
    bn.params["beta"][...] = backend.asarray(rng.standard_normal(bn.params["beta"].shape))
    tmodel, pairs, _ = twin(model)
    tmodel.train(True)
    for step in range(3):  # running statistics must track torch's over several steps
        x = rng.normal(1.5, 2.0, (5,) + shape)
        model.forward(backend.asarray(x), training=True)
        tmodel(tensor(x))
    for key in ("running_mean", "running_var"):
        t = dict((k, v) for k, v, _ in pairs)[f"{bn.name}.{key}"]
        assert rel(to_np(backend, bn.buffers[key]), t.numpy()) < TOL, key
    # a fresh twin copies the current running statistics; then compare a train and an eval step
    for training in (True, False):
        assert_close(compare(model, rng.normal(-1.0, 3.0, (4,) + shape), training=training))


def test_dropout_matches_torch_semantics(backend, rng):
    """Training: kept units scaled by 1/(1-rate) with xpnet's mask applied to the torch twin; eval:
    torch's nn.Dropout in eval mode is the identity, as is ours."""
    model = build([Dense(6), Dropout(0.25), Dense(3)], (4,), backend)   # 0.5: rate and 1 - rate alike
    x = rng.standard_normal((8, 4))
    assert_close(compare(model, x, training=True))
    keep = backend.to_numpy(model.layers[1].keep)
    assert keep.dtype == bool and 0 < (~keep).sum() < keep.size / 2 and model.layers[1].scale == 1 / 0.75
    tdrop = nn.Dropout(0.25).eval()
    y = model.layers[1].forward(backend.asarray(x), training=False)
    np.testing.assert_array_equal(to_np(backend, y), tdrop(tensor(x)).numpy())


# -- the whole "TensorFlow model" of seed report 001 ----------------------------------------------------
def seed001_model(backend, seed=0):
    """Four 5x5 "same" convolutions (32, 64, 96, 128 filters) with ReLU and Dropout(0.2), max
    pooling after the 2nd and 4th, then Flatten, Dense(10), BatchNorm, Dense(10) (logits)."""
    layers = [Conv2D(32, 5, padding="same"), ReLU(), Dropout(0.2),
              Conv2D(64, 5, padding="same"), ReLU(), MaxPool2D(2), Dropout(0.2),
              Conv2D(96, 5, padding="same"), ReLU(), Dropout(0.2),
              Conv2D(128, 5, padding="same"), ReLU(), MaxPool2D(2), Dropout(0.2),
              Flatten(), Dense(10), BatchNorm(), Dense(10)]
    return build(layers, (1, 28, 28), backend, seed=seed)


def test_seed001_model_size(backend):
    model = seed001_model(backend)
    assert model.count_params() == 575_980
    assert model.output_shape == (10,)
    assert [l.output_shape for l in model.layers if isinstance(l, MaxPool2D)] == [(64, 14, 14), (128, 7, 7)]
    buffers = model.buffers
    assert sorted(buffers) == ["batch_norm.running_mean", "batch_norm.running_var"]
    assert all(tuple(b.shape) == (10,) for b in buffers.values())


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_seed001_model_matches_torch(backend, rng, training):
    model = seed001_model(backend, seed=1)
    x = rng.uniform(0.0, 1.0, (4, 1, 28, 28))
    if not training:  # give BatchNorm non-trivial running statistics first
        model.forward(backend.asarray(x), training=True)
    labels = np.array([3, 0, 9, 3], dtype=np.int64)
    errors = compare(model, x, training=training, loss=CrossEntropy(), labels=labels)
    assert len([k for k in errors if k.endswith(" grad")]) == 1 + 14  # input + every parameter
    assert_close(errors)
    dense_b = np.abs(to_np(backend, model.gradients["dense.b"])).max()
    assert (dense_b < 1e-12) if training else (dense_b > 1e-6)  # BatchNorm cancels the bias in training
