"""Shared fixtures: every backend-aware test runs on each available backend.

XPNET_TEST_BACKENDS=numpy,strict (comma list) restricts the set; cupy joins when a GPU works.
"""
import os

import numpy as np
import pytest

from xpnet.backends import available, get_backend


def _backend_names():
    wanted = os.environ.get("XPNET_TEST_BACKENDS")
    names = available()
    if wanted:
        names = [n for n in wanted.split(",") if n in names or n == "cupy"]
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
