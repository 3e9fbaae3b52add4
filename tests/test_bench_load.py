"""benchmarks/load.py: the busy processes of `benchmarks/run.py --load N` run while the block
runs, get CPU time, and are gone when it ends, also after an exception."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from load import BusyLoad  # noqa: E402


def run_benchmark(script, *args):
    """benchmarks/<script> with ``args`` in a fresh interpreter; the finished process (it must have
    exited 0)."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def busy_for(seconds):
    import time
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        pass


def test_load_runs_and_stops():
    with BusyLoad(2) as load:
        procs = list(load.procs)
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
        busy_for(0.5)
    assert all(p.poll() is not None for p in procs)     # stopped, and reaped
    report = load.report()
    assert report["processes"] == 2 and report["wall_s"] >= 0.5
    assert len(report["cpu_s"]) == 2, report   # one CPU time for each process: all([]) proves nothing
    assert all(c is not None and c > 0.05 for c in report["cpu_s"]), report   # they really ran


def test_load_stops_after_an_exception():
    with pytest.raises(KeyError):
        with BusyLoad(1) as load:
            procs = list(load.procs)
            raise KeyError("boom")
    assert len(procs) == 1 and all(p.poll() is not None for p in procs)   # all([]) would prove nothing


def test_no_load_and_bad_values():
    with BusyLoad(0) as load:
        assert load.procs == []
    assert load.report()["processes"] == 0 and load.report()["cpu_s"] == []
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="whole number of processes"):
            BusyLoad(bad)


def test_run_py_records_the_load(tmp_path):
    """`benchmarks/run.py --load 1` runs one cell beside a busy process and records it."""
    pytest.importorskip("torch")
    import json
    run_benchmark("run.py", "--models", "lenet5", "--batch-size", "2", "--repeats", "2", "--warmup", "1",
                  "--threads", "2", "--load", "1", "--out", str(tmp_path))
    (path,) = tmp_path.glob("*-load1.json")
    report = json.loads(path.read_text())
    assert report["load"]["processes"] == 1 and report["load"]["cpu_s"][0] > 0
    assert report["settings"]["load"] == 1 and report["xpnet_cpu"]["threads"] == 2
    if report["xpnet_cpu"]["blas"]["controlled"]:
        assert report["xpnet_cpu"]["blas"]["wanted"] == 1


def test_threads_py_alternates_thread_counts(tmp_path):
    """benchmarks/threads.py times 1 and 2 pool threads in one process, beside a busy process."""
    import json
    run_benchmark("threads.py", "--models", "lenet5", "--batch-size", "2", "--repeats", "2", "--warmup", "0",
                  "--load", "1", "--out", str(tmp_path), "--tag", "r2")
    (path,) = tmp_path.glob("*-load1-blas-one-r2.json")
    report = json.loads(path.read_text())
    (r,) = report["results"]
    assert set(r["threads"]) == {"1", "2"} and r["threads"]["1"]["ratio_to_first"] == 1.0
    assert all(len(v["times_s"]) == 2 for v in r["threads"].values())
    assert report["load"]["processes"] == 1 and report["load"]["cpu_s"][0] > 0
    assert report["settings"]["split"] == "auto"
    from xpnet.backends import compiled
    assert report["compiled_kernels"] == compiled.describe()
    assert r["input_gradient"] is False   # the step is fit()'s: no gradient for the input images
    assert {"split_passes", "alone_passes", "holds", "alarms", "loads", "load_probes", "load_rests", "loaded",
            "sites_alone_now", "last_gains"} == set(r["split_check"])


def test_threads_py_takes_a_count_twice_as_its_own_noise(tmp_path):
    """--threads 1,1,2: the second 1 is labelled 1#2 (an A/A comparison in the same run); every
    count but the first gets a 90 % interval for its ratio."""
    import json
    run_benchmark("threads.py", "--models", "lenet5", "--batch-size", "2", "--repeats", "3", "--warmup", "0",
                  "--threads", "1,1,2", "--out", str(tmp_path))
    (path,) = tmp_path.glob("*-load0-blas-one.json")
    (r,) = json.loads(path.read_text())["results"]
    assert list(r["threads"]) == ["1", "1#2", "2"]
    assert all(len(v["times_s"]) == 3 for v in r["threads"].values())
    for v in r["threads"].values():
        lo, hi = v["ratio_interval_90"]
        assert lo <= hi


def test_the_ratio_interval_pairs_the_rounds():
    import threads
    assert threads.count_labels([1, 2, 1, 1]) == ["1", "2", "1#2", "1#3"]
    assert [threads.round_order([1, 2, 3], i) for i in range(4)] == [[1, 2, 3], [2, 3, 1], [3, 1, 2], [1, 2, 3]]
    first = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert threads.ratio_interval(first, [1.1 * t for t in first]) == pytest.approx([1.1, 1.1])
    lo, hi = threads.ratio_interval(first, [1.0, 2.2, 2.7, 4.4, 5.0])
    assert lo < 1.0 < hi


def test_load_state_py_times_the_check_on_and_off_in_one_process():
    """benchmarks/load_state.py: one thread, two with the load state, two with a check that never
    turns loaded, in turn; the backend's own check is back at the end."""
    proc = run_benchmark("load_state.py", "--model", "lenet5", "--batch-size", "2", "--repeats", "3",
                         "--warmup", "0", "--load", "1")
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("lenet5 b2 load 1") and " 2on: " in line and " 2off: " in line
    assert "loaded on/off: " in line and "/False;" in line   # the off check never turns loaded


def test_set_threads_is_checked():
    from xpnet.backends import get_backend
    backend = get_backend("cpu")
    kept = backend.threads
    try:
        backend.set_threads(3)
        assert backend.threads == 3
        for bad in (0, 1.5, True):
            with pytest.raises(ValueError, match="threads must be a whole number >= 1"):
                backend.set_threads(bad)
    finally:
        backend.set_threads(kept)


def test_handoff_py_measures_every_size(tmp_path):
    """benchmarks/handoff.py: the wake rows, and per size the split and the two-thread throughput."""
    import importlib.util
    import json
    with_torch = importlib.util.find_spec("torch") is not None
    proc = run_benchmark("handoff.py", "--sizes", "10,12", "--repeats", "3", "--out", str(tmp_path),
                         *([] if with_torch else ["--no-torch"]))
    (path,) = tmp_path.glob("*-handoff.json")
    report = json.loads(path.read_text())
    assert [r["idle_gap_ms"] for r in report["wake"]] == [0.0, 0.5, 2.0]
    assert all(r["worker_pieces"] + r["caller_pieces"] == 6 for r in report["wake"])
    assert [r["elements"] for r in report["split"]] == [1024, 4096] == [r["elements"] for r in report["together"]]
    assert all(r["one_us"] > 0 and r["pool_8_pieces_us"] > 0 and (r.get("torch_2_us", 1) > 0) for r in report["split"])
    assert all(r["throughput_gain"] > 0 for r in report["together"])
    assert "| 2^12 |" in proc.stdout


def test_links_py_times_a_model_with_and_without_its_link(tmp_path):
    """benchmarks/links.py: both copies step in turn, per thread count; the linked copy has its
    convolutions that precede a pooling linked, the other none (a wrong switch shows here)."""
    import json
    proc = run_benchmark("links.py", "--models", "lenet5", "--batch-sizes", "2", "--threads", "1,2", "--repeats",
                         "2", "--warmup", "0", "--out", str(tmp_path))
    (path,) = tmp_path.glob("*-links-conv_pool-*.json")
    report = json.loads(path.read_text())
    assert [(r["model"], r["batch_size"], r["threads"]) for r in report["results"]] == [("lenet5", 2, 1), ("lenet5", 2, 2)]
    for r in report["results"]:
        assert (r["linked_layers"], r["unlinked_layers"]) == (2, 0) and r["input_gradient"] is False
        assert len(r["linked_times_s"]) == len(r["unlinked_times_s"]) == 2
        assert r["ratio"] == r["linked_median_s"] / r["unlinked_median_s"]
    assert "lenet5 b2 2 thr (2 linked)" in proc.stdout


def test_links_py_times_the_planes_link(tmp_path):
    """--link planes: the second copy is built without model._link_planes; the big model's
    convolutions before a convolution and its pooling before one are linked in the first copy only
    (a wrong switch shows here)."""
    import json
    run_benchmark("links.py", "--models", "medium", "--batch-sizes", "2", "--threads", "2", "--repeats",
                  "1", "--warmup", "0", "--link", "planes", "--out", str(tmp_path))
    (path,) = tmp_path.glob("*-links-planes-*.json")
    (r,) = json.loads(path.read_text())["results"]
    # medium: conv-conv (the first, on the columns route, is flagged too), conv-pool, pool-conv,
    # conv-conv, conv-pool: five flags linked, the two conv-pool ones unlinked
    assert (r["linked_layers"], r["unlinked_layers"]) == (5, 2), r


def test_links_py_times_the_relu_dropout_link(tmp_path):
    """--link relu_dropout: the medium model's ReLUs before a Dropout (blocks 1 and 3) and its
    poolings that apply a ReLU before one (blocks 2 and 4) are linked in the first copy only."""
    import json
    run_benchmark("links.py", "--models", "medium", "--batch-sizes", "2", "--threads", "1", "--repeats",
                  "1", "--warmup", "0", "--link", "relu_dropout", "--out", str(tmp_path))
    (path,) = tmp_path.glob("*-links-relu_dropout-*.json")
    (r,) = json.loads(path.read_text())["results"]
    assert (r["linked_layers"], r["unlinked_layers"]) == (4, 0), r


def test_load_state_py_takes_its_other_modes():
    """--modes: one thread twice (A/A), every pass alone, a check of its own with another probe
    rate; a list without one thread, an unknown mode or a repeated one is refused."""
    proc = run_benchmark("load_state.py", "--model", "lenet5", "--batch-size", "2", "--repeats", "3",
                         "--warmup", "0", "--load", "0", "--modes", "1,1#2,2alone,2probe64")
    line = proc.stdout.strip().splitlines()[-1]
    assert all(f" {m}: " in line for m in ("1#2", "2alone", "2probe64"))
    assert " 2on: " not in line and "2probe64: loaded False" in line
    for bad in ("2on,2off", "1,2probe0", "1,3", "1,1"):
        done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "load_state.py"), "--modes", bad],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "--modes" in done.stderr, bad
    from load_state import alone_check
    check = alone_check()
    assert check.loaded and check.next_pass(("k", 1, None)) == "untimed" and check.alone_passes == 1


def test_threads_py_times_pytorch_in_the_same_rounds(tmp_path):
    """--torch: PyTorch's step of the same network at each thread count, in the same rounds as
    xpnet's, with its own ratios (what a second core gives PyTorch beside what it gives xpnet)."""
    torch = pytest.importorskip("torch")
    import json
    run_benchmark("threads.py", "--models", "lenet5", "--batch-size", "2", "--repeats", "3", "--warmup", "1",
                  "--torch", "--out", str(tmp_path))
    (path,) = tmp_path.glob("*-load0-blas-one.json")
    report = json.loads(path.read_text())
    (r,) = report["results"]
    assert report["settings"]["torch"] is True and r["torch"]["version"] == torch.__version__
    assert "omp_wait_policy" in report
    for side in (r["threads"], r["torch"]["threads"]):
        assert list(side) == ["1", "2"] and side["1"]["ratio_to_first"] == 1.0
        assert all(len(v["times_s"]) == 3 for v in side.values())


def test_layer_scaling_times_each_layer_at_each_thread_count(tmp_path):
    """benchmarks/layer_scaling.py: every layer's forward and backward, the rest and the whole
    step at 1 and 2 threads in one process; the layers and the rest add up to the step."""
    import json
    proc = run_benchmark("layer_scaling.py", "--models", "lenet5", "--batch-size", "2", "--rounds", "3",
                         "--warmup", "1", "--out", str(tmp_path), "--tag", "t")
    (path,) = tmp_path.glob("*-layer-scaling-*-t.json")
    (r,) = json.loads(path.read_text())["results"]
    rows = {(row["layer"], row["pass"]): row for row in r["rows"]}
    names = ["conv2d", "relu", "max_pool2d", "dense"]
    assert {(n, k) for n in names for k in ("forward", "backward")} <= set(rows)
    assert ("rest", "") in rows and ("step", "") in rows
    step = rows[("step", "")]
    assert set(step["median_s"]) == {"1", "2"} and step["ratio_to_first"]["1"] == 1.0
    assert all(v > 0 for v in step["median_s"].values())
    assert "| **step** |" in proc.stdout and "2 / 1" in proc.stdout
