"""Checks for your own layers: the finite-difference gradient check the project runs on its own.

    from xpnet.testing import check_layer
    check_layer(Swish(), (8,))                      # NumPy, float64
    check_layer(Swish(), (8,), device="strict")     # the CuPy-like strict backend

``check_layer`` builds the layer alone in a float64 model, feeds it a random batch and compares
the gradients its ``backward`` returns (for the input and for every parameter) with central
differences of ``loss = sum(output * G)`` for a random G. It raises ``GradientCheckError`` naming
the first entry that disagrees and returns a short report otherwise. On ``device="strict"`` every
implicit NumPy conversion raises exactly where CuPy would, so a layer that passes there is written
against ``xp`` only and will run on a GPU.
"""
import contextlib

import numpy as np

from .errors import ConfigError, ShapeError, XpnetError


class GradientCheckError(XpnetError, AssertionError):
    """An analytic gradient disagrees with finite differences (or a shape is wrong)."""


@contextlib.contextmanager
def _as_check_errors():
    """The model's own checks of a layer's forward and backward (xpnet.layers.base.check_forward,
    check_backward) reported as GradientCheckError, what a check here raises."""
    try:
        yield
    except (ShapeError, ConfigError) as exc:
        raise GradientCheckError(str(exc)) from exc


def _host(backend, a):
    return None if a is None else np.asarray(backend.to_numpy(a), dtype=np.float64)


def gradcheck_model(model, x, training=True, eps=1e-6, max_entries=24, seed=0, tol=1e-6):
    """Compare ``model``'s analytic gradients of ``sum(out * G)`` with central differences.

    Checks the input gradient and every parameter gradient at up to ``max_entries`` positions per
    array; returns the worst relative error ``|num - analytic| / max(1, |num|, |analytic|)``.
    Layer generators (Dropout's, say) are reset before every forward pass, so each pass draws the
    same numbers. Use a float64 model: float32 rounding swamps central differences.
    """
    backend = model.backend
    pick = np.random.default_rng(seed)
    x = backend.asarray(np.asarray(x, dtype=np.float64))
    rngs = [layer.rng for layer in model.layers if hasattr(layer, "rng")]
    states = [r.get_state() for r in rngs]

    def run():
        for r, s in zip(rngs, states):
            r.set_state(s)
        return model.forward(x, training=training)

    with _as_check_errors():
        out = run()
        g = backend.asarray(pick.standard_normal(tuple(out.shape)))
        model.backward(g)  # warm any lazy state
        out = run()
        dx = _host(backend, model.backward(g))
    analytic = {k: _host(backend, v) for k, v in model.gradients.items()}

    def loss():
        return float(backend.to_numpy((run() * g).sum()))

    worst = 0.0
    targets = [("input", x, dx)] + [(k, p, analytic.get(k)) for k, p in model.parameters.items()]
    for name, arr, grad in targets:
        if grad is None:
            raise GradientCheckError(f"no gradient for {name}: backward() must return the input "
                                     f"gradient and set self.grads[...] for every parameter")
        if grad.shape != tuple(arr.shape):
            raise GradientCheckError(f"{name}: gradient shape {grad.shape} != shape {tuple(arr.shape)}")
        positions = pick.choice(grad.size, size=min(max_entries, grad.size), replace=False)
        for j in positions:
            idx = tuple(int(i) for i in np.unravel_index(j, grad.shape))
            old = float(backend.to_numpy(arr[idx]))
            arr[idx] = old + eps
            plus = loss()
            arr[idx] = old - eps
            minus = loss()
            arr[idx] = old
            num = (plus - minus) / (2 * eps)
            err = abs(num - grad[idx]) / max(1.0, abs(num), abs(grad[idx]))
            if not err < tol:
                raise GradientCheckError(f"{name}{idx}: finite differences give {num:.10g}, "
                                         f"backward gives {grad[idx]:.10g} (relative error {err:.2e})")
            worst = max(worst, err)
    return worst


def check_layer(layer, input_shape, device="cpu", batch=3, training=True, seed=0, eps=1e-6,
                tol=1e-6, max_entries=24):
    """Gradient-check one (unbuilt) layer on inputs of per-sample shape ``input_shape``.

    Returns {"layer", "device", "output_shape", "worst_error", "params"}; raises
    GradientCheckError when a gradient or the output shape is wrong.
    """
    from .model import Sequential
    model = Sequential([layer], input_shape=tuple(input_shape), device=device, dtype="float64",
                       seed=seed)
    x = np.random.default_rng(seed).standard_normal((int(batch),) + tuple(input_shape))
    with _as_check_errors():
        out = model.forward(model.backend.asarray(x), training=training)
    expected = (int(batch),) + tuple(layer.output_shape)
    if tuple(out.shape) != expected:
        raise GradientCheckError(f"{type(layer).__name__}: forward returned shape {tuple(out.shape)}, "
                                 f"but compute_output_shape says {expected}")
    worst = gradcheck_model(model, x, training=training, eps=eps, max_entries=max_entries,
                            seed=seed, tol=tol)
    return {"layer": type(layer).__name__, "device": model.backend.name,
            "output_shape": tuple(layer.output_shape), "worst_error": worst,
            "params": sorted(layer.params)}
