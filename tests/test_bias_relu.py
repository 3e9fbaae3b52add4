"""Conv2D/Dense + ReLU in a Sequential: on GPU-like backends (few_launches: CuPy, the strict
backend) the bias and the ReLU run in one pass (backend.bias_relu); the CPU keeps two layers."""
import numpy as np

import xpnet
from xpnet.backends import strict_backend as sb
from xpnet.layers import Conv2D, Dense, Flatten, ReLU


def build(device):
    # biases drawn, not zeros: with zero biases a fused pass that dropped the bias gave the same values
    return xpnet.Sequential([Conv2D(4, 3, padding="same", bias_initializer="uniform"), ReLU(), Flatten(),
                             Dense(5, bias_initializer="uniform"), ReLU(), Dense(3)],
                            input_shape=(2, 6, 6), device=device, seed=1)


def forward_backward(m, x):
    out = m.forward(m.backend.asarray(x), training=True)
    m.backward(m.backend.asarray(np.ones((len(x), 3), dtype=np.float32)))
    grads = {k: m.backend.to_numpy(v) for k, v in m.gradients.items()}
    return m.backend.to_numpy(out), grads


def test_linked_on_gpu_like_backends_only():
    strict, cpu = build("strict"), build("numpy")
    assert strict.layers[0].relu_after is strict.layers[1] and strict.layers[3].relu_after is strict.layers[4]
    assert strict.layers[5].relu_after is None
    assert all(getattr(layer, "relu_after", None) is None for layer in cpu.layers)


def test_the_fused_pass_gives_the_two_layers_values_and_gradients_with_fewer_launches(monkeypatch):
    x = np.random.default_rng(0).standard_normal((4, 2, 6, 6)).astype(np.float32)
    cpu_out, cpu_grads = forward_backward(build("numpy"), x)
    strict = build("strict")
    forward_backward(strict, x)  # first use: DFT matrices and other caches are made
    before = sb.LAUNCHES["calls"]
    out, grads = forward_backward(strict, x)
    fused_calls = sb.LAUNCHES["calls"] - before
    np.testing.assert_allclose(out, cpu_out, rtol=1e-5, atol=1e-6)  # bias in another domain: rounding
    for k in cpu_grads:
        np.testing.assert_allclose(grads[k], cpu_grads[k], rtol=1e-5, atol=1e-5, err_msg=k)
    plain = build("strict")
    for layer in plain.layers:
        layer.relu_after = None
    forward_backward(plain, x)
    before = sb.LAUNCHES["calls"]
    forward_backward(plain, x)
    assert fused_calls < sb.LAUNCHES["calls"] - before  # the bias adds (3 here) are gone


def test_a_relu_called_on_another_array_computes_its_own():
    m = build("strict")
    relu = m.layers[1]
    relu._fused = m.backend.asarray(np.zeros(3, dtype=np.float32))
    y = relu.forward(m.backend.asarray(np.array([-1.0, 2.0], dtype=np.float32)))
    assert y.get().tolist() == [0.0, 2.0]
