"""ModelSpec (a named architecture with its training recipe) and helpers for the seed modules."""
from ..errors import ConfigError

DATASET_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
RECIPE_KEYS = ("optimizer", "lr", "decay", "momentum", "batch_size", "epochs", "schedule", "augment",
               "early_stopping", "loss", "validation_split", "dataset", "reported_error", "notes",
               "targets", "clipvalue")


def recipe(optimizer, lr, batch_size, epochs, loss="cross_entropy", decay=0.0, momentum=0.0,
           schedule=None, augment=None, early_stopping=None, validation_split=0.0, dataset="mnist",
           reported_error=None, notes="", clipvalue=None):
    """A complete recipe dict. ``reported_error`` is the report's test error in percent (None when
    the report gives no number); ``targets`` says whether the loss wants one-hot rows (MSE)."""
    return {"optimizer": optimizer, "lr": lr, "decay": decay, "momentum": momentum,
            "batch_size": batch_size, "epochs": epochs, "schedule": schedule, "augment": augment,
            "early_stopping": early_stopping, "loss": loss, "validation_split": validation_split,
            "dataset": dataset, "reported_error": reported_error, "notes": notes,
            "targets": "one_hot" if loss == "mse" else "labels", "clipvalue": clipvalue}


def affine(probability):
    """Seed 001's augmentation, as the author's ``src/add_ons/data_augmentation.py`` does it: an
    isotropic zoom of +-20 %, a rotation of +-25 degrees and shifts of up to +-20 % of the width and
    height (the report's "vertical and horizontal scaling"), applied to an image with the given
    probability."""
    return {"type": "RandomAffine", "rotation": 25.0, "scale": None, "zoom": 0.2,
            "shift": [0.2, 0.2], "probability": probability}


class ModelSpec:
    """A zoo entry: ``build(input_shape=None, num_classes=10, device, seed, dtype) -> model``.

    ``layers(input_shape, num_classes)`` returns the Sequential's layers, or ``graph(input_shape,
    num_classes)`` returns (input, output) symbolic tensors for a functional Model.
    """

    def __init__(self, name, seed, description, recipe, layers=None, graph=None):
        if (layers is None) == (graph is None):
            raise ConfigError(f"model {name!r}: give exactly one of layers= or graph=")
        self.name, self.seed, self.description = name, seed, description
        self.recipe = dict(recipe)
        self._layers, self._graph = layers, graph

    @property
    def input_shape(self):
        """The shape of one sample of the recipe's dataset."""
        return DATASET_SHAPES[self.recipe["dataset"]]

    def build(self, input_shape=None, num_classes=10, device="cpu", seed=0, dtype="float32"):
        shape = tuple(int(d) for d in (input_shape or self.input_shape))
        if int(num_classes) < 2:
            raise ConfigError(f"model {self.name!r}: num_classes must be >= 2, got {num_classes!r}")
        if self._graph is not None:
            from ..graph import Model
            x, y = self._graph(shape, int(num_classes))
            return Model(x, y, device=device, dtype=dtype, seed=seed, name=self.name)
        from ..model import Sequential
        return Sequential(self._layers(shape, int(num_classes)), input_shape=shape, device=device,
                          dtype=dtype, seed=seed, name=self.name)

    def __repr__(self):
        return f"ModelSpec({self.name!r}, seed={self.seed!r})"
