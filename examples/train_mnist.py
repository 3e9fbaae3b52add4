"""Train a model from the xpnet zoo on MNIST and write a run folder (the project's main job).

    python examples/train_mnist.py [--device cpu|gpu|auto] [--model NAME] [--epochs N]
        [--batch-size B] [--data-dir DIR] [--out DIR] [--quick] [--seed S] [--plot]
        [--time-limit MINUTES] [--tensorboard DIR] [--mixed-precision float16|bfloat16]
    python examples/train_mnist.py --resume RUN_DIR      (continue an interrupted run)
    mpirun -n 2 python examples/train_mnist.py --distributed --device cpu|gpu ...
                                                         (data-parallel, docs/scaling.md)

The default model is seed 001's 32-64-96-128 convolutional network with its training recipe;
``--quick`` trains a small MLP on 20,000 images for 3 epochs, under a minute on a CPU. Each run writes
``<out>/<timestamp>-<model>-mnist/`` with config.json, log.csv, log.json, curves.png,
result.json, model.npz and last.npz (the checkpoint that --resume continues from).
``--time-limit MINUTES`` ends training after the last epoch that fits in that wall-clock budget,
then restores the best weights (when the recipe's early stopping keeps them), evaluates and
writes the run folder as usual.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # from a checkout


def threads_per_rank(argv, environ=os.environ):
    """With --distributed, share this machine's cores among its ranks: xpnet's thread pool reads
    OMP_NUM_THREADS (when XPNET_NUM_THREADS is not set) when it starts, so it is set here, before
    (unless given); NumPy's BLAS stays on one thread (backends/cpu_threads.py).
    The launcher tells how many ranks share the machine (MPICH: MPI_LOCALNRANKS, Open MPI:
    OMPI_COMM_WORLD_LOCAL_SIZE)."""
    local = environ.get("MPI_LOCALNRANKS") or environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or ""
    if "--distributed" in argv and local.isdigit() and int(local) > 0 and "OMP_NUM_THREADS" not in environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        environ["OMP_NUM_THREADS"] = str(max(1, (cores or 1) // int(local)))


threads_per_rank(sys.argv[1:])

from xpnet.cli import add_train_arguments, guarded, train_from_args  # noqa: E402


def check_mnist_model(name):
    """Refuse a zoo model whose recipe trains on another dataset (another input shape)."""
    from xpnet import models
    from xpnet.errors import ConfigError
    if name is None:
        return
    entry = models.get(name)
    dataset = entry.recipe.get("dataset") or "mnist"
    if dataset != "mnist":
        shape = "x".join(str(d) for d in entry.input_shape)
        raise ConfigError(f"{entry.name} is a {dataset} model (its recipe trains on {shape} {dataset} "
                          f"images); this script trains on MNIST only: run `xpnet train --model "
                          f"{entry.name}`, which uses the model's own dataset")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="train_mnist.py", description=__doc__.split("\n\n")[0])
    add_train_arguments(parser, dataset=False)
    args = parser.parse_args(argv)

    def run():
        check_mnist_model(args.model)
        train_from_args(args, ["python", "examples/train_mnist.py"] + argv)
        return 0

    return guarded("train_mnist.py", run)


if __name__ == "__main__":
    sys.exit(main())
