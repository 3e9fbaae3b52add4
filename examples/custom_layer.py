"""A new layer written against ``xp``: Swish, x * sigmoid(beta * x), with a trainable beta.

    python examples/custom_layer.py [--device cpu|gpu|auto|strict] [--train-images N] [--epochs N]
        [--out DIR]

The walk-through is docs/custom_layers.md. This script: (1) checks Swish's gradients by finite
differences on the NumPy backend and on the strict (CuPy-like) backend, (2) trains a small CNN
using it on the first N MNIST training images, (3) saves the model, loads it again (the layer is
registered, so the model file may name it) and checks that the copy predicts the same.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # from a checkout

import xpnet  # noqa: E402
from xpnet.cli import guarded, positive_int  # noqa: E402
from xpnet.runner import check_folder  # noqa: E402
from xpnet.errors import ConfigError  # noqa: E402
from xpnet.layers import Conv2D, Dense, Flatten, Layer, MaxPool2D, register  # noqa: E402
from xpnet.testing import check_layer  # noqa: E402


@register  # model files may name only registered layers; this makes xpnet.load() rebuild Swish
class Swish(Layer):
    """x * sigmoid(beta * x) (Ramachandran, Zoph and Le, 2017); beta is learned unless
    ``trainable=False``. Written against ``self.xp`` only, so it runs on NumPy and CuPy alike."""

    has_params = True

    def __init__(self, beta=1.0, trainable=True, name=None):
        super().__init__(name)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)):
            raise ConfigError(f"Swish: beta must be a number, got {beta!r}")
        self.beta = float(beta)           # the starting value (the config); the learned one is a param
        self.trainable = bool(trainable)

    def create_params(self, ctx):
        # called once by build(): self.xp, self.dtype and self.input_shape are set by now
        if self.trainable:
            self.params["beta"] = self.xp.full((1,), self.beta, dtype=self.dtype)

    def _beta(self):
        return self.params["beta"] if self.trainable else self.beta

    def forward(self, x, training=False):
        z = self._beta() * x
        e = self.xp.exp(-abs(z))                       # never overflows
        s = self.xp.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
        self.x, self.s = x, s                          # what backward needs
        return x * s

    def backward(self, grad):
        x, s = self.x, self.s
        ds = s * (1.0 - s)                             # sigmoid'(z)
        if self.trainable:                             # d out / d beta = x^2 sigmoid'(z)
            self.grads["beta"] = (grad * x * x * ds).sum().reshape(1)
        if not self.need_input_grad:                   # the model's first layer: nobody needs it
            return None
        return grad * (s + self._beta() * x * ds)      # d out / d x

    def get_config(self):
        return {"name": self.name, "beta": self.beta, "trainable": self.trainable}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "gpu", "auto", "strict"),
                        help="where the small CNN trains (the gradient checks run on cpu and strict)")
    parser.add_argument("--train-images", type=positive_int, default=5000)
    parser.add_argument("--epochs", type=positive_int, default=1)
    parser.add_argument("--out", default="runs")
    args = parser.parse_args(argv)
    return guarded("custom_layer.py", lambda: run(args))


def run(args):
    check_folder(args.out, "--out")   # before training: a file in the way would fail the save at the end
    # 1. gradients by finite differences, on NumPy and on the strict CuPy-like backend
    for device in ("cpu", "strict"):
        for shape, layer in (((7,), Swish()), ((2, 5, 5), Swish(beta=0.5)),
                             ((7,), Swish(trainable=False))):
            report = check_layer(layer, shape, device=device)
            print(f"check_layer Swish{shape} on {report['device']}: worst relative error "
                  f"{report['worst_error']:.1e}, params {report['params']}")

    # 2. train a small CNN that uses it
    (x, y), (x_test, y_test) = xpnet.datasets.load("mnist")
    x, y = x[:args.train_images], y[:args.train_images]
    model = xpnet.Sequential([Conv2D(8, 3, padding="same"), Swish(), MaxPool2D(2),
                              Conv2D(16, 3, padding="same"), Swish(), MaxPool2D(2),
                              Flatten(), Dense(10)],
                             input_shape=(1, 28, 28), device=args.device, seed=0, name="swish_cnn")
    model.summary()
    model.compile(loss="cross_entropy", optimizer=xpnet.optim.Adam(lr=2e-3), metrics=["accuracy"])
    model.fit(x, y, epochs=args.epochs, batch_size=64, verbose=2)
    test = model.evaluate(x_test, y_test)
    betas = [round(float(model.backend.to_numpy(v)[0]), 4)
             for k, v in model.parameters.items() if k.endswith(".beta")]
    print(f"test error {100 * (1 - test['accuracy']):.2f}% after {args.epochs} epoch(s) on "
          f"{len(y)} images; learned betas {betas}")

    # 3. save, load (Swish is registered) and compare
    path = model.save(os.path.join(args.out, "swish_cnn.npz"))
    again = xpnet.load(path, device=args.device)
    same = (again.predict(x_test[:100]).argmax(axis=1) == model.predict(x_test[:100]).argmax(axis=1))
    if not same.all():
        raise xpnet.TrainingError("the reloaded model predicts differently")
    print(f"saved {path}; the reloaded model (layers {[type(l).__name__ for l in again.layers]}) "
          "predicts the same classes for the first 100 test images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
