"""Test helpers: finite-difference gradient checks and host/device conversion."""
import numpy as np

import xpnet


def to_np(backend, a):
    return None if a is None else np.asarray(backend.to_numpy(a), dtype=np.float64)


def layer_rngs(model):
    return [layer.rng for layer in model.layers if hasattr(layer, "rng")]


def gradcheck_model(model, x_np, training=True, eps=1e-6, max_entries=24, seed=0, tol=1e-6):
    """Compare analytic gradients of loss = sum(out * g) with central differences (float64).

    Checks the input gradient and every parameter gradient at up to ``max_entries`` positions
    per array; returns the worst relative error. Layer RNG states are reset before every forward
    pass, so layers like Dropout see the same mask each time.
    """
    backend = model.backend
    xp = backend.xp
    pick = np.random.default_rng(seed)
    x = backend.asarray(np.asarray(x_np, dtype=np.float64))
    states = [r.get_state() for r in layer_rngs(model)]

    def run():
        for r, s in zip(layer_rngs(model), states):
            r.set_state(s)
        return model.forward(x, training=training)

    out = run()
    g = backend.asarray(pick.standard_normal(tuple(out.shape)))
    model.backward(g)  # warm any lazy state
    out = run()
    dx = to_np(backend, model.backward(g))
    analytic = {k: to_np(backend, v) for k, v in model.gradients.items()}

    def loss():
        return float(backend.to_numpy((run() * g).sum()))

    worst = 0.0
    targets = [("input", x, dx)] + [(k, p, analytic[k]) for k, p in model.parameters.items()]
    for name, arr, grad in targets:
        assert grad is not None, f"no gradient for {name}"
        assert grad.shape == tuple(arr.shape), f"{name}: grad shape {grad.shape} != {arr.shape}"
        flat = [tuple(int(i) for i in np.unravel_index(j, grad.shape))
                for j in pick.choice(grad.size, size=min(max_entries, grad.size), replace=False)]
        for idx in flat:
            old = float(backend.to_numpy(arr[idx]))
            arr[idx] = old + eps
            lp = loss()
            arr[idx] = old - eps
            lm = loss()
            arr[idx] = old
            num = (lp - lm) / (2 * eps)
            err = abs(num - grad[idx]) / max(1.0, abs(num), abs(grad[idx]))
            assert err < tol, f"{name}{idx}: numeric {num:.10g} vs analytic {grad[idx]:.10g} (err {err:.2e})"
            worst = max(worst, err)
    return worst


def build(layers, input_shape, backend, dtype="float64", seed=0):
    return xpnet.Sequential(layers, input_shape=input_shape, device=backend, dtype=dtype, seed=seed)
