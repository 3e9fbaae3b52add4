"""Shared fixtures: every backend-aware test runs on each available backend.

XPNET_TEST_BACKENDS=numpy,strict (comma list) restricts the set; cupy joins when a GPU works.
XPNET_FUZZ_SEED=N gives the hypothesis tests new draws (tests/helpers.fuzz_settings).
"""
import os

import numpy as np
import pytest

from xpnet.backends import available, get_backend

from .helpers import fuzz_seed


def _backend_names():
    wanted = os.environ.get("XPNET_TEST_BACKENDS")
    names = available()
    if wanted:
        names = [n.strip() for n in wanted.split(",") if n.strip() in names or n.strip() == "cupy"]
    return names


BACKENDS = _backend_names()


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "cupy":
        from xpnet.backends.cupy_backend import gpu_available
        if not gpu_available():
            pytest.skip("no usable CUDA GPU / CuPy on this machine")
    return get_backend(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_report_header(config):
    return f"xpnet backends under test: {', '.join(BACKENDS)}"



def _default_sigint_for_children():
    """A job started in the background by a non-interactive shell (`cmd &`, nohup, some CI runners)
    inherits SIGINT ignored, and so would every process the tests start: the Ctrl-C tests would
    then see their SIGINT dropped. Give pytest Python's own handler, so children start with the
    default disposition (exec resets handled signals, not ignored ones)."""
    import signal
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_default_sigint_for_children()


TEST_BACKENDS = ("numpy", "strict", "cupy")


def pytest_configure(config):
    """A malformed XPNET_FUZZ_SEED, or a name in XPNET_TEST_BACKENDS that is no backend (it was
    dropped silently, and the run shrank with no skip to show it), stops the run before
    collection, with one line."""
    wanted = [n.strip() for n in os.environ.get("XPNET_TEST_BACKENDS", "").split(",") if n.strip()]
    unknown = [n for n in wanted if n not in TEST_BACKENDS]
    if unknown:
        raise pytest.UsageError(f"XPNET_TEST_BACKENDS names {', '.join(map(repr, unknown))}; expected a "
                                f"comma list of {', '.join(TEST_BACKENDS)}")
    try:
        fuzz_seed()
    except ValueError:
        raise pytest.UsageError(f"XPNET_FUZZ_SEED must be an integer, not {os.environ['XPNET_FUZZ_SEED']!r}")


def pytest_terminal_summary(terminalreporter):
    """The fuzz tests' seed, after every run that set one (-q too, where no header is printed): the
    same XPNET_FUZZ_SEED draws the same examples again (tests/helpers.fuzz_settings)."""
    chosen = fuzz_seed()
    if chosen is not None:
        terminalreporter.write_line(f"hypothesis fuzz draws: XPNET_FUZZ_SEED={chosen}")
