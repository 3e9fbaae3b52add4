"""Seed report 001: twelve MNIST models built up step by step, then the 32-64-96-128 TensorFlow CNN.

    python examples/seed001_step_by_step.py [--model NAME | --all | --list] [train options]

Options are those of `xpnet train`; every run writes its own run folder under --out (default runs/).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # from a checkout

from xpnet.cli import family_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(family_main("seed001-", "seed001-m12", __doc__.split("\n\n")[0]))
