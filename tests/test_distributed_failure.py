"""A rank that dies or hangs stops the whole job within a bounded time, with a clear error, and
the last checkpoint stays loadable; every rank resumes from it, and the resumed 2-rank run ends
with exactly the weights of an uninterrupted one.

Rank 1 of tests/distributed_child.py sends itself SIGKILL (dies) or SIGSTOP (hangs) in the middle
of epoch 3, after rank 0 has written the checkpoint of epoch 2. A death is seen by the launcher,
which ends the job at once (MPICH's hydra kills the other ranks and names the dead one; with
-disable-auto-cleanup it still ended the job here). A hang is seen by nobody but the other ranks:
their collectives' deadline raises DistributedError and the job is aborted.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import xpnet
from tests.mpi_helpers import mpirun, require_mpi, run_job
from xpnet.checkpoint import checkpoint_path, load_checkpoint

pytestmark = pytest.mark.timeout(600)
EPOCHS = 4
TIMEOUT = 10  # seconds a rank waits in one collective in the fault tests (the children's --timeout)
PATIENT = 120  # the same for runs that must not time out on a busy machine


def weights(folder, rank=0):
    with np.load(folder / f"rank{rank}.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _child():
    import importlib.util
    from tests.mpi_helpers import CHILD
    spec = importlib.util.spec_from_file_location("distributed_child", CHILD)
    child = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(child)
    return child


def checkpoint_epoch(folder):
    """Load the checkpoint into a fresh model in this process; returns its last completed epoch."""
    model = _child().build("sgd", "cpu", seed=0)
    rngs = model._training_rngs(0)
    meta = load_checkpoint(checkpoint_path(folder), model, rngs, [xpnet.callbacks.History()])
    return meta["epoch"]


def job(tmp_path, name, *extra, flags=(), timeout=PATIENT):
    out = tmp_path / name
    out.mkdir(exist_ok=True)
    ck = tmp_path / f"{name}-ck"
    r, seconds = run_job([out, "--epochs", EPOCHS, "--checkpoint", ck, "--timeout", timeout, *extra],
                         mpi_flags=flags)
    return r, seconds, out, ck


def hydra():
    """MPICH's launcher (it knows -disable-auto-cleanup)."""
    try:
        r = subprocess.run([mpirun(), "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "HYDRA" in r.stdout


def started_epochs(stdout):
    """(rank, epoch) of the child's "rank R: epoch K" lines, sorted (the ranks' lines interleave)."""
    return sorted((int(r), int(e)) for r, e in re.findall(r"rank (\d+): epoch (\d+)", stdout))


def test_killed_rank_stops_the_job_and_the_run_resumes_exactly(tmp_path, capsys):
    require_mpi()
    r, _, whole, _ = job(tmp_path, "whole")
    assert r.returncode == 0, r.stderr
    r, seconds, out, ck = job(tmp_path, "killed", "--die-at", "2:2")
    assert r.returncode != 0 and "sending itself SIGKILL" in r.stderr, r.stdout + r.stderr
    if hydra():  # MPICH's launcher ends the job at once and says which process died and how
        assert "Killed (signal 9)" in r.stdout + r.stderr, r.stdout + r.stderr
    assert seconds < 90  # start-up and two epochs included: no waiting for a dead rank
    assert not (out / "rank0.npz").exists()  # rank 0 did not finish on its own
    assert checkpoint_epoch(ck) == 1  # epochs 1 and 2 (0 and 1) completed and saved
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copytree(ck, tmp_path / "alone-ck")
    # every rank loads the same checkpoint and the run continues to the same weights, bit for bit
    r, _ = run_job([out, "--epochs", EPOCHS, "--checkpoint", ck, "--resume", "--timeout", PATIENT])
    assert r.returncode == 0, r.stdout + r.stderr
    # it went on after the checkpoint's epoch 2 (a run started afresh ends with the same weights)
    assert started_epochs(r.stdout) == [(0, 3), (0, 4), (1, 3), (1, 4)], r.stdout
    a, b = weights(whole), weights(out)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert all(np.array_equal(b[k], weights(out, 1)[k]) for k in b)
    # the 2-rank checkpoint also resumes in one process, to the same weights up to rounding
    child = _child()
    capsys.readouterr()
    child.main([str(alone), "--epochs", str(EPOCHS), "--checkpoint", str(tmp_path / "alone-ck"),
                "--resume", "--single"])
    assert started_epochs(capsys.readouterr().out) == [(0, 3), (0, 4)]
    c = weights(alone)
    assert max(float(np.abs(a[k] - c[k]).max() / np.abs(a[k]).max()) for k in a) < 1e-10


def test_hung_rank_stops_the_job_within_the_timeout(tmp_path):
    require_mpi()
    r, seconds, _, ck = job(tmp_path, "hung", "--hang-at", "2:2", timeout=TIMEOUT)
    assert r.returncode != 0
    assert "sending itself SIGSTOP" in r.stderr
    assert f"did not complete within {TIMEOUT} s: another rank has died or hangs" in r.stderr, r.stderr
    assert "DistributedError" in r.stderr and "resume from the last checkpoint" in r.stderr
    assert TIMEOUT <= seconds < TIMEOUT + 60
    assert checkpoint_epoch(ck) == 1


def _descendants(pid):
    """Process ids below ``pid`` (Linux /proc), with their command lines."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append((int(entry), cmd))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


def test_sigterm_to_one_rank_of_the_cli_ends_the_whole_job(tmp_path):
    """`kill` of one rank of `mpirun -n 2 train_mnist.py --distributed`: that rank says what was
    kept and ends the job (MPI_Abort with 143) at once; the other rank does not wait out its
    collective's deadline and then blame a dead rank."""
    from tests.mpi_helpers import ENV, ROOT
    require_mpi()
    if not os.path.isdir("/proc/self"):
        pytest.skip("finds the ranks through /proc")
    out = tmp_path / "runs"
    cmd = [mpirun(), "-n", "2", sys.executable, str(ROOT / "examples" / "train_mnist.py"), "--distributed",
           "--device", "cpu", "--quick", "--epochs", "1000", "--train-images", "1000",
           "--test-images", "100", "--out", str(out)]
    env = dict(os.environ, **ENV, XPNET_DIST_TIMEOUT="120")
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*/last.npz")) and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.2)
        ranks = [pid for pid, cmdline in _descendants(job.pid) if "train_mnist.py" in cmdline
                 and "mpirun" not in cmdline and "hydra" not in cmdline]
        assert len(ranks) == 2 and job.poll() is None, ranks
        os.kill(max(ranks), signal.SIGTERM)
        killed = time.monotonic()
        stdout, stderr = job.communicate(timeout=100)
        seconds = time.monotonic() - killed
    finally:
        if job.poll() is None:
            job.kill()
            job.communicate()
    assert job.returncode == 143, stdout[-2000:] + stderr[-2000:]
    assert seconds < 30, seconds
    assert "stopped by SIGTERM during epoch" in stderr and "continue with --resume" in stderr, stderr
    assert "another rank has died" not in stderr


def test_a_resume_on_too_many_ranks_is_refused_with_one_line_naming_the_rank_counts(tmp_path):
    """`mpirun -n 3 xpnet train --distributed --resume RUN` of a run whose batch leaves 2 samples
    over: every rank stops before training, the job fails, and the one error line says how many
    ranks can resume it (it said to choose a --batch-size, which --resume does not take, and every
    rank could print it)."""
    from tests.mpi_helpers import ENV
    from xpnet import cli
    require_mpi()
    assert cli.main(["train", "--model", "quick-mlp", "--device", "cpu", "--epochs", "3",
                     "--train-images", "302", "--test-images", "100", "--batch-size", "50",
                     "--time-limit", "0.00001", "--quiet", "--out", str(tmp_path)]) == 0
    (run,) = tmp_path.iterdir()
    with open(run / "config.json") as f:
        config_before = f.read()
    cmd = [mpirun(), "-n", "3", sys.executable, "-m", "xpnet", "train", "--distributed", "--resume",
           str(run), "--device", "cpu", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=dict(os.environ, **ENV))
    assert r.returncode != 0, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if "xpnet train: error:" in line]
    assert lines == [f"xpnet train: error: {run} cannot be resumed on 3 ranks: the last batch of each "
                     f"epoch would hold 2 of 302 samples, fewer than the 3 ranks; --resume keeps the "
                     f"run's batch size (50), so resume it on at most 2 ranks (it last trained on 1 "
                     f"rank)"], r.stderr
    with open(run / "config.json") as f:
        assert f.read() == config_before   # a refused resume records no sitting
