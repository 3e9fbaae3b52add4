"""The NumPy backend keeps freed host memory for reuse (backends/host_memory.py): a training step's
temporaries of a few MiB then cost no page faults after the first step."""
import os
import subprocess
import sys

import pytest

CHILD = r"""
import resource, sys
import numpy
from xpnet.backends import get_backend
get_backend("numpy")
a = numpy.ones(1 << 20, numpy.float32)


def step():  # like Adam's update over 1M parameters: five 4 MiB temporaries alive at once, then freed
    t = [a * float(i) for i in range(5)]
    return sum(float(x[0]) for x in t)


for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(env_extra):
    env = dict(os.environ, **env_extra)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return int(out.split()[-1])


def glibc():
    import ctypes
    try:
        ctypes.CDLL("libc.so.6").gnu_get_libc_version
        return True
    except (OSError, AttributeError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not glibc(), reason="glibc's malloc only")
def test_freed_temporaries_are_reused_without_page_faults():
    kept = faults({})
    system = faults({"XPNET_HOST_MALLOC": "system"})
    # glibc trims the freed 20 MiB at the heap's top after every step (its adaptive trim threshold
    # is twice the largest freed block), so each step faults its 5 * 1024 pages in again; kept
    # blocks fault only for the odd page of bookkeeping.
    assert kept < 2_000, kept
    assert system > 20 * kept + 10_000, (kept, system)


def test_backend_records_what_it_set():
    from xpnet.backends import get_backend
    from xpnet.backends.host_memory import keep_freed_memory
    got = get_backend("numpy").host_malloc
    assert got is keep_freed_memory()
    if glibc() and os.environ.get("XPNET_HOST_MALLOC", "").strip().lower() != "system":
        assert "skipped" not in got, got  # glibc, not turned off: nothing to skip
    if "skipped" not in got:
        assert got == {"mmap_threshold": 32 << 20, "trim_threshold": 1 << 30, "top_pad": 64 << 20}
