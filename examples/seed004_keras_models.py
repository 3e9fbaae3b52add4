"""Seed report 004: a Keras MLP, a batch-norm CNN and a functional model (MNIST, Fashion-MNIST).

    python examples/seed004_keras_models.py [--model NAME | --all | --list] [train options]

Options are those of `xpnet train`; every run writes its own run folder under --out (default runs/).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # from a checkout

from xpnet.cli import family_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(family_main("seed004-", "seed004-cnn", __doc__.split("\n\n")[0]))
