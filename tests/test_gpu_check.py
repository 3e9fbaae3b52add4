"""scripts/gpu_check.sh --dry-run: the GPU proof's script runs end to end on the CPU (strict backend,
tiny sizes, the same steps and packing), so it cannot fail on a typo when a GPU comes."""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")


def run_script(*args, env=None, timeout=600):
    return subprocess.run(["bash", SCRIPT, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **{"PYTHON": sys.executable, **(env or {})}))


@pytest.mark.skipif(shutil.which("timeout") is None, reason="needs coreutils' timeout")
def test_dry_run_runs_every_step_and_packs_few_small_files(tmp_path):
    pytest.importorskip("torch", reason="the benchmark step races PyTorch (installed by make test)")
    out = tmp_path / "out"
    proc = run_script("--dry-run", "--out", str(out), env={"OUT": ""})
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for step in ("info", "settings", "tests", "bench", "train"):
        assert f"[{step}] ok in " in summary, summary
    assert "status: all passed" in summary
    assert "headline: seed001-tf test error" in summary and "device {'backend': 'strict'" in summary
    files = sorted(os.listdir(out))
    assert files == ["bench.json", "junit.xml", "logs.tar.gz", "run.tar.gz", "summary.txt"]
    assert all((out / f).stat().st_size < 16 * 2**20 for f in files)
    assert proc.stdout.rstrip().endswith(summary.rstrip().splitlines()[-1])  # the reply shows the end

    with tarfile.open(out / "logs.tar.gz") as tar:
        logs = {os.path.basename(n) for n in tar.getnames()}
    assert {"info.log", "settings.log", "tests.log", "bench.log", "train.log"} <= logs
    with tarfile.open(out / "run.tar.gz") as tar:
        names = tar.getnames()
        result = json.load(tar.extractfile([n for n in names if n.endswith("/result.json")][0]))
    assert not any(n.endswith("last.npz") for n in names)
    assert any(n.endswith("/model.npz") for n in names) and any(n.endswith("/curves.png") for n in names)
    assert result["model"] == "seed001-tf" and result["test_samples"] == 64
    assert result["time_limit_minutes"] is not None
    # the training's cap is what the 9 minutes leave less 20 s, its time limit that cap less 60 s
    train = re.search(r"^== train \(cap (\d+)s\): .* --time-limit ([\d.]+) ", proc.stdout, re.M)
    cap = int(train[1])
    assert cap <= 9 * 60 - 20, proc.stdout
    assert train[2] == f"{max((cap - 60) / 60, 0.1):.2f}" and result["time_limit_minutes"] == float(train[2])
    bench = json.loads((out / "bench.json").read_text())
    assert [r["model"] for r in bench["results"]] == ["lenet5"]
    assert "<testsuite" in (out / "junit.xml").read_text()


def test_the_gpu_run_gives_each_step_the_gpu_settings(tmp_path):
    """Without --dry-run (the run on the lent GPU, which no CPU test runs for real): every command
    is recorded by a stand-in for Python, which does nothing else, and is checked for the GPU's
    settings: the tests on numpy,cupy without TF32 and without this file, the benchmark and the
    full training (no subset) on the GPU."""
    log = tmp_path / "commands.jsonl"
    fake = tmp_path / "python"
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "with open(os.environ['FAKE_LOG'], 'a') as f:\n"
                    "    f.write(json.dumps({'argv': sys.argv[1:], 'backends': os.environ.get("
                    "'XPNET_TEST_BACKENDS'), 'tf32': os.environ.get('CUPY_TF32')}) + '\\n')\n")
    fake.chmod(0o755)
    out = tmp_path / "out"
    proc = run_script("--out", str(out), env={"PYTHON": str(fake), "FAKE_LOG": str(log), "CUPY_TF32": "1"})
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0 and "status: all passed" in summary, summary
    calls = [json.loads(line) for line in log.read_text().splitlines()]

    def one(test):
        found = [c for c in calls if test(c["argv"])]
        assert len(found) == 1, calls
        return found[0]

    def value(argv, option):
        return argv[argv.index(option) + 1]

    assert one(lambda a: a[:2] == ["-m", "xpnet"])["argv"] == ["-m", "xpnet", "info"]
    tests = one(lambda a: a[:2] == ["-m", "pytest"])
    assert tests["backends"] == "numpy,cupy" and tests["tf32"] is None, tests
    argv = tests["argv"][2:]  # after "-m pytest"
    assert value(argv, "-m") == "not slow" and value(argv, "--timeout") == "120", argv
    assert value(argv, "-n") == "8" and argv[-3:] == ["tests", "--ignore", "tests/test_gpu_check.py"], argv
    bench = one(lambda a: a[0].endswith("/benchmarks/run.py"))["argv"]
    assert value(bench, "--device") == "gpu" and value(bench, "--models") == "big,medium,lenet5", bench
    train = one(lambda a: a[0].endswith("/examples/train_mnist.py"))["argv"]
    assert value(train, "--device") == "gpu" and value(train, "--model") == "seed001-tf", train
    assert float(value(train, "--time-limit")) > 5 and not {"--train-images", "--epochs"} & set(train), train


def test_a_failing_step_is_reported_and_the_next_still_runs(tmp_path):
    """pytest refuses an unknown option: the tests step fails, the training still runs, status 1."""
    out = tmp_path / "out"
    proc = run_script("--dry-run", "--out", str(out), "--steps", "tests,train",
                      env={"PYTEST_ADDOPTS": "--no-such-option"})
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 1, summary
    assert "[tests] FAILED with status 4" in summary and "--no-such-option" in summary
    assert "[train] ok in " in summary and "status: some FAILED" in summary
    assert sorted(os.listdir(out)) == ["logs.tar.gz", "run.tar.gz", "summary.txt"]


def test_steps_past_the_budget_are_skipped(tmp_path):
    out = tmp_path / "out"
    proc = run_script("--dry-run", "--out", str(out), "--steps", "info", "--minutes", "0.05")
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 1 and "[info] skipped: the budget of 0.05 minutes is spent" in summary


def test_a_step_gets_at_most_the_budget_left(tmp_path):
    """Each step's cap (info: 60 s) is cut to what is left of --minutes."""
    out = tmp_path / "out"
    proc = run_script("--dry-run", "--out", str(out), "--steps", "info", "--minutes", "0.75")
    caps = dict(re.findall(r"^== (\w+) \(cap (\d+)s\)", proc.stdout, re.M))
    assert 0 < int(caps["info"]) <= 45, proc.stdout


def test_bad_arguments(tmp_path):
    for args, message in ((["--steps", "info,fly"], "unknown step 'fly'"),
                          (["--minutes", "soon"], "--minutes must be a number"),
                          (["--frobnicate"], "unknown argument '--frobnicate'")):
        proc = run_script(*args, "--out", str(tmp_path))
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    proc = run_script("--help")
    assert proc.returncode == 0 and "--dry-run" in proc.stdout


def test_pack_warns_of_a_file_over_the_16_mib_that_come_back(tmp_path):
    """The pack step checks every file in the output folder: one byte over 16 MiB is named in a
    warning (summary.txt and stdout), one byte under is not. Python is a stand-in that does
    nothing, so only the info step's commands run, and the files are sparse."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    for name, size in (("big.bin", 16 * 2**20 + 1), ("small.bin", 16 * 2**20 - 1)):
        with open(out / name, "wb") as f:
            f.truncate(size)
    proc = run_script("--out", str(out), "--steps", "info", env={"PYTHON": str(fake)})
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warning = f"warning: big.bin is {16 * 2**20 + 1} bytes, over the 16 MiB that come back"
    assert [line for line in summary.splitlines() if "warning" in line] == [warning], summary
    assert warning in proc.stdout, proc.stdout
