"""benchmarks/run.py: the PyTorch twins compute the same functions as the xpnet models, and a tiny
run covers every (model, batch size) cell and records what the comparison needs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import run  # noqa: E402

import xpnet  # noqa: E402


@pytest.mark.parametrize("name", run.MODELS + run.PER_SAMPLE)
def test_the_torch_twin_has_the_same_weights_and_outputs(name):
    model = run.build_xpnet(xpnet, name, "cpu", "float64", seed=3)
    draw = np.random.default_rng(1)
    for layer in model.layers:   # biases drawn: at their zeros a twin without biases gave the same outputs
        if "b" in layer.params:
            layer.params["b"][...] = draw.uniform(-0.5, 0.5, layer.params["b"].shape)
    net = run.build_torch(torch, model).eval()
    x = np.random.default_rng(0).random((3,) + tuple(model.input_shape))
    ours = model.backend.to_numpy(model.forward(model.backend.asarray(x), training=False))
    with torch.no_grad():
        theirs = net(torch.from_numpy(x)).numpy()
    assert ours.shape == theirs.shape == (3, 10)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9)


def test_a_tiny_run_covers_every_cell(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--batch-size", "2,3",
                           "--repeats", "2", "--warmup", "1", "--threads", "1", "--tag", "t", "--clock", "cpu",
                           "--rounds", "3", "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    (path,) = tmp_path.glob("*-t.json")
    report = json.loads(path.read_text())
    cells = [(r["model"], r["batch_size"]) for r in report["results"]]
    assert cells == [(m, b) for m in run.MODELS for b in (2, 3)]
    for r in report["results"]:
        assert len(r["xpnet"]["times_s"]) == len(r["torch"]["times_s"]) == 2
        assert r["ratio"] == pytest.approx(r["xpnet"]["median_s"] / r["torch"]["median_s"])
        # three rounds: the first is the full record, each has its own medians, and the median ratio
        assert len(r["rounds"]) == 3 and r["rounds"][0]["ratio"] == r["ratio"]
        assert r["ratio_rounds"] == [x["ratio"] for x in r["rounds"]]
        assert r["ratio_median"] == sorted(r["ratio_rounds"])[1]
        assert all(x["ratio"] == pytest.approx(x["xpnet_s"] / x["torch_s"]) for x in r["rounds"])
    assert report["machine"]["threads"]["torch"] == 1
    assert report["machine"]["threads"]["OPENBLAS_NUM_THREADS"] == "1"
    assert report["machine"]["cpu"] and report["machine"]["cores"] >= 1
    # the BLAS's kernels and the variables that pin them are recorded (threadpoolctl is a test dependency)
    blas = report["machine"]["blas"]
    assert blas["OPENBLAS_CORETYPE"] == os.environ.get("OPENBLAS_CORETYPE")
    assert blas["kernels"] and all(k["internal_api"] and k["architecture"] for k in blas["kernels"])
    from xpnet.backends import compiled   # whether the compiled kernels ran (backends/compiled.py)
    assert report["xpnet_cpu"]["compiled_kernels"] == compiled.describe()
    assert report["settings"]["batch_size"] == [2, 3] and report["settings"]["clock"] == "cpu"


def test_a_per_sample_cell_with_the_recipes_sgd(tmp_path):
    """seed000-final at batch 1 with SGD and momentum (its recipe's optimizer) in both frameworks:
    the cell runs and the JSON says which optimizer the steps used."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--models",
                           "seed000-final", "--batch-size", "1", "--optimizer", "sgd-momentum",
                           "--repeats", "2", "--warmup", "1", "--threads", "1", "--tag", "t",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (path,) = tmp_path.glob("*-t.json")
    report = json.loads(path.read_text())
    assert report["settings"]["optimizer"] == "sgd-momentum"
    (cell,) = report["results"]
    assert (cell["model"], cell["batch_size"], cell["params"]) == ("seed000-final", 1, 5_539_850)
    assert len(cell["xpnet"]["times_s"]) == len(cell["torch"]["times_s"]) == 2
    assert cell["optimizer"] == {"xpnet": "SGD", "torch": "SGD", "momentum": 0.8}


def test_the_optimizer_option_builds_the_same_optimizer_in_both():
    assert run.OPTIMIZERS["sgd-momentum"] == ("SGD", {"lr": 1e-3, "momentum": 0.8})
    for kind, hyper in run.OPTIMIZERS.values():
        ours = getattr(xpnet.optim, kind)(**hyper)
        theirs = getattr(torch.optim, kind)([torch.zeros(1, requires_grad=True)], **hyper)
        assert ours.lr == theirs.defaults["lr"]
        assert getattr(ours, "momentum", 0.0) == theirs.defaults.get("momentum", 0.0)


@pytest.mark.parametrize("argv", [["--batch-size", "16,x"], ["--batch-size", "0"], ["--warmup", "-1"],
                                  ["--models", "huge"], ["--rounds", "0"], ["--optimizer", "lbfgs"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        run.parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_the_layer_profile_counts_the_gemms_each_layer_executes():
    """benchmarks/profile_layers.py on LeNet-5 at batch 16: GEMM FLOPs traced on the strict
    backend equal the direct count for the columns convolution (which runs with its pooling on the
    NumPy backend) and the Dense layers, the spectral
    layer executes fewer, and fit's overhead table has its rows."""
    import argparse
    import profile_layers as prof
    args = argparse.Namespace(batch_size=16, repeats=1, warmup=1, overhead_batch=4,
                              overhead_models=["seed001-m8"], overhead_steps=5,
                              overhead_samples=64)
    text, rows = prof.layer_table("lenet5", args, np, xpnet, run, peak=50.0)
    by_label = {r[0].split(" ")[0]: r for r in rows}
    conv1, conv2 = by_label["conv2d"], by_label["conv2d_1"]
    # the route that ran: the columns route with the pooling after it in one pass (ops/conv_pool.py)
    assert conv1[1] == "columns+pool" and conv1[2] == conv1[3] == 2 * 2 * 16 * 28 * 28 * 6 * 25
    assert conv2[1] == "spectral" and 0 < conv2[3] < conv2[2]
    for name, (fan_in, fan_out) in {"dense": (400, 120), "dense_1": (120, 84), "dense_2": (84, 10)}.items():
        assert by_label[name][1] == "gemm" and by_label[name][3] == by_label[name][2] == 3 * 2 * 16 * fan_in * fan_out
    assert "fit's own loop" in text and "| **sum** |" in text
    table, results = prof.overhead_table(args, xpnet)
    assert results[0]["model"] == "seed001-m8" and results[0]["augment_ms"] > 0
    assert 0 < results[0]["train_step_ms"] < results[0]["step_ms"]
    assert results[0]["steps"] == 5 and results[0]["samples"] == 64 and 0 < results[0]["overhead_percent_of_total"] < 100
    assert prof.gemm_flops((3, 5), (5, 7)) == 2 * 3 * 5 * 7
    assert prof.gemm_flops((10, 3, 5), (10, 5, 2)) == 2 * 10 * 3 * 5 * 2


def test_the_layer_profile_traces_the_gemms_the_cpu_runs(monkeypatch):
    """From 96 images the CPU's spectral products are Gauss's three GEMMs a bin on (N, C) halves,
    run in pieces of a pass: the trace has those, not the strict backend's whole real-form Z
    (2N rows), and the shared strict backend keeps its own paths afterwards. The DFTs' wide
    products are cut into column pieces here too (gemm.MIN_MACS lowered, as at 128 images), so
    the trace's split takes what the backend's does (its ``shape``: without it this raised)."""
    import profile_layers as prof
    from xpnet.backends import get_backend
    from xpnet.ops import gemm
    monkeypatch.setattr(gemm, "MIN_MACS", 1)
    found = prof.trace_gemms(lambda device: run.build_xpnet(xpnet, "lenet5", device, "float32", 0), 96)
    spectral = found["conv2d_1"]   # 6 -> 16 channels, 5x5, spectral route
    assert any(piece and len(a) == 2 and b[1] < 14 * 96 * 6 for a, b, _, piece in spectral), "column pieces"
    products = {(a, b) for a, b, _, piece in spectral if piece and len(a) == 3}
    assert products and all(a[1] in (6, 96) and 2 * 96 not in a for a, _ in products), products
    assert any(a[1:] == (96, 6) for a, _ in products)   # Xr Kr: (bins, N, C) @ (bins, C, F)
    assert get_backend("strict").few_launches is True
    assert "few_launches" not in vars(get_backend("strict"))


def test_the_cpu_identity_names_family_model_and_vector_extensions(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
                    "model name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512bw ht\n\n"
                    "processor\t: 1\nvendor_id\t: GenuineIntel\nflags\t\t: avx\n")
    assert run.cpu_identity(str(info)) == {"cpu": "AMD EPYC", "vendor": "AuthenticAMD", "family": 26,
                                           "model": 2, "simd": ["avx", "avx2", "avx512bw", "avx512f",
                                                                "fma", "sse4_2"]}
    missing = run.cpu_identity(str(tmp_path / "none"))
    assert missing["family"] is None and missing["simd"] == [] and missing["cpu"]


def test_the_ab_setting_tool_alternates_a_constant_and_puts_it_back():
    """benchmarks/ab_setting.py: fit steps alternate between the two values (two each way), both
    are timed, and the constant has its own value again afterwards."""
    import ab_setting
    from xpnet.ops import conv_pool, pooling
    kept = pooling.CHUNK_BYTES
    seen = []
    original = conv_pool._band_blocks

    def spy(*args):   # the value each pass of LeNet-5's first convolution and pooling runs with
        seen.append(pooling.CHUNK_BYTES)
        return original(*args)
    conv_pool._band_blocks = spy
    try:
        out = ab_setting.main(["--model", "lenet5", "--batch-size", "4", "--setting", "xpnet.ops.pooling.CHUNK_BYTES",
                               "--values", "4096,8192", "--steps", "8", "--warmup", "2"])
    finally:
        conv_pool._band_blocks = original
    assert out["steps"] == (4, 4) and out["a_ms"] > 0 and out["b_ms"] > 0
    assert {4096, 8192} <= set(seen) and pooling.CHUNK_BYTES == kept
    with pytest.raises(SystemExit):
        ab_setting.parse_args(["--setting", "CHUNK_BYTES", "--values", "1,2"])


def test_the_pool_share_tool_times_the_sites_and_puts_the_pool_back(capsys):
    """benchmarks/pool_share.py: a step on two threads and on one, the split passes' sites in the
    table, and the pool's run, the kernels' _run and the thread count as they were afterwards."""
    import pool_share
    from xpnet.backends import get_backend, numpy_kernels
    backend = get_backend("numpy")
    kept = (numpy_kernels.DaemonPool.run, numpy_kernels.ElementwiseKernels._run, backend.threads)
    assert pool_share.main(["--model", "cnn3x3", "--batch-size", "32", "--steps", "2", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "one thread" in out and "two threads" in out and "| conv_pool.py:" in out, out
    assert (numpy_kernels.DaemonPool.run, numpy_kernels.ElementwiseKernels._run, backend.threads) == kept
    with pytest.raises(SystemExit):
        pool_share.parse_args(["--steps", "0"])


def test_the_split_sites_tool_lists_a_step_and_puts_the_pool_back():
    """benchmarks/split_sites.py: one 2-thread step's pool passes by site, the old power-of-2
    sites that held several sizes or shapes, and the kernels' _run and thread count as before."""
    import split_sites
    from xpnet.backends import get_backend, numpy_kernels
    backend = get_backend("numpy")
    kept = (numpy_kernels.ElementwiseKernels._run, backend.threads)
    lines = split_sites.main(["--model", "medium", "--batch-size", "16"])
    assert lines[0].split()[0].isdigit() and int(lines[0].split()[0]) > 10, lines
    assert any("shapes ((" in line for line in lines), "the GEMMs give their shapes"
    assert lines[-1].endswith("held passes of more than one (size, shape)")
    assert (numpy_kernels.ElementwiseKernels._run, backend.threads) == kept
    with pytest.raises(SystemExit):
        split_sites.parse_args(["--batch-size", "0"])
