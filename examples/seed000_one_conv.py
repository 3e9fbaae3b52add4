"""Seed report 000: a one-convolution MNIST CNN trained per sample with SGD, momentum and Adam.

    python examples/seed000_one_conv.py [--model NAME | --all | --list] [train options]

Options are those of `xpnet train`; every run writes its own run folder under --out (default runs/).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # from a checkout

from xpnet.cli import family_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(family_main("seed000-", "seed000-final", __doc__.split("\n\n")[0]))
