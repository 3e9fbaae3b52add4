"""The library API in one page: build a small CNN, train, evaluate, save, load and predict.

    python examples/custom_model.py [--device cpu|gpu|auto|strict] [--out DIR] [--epochs N]

Trains on the first 5,000 MNIST training images (10 % of them held out for validation), reports
the test error on the whole test set, saves the model to DIR/custom_cnn.npz (default runs/) and
checks that the reloaded copy predicts the same classes.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # from a checkout

import xpnet  # noqa: E402
from xpnet.cli import guarded, positive_int  # noqa: E402
from xpnet.runner import check_folder  # noqa: E402
from xpnet.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", choices=("cpu", "gpu", "auto", "strict"))
    parser.add_argument("--out", default="runs")
    parser.add_argument("--epochs", type=positive_int, default=2)
    args = parser.parse_args(argv)
    return guarded("custom_model.py", lambda: run(args))


def run(args):
    check_folder(args.out, "--out")   # before training: a file in the way would fail the save at the end
    (x_train, y_train), (x_test, y_test) = xpnet.datasets.load("mnist")
    x_train, y_train = x_train[:5000], y_train[:5000]  # uint8 (N, 1, 28, 28); fit scales by 1/255

    model = xpnet.Sequential([Conv2D(8, 3, padding="same"), ReLU(), MaxPool2D(2),
                              Conv2D(16, 3, padding="same"), ReLU(), MaxPool2D(2),
                              Flatten(), Dense(10)],
                             input_shape=(1, 28, 28), device=args.device, seed=0, name="custom_cnn")
    model.summary()
    model.compile(loss="cross_entropy", optimizer=xpnet.optim.Adam(lr=2e-3), metrics=["accuracy"])
    history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=64, validation_split=0.1,
                        verbose=2)
    test = model.evaluate(x_test, y_test)
    print(f"validation accuracy by epoch: {[round(a, 4) for a in history.history['val_accuracy']]}")
    print(f"test error {100 * (1 - test['accuracy']):.2f}% (loss {test['loss']:.4f})")

    path = model.save(os.path.join(args.out, "custom_cnn.npz"))
    again = xpnet.load(path, device=args.device)
    first = model.predict(x_test[:8]).argmax(axis=1)
    if not (again.predict(x_test[:8]).argmax(axis=1) == first).all():
        raise xpnet.TrainingError("the reloaded model predicts differently")
    print(f"saved {path}; reloaded copy predicts {first.tolist()} for the first 8 test images "
          f"(labels {y_test[:8].tolist()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
