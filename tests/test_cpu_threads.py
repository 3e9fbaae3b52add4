"""The CPU backend limits NumPy's BLAS to one thread, so that OpenBLAS's busy-waiting workers do
not spin beside xpnet's own threads (backends/cpu_threads.py). Each check runs in a fresh process,
because the limit is set once per process."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("threadpoolctl", reason="threadpoolctl (the 'threads' extra) sets the BLAS threads")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = """
import json, time, numpy, threadpoolctl
from xpnet.backends import get_backend
before = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
be = get_backend("cpu")
after = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
a = numpy.ones((600, 600), dtype="float32")
spin = []
for _ in range(3):                      # CPU time of the process while its main thread sleeps
    a @ a
    c0 = time.process_time(); time.sleep(0.25); spin.append(time.process_time() - c0)
print(json.dumps([before, after, min(spin), be.blas["controlled"]]))
"""


def probe(**env):
    """(BLAS threads before, after get_backend("cpu"), CPU s while sleeping after a GEMM, controlled)."""
    full = {k: v for k, v in os.environ.items() if k != "XPNET_BLAS_THREADS"}
    full.update(OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2", **env)
    out = subprocess.run([sys.executable, "-c", PROBE], env=full, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cpu_backend_runs_blas_on_one_thread_and_nothing_spins():
    """OpenBLAS 0.3.x's idle workers spin for about 0.1 s after each threaded call (0.05-0.07 s of
    CPU measured on this machine during a sleep after one 600x600 GEMM); with the limit they do not
    exist. With XPNET_BLAS_THREADS=keep this test fails on the spin (checked)."""
    before, after, spin, controlled = probe()
    assert before == [2] and after == [1] and controlled is True
    assert spin < 0.02, f"{spin:.3f} s of CPU while the main thread slept: BLAS threads spin"


def test_blas_threads_can_be_kept_or_chosen():
    _, after, spin, controlled = probe(XPNET_BLAS_THREADS="keep")
    assert after == [2] and controlled is False
    _, after, _, controlled = probe(XPNET_BLAS_THREADS="3")
    assert after == [3] and controlled is True


def test_bad_blas_threads_value_is_refused(monkeypatch):
    from xpnet.backends import cpu_threads
    monkeypatch.setenv("XPNET_BLAS_THREADS", "many")
    with pytest.raises(ValueError, match="XPNET_BLAS_THREADS must be a positive whole number or 'keep'"):
        cpu_threads.blas_threads_wanted()


AVX512 = frozenset("fpu avx avx2 fma avx512f avx512cd avx512bw avx512dq avx512vl".split())
OPENBLAS_HASWELL = [{"internal_api": "openblas", "architecture": "Haswell"}]


def test_a_core_type_that_holds_openblas_off_avx512_is_named():
    from xpnet.backends.cpu_threads import pinned_kernels_hint
    hint = pinned_kernels_hint(OPENBLAS_HASWELL, {"OPENBLAS_CORETYPE": "Haswell"}, AVX512)
    assert "OPENBLAS_CORETYPE=Haswell" in hint and "Haswell kernels" in hint and "unset it" in hint
    # nothing to say: the variable unset, a CPU without AVX-512, AVX-512 kernels, another BLAS
    assert pinned_kernels_hint(OPENBLAS_HASWELL, {}, AVX512) == ""
    assert pinned_kernels_hint(OPENBLAS_HASWELL, {"OPENBLAS_CORETYPE": "Haswell"}, AVX512 - {"avx512bw"}) == ""
    assert pinned_kernels_hint([{"internal_api": "openblas", "architecture": "SkylakeX"}],
                               {"OPENBLAS_CORETYPE": "SkylakeX"}, AVX512) == ""
    assert pinned_kernels_hint([{"internal_api": "mkl", "architecture": None}],
                               {"OPENBLAS_CORETYPE": "Haswell"}, AVX512) == ""


def test_the_cpu_flags_are_read_from_cpuinfo(tmp_path):
    from xpnet.backends.cpu_threads import cpu_flags
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "avx512f"}
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()
