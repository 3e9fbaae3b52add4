"""Seed 001: twelve MNIST models built up step by step, and the 32-64-96-128 TensorFlow CNN.

Facts from the report: tanh MLPs with MSE and per-sample SGD (lr 0.1, 100 epochs), then
mini-batches, softmax + cross-entropy, Adam, dropout 0.2, a third layer, augmentation (rotation
+-25 deg, per-axis scale and zoom +-20 %), early stopping on the training error (patience,
min_delta_rel 0.005) with He init, CNNs of 5x5 "same" convolutions and 2x2 max pooling, and the
"tunable" warm-up/halving schedule. Softmax is fused into the cross-entropy loss (logits out).
"""
from ..layers import BatchNorm, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU, Tanh
from .spec import ModelSpec, affine, recipe


def mlp(sizes, activations, dropout=0.0, init="uniform", out_act=None):
    """Flatten, then Dense(n) + activation (+ dropout) per hidden size, then the output layer."""
    def layers(input_shape, num_classes):
        out = [Flatten()]
        for n, act in zip(sizes, activations):
            out += [Dense(n, kernel_initializer=init), act()]
            if dropout:
                out.append(Dropout(dropout))
        out.append(Dense(num_classes, kernel_initializer=init))
        return out + ([out_act()] if out_act else [])
    return layers


def cnn(blocks, init="he_normal", dropout=0.2, kernel=5, dense=None):
    """Per block: Conv(filters, 5x5, same) + ReLU, then 2x2 max pooling if the block says so, then
    dropout; Flatten; the classifier (``dense`` builds it, default one Dense(num_classes))."""
    def layers(input_shape, num_classes):
        out = []
        for filters, pool in blocks:
            out += [Conv2D(filters, kernel, padding="same", kernel_initializer=init), ReLU()]
            if pool:
                out.append(MaxPool2D(2))
            out.append(Dropout(dropout))
        out.append(Flatten())
        return out + (dense(num_classes) if dense else [Dense(num_classes, kernel_initializer=init)])
    return layers


SMALL_CNN = [(8, True), (16, True)]
WIDE_CNN = [(16, False), (32, True), (48, False), (64, True)]
TF_CNN = [(32, False), (64, True), (96, False), (128, True)]
HALVE_5 = {"type": "WarmupHalving", "lr": 1e-3, "k": 5, "late_start": 20, "late_every": 5}
HALVE_5_THEN_3 = {"type": "WarmupHalving", "lr": 1e-3, "k": 5, "late_start": 20, "late_every": 3}

# The TensorFlow notebook (tensorflow_model.ipynb in the seed author's repository): 5e-4 * (e + 1) / 5
# for epochs 0-4, then 5e-4 * 0.5 ** ((e - 5) // 5); ImageDataGenerator(rotation_range=25,
# zoom_range=0.2, width_shift_range=0.2, height_shift_range=0.2) on every batch; EarlyStopping on
# the training loss, patience 20, best weights restored; at most 100 epochs (it stopped at 85 and
# restored epoch 65).
TF_SCHEDULE = {"type": "WarmupStepDecay", "lr": 5e-4, "warmup_epochs": 5, "drop": 0.5, "every": 5}
TF_AUGMENT = {"type": "KerasAffine", "rotation": 25.0, "zoom": 0.2, "shift": [0.2, 0.2],
              "fill_mode": "nearest", "fill": 0.0, "probability": 1.0}
TF_STOP = {"monitor": "loss", "patience": 20, "restore_best_weights": True}


def stop(patience):
    """The report's early stopping: training error, relative min delta 0.5 %, best weights back."""
    return {"monitor": "loss", "patience": patience, "min_delta_rel": 0.005, "restore_best_weights": True}


def _tf_head(num_classes):
    return [Dense(10), BatchNorm(), Dense(num_classes)]


B16 = "batch size not stated for this model; 16 as in models 5-12"
SPECS = [
    ModelSpec("seed001-m1", "001", "784-100-50-10 tanh MLP, MSE, per-sample SGD",
              recipe("sgd", 0.1, 1, 100, loss="mse", reported_error=10.05,
                     notes="weights uniform in [-0.5, 0.5]; tanh on the output; one-hot targets"),
              layers=mlp([100, 50], [Tanh, Tanh], out_act=Tanh)),
    ModelSpec("seed001-m2", "001", "784-128-10 tanh MLP, MSE, mini-batch SGD",
              recipe("sgd", 0.1, 16, 100, loss="mse", reported_error=6.75, notes=B16),
              layers=mlp([128], [Tanh], out_act=Tanh)),
    ModelSpec("seed001-m3", "001", "784-128-10 tanh MLP, softmax + cross-entropy, SGD",
              recipe("sgd", 0.1, 16, 100, reported_error=3.10, notes=B16),
              layers=mlp([128], [Tanh])),
    ModelSpec("seed001-m4", "001", "784-128-10 tanh MLP, softmax + cross-entropy, Adam",
              recipe("adam", 0.01, 16, 30, reported_error=2.64, notes=B16),
              layers=mlp([128], [Tanh])),
    ModelSpec("seed001-m5", "001", "784-128-10 tanh MLP with dropout 0.2, Adam",
              recipe("adam", 1e-3, 16, 50, reported_error=2.19),
              layers=mlp([128], [Tanh], dropout=0.2)),
    ModelSpec("seed001-m6", "001", "784-128(tanh)-50(ReLU)-10 MLP with dropout 0.2, Adam",
              recipe("adam", 5e-4, 16, 200, reported_error=2.02,
                     notes="the listing's last layer reads FCLayer(128, 10); the 50-unit layer feeds it"),
              layers=mlp([128, 50], [Tanh, ReLU], dropout=0.2)),
    ModelSpec("seed001-m7", "001", "model 6 with augmentation (p=0.25)",
              recipe("adam", 5e-4, 16, 100, augment=affine(0.25), reported_error=1.93),
              layers=mlp([128, 50], [Tanh, ReLU], dropout=0.2)),
    ModelSpec("seed001-m8", "001", "model 7 with He init and early stopping (patience 15)",
              recipe("adam", 5e-4, 16, 175, augment=affine(0.25), early_stopping=stop(15),
                     reported_error=1.58, notes="stopped early, weights of epoch 91 kept"),
              layers=mlp([128, 50], [Tanh, ReLU], dropout=0.2, init="he_normal")),
    ModelSpec("seed001-m9", "001", "CNN 8-16 (5x5 same, 2x2 max pool, dropout 0.2), Adam",
              recipe("adam", 1e-3, 16, 150, augment=affine(0.25), early_stopping=stop(20),
                     reported_error=0.80, notes="stopped after 29 epochs"),
              layers=cnn(SMALL_CNN)),
    ModelSpec("seed001-m10", "001", "CNN 8-16 with the warm-up/halving schedule (k=5)",
              recipe("adam", 1e-3, 16, 150, schedule=HALVE_5, augment=affine(0.5),
                     early_stopping=stop(25), reported_error=0.44, notes="stopped after 48 epochs"),
              layers=cnn(SMALL_CNN)),
    ModelSpec("seed001-m11", "001", "CNN 16-32-48-64 (pool after 2nd and 4th), halving k=5",
              recipe("adam", 1e-3, 16, 150, schedule=HALVE_5, augment=affine(0.5),
                     early_stopping=stop(25), reported_error=0.42,
                     notes="94 epochs; the report prints model 12's listing for this model too"),
              layers=cnn(WIDE_CNN)),
    ModelSpec("seed001-m12", "001", "CNN 16-32-48-64, halving every 3 epochs after epoch 20",
              recipe("adam", 1e-3, 16, 150, schedule=HALVE_5_THEN_3, augment=affine(0.8),
                     early_stopping=stop(25), reported_error=0.40, notes="stopped after 56 epochs"),
              layers=cnn(WIDE_CNN)),
    ModelSpec("seed001-tf", "001", "CNN 32-64-96-128 (5x5 same), Dense(10)-BatchNorm-Dense(10): "
              "575,980 parameters",
              recipe("adam", 5e-4, 64, 100, augment=TF_AUGMENT, early_stopping=TF_STOP,
                     schedule=TF_SCHEDULE, reported_error=0.25,
                     notes="Keras model (glorot init); batch, schedule, augmentation, early "
                           "stopping and epochs from the author's tensorflow_model.ipynb, which "
                           "stopped at epoch 85 and restored epoch 65"),
              layers=cnn(TF_CNN, init="glorot_uniform", dense=_tf_head)),
]


def scaled_lr(spec, number):
    """Model ``number``'s spec with each epoch's rate scaled to the author's step size. His Adam
    (src/add_ons/optimizers.py) sets its bias-correction exponent t to the epoch number, so his
    steps were 0.15-0.32 times a per-step Adam's at the same rate; schedules.EpochBiasCorrection
    gives a per-step Adam his step sizes without copying his counter. Not in the report."""
    recipe = dict(spec.recipe, schedule={"type": "EpochBiasCorrection", "schedule": spec.recipe["schedule"]},
                  notes="not in the report: the recipe of model " + str(number) + " with its rates "
                        "scaled by sqrt(1 - 0.999^t) / (1 - 0.9^t), t = epoch + 1, the step size of the "
                        "author's Adam (bias corrections counted in epochs) against a per-step one")
    return ModelSpec(spec.name + "-scaled-lr", spec.seed, f"model {number} with the author's step sizes: "
                     "each epoch's rate times his Adam's bias-correction factor", recipe, layers=spec._layers)


for _number in (10, 11, 12):   # each after its model
    _at = [s.name for s in SPECS].index(f"seed001-m{_number}")
    SPECS.insert(_at + 1, scaled_lr(SPECS[_at], _number))
