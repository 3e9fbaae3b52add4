"""Seed 000: a one-convolution MNIST CNN trained per sample with three optimizer settings.

Facts from the report: Conv 3x3 "valid" (10 filters; 64 in the final model) + ReLU, Flatten,
Dense 128 + ReLU, Dense 10 + ReLU, dropouts, softmax + categorical cross-entropy; batch size 1,
100 epochs on a 20,000-image subset; the report writes rates as 10e-5 (= 1e-4) etc. Its decay is
per step: lr / (1 + decay * iterations), as xpnet's optimizers do.
"""
from ..layers import Conv2D, Dense, Dropout, Flatten, ReLU
from .spec import ModelSpec, recipe


def small_cnn(filters, conv_dropout, dense_dropout):
    def layers(input_shape, num_classes):
        out = [Conv2D(filters, 3), ReLU()]
        if conv_dropout:
            out.append(Dropout(conv_dropout))
        return out + [Flatten(), Dense(128), ReLU(), Dropout(dense_dropout),
                      Dense(num_classes), ReLU(), Dropout(0.2)]
    return layers


SUBSET = "trained on 20,000 MNIST training images in the report; "
SPECS = [
    ModelSpec("seed000-sgd", "000", "Conv 3x3x10 - Dense 128 - Dense 10 (ReLU, dropouts), plain SGD",
              recipe("sgd", 1e-4, 1, 100, reported_error=22.0,
                     notes=SUBSET + "test accuracy 0.780 after 100 epochs"),
              layers=small_cnn(10, 0.4, 0.5)),
    ModelSpec("seed000-momentum", "000", "the same CNN, SGD with momentum 0.5 and decay",
              recipe("sgd", 1e-3, 1, 100, decay=1e-4, momentum=0.5, reported_error=24.1,
                     notes=SUBSET + "test accuracy 0.759; a second run (lr 1e-4, decay 1e-5, "
                                    "momentum 0.8-0.9) reached 0.781"),
              layers=small_cnn(10, 0.4, 0.5)),
    ModelSpec("seed000-adam", "000", "the CNN without conv dropout, dense dropout 0.2, Adam with decay",
              recipe("adam", 1e-4, 1, 100, decay=1e-5, reported_error=None,
                     notes=SUBSET + "never above 50 % accuracy in the report (no exact figure)"),
              layers=small_cnn(10, 0.0, 0.2)),
    ModelSpec("seed000-final", "000", "the Adam-case CNN with 64 filters, SGD momentum 0.8 and decay",
              recipe("sgd", 1e-4, 1, 100, decay=1e-5, momentum=0.8, reported_error=None,
                     notes="trained on 40,000 images in the report; accuracy read off a plot "
                           "(about 80 %), no exact figure"),
              layers=small_cnn(64, 0.0, 0.2)),
]
