"""Seed report 003: LeNet-5, plain and with batch normalization + clipping (MNIST, CIFAR-10).

    python examples/seed003_lenet5.py [--model NAME | --all | --list] [train options]

Options are those of `xpnet train`; every run writes its own run folder under --out (default runs/).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # from a checkout

from xpnet.cli import family_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(family_main("seed003-", "seed003-lenet5", __doc__.split("\n\n")[0]))
