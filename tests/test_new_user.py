"""What a new user hit (issue 13): options that quietly did something else now refuse clearly."""
import importlib.util
import os

import pytest

from xpnet import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_mnist_script():
    spec = importlib.util.spec_from_file_location("train_mnist", os.path.join(ROOT, "examples",
                                                                              "train_mnist.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model, dataset, shape", [("seed003-lenet5-bn-cifar10", "cifar10", "3x32x32"),
                                                   ("seed004-cnn-fashion", "fashion-mnist", "1x28x28")])
def test_train_mnist_refuses_a_model_of_another_dataset(tmp_path, capsys, model, dataset, shape):
    script = train_mnist_script()
    assert script.main(["--model", model, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"train_mnist.py: error: {model} is a {dataset} model (its recipe trains on "
                           f"{shape} {dataset} images); this script trains on MNIST only: run "
                           f"`xpnet train --model {model}`, which uses the model's own dataset")
    assert os.listdir(tmp_path) == []  # no run folder


def test_train_mnist_accepts_the_mnist_models():
    script = train_mnist_script()
    for name in (None, "seed001-tf", "seed003-lenet5", "quick-mlp"):
        script.check_mnist_model(name)


@pytest.mark.parametrize("command", [["train"], ["train", "--quick"]])
def test_a_data_dir_that_does_not_exist_is_refused(tmp_path, capsys, command):
    missing = tmp_path / "nonexistent"
    out = tmp_path / "runs"
    assert cli.main(command + ["--data-dir", str(missing), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"xpnet train: error: mnist: the data directory {missing} holds no mnist dataset")
    assert "train-images-idx3-ubyte.gz" in err and "(no such folder)" in err
    assert not out.exists()  # nothing trained, no run folder recording the bad path
