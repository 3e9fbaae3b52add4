"""The main job: examples/train_mnist.py --quick end to end, and the runner behind it."""
import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import xpnet
from xpnet import cli, runner
from xpnet.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_FILES = {"config.json", "log.csv", "log.json", "curves.png", "result.json", "model.npz", "last.npz"}


def only_run_folder(out):
    folders = [os.path.join(out, d) for d in os.listdir(out)]
    assert len(folders) == 1, folders
    return folders[0]


def read_json(folder, name):
    with open(os.path.join(folder, name)) as f:
        return json.load(f)


def test_train_mnist_quick_writes_a_complete_run_folder(tmp_path):
    argv = ["--quick", "--device", "cpu", "--out", str(tmp_path), "--seed", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "examples/train_mnist.py"] + argv, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = only_run_folder(tmp_path)
    assert os.path.basename(folder).endswith("-quick-mlp-mnist")
    assert RUN_FILES <= set(os.listdir(folder))

    config = read_json(folder, "config.json")
    assert config["command"] == ["python", "examples/train_mnist.py"] + argv
    assert config["model"] == "quick-mlp" and config["dataset"] == "mnist" and config["quick"]
    assert config["seed"] == 1 and config["device"] == "numpy"
    assert config["train_images"] == runner.QUICK_TRAIN_IMAGES and config["test_images"] == 10000
    assert config["recipe"]["epochs"] == 3

    result = read_json(folder, "result.json")
    assert result["test_error_percent"] < 10.0, result  # it learns
    assert result["mistakes"] == round(result["test_error_percent"] * 100)
    assert result["epochs_run"] == 3 and 1 <= result["best_epoch"] <= 3
    assert result["device"]["backend"] == "numpy" and result["versions"]["xpnet"] == xpnet.__version__
    assert 0 < result["seconds_fit"] <= result["seconds_total"] < seconds
    assert f"test error {result['test_error_percent']:.2f}%" in proc.stdout

    with open(os.path.join(folder, "log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    losses = [float(r["loss"]) for r in rows]
    assert losses[2] < losses[0]
    assert [e["epoch"] for e in read_json(folder, "log.json")["epochs"]] == [1, 2, 3]
    with open(os.path.join(folder, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # the saved model reproduces the reported mistakes exactly
    model = xpnet.load(os.path.join(folder, "model.npz"))
    (_, _), (x, y) = xpnet.datasets.load("mnist")
    assert int((cli.predict_probs(model, x).argmax(axis=1) != y).sum()) == result["mistakes"]
    assert seconds < 90, f"--quick took {seconds:.0f} s; it should take about a minute at most"


def test_runner_validation_comes_from_training_images(tmp_path):
    result = runner.run_training(None, quick=True, device="strict", out_dir=tmp_path, verbose=0,
                                 epochs=2, validation_split=0.1, train_images=4000,
                                 early_stopping={"monitor": "val_loss", "patience": 5,
                                                 "restore_best_weights": True})
    folder = result["run_dir"]
    config = read_json(folder, "config.json")
    assert (config["train_images"], config["validation_images"]) == (3600, 400)
    assert config["test_images"] == 10000 and config["device"] == "strict"
    epochs = read_json(folder, "log.json")["epochs"]
    assert len(epochs) == 2 and all("val_loss" in e and "val_accuracy" in e for e in epochs)
    best = min(range(2), key=lambda i: epochs[i]["val_loss"]) + 1
    assert result["best_epoch"] == best
    assert result["test_error_percent"] < 20.0


def test_cli_train_and_models_and_summary(tmp_path, capsys):
    assert cli.main(["train", "--quick", "--epochs", "1", "--quiet", "--out", str(tmp_path),
                     "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    folder = only_run_folder(tmp_path)
    assert f"run folder: {folder}" in out
    assert read_json(folder, "config.json")["command"][:2] == ["xpnet", "train"]
    assert cli.main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "seed001-tf (default):" in listing and "quick-mlp:" in listing
    assert cli.main(["summary", "seed001-tf"]) == 0
    summary = capsys.readouterr().out
    assert "Total params: 575,980" in summary and "recipe:" in summary
    assert cli.main(["summary", os.path.join(folder, "model.npz")]) == 0
    assert "Total params: 101,770" in capsys.readouterr().out


def test_unknown_model_is_a_clean_error(tmp_path, capsys):
    assert cli.main(["train", "--model", "resnet-9000", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'resnet-9000'" in err and "Traceback" not in err
    assert not os.listdir(tmp_path)


def test_recipe_overrides_are_checked():
    entry = xpnet.models.get("quick-mlp")
    assert runner.make_recipe(entry, quick=True)["epochs"] == 3
    recipe = runner.make_recipe(entry, epochs=7, batch_size=32, overrides={"lr": 0.5})
    assert (recipe["epochs"], recipe["batch_size"], recipe["lr"]) == (7, 32, 0.5)
    with pytest.raises(ConfigError, match="unknown recipe override 'lrate'"):
        runner.make_recipe(entry, overrides={"lrate": 0.1})
    with pytest.raises(ConfigError, match="epochs must be a positive integer"):
        runner.make_recipe(entry, epochs=0)
    with pytest.raises(ConfigError, match="validation_split"):
        runner.make_recipe(entry, overrides={"validation_split": 1.5})


def test_val_early_stopping_without_validation_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="test set is never used for early stopping"):
        runner.run_training("quick-mlp", quick=True, device="cpu", out_dir=tmp_path, verbose=0,
                            early_stopping={"monitor": "val_accuracy", "patience": 1})
    assert not os.listdir(tmp_path)  # refused before any run folder is made


def test_run_folders_do_not_collide(tmp_path):
    a = runner.run_folder(tmp_path, "m", "mnist")
    b = runner.run_folder(tmp_path, "m", "mnist")
    assert a != b and os.path.isdir(a) and os.path.isdir(b)


def test_summary_of_a_model_file_is_the_same_model(tmp_path):
    model = xpnet.models.get("quick-mlp").build((1, 28, 28), 10, "cpu", 0, "float32")
    for v in model.parameters.values():   # weights the seed cannot rebuild: load must read them
        v[...] = v * 1.5
    model.save(tmp_path / "q.npz")
    again = xpnet.load(tmp_path / "q.npz")
    x = np.random.default_rng(0).random((3, 1, 28, 28)).astype("float32")
    np.testing.assert_array_equal(again.predict(x), model.predict(x))


def test_image_limits_for_smoke_runs(tmp_path):
    result = runner.run_training("quick-mlp", device="cpu", out_dir=tmp_path, verbose=0, epochs=1,
                                 train_images=500, test_images=300, plot=True)
    config = read_json(result["run_dir"], "config.json")
    assert (config["train_images"], config["test_images"], result["test_samples"]) == (500, 300, 300)
    assert {"curves.png", "confusion.png"} <= set(result["plots"])
    assert set(result["plots"]) <= set(os.listdir(result["run_dir"]))
    with pytest.raises(ConfigError, match="train_images must be a positive integer"):
        runner.run_training("quick-mlp", out_dir=tmp_path, verbose=0, train_images=0)


FAMILIES = {"seed000_one_conv.py": ("seed000-", "seed000-final"),
            "seed001_step_by_step.py": ("seed001-", "seed001-m12"),
            "seed002_regularization.py": ("seed002-", "seed002-cnn"),
            "seed003_lenet5.py": ("seed003-", "seed003-lenet5"),
            "seed004_keras_models.py": ("seed004-", "seed004-cnn")}


@pytest.mark.parametrize("script", sorted(FAMILIES))
def test_family_scripts_list_their_models(script):
    prefix, default = FAMILIES[script]
    proc = subprocess.run([sys.executable, os.path.join("examples", script), "--list"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    names = [line.split(":")[0].replace(" (default)", "") for line in proc.stdout.splitlines()]
    assert names == [n for n in xpnet.models.names() if n.startswith(prefix)]
    assert f"{default} (default):" in proc.stdout


def test_family_all_trains_each_model_and_refuses_others(tmp_path, capsys):
    argv = ["--all", "--train-images", "100", "--test-images", "50", "--epochs", "1", "--quiet",
            "--device", "cpu", "--out", str(tmp_path)]
    assert cli.family_main("seed002-logreg", "seed002-logreg-l2", "logistic regression", argv) == 0
    out = capsys.readouterr().out
    folders = os.listdir(tmp_path)
    for name in ("seed002-logreg-none", "seed002-logreg-l1", "seed002-logreg-l2"):
        assert sum(f"-{name}-mnist" in f for f in folders) == 1, folders
    assert len(folders) == 3
    assert "seed002-logreg-l2" in out and "9.13%" in out  # the report's figure beside ours
    with pytest.raises(SystemExit) as exc:
        cli.family_main("seed002-", "seed002-cnn", "x", ["--model", "seed001-tf"])
    assert exc.value.code == 2
    assert "--model must be one of this report's models" in capsys.readouterr().err


def test_custom_model_example(tmp_path):
    proc = subprocess.run([sys.executable, "examples/custom_model.py", "--device", "strict",
                           "--epochs", "1", "--out", str(tmp_path)], cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    error = float(proc.stdout.split("test error ")[1].split("%")[0])
    assert error < 30.0
    assert (tmp_path / "custom_cnn.npz").is_file()
    assert "reloaded copy predicts" in proc.stdout


def test_resume_continues_an_interrupted_run_exactly(tmp_path, capsys):
    common = dict(device="cpu", verbose=0, train_images=2000, test_images=500, seed=3,
                  validation_split=0.1,
                  early_stopping={"monitor": "val_loss", "patience": 9, "restore_best_weights": True})
    whole = runner.run_training("quick-mlp", out_dir=tmp_path / "a", epochs=3, **common)
    # an interrupted run: one epoch done (with its checkpoint), no result yet
    cut = runner.run_training("quick-mlp", out_dir=tmp_path / "b", epochs=1, **common)
    folder = cut["run_dir"]
    os.remove(os.path.join(folder, "result.json"))
    config = read_json(folder, "config.json")
    config["recipe"]["epochs"] = 3
    runner.write_json(os.path.join(folder, "config.json"), config)

    first = read_json(folder, "log.json")["epochs"][0]
    assert cli.main(["train", "--resume", folder, "--quiet"]) == 0
    assert f"run folder: {folder}" in capsys.readouterr().out
    # resumed, not retrained from the start (which would end with the same weights): the first
    # sitting's epoch, its time included, is still the log's first
    assert read_json(folder, "log.json")["epochs"][0] == first
    resumed = read_json(folder, "result.json")
    assert resumed["resumed"] and resumed["epochs_run"] == 3
    assert resumed["mistakes"] == whole["mistakes"] and resumed["best_epoch"] == whole["best_epoch"]
    assert [e["epoch"] for e in read_json(folder, "log.json")["epochs"]] == [1, 2, 3]
    a = xpnet.load(os.path.join(whole["run_dir"], "model.npz"))
    b = xpnet.load(os.path.join(folder, "model.npz"))
    for k, v in a.parameters.items():
        np.testing.assert_array_equal(b.parameters[k], v)
    assert read_json(folder, "config.json")["resumed"][0]["command"][:3] == ["xpnet", "train", "--resume"]


def test_resume_refusals(tmp_path, capsys):
    done = runner.run_training("quick-mlp", device="cpu", out_dir=tmp_path, verbose=0, epochs=1,
                               train_images=200, test_images=100)
    assert cli.main(["train", "--resume", done["run_dir"]]) == 2
    assert "has finished" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert cli.main(["train", "--resume", done["run_dir"], "--epochs", "5", "--seed", "2"]) == 2
    assert "drop --epochs, --seed" in capsys.readouterr().err
    os.remove(os.path.join(done["run_dir"], "result.json"))
    os.remove(os.path.join(done["run_dir"], "last.npz"))
    assert cli.main(["train", "--resume", done["run_dir"]]) == 2
    assert "has no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["custom_layer.py", "custom_model.py"])
def test_custom_examples_refuse_an_unusable_out_before_training(script, tmp_path, capsys, monkeypatch):
    """--out with a file in the way used to fail at the final save, after all the training."""
    import importlib.util
    import xpnet.layers as xlayers
    monkeypatch.setattr(xlayers, "LAYERS", dict(xlayers.LAYERS))  # custom_layer.py registers Swish
    spec = importlib.util.spec_from_file_location(script[:-3], os.path.join(ROOT, "examples", script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for out in (blocker, blocker / "sub"):
        assert module.main(["--out", str(out), "--epochs", "1"]) == 2
        captured = capsys.readouterr()
        assert captured.err == (f"{script}: error: --out {out} cannot be used as a folder: {blocker} "
                                f"is a file, where a folder is needed\n")
        assert "epoch" not in captured.out and "check_layer" not in captured.out  # nothing ran
