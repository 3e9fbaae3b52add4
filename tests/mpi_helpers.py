"""Starting small MPI jobs from pytest: find mpirun, check that a 2-rank job can start, run one."""
import functools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import skip_unless_required

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "distributed_child.py"
# One BLAS / element-wise thread per rank: two ranks share the 2-core CI machine.
ENV = {"OMP_NUM_THREADS": "1", "XPNET_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
       "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def mpirun():
    """The mpirun (or mpiexec) beside this Python (a venv with the mpich wheel), else on PATH."""
    here = Path(sys.executable).parent
    for name in ("mpirun", "mpiexec"):
        if (here / name).is_file():
            return str(here / name)
    for name in ("mpirun", "mpiexec"):
        found = shutil.which(name)
        if found:
            return found
    return None


@functools.lru_cache(maxsize=1)
def mpi_problem():
    """None when `mpirun -n 2 python` with mpi4py works here, else why not (the skip reason)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install -e '.[mpi]')"
    launcher = mpirun()
    if launcher is None:
        return "no mpirun/mpiexec found (pip install -e '.[mpi]' installs MPICH's)"
    code = "from mpi4py import MPI; c = MPI.COMM_WORLD; assert c.allreduce(1) == 2; print('ok')"
    try:
        r = subprocess.run([launcher, "-n", "2", sys.executable, "-c", code], capture_output=True,
                           text=True, timeout=60, env=dict(os.environ, **ENV))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"a 2-rank MPI job could not start: {exc}"
    if r.returncode != 0 or r.stdout.count("ok") != 2:
        return f"a 2-rank MPI job could not start (rc {r.returncode}): {(r.stderr or r.stdout)[-400:]}"
    return None


def require_mpi():
    """Skip with mpi_problem()'s reason (fail where XPNET_REQUIRE_MPI=1, as in CI)."""
    problem = mpi_problem()
    if problem:
        skip_unless_required(problem, "MPI")


def run_job(args, ranks=2, timeout=180, mpi_flags=(), env=None):
    """Run tests/distributed_child.py under mpirun; returns (CompletedProcess, seconds)."""
    cmd = [mpirun(), "-n", str(ranks), *mpi_flags, sys.executable, str(CHILD), *map(str, args)]
    start = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, **ENV, **(env or {})))
    return r, time.monotonic() - start
