"""Seed report 002: logistic regression and a 784-784-10 MLP (no penalty, L1, L2) and a small CNN.

    python examples/seed002_regularization.py [--model NAME | --all | --list] [train options]

Options are those of `xpnet train`; every run writes its own run folder under --out (default runs/).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # from a checkout

from xpnet.cli import family_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(family_main("seed002-", "seed002-cnn", __doc__.split("\n\n")[0]))
