"""Seed 002: multinomial logistic regression and a 784-784-10 MLP (each with no penalty, L1 or
L2), and a 20-filter 3x3 CNN, all plain mini-batch SGD (batch 32, 10 epochs).

Facts from the report: lr 1e-2 (logistic) and 1e-3 (MLP), lambda 1e-5 for L1 and L2 on the last
weight matrix only, He init for the MLP, CNN 3x3 stride 2 without bias -> 3380 features ->
Dense 10 (lr 1e-4). Test accuracies: logistic L1 90.78 %, L2 90.87 %; MLP L1 92.416 %, L2
95.375 %; CNN 85.691 %. Its code sums (not averages) gradients over the batch.
"""
from ..layers import Conv2D, Dense, Flatten, ReLU
from .spec import ModelSpec, recipe

PENALTIES = {"none": None, "l1": {"type": "L1", "l": 1e-5}, "l2": {"type": "L2", "l": 1e-5}}
REPORTED = {("logreg", "l1"): 9.22, ("logreg", "l2"): 9.13, ("mlp", "l1"): 7.584, ("mlp", "l2"): 4.625}
NO_TEST = "the report gives no test figure without a penalty (validation accuracy {}%)"


def logreg(penalty):
    def layers(input_shape, num_classes):
        return [Flatten(), Dense(num_classes, kernel_regularizer=penalty)]
    return layers


def mlp(penalty):
    def layers(input_shape, num_classes):
        return [Flatten(), Dense(784, kernel_initializer="he_normal"), ReLU(),
                Dense(num_classes, kernel_initializer="he_normal", kernel_regularizer=penalty)]
    return layers


def cnn(input_shape, num_classes):
    return [Conv2D(20, 3, strides=2, use_bias=False), ReLU(), Flatten(), Dense(num_classes)]


def variant(kind, penalty):
    """One of the six regression/MLP entries, e.g. variant("mlp", "l2")."""
    what, lr, validation, build = {"logreg": ("multinomial logistic regression", 1e-2, "91.041", logreg),
                                   "mlp": ("784-784-10 ReLU MLP", 1e-3, "93.033", mlp)}[kind]
    spec = PENALTIES[penalty]
    return ModelSpec(f"seed002-{kind}-{penalty}", "002",
                     f"{what}, " + ("no penalty" if spec is None else f"{penalty.upper()} 1e-5"),
                     recipe("sgd", lr, 32, 10, reported_error=REPORTED.get((kind, penalty)),
                            notes=NO_TEST.format(validation) if spec is None
                            else "penalty on the last weights only"),
                     layers=build(spec))


SPECS = [variant(kind, penalty) for kind in ("logreg", "mlp") for penalty in PENALTIES] + [
    ModelSpec("seed002-cnn", "002", "Conv 3x3 stride 2 x20 (no bias) + ReLU - Dense 10",
              recipe("sgd", 1e-4, 32, 10, reported_error=14.309,
                     notes="the report counts 34,080 parameters; its own layer sizes give 33,990"),
              layers=cnn),
]
