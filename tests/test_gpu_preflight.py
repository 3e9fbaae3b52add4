"""What a pre-flight read of the code against CuPy 14.2 found (issue 14, point 7), and the CuPy
settings every GPU run records (point 6), checked on the CPU."""
import builtins
import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from xpnet import cli, runner
from xpnet.backends import cupy_backend, get_backend
from xpnet.errors import BackendError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def fresh_probe(monkeypatch):
    """gpu_problem() caches its answer per process: start each test without it."""
    monkeypatch.setattr(cupy_backend, "_probe", {})


def refuse_import(monkeypatch, exc):
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == "cupy" or name.startswith("cupy."):
            raise exc
        return real(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake)


# -- import cupy raising OSError (its kernel cache cannot be created) ------------------------------
def test_oserror_on_import_is_a_backend_error_with_a_hint(monkeypatch, fresh_probe, capsys):
    refuse_import(monkeypatch, FileNotFoundError(2, "No such file or directory", "/proc/x/.cupy"))
    with pytest.raises(BackendError, match="CuPy is installed but failed to import .*CUPY_CACHE_DIR"):
        cupy_backend._import_cupy()
    assert not cupy_backend.gpu_available()
    assert get_backend("auto").name == "numpy"
    with pytest.raises(BackendError, match="CUPY_CACHE_DIR"):
        cupy_backend.CupyBackend()
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "GPU: none usable: CuPy is installed but failed to import" in out and "CUPY_CACHE_DIR" in out


def test_any_other_import_failure_is_a_backend_error(monkeypatch, fresh_probe):
    refuse_import(monkeypatch, RuntimeError("CUDA environment is not configured correctly"))
    with pytest.raises(BackendError, match="failed to import .RuntimeError: CUDA environment"):
        cupy_backend._import_cupy()
    refuse_import(monkeypatch, ImportError("No module named 'cupy'"))
    with pytest.raises(BackendError, match=r"not installed.*pip install -e '\.\[cuda12\]'"):
        cupy_backend._import_cupy()


@pytest.mark.skipif(importlib.util.find_spec("cupy") is None,
                    reason="CuPy is not installed (CI installs it for the CuPy audit)")
def test_real_cupy_with_an_unwritable_home(tmp_path):
    """The real thing: `import cupy` 14 raises OSError when ~/.cupy cannot be created."""
    code = ("from xpnet.backends import get_backend\n"
            "from xpnet.backends.cupy_backend import gpu_problem\n"
            "print(get_backend('auto').name)\nprint(gpu_problem())\n")
    env = {k: v for k, v in os.environ.items() if k != "CUPY_CACHE_DIR"}
    env.update(HOME="/proc/no-such-home", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "numpy" and "CUPY_CACHE_DIR" in lines[1], proc.stdout
    proc = subprocess.run([sys.executable, "-m", "xpnet", "info"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "GPU: none usable" in proc.stdout


# -- gpu_available() runs a kernel and a GEMM --------------------------------------------------------
class FakeArray:
    def __init__(self, a, fail=None):
        self.a, self.fail = a, fail

    def reshape(self, *shape):
        return FakeArray(self.a.reshape(*shape), self.fail)

    def __matmul__(self, other):
        if self.fail == "gemm":
            raise RuntimeError("CUBLAS_STATUS_NOT_INITIALIZED")
        return FakeArray(self.a @ other.a, self.fail)

    def __mul__(self, k):
        if self.fail == "nvrtc":
            raise OSError("libnvrtc.so.13: cannot open shared object file")
        return FakeArray(self.a * k, self.fail)

    def __add__(self, k):
        return FakeArray(self.a + k + (1 if self.fail == "wrong" else 0), self.fail)


class FakeCupy:
    """Just enough of cupy for the probe, on NumPy; ``fail`` breaks one part of it."""
    __version__ = "14.2.0"
    float32 = np.float32

    def __init__(self, fail=None):
        self.fail = fail

    def arange(self, *args, dtype=None):
        return FakeArray(np.arange(*args, dtype=dtype), self.fail)

    def asnumpy(self, a):
        return a.a


@pytest.mark.parametrize("fail, message", [
    ("gemm", "first kernel failed (RuntimeError: CUBLAS_STATUS_NOT_INITIALIZED)"),
    ("nvrtc", "first kernel failed (OSError: libnvrtc.so.13"),
    ("wrong", "wrong 2x2 matrix product"),
])
def test_a_device_that_cannot_run_a_kernel_is_not_available(monkeypatch, fresh_probe, fail, message):
    monkeypatch.setattr(cupy_backend, "_import_cupy", lambda: FakeCupy(fail))
    assert not cupy_backend.gpu_available()
    assert message in cupy_backend.gpu_problem()
    assert get_backend("auto").name == "numpy"  # --device auto falls back to the CPU
    with pytest.raises(BackendError, match=re.escape(message)):
        cupy_backend.CupyBackend()


def test_a_working_device_is_available_and_probed_once(monkeypatch, fresh_probe):
    calls = []

    def fake_import():
        calls.append(1)
        return FakeCupy()

    monkeypatch.setattr(cupy_backend, "_import_cupy", fake_import)
    assert cupy_backend.gpu_available() and cupy_backend.gpu_problem() is None
    assert cupy_backend.gpu_available()
    assert len(calls) == 1


# -- the extras bring CuPy with its CUDA libraries ---------------------------------------------------
def test_cuda_extras_depend_on_the_ctk_variant():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        text = f.read()
    assert 'cuda12 = ["cupy-cuda12x[ctk]>=14"]' in text
    assert 'cuda13 = ["cupy-cuda13x[ctk]>=14"]' in text


def test_gpu_image_sets_a_writable_kernel_cache():
    with open(os.path.join(ROOT, "docker", "Dockerfile.gpu")) as f:
        text = f.read()
    assert "CUPY_CACHE_DIR=/cupy-cache" in text and "chmod 1777 /cupy-cache" in text
    assert '"/cupy-cache"]' in text  # a volume, so a mounted one keeps the kernels


# -- make train installs the matching extra, or says why the GPU is unused ---------------------------
def gpu_extra(tmp_path, smi_output=None):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    if smi_output is not None:
        smi.write_text(f"#!/bin/sh\ncat <<'EOF'\n{smi_output}\nEOF\n")
        smi.chmod(0o755)
    elif smi.exists():
        smi.unlink()
    env = dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin")
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_extra.sh")], env=env,
                          capture_output=True, text=True, timeout=60)


HEADER = ("| NVIDIA-SMI 580.159.03   Driver Version: 580.159.03   CUDA Version: {} |\n"
          "| GPU  Name   Persistence-M | Bus-Id   Disp.A | Volatile Uncorr. ECC |")


@pytest.mark.parametrize("version, extra", [("13.0", "cuda13"), ("13.1", "cuda13"), ("12.4", "cuda12"),
                                            ("14.0", "cuda13")])
def test_gpu_extra_follows_the_driver(tmp_path, version, extra):
    proc = gpu_extra(tmp_path, HEADER.format(version))
    assert proc.returncode == 0 and proc.stdout.strip() == extra and proc.stderr == ""


@pytest.mark.parametrize("smi, reason", [
    (None, "no NVIDIA driver found (nvidia-smi is not on the PATH)"),
    ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.",
     "reports no CUDA version (the driver may not be working: NVIDIA-SMI has failed"),
    (HEADER.format("11.8"), "supports CUDA 11 only"),
])
def test_gpu_extra_says_why_the_gpu_is_unused(tmp_path, smi, reason):
    proc = gpu_extra(tmp_path, smi)
    assert proc.returncode == 0 and proc.stdout == ""
    assert reason in proc.stderr and "training runs on the CPU" in proc.stderr


def test_make_train_runs_the_gpu_set_up():
    with open(os.path.join(ROOT, "Makefile")) as f:
        text = f.read()
    assert "train: $(VENV)/.installed $(VENV)/.gpu" in text
    assert 'extra="$$(bash scripts/gpu_extra.sh)"' in text
    assert '$(VENV)/bin/pip install -q -e ".[$$extra]"' in text


def test_training_says_plainly_when_auto_uses_the_cpu(tmp_path, capsys):
    if cupy_backend.gpu_available():
        pytest.skip("a GPU works here")
    runner.run_training("quick-mlp", device="auto", out_dir=tmp_path, epochs=1, train_images=100,
                        test_images=50, verbose=2)
    out = capsys.readouterr().out
    assert f"note: the GPU is not used, training runs on the CPU: {cupy_backend.gpu_problem()}" in out


# -- point 6: the CuPy settings that matter are reported and recorded --------------------------------
def test_settings_report_tf32_and_the_memory_limit():
    s = cupy_backend.settings_from({"CUPY_TF32": "1", "CUPY_GPU_MEMORY_LIMIT": "50%"})
    assert s["tf32"] is True
    assert s["environment"] == {"CUPY_TF32": "1", "CUPY_GPU_MEMORY_LIMIT": "50%",
                                "CUPY_CACHE_DIR": None, "CUPY_ACCELERATORS": None}
    assert cupy_backend.settings_from({})["tf32"] is False
    assert cupy_backend.settings_from({"CUPY_TF32": "0"})["tf32"] is False


def test_a_gpu_run_records_the_settings(monkeypatch):
    class FakeGpuBackend:
        name, is_gpu = "cupy", True

        def memory_info(self):
            return {"gpu": "NVIDIA H200", "total_bytes": 150_000_000_000, "pool_total_bytes": 2_000_000}

        def settings(self):
            return cupy_backend.settings_from({"CUPY_TF32": "1"})

    described = runner.device_description(FakeGpuBackend())
    assert described["settings"]["tf32"] is True
    assert described["pool_total_bytes"] == 2_000_000 and described["gpu"] == "NVIDIA H200"


def test_info_prints_the_cupy_settings(monkeypatch, capsys):
    import xpnet.backends as xb

    class FakeGpu:
        def memory_info(self):
            return {"gpu": "NVIDIA H200", "free_bytes": 2**30, "total_bytes": 2**31,
                    "cuda_runtime": 13000, "cupy": "14.2.0"}

        def settings(self):
            return dict(cupy_backend.settings_from({"CUPY_TF32": "1"}), pool_limit_bytes=0)

    monkeypatch.setattr(xb, "available", lambda: ["numpy", "strict", "cupy"])
    monkeypatch.setattr(xb, "get_backend", lambda name: FakeGpu())
    assert cli.main(["info"]) == 0
    assert ("CuPy settings: TF32 on (CUPY_TF32), memory pool limit none (CUPY_GPU_MEMORY_LIMIT), "
            "kernel cache ~/.cupy/kernel_cache") in capsys.readouterr().out


# -- no GPU visible: the advice, in the API's and the command line's words ---------------------------
class CudaError(RuntimeError):
    def __init__(self, status, text):
        super().__init__(text)
        self.status = status


def fake_cupy_without_device(monkeypatch, count=0, error=None):
    """``import cupy`` gives a module whose runtime sees ``count`` devices (or raises ``error``)."""
    import types

    def device_count():
        if error is not None:
            raise error
        return count
    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(
        getDeviceCount=device_count)))
    monkeypatch.setitem(sys.modules, "cupy", cupy)


@pytest.mark.parametrize("count, error", [
    (0, None), (0, CudaError(100, "cudaErrorNoDevice: no CUDA-capable device is detected"))])
def test_no_visible_gpu_is_not_told_to_reinstall_cupy(monkeypatch, fresh_probe, capsys, tmp_path,
                                                      count, error):
    """A machine (or a container started without --gpus all) that shows no GPU: nothing to
    reinstall. The API's message says device='cpu', the command line's --device cpu."""
    fake_cupy_without_device(monkeypatch, count, error)
    with pytest.raises(BackendError) as caught:
        cupy_backend._import_cupy()
    text = str(caught.value)
    assert "no CUDA GPU is visible" in text and "--gpus all" in text and text.endswith("use device='cpu'")
    assert "pip install" not in text
    assert "pip install" not in cupy_backend.gpu_problem() and "device=" not in cupy_backend.gpu_problem()
    code = cli.main(["train", "--device", "gpu", "--quick", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "xpnet train: error: CuPy is installed but no CUDA GPU is visible" in err
    assert err.rstrip().endswith("; use --device cpu") and "device='cpu'" not in err


def test_a_broken_driver_still_names_the_driver_and_the_extras(monkeypatch, fresh_probe):
    monkeypatch.setattr(cupy_backend, "_driver_missing", lambda: False)
    fake_cupy_without_device(monkeypatch, error=CudaError(35, "cudaErrorInsufficientDriver: CUDA "
                                                              "driver version is insufficient"))
    with pytest.raises(BackendError, match=r"no usable CUDA GPU was found .*; use device='cpu', or "
                                           r"check the NVIDIA driver and install CuPy"):
        cupy_backend._import_cupy()
    monkeypatch.setattr(cupy_backend, "_driver_missing", lambda: True)   # no libcuda: no GPU here
    with pytest.raises(BackendError, match="no CUDA GPU is visible") as caught:
        cupy_backend._import_cupy()
    assert "pip install" not in str(caught.value)
