"""The README's numbers come from the committed measurement files and cannot drift from them."""
import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool():
    spec = importlib.util.spec_from_file_location("readme_numbers",
                                                  os.path.join(ROOT, "tools", "readme_numbers.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def measurements():
    with open(os.path.join(ROOT, "docs", "runs", "measurements.json")) as f:
        return json.load(f)


def test_readme_blocks_equal_what_the_measurement_files_say():
    t = tool()
    text = readme()
    assert t.apply(text, t.render()) == text, (
        "README.md's generated numbers differ from the files they come from; run "
        "`python tools/readme_numbers.py` (and commit), or re-measure")
    # and a changed number is noticed (the comparison is not vacuous)
    result = json.load(open(os.path.join(ROOT, measurements()["quick"]["run"], "result.json")))
    quoted = f"{result['test_error_percent']:.2f} % test error ({result['mistakes']} mistakes)"
    assert quoted in text
    assert t.apply(text.replace(quoted, "6.10 % test error (606 mistakes)"), t.render()) == text


def test_the_speed_run_used_the_default_models_current_recipe():
    from xpnet import models
    spec = measurements()["default_speed"]
    config = json.load(open(os.path.join(ROOT, spec["run"], "config.json")))
    recipe = models.get(models.DEFAULT).recipe
    assert config["model"] == models.DEFAULT
    for key in ("batch_size", "augment", "optimizer", "lr", "schedule"):
        assert config["recipe"][key] == recipe[key], f"recipe {key} changed since the speed run: re-measure"


def test_quick_help_matches_the_measured_quick_run():
    from xpnet import cli
    result = json.load(open(os.path.join(ROOT, measurements()["quick"]["run"], "result.json")))
    assert result["seconds_total"] < 60 and result["epochs_run"] == 3
    help_text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["train"]
                         .format_help().split())
    assert "under a minute on a CPU" in help_text and "about a minute" not in help_text
    assert 5.0 <= result["test_error_percent"] < 7.0  # "about 6 % test error"


def test_the_install_hint_is_the_readmes():
    from xpnet.backends.cupy_backend import INSTALL_HINT
    hint = "pip install -e '.[cuda12]'"
    assert hint in INSTALL_HINT and "'.[cuda13]'" in INSTALL_HINT
    assert hint in readme()
    assert "pip install 'xpnet[" not in INSTALL_HINT  # not on PyPI


def test_benchmark_cells_are_picked_by_model_and_batch():
    """benchmarks/run.py now writes every model at several batch sizes (settings.batch_size a
    list); older files hold one batch size. The README's rows take batch 128 unless a row says."""
    import copy
    rn = tool()
    with open(os.path.join(ROOT, "benchmarks", "results", "2026-11-30-cpu-vm-final.json")) as fh:
        measured = json.load(fh)
    # the older one-batch-size layout: one row per model, settings.batch_size a number
    old = dict(measured, settings=dict(measured["settings"], batch_size=128),
               results=[r for r in measured["results"] if r["batch_size"] == 128])
    new = copy.deepcopy(old)
    new["settings"]["batch_size"] = [16, 64, 128]
    new["results"] = [dict(r, batch_size=b, tag=b) for r in old["results"] for b in (16, 64, 128)]
    assert rn._cell(new, "big")["tag"] == 128 and rn._cell(new, "medium", 64)["tag"] == 64
    assert rn._cell(old, "big") is next(r for r in old["results"] if r["model"] == "big")


def test_a_cell_of_several_rounds_is_quoted_by_its_medians():
    """A sweep of three rounds (--rounds 3): the README quotes the median xpnet and PyTorch times
    and the median ratio over the rounds, not the first round's (one slow round moves nothing)."""
    rn = tool()
    one = {"xpnet": {"median_s": 0.2}, "torch": {"median_s": 0.3}, "ratio": 0.67}
    assert rn._medians(one) == (0.2, 0.3, 0.67)
    # each median is neither the first round's nor the middle round's (the middle xpnet time was
    # the median, so a median without sorting passed)
    cell = dict(one, rounds=[{"xpnet_s": 0.19, "torch_s": 0.37}, {"xpnet_s": 0.14, "torch_s": 0.29},
                             {"xpnet_s": 0.15, "torch_s": 0.30}], ratio_median=0.51)
    assert rn._medians(cell) == (0.15, 0.30, 0.51)
