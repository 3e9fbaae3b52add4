"""Seed 003: LeNet-5 for MNIST (1 channel) and CIFAR-10 (3 channels), plain and with batch
normalization + gradient clipping.

Facts from the report: inputs 32x32; Conv 6@5x5 + ReLU, 2x2 max pool, Conv 16@5x5 + ReLU, 2x2 max
pool, 400 -> 120 -> 84 -> 10 (ReLU), log-softmax + NLL (here fused: logits + cross-entropy);
batch 32, 10 epochs; Adam lr 0.01 or gradient descent lr 0.001; the variant normalizes after
each ReLU of conv1, conv2, fc1 and fc2 and clips gradients to +-5 (dense) and +-1 (conv).
MNIST images smaller than 32x32 are zero-padded by the first convolution (28 -> 32, padding 2);
the report resized them instead. It gives accuracies only as plots.
"""
from ..layers import BatchNorm, Conv2D, Dense, Flatten, MaxPool2D, ReLU
from .spec import ModelSpec, recipe


def lenet5(batch_norm=False):
    def layers(input_shape, num_classes):
        pad = max(0, (32 - min(input_shape[1:])) // 2)
        norm = (lambda: [BatchNorm()]) if batch_norm else (lambda: [])
        return ([Conv2D(6, 5, padding=pad), ReLU()] + norm() + [MaxPool2D(2),
                Conv2D(16, 5), ReLU()] + norm() + [MaxPool2D(2), Flatten(),
                Dense(120), ReLU()] + norm() + [Dense(84), ReLU()] + norm() + [Dense(num_classes)])
    return layers


PLOTS = "the report shows test accuracy only in plots (no figure to quote)"
CLIP = ("one clip value for every gradient here (the report clips dense gradients to +-5 and "
        "convolution gradients to +-1) and stops at 95 % training accuracy; its batch "
        "normalization has no learned scale or shift; ")
SPECS = [
    ModelSpec("seed003-lenet5", "003", "LeNet-5 (6-16 conv, 120-84 dense), Adam",
              recipe("adam", 0.01, 32, 10, notes=PLOTS), layers=lenet5()),
    ModelSpec("seed003-lenet5-bn", "003", "LeNet-5 with batch normalization and gradient clipping",
              recipe("adam", 0.01, 32, 10, clipvalue=5.0, notes=CLIP + PLOTS),
              layers=lenet5(batch_norm=True)),
    ModelSpec("seed003-lenet5-bn-cifar10", "003", "the batch-norm LeNet-5 on CIFAR-10 (3x32x32)",
              recipe("adam", 0.01, 32, 10, clipvalue=5.0, dataset="cifar10", notes=CLIP + PLOTS),
              layers=lenet5(batch_norm=True)),
]
