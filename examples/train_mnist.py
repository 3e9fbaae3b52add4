"""Train a model from the xpnet zoo on MNIST and write a run folder (the project's main job).

    python examples/train_mnist.py [--device cpu|gpu|auto] [--model NAME] [--epochs N]
        [--batch-size B] [--data-dir DIR] [--out DIR] [--quick] [--seed S] [--plot]
        [--time-limit MINUTES]
    python examples/train_mnist.py --resume RUN_DIR      (continue an interrupted run)

The default model is seed 001's 32-64-96-128 convolutional network with its training recipe;
``--quick`` trains a small model on a subset in about a minute on a CPU. Each run writes
``<out>/<timestamp>-<model>-mnist/`` with config.json, log.csv, log.json, curves.png,
result.json, model.npz and last.npz (the checkpoint that --resume continues from).
``--time-limit MINUTES`` ends training after the last epoch that fits in that wall-clock budget,
then restores the best weights (when the recipe's early stopping keeps them), evaluates and
writes the run folder as usual.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # from a checkout

from xpnet.cli import add_train_arguments, guarded, train_from_args  # noqa: E402


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="train_mnist.py", description=__doc__.split("\n\n")[0])
    add_train_arguments(parser, dataset=False)
    args = parser.parse_args(argv)

    def run():
        train_from_args(args, ["python", "examples/train_mnist.py"] + argv)
        return 0

    return guarded("train_mnist.py", run)


if __name__ == "__main__":
    sys.exit(main())
