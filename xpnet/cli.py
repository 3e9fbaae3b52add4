"""The ``xpnet`` command: train, evaluate, predict, export, summary, info, models, serve.

User errors (bad arguments, missing or corrupt files, unknown names) print one line and exit
with status 2; they never show a traceback.
"""
import argparse
import os
import platform
import sys

import numpy as np

from .backends import is_out_of_memory
from .errors import BatchSizeError, ConfigError, NoGPUError, XpnetError

DATASET_CHOICES = ("mnist", "fashion-mnist", "cifar10")
DEVICE_CHOICES = ("cpu", "gpu", "auto", "strict")


def _number(text, convert, ok, expected, bad):
    """argparse type check: ``convert(text)`` that satisfies ``ok``, else an error naming ``expected``."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {bad}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text if convert is float else value}")
    return value


def positive_int(text):
    return _number(text, int, lambda v: v > 0, "a positive integer", "a positive integer")


def port_int(text):
    return _number(text, int, lambda v: 0 <= v <= 65535, "a port from 0 to 65535", "a port number")


def positive_minutes(text):
    return _number(text, float, lambda v: 0 < v < float("inf"), "a positive number of minutes",
                   "a number of minutes")


def seed_int(text):
    return _number(text, int, lambda v: v >= 0, "a seed >= 0", "an integer seed")


def add_train_arguments(parser, dataset=True):
    """The options shared by ``xpnet train`` and examples/train_mnist.py."""
    parser.add_argument("--model", default=None,
                        help="model name from the zoo (see `xpnet models`); default: the "
                             "seed-001 32-64-96-128 TensorFlow model, or a small one with --quick")
    if dataset:
        parser.add_argument("--dataset", default=None, choices=DATASET_CHOICES,
                            help="default: the dataset of the model's recipe (mostly mnist)")
    parser.add_argument("--device", default=None, choices=DEVICE_CHOICES,
                        help="cpu (NumPy), gpu (CuPy), auto (gpu when usable; the default), strict "
                             "(CPU, CuPy-like checks)")
    parser.add_argument("--epochs", type=positive_int, default=None, help="override the recipe's epochs")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="override the recipe's batch size")
    parser.add_argument("--data-dir", default=None, help="folder holding the dataset files")
    parser.add_argument("--out", default=None, help="parent folder of the run folder (default: runs)")
    parser.add_argument("--quick", action="store_true",
                        help="a 784-128-10 MLP on the first 20,000 images for 3 epochs: under a minute "
                             "on a CPU (about 6 %% test error; used by CI)")
    parser.add_argument("--train-images", type=positive_int, default=None, metavar="N",
                        help="train on the first N training images only (smoke tests)")
    parser.add_argument("--test-images", type=positive_int, default=None, metavar="N",
                        help="evaluate on the first N test images only (smoke tests)")
    parser.add_argument("--seed", type=seed_int, default=None, help="default 0")
    parser.add_argument("--plot", action="store_true",
                        help="also draw the confusion matrix and the misclassified test images")
    parser.add_argument("--dtype", default=None, choices=("float32", "float64"),
                        help="default float32")
    parser.add_argument("--mixed-precision", default=None, choices=("float16", "bfloat16"),
                        help="train in float16 (or bfloat16 where the GPU's CuPy has it) with float32 "
                             "master weights and dynamic loss scaling; for GPUs (on a CPU float16 "
                             "is much slower than float32); recorded in config.json")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch output")
    parser.add_argument("--time-limit", type=positive_minutes, default=None, metavar="MINUTES",
                        help="wall-clock budget: stop after the last epoch that fits, restore the "
                             "best weights when early stopping says so, evaluate and write the run "
                             "folder as usual")
    parser.add_argument("--tensorboard", metavar="DIR", default=None,
                        help="also write TensorBoard logs to DIR/<run folder name> (needs "
                             "xpnet[tensorboard]; view with `tensorboard --logdir DIR`)")
    parser.add_argument("--resume", metavar="RUN_DIR", default=None,
                        help="continue an interrupted or time-limited run from its folder (its config.json sets "
                             "everything but --device, --plot, --quiet, --time-limit and "
                             "--tensorboard)")
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel over the ranks started by mpirun (MPI on CPUs, NCCL on "
                             "GPUs, one GPU per rank); --batch-size is the global batch "
                             "(docs/scaling.md)")


# the size and rank of the job a process was started in, as MPI launchers set them
LAUNCHER_VARIABLES = (("PMI_SIZE", "PMI_RANK"),                               # MPICH (hydra), Intel MPI
                      ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"))       # Open MPI


def launcher_ranks(environ=os.environ):
    """(ranks, this process's rank or None, the variable) when an MPI launcher started this process
    as one of several; None otherwise."""
    for size_name, rank_name in LAUNCHER_VARIABLES:
        size, rank = environ.get(size_name, ""), environ.get(rank_name, "")
        if size.strip().isdecimal() and int(size) > 1:   # isdecimal: what int() takes ("²" is a digit)
            return int(size), int(rank) if rank.strip().isdecimal() else None, size_name
    return None


def check_launch(args, environ=os.environ):
    """Started by mpirun as one of several processes without --distributed, each would train on
    its own (a --resume of one folder: all writing into it at once): refused. The first rank says
    why; the others end with the same status, quietly (one line for the job)."""
    launched = launcher_ranks(environ)
    if launched is None or getattr(args, "distributed", False):
        return
    size, rank, variable = launched
    if rank not in (None, 0):
        raise SystemExit(2)
    raise ConfigError(f"this process is one of {size} started by an MPI launcher ({variable}={size}) "
                      f"but --distributed was not given, so each would train on its own: add "
                      f"--distributed, or run one process")


def train_from_args(args, command):
    """Run (or with --resume continue) training from ``add_train_arguments`` options."""
    from .errors import ConfigError
    from .runner import resume_training, run_training
    check_launch(args)
    verbose = 0 if args.quiet else "auto"
    tensorboard = getattr(args, "tensorboard", None)
    if tensorboard:
        from .tensorboard_logs import summary_writer_class
        try:
            summary_writer_class()  # before any run folder is made
        except ImportError as exc:
            raise ConfigError(f"--tensorboard: {exc}") from None
    if args.resume is not None:
        given = [opt for opt, value in (
            ("--model", args.model), ("--dataset", getattr(args, "dataset", None)),
            ("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--data-dir", args.data_dir),
            ("--quick", args.quick), ("--train-images", args.train_images),
            ("--test-images", args.test_images), ("--seed", args.seed), ("--dtype", args.dtype),
            ("--mixed-precision", getattr(args, "mixed_precision", None)), ("--out", args.out))
            if value not in (None, False)]
        if given:
            raise ConfigError(f"--resume takes the run's settings from {args.resume}/config.json; "
                              f"drop {', '.join(given)}")
        result = resume_training(args.resume, device=args.device, verbose=verbose, plot=args.plot,
                                 command=command, time_limit_minutes=args.time_limit,
                                 distributed=getattr(args, "distributed", False),
                                 tensorboard=tensorboard)
    else:
        result = run_training(args.model, dataset=getattr(args, "dataset", "mnist"),
                              device=args.device or "auto", epochs=args.epochs,
                              batch_size=args.batch_size, data_dir=args.data_dir,
                              out_dir="runs" if args.out is None else args.out,
                              quick=args.quick, seed=args.seed or 0, verbose=verbose, plot=args.plot,
                              dtype=args.dtype or "float32", command=command,
                              train_images=args.train_images, test_images=args.test_images,
                              time_limit_minutes=args.time_limit,
                              distributed=getattr(args, "distributed", False), tensorboard=tensorboard,
                              mixed_precision=getattr(args, "mixed_precision", None))
    if result is None:  # a data-parallel rank other than 0: rank 0 reports
        return result
    if result.get("stopped_by_time_limit"):
        print(f"stopped by --time-limit {args.time_limit:g} after {result['epochs_run']} epochs")
    print(f"test error {result['test_error_percent']:.2f}% ({result['mistakes']} mistakes of "
          f"{result['test_samples']}), run folder: {result['run_dir']}")
    return result


def family_main(prefix, default, description, argv=None):
    """Entry point of the per-report example scripts: train one model of a zoo family (``--model``,
    default ``default``), every one in turn (``--all``), or list them (``--list``)."""
    from . import models
    argv = list(sys.argv[1:] if argv is None else argv)
    family = [n for n in models.names() if n.startswith(prefix)]
    parser = argparse.ArgumentParser(prog=os.path.basename(sys.argv[0]), description=description)
    add_train_arguments(parser)
    parser.set_defaults(model=default)
    parser.add_argument("--all", action="store_true", help="train every model of this report in turn")
    parser.add_argument("--list", action="store_true", help="list this report's models and exit")
    args = parser.parse_args(argv)
    if args.model not in family:
        parser.error(f"--model must be one of this report's models: {', '.join(family)}")
    if args.resume is not None and args.all:
        parser.error("--resume continues one run; it cannot be combined with --all")
    if args.resume is not None:
        if args.model != default:
            parser.error("--resume takes the model from the run's config.json; drop --model")
        args.model = None

    def run():
        if args.list:
            for name in family:
                print(f"{name}{' (default)' if name == default else ''}: {models.get(name).description}")
            return 0
        results = []
        for name in (family if args.all else [args.model]):
            args.model = name
            results.append(train_from_args(args, [parser.prog] + argv))
        if len(results) > 1:
            print(f"{'model':<28} {'test error':>10} {'reported':>9}  run folder")
            for r in results:
                reported = r.get("reported_error_percent")
                print(f"{r['model']:<28} {r['test_error_percent']:>9.2f}% "
                      f"{'-' if reported is None else f'{reported:.2f}%':>9}  {r['run_dir']}")
        return 0

    return guarded(parser.prog, run)


# -- subcommands -------------------------------------------------------------------------------
def cmd_train(args):
    train_from_args(args, ["xpnet"] + list(args.argv))
    return 0


def cmd_evaluate(args):
    from . import datasets
    from .io import load_model
    model = load_model(args.model_file, device=args.device, compile=False)
    dataset = args.dataset or _run_dataset(args.model_file) or "mnist"
    _check_model_fits_dataset(model, _dataset_info(dataset))  # before any file is read or downloaded
    x, y = datasets.load(dataset, data_dir=args.data_dir, split="test")  # no training images needed
    _check_images_fit(model, x, f"the {dataset} test images")
    probs = predict_probs(model, x, args.batch_size)
    pred = probs.argmax(axis=1)
    mistakes = int((pred != y).sum())
    print(f"{args.model_file} on the {dataset} test set ({len(y)} images): "
          f"error {100.0 * mistakes / len(y):.2f}% ({mistakes} mistakes), "
          f"accuracy {100.0 * (1 - mistakes / len(y)):.2f}%")
    return 0


def cmd_predict(args):
    from .io import load_model
    model = load_model(args.model_file, device=args.device, compile=False)
    names = None
    for path in args.image_files:
        images, labels = read_images(path, model.input_shape, invert=args.invert,
                                     preprocess=args.preprocess)
        probs = predict_probs(model, images, 256)
        if args.top > probs.shape[1]:  # before anything is printed
            raise ConfigError(f"--top {args.top}, but the model has {probs.shape[1]} classes: "
                              f"give --top {probs.shape[1]} or less")
        if not args.invert and images.mean() > 0.5:
            print(f"note: {path} is mostly bright; MNIST-style models expect light strokes on a dark "
                  "background (try --invert)", file=sys.stderr)
        if names is None:
            classes = None if args.dataset is None else _dataset_info(args.dataset)["classes"]
            if classes is not None and classes != probs.shape[1]:
                raise ConfigError(f"--dataset {args.dataset} has {classes} classes, but the model gives "
                                  f"{probs.shape[1]}: give the dataset the model was trained on, or drop "
                                  "--dataset (classes are then numbered)")
            names = _class_names(args.dataset or _run_dataset(args.model_file), probs.shape[1])
        for label, p in zip(labels, probs):
            order = np.argsort(-p)[:args.top]
            best = ", ".join(f"{names[k]}: {p[k]:.4f}" for k in order)
            print(f"{label}: class {names[order[0]]} (p={p[order[0]]:.4f})  top {len(order)}: {best}")
    return 0


def cmd_summary(args):
    from .errors import DataError
    target = args.target
    if os.path.isdir(target):  # a run folder: its trained model, as export takes it
        inside = os.path.join(target, "model.npz")
        if not os.path.isfile(inside):
            raise DataError(f"{target} is a folder with no model.npz in it; give a model file, a run "
                            "folder or a zoo model name (see `xpnet models`)")
        target = inside
    if target.lower().endswith(".npz") or os.path.isfile(target) or os.sep in target or \
            (os.altsep and os.altsep in target):  # zoo names are never paths
        if args.dataset is not None:
            # a saved model has its own input shape and classes: --dataset would be ignored
            raise ConfigError(f"--dataset applies to zoo model names (it sets their input shape); "
                              f"{args.target} is a model file with its own")
        from .io import load_with_policy
        model, policy = load_with_policy(target, device="cpu", compile=False)
    else:
        policy = None
        from . import models
        entry = models.get(target)
        info = _dataset_info(args.dataset or entry.recipe.get("dataset") or "mnist")
        model = entry.build(tuple(info["image_shape"]), info["classes"], "cpu", 0, "float32")
        print(f"{entry.name}: {entry.description}")
        recipe = ", ".join(f"{k}={v!r}" for k, v in dict(entry.recipe).items())
        print(f"recipe: {recipe}")
    model.summary()
    if policy is not None:   # the file's header records it; load_model compiles with it
        settings = ", ".join(f"{k}={v!r}" for k, v in policy.get_config().items() if k != "compute")
        print(f"mixed precision: {policy.compute} ({settings})")
    return 0


def cmd_export(args):
    from .io import load_model
    from .onnx_export import INPUT_SCALING, export_onnx
    path = args.model_file
    if os.path.isdir(path):  # a run folder: its trained model
        path = os.path.join(path, "model.npz")
    out = args.out_file
    if os.path.exists(out) and (not os.path.isfile(out) or (os.path.isfile(path) and os.path.samefile(out, path))):
        what = "the model file itself" if os.path.isfile(out) else "not a regular file"
        raise ConfigError(f"{out} is {what}: give export a new .onnx file to write")
    from .serialization import check_destination
    check_destination(out)   # export_onnx's own check, here before the model is loaded
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise ConfigError(f"{out}: its folder does not exist")
    model = load_model(path, device="cpu", compile=False)
    try:
        export_onnx(model, out, opset=args.opset)
    except ImportError as exc:
        print(f"xpnet export: error: {exc}", file=sys.stderr)
        return 2
    shape = ", ".join(["batch"] + [str(d) for d in model.input_shape]) \
        if not isinstance(model.input_shape, list) else "several inputs"
    print(f"wrote {args.out_file} (ONNX opset {args.opset}): input ({shape}) {INPUT_SCALING}")
    return 0


def cmd_info(args):
    from . import __version__
    from .backends import ALIASES, available, get_backend
    print(f"xpnet {__version__}")
    print(f"Python {platform.python_version()} ({sys.executable})")
    print(f"NumPy {np.__version__}")
    names = available()
    print(f"backends: {', '.join(names)}")
    cpu = get_backend("cpu")
    if hasattr(cpu, "blas"):
        print(_cpu_threads_line(cpu))
    if ALIASES["gpu"] in names:
        gpu = get_backend("gpu")
        mem = gpu.memory_info()
        runtime = mem.get("cuda_runtime")
        runtime = f"{runtime // 1000}.{(runtime % 1000) // 10}" if isinstance(runtime, int) else runtime
        print(f"GPU: {mem.get('gpu')}, CUDA runtime {runtime}, CuPy {mem.get('cupy')}, "
              f"memory {mem.get('free_bytes', 0) / 2**30:.1f} GiB free of "
              f"{mem.get('total_bytes', 0) / 2**30:.1f} GiB")
        if hasattr(gpu, "settings"):
            s = gpu.settings()
            limit = s.get("pool_limit_bytes")
            print(f"CuPy settings: TF32 {'on' if s['tf32'] else 'off'} (CUPY_TF32), memory pool limit "
                  f"{f'{limit / 2**30:.1f} GiB' if limit else 'none'} (CUPY_GPU_MEMORY_LIMIT), kernel "
                  f"cache {s['environment'].get('CUPY_CACHE_DIR') or '~/.cupy/kernel_cache'}")
        if hasattr(gpu, "compute_dtype"):
            print(f"mixed precision on the GPU: {_compute_types(gpu)}")
    else:
        from .backends.cupy_backend import gpu_problem
        print(f"GPU: none usable: {gpu_problem()}")
    return 0


def _cpu_threads_line(cpu):
    """How the CPU backend uses the cores: its pool's threads and what it did to NumPy's BLAS."""
    blas = cpu.blas
    libs = ", ".join(f"{lib['internal_api']} {lib['version']} ({lib['threading_layer']}"
                     + (f", {lib['architecture']} kernels" if lib.get("architecture") else "") + ")"
                     for lib in blas["libraries"])
    if blas["controlled"]:
        state = f"{libs or 'no BLAS found'} limited to {blas['wanted']} thread(s)"
    else:
        state = f"{libs + ' ' if libs else ''}left as it is: {blas['why']}"
    from .backends.cpu_threads import pinned_kernels_hint
    hint = pinned_kernels_hint(blas["libraries"])
    from .backends import compiled
    return (f"CPU threads: {cpu.threads} (XPNET_NUM_THREADS); NumPy's BLAS: {state} (XPNET_BLAS_THREADS)"
            + "\ncompiled CPU kernels (2x2 max pooling, spectral products, ReLU, Dropout, random words): "
            + compiled.describe()
            + (f"\nnote: {hint}" if hint else ""))


def _compute_types(backend):
    """"float16, bfloat16" or "float16 (bfloat16: why not)": what --mixed-precision can take."""
    from .errors import ConfigError
    try:
        backend.compute_dtype("bfloat16")
    except ConfigError as exc:
        return f"float16 (bfloat16: {exc})"
    return "float16, bfloat16"


def cmd_serve(args):
    from .serve import serve
    return serve(args.target, host=args.host, port=args.port, device=args.device, quiet=args.quiet)


def cmd_models(args):
    from . import models
    default = getattr(models, "DEFAULT", None)
    for name in models.names():
        entry = models.get(name)
        mark = " (default)" if name == default else ""
        print(f"{name}{mark}: {entry.description}")
    return 0


# -- helpers -----------------------------------------------------------------------------------
def _dataset_info(name):
    from . import datasets
    return datasets.info(name)


def _run_dataset(model_file):
    """The dataset named by the config.json beside a model file in a run folder, else None."""
    import json
    path = os.path.join(os.path.dirname(os.path.abspath(model_file)), "config.json")
    try:
        with open(path) as f:
            dataset = json.load(f).get("dataset")
    except (OSError, ValueError, AttributeError):
        return None
    return dataset if dataset in DATASET_CHOICES else None


def _class_names(dataset, n):
    names = _dataset_info(dataset)["class_names"] if dataset else []
    return names if len(names) == n else [str(i) for i in range(n)]


def _check_model_fits_dataset(model, info):
    """ShapeError unless ``model`` takes one input of the dataset's image shape and gives one
    output of a score per class; only the dataset's metadata is used, no file is read."""
    from .errors import ShapeError
    name = info["name"]
    for kind, shape in (("inputs", model.input_shape), ("outputs", model.output_shape)):
        if isinstance(shape, list):  # a functional model with several
            raise ShapeError(f"the model has {len(shape)} {kind}; evaluate needs one")
    image_shape = tuple(info["image_shape"])
    if tuple(model.input_shape) != image_shape:
        raise ShapeError(f"the {name} test images have shape {image_shape} per image, but the model "
                         f"expects {tuple(model.input_shape)}")
    classes, out = info["classes"], tuple(model.output_shape)
    if len(out) != 1:
        raise ShapeError(f"the model gives output of shape {out} per image; evaluate needs one "
                         f"score per class ({classes} for {name})")
    if out[0] != classes:
        raise ShapeError(f"the model gives {out[0]} classes; {name} has {classes}")


def _check_images_fit(model, x, what):
    from .errors import ShapeError
    if tuple(x.shape[1:]) != tuple(model.input_shape):
        raise ShapeError(f"{what} have shape {tuple(x.shape[1:])} per image, but the model "
                         f"expects {tuple(model.input_shape)}")


def predict_probs(model, x, batch_size=256):
    """Softmax probabilities (host float64) for host images (uint8 0..255 or float 0..1)."""
    backend = model.backend
    out = []
    for start in range(0, len(x), batch_size):
        chunk = np.asarray(x[start:start + batch_size])
        if chunk.dtype == np.uint8:
            chunk = chunk.astype(model.dtype.name) / 255
        logits = backend.to_numpy(model.forward(backend.asarray(chunk.astype(model.dtype.name))))
        out.append(np.asarray(logits, dtype=np.float64))
    logits = np.concatenate(out)
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def read_images(path, input_shape, invert=False, preprocess=None):
    """A PNG (gray or colour) or an IDX images file -> (float (N, C, H, W) in [0, 1], or an IDX
    file's own uint8 0..255 (predict_probs scales each batch: a large file is not held in float64),
    one label per image naming its file). Images must have the model's size, unless
    ``preprocess="mnist"``: then each is cropped, scaled and centred the way MNIST was made
    (xpnet.preprocess.mnist_style)."""
    from .errors import ConfigError, DataError
    if preprocess not in (None, "none", "mnist"):
        raise ConfigError(f"preprocess must be 'none' or 'mnist', got {preprocess!r}")
    preprocess = None if preprocess == "none" else preprocess
    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        from .errors import ShapeError
        raise ShapeError(f"the model takes input {tuple(input_shape)}, not images (C, H, W)")
    if preprocess == "mnist" and tuple(input_shape) != (1, 28, 28):
        raise ConfigError(f"--preprocess mnist makes 28x28 gray digits, but the model takes input "
                          f"{tuple(input_shape)}")
    if os.path.isdir(path):
        raise DataError(f"{path} is a folder; expected a PNG or IDX images file")
    if not os.path.isfile(path):
        raise DataError(f"no such image file: {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89PNG"):
        def fits(w, h):  # a PNG's size is in its header: refuse a wrong one before decoding
            if preprocess is None and (h, w) != tuple(input_shape[1:]):
                raise DataError(_wrong_size(path, f"{w}x{h}", input_shape))
        images = _read_png(path, input_shape[0], fits)[None]
        labels = [path]
    elif head[:2] in (b"\x00\x00", b"\x1f\x8b"):
        from .datasets.idx import IMAGES_MAGIC, read_idx
        images = read_idx(path, magic=IMAGES_MAGIC)[:, None]
        labels = [f"{path}[{i}]" for i in range(len(images))]
        if invert:
            images, invert = np.subtract(255, images, dtype=np.uint8), False
        if preprocess == "mnist":
            images = images.astype(np.float64) / 255
    else:
        raise DataError(f"{path}: not a PNG or IDX images file")
    if invert:  # the PNG's own float64 array (an IDX file's uint8 was inverted above)
        images = np.subtract(1.0, images, out=images)
    size = images.shape[1:]
    if preprocess == "mnist":
        from .preprocess import mnist_style
        try:
            images = np.stack([mnist_style(img[0], threshold=0.1) for img in images])[:, None]
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
        note = f"MNIST-preprocessed from {size[2]}x{size[1]}: bounding box to 20x20, centred by mass"
        labels = [f"{label} ({note})" for label in labels]
    elif size != tuple(input_shape):
        what = (f"{size[2]}x{size[1]}" if size[0] == input_shape[0]
                else f"{size[2]}x{size[1]} with {size[0]} channel(s)")
        raise DataError(_wrong_size(path, what, input_shape))
    return images, labels


def _wrong_size(path, what, input_shape):
    channels, h, w = input_shape
    how = ("pass --preprocess mnist to crop, scale and centre the digit the way MNIST was made, "
           f"or resize it to {w}x{h} yourself" if tuple(input_shape) == (1, 28, 28)
           else f"resize it to {w}x{h} first")
    return f"{path}: the images are {what}, but the model takes {w}x{h} images with {channels} channel(s); {how}"


MAX_PNG_PIXELS = 40_000_000  # a 40-megapixel photo; a bigger header is refused before decoding
PNG_ROWS = 256  # rows converted at a time: a 40-megapixel RGBA photo took 3.5 GB whole


def _read_png(path, channels, fits=None):
    """A PNG as float64 (channels, H, W) in [0, 1]: colour becomes gray for one channel. The size in
    its header is checked first: a tiny file can claim 100000x100000 pixels (gigabytes decoded);
    ``fits(w, h)`` may refuse it too. The decoded pixels are converted PNG_ROWS rows at a time
    (each pixel on its own: the values of converting the image whole)."""
    from .errors import DataError
    with open(path, "rb") as f:
        head = f.read(24)  # signature, then the IHDR chunk: length, type, width, height
    if len(head) < 24 or head[12:16] != b"IHDR":
        raise DataError(f"{path}: cannot read this PNG: no IHDR header after the signature")
    w, h = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if w * h > MAX_PNG_PIXELS:
        raise DataError(f"{path}: the PNG is {w}x{h} ({w * h:,} pixels); xpnet predict reads at most "
                        f"{MAX_PNG_PIXELS:,} pixels: resize it first")
    if fits is not None:
        fits(w, h)
    try:
        import matplotlib.image as mpimg
    except ImportError as exc:
        raise DataError("reading PNG files needs matplotlib: pip install 'xpnet[plot]'") from exc
    try:
        raw = np.asarray(mpimg.imread(path))
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read this PNG: {exc}") from exc
    peak = float(raw.max()) if raw.size else 0.0
    out = np.empty(((1,) if channels == 1 else (3,)) + raw.shape[:2], dtype=np.float64)
    for r in range(0, raw.shape[0], PNG_ROWS):
        out[:, r:r + PNG_ROWS] = _png_rows(raw[r:r + PNG_ROWS], peak, channels)
    return out


def _png_rows(rows, peak, channels):
    """Rows of a decoded PNG -> float64 (channels, rows, W) in [0, 1] (``peak``: the image's largest
    value, over every channel)."""
    img = rows.astype(np.float64)
    if peak > 1.0:  # 16-bit or integer PNGs
        img = img / peak
    if img.ndim == 3:
        if img.shape[2] == 4:  # composite on white, the way a viewer shows it
            img = img[..., :3] * img[..., 3:] + (1 - img[..., 3:])
        img = img[..., :3]
    if channels == 1:
        if img.ndim == 3:
            img = img @ np.array([0.299, 0.587, 0.114])
        return img[None]
    return np.stack([img] * 3) if img.ndim == 2 else img.transpose(2, 0, 1)


# -- the parser and entry point ----------------------------------------------------------------
def build_parser():
    from .onnx_export import DEFAULT_OPSET, MIN_OPSET  # constants only; onnx loads when exporting
    parser = argparse.ArgumentParser(prog="xpnet", description="Train and use xpnet models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("train", help="train a zoo model and write a run folder")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test-set error of a saved model")
    p.add_argument("model_file", metavar="MODEL.npz")
    p.add_argument("--dataset", default=None, choices=DATASET_CHOICES,
                   help="default: the dataset of the run folder holding MODEL.npz, else mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu", choices=DEVICE_CHOICES)
    p.add_argument("--batch-size", type=positive_int, default=500)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify PNG images or IDX images files")
    p.add_argument("model_file", metavar="MODEL.npz")
    p.add_argument("image_files", metavar="FILE", nargs="+",
                   help="PNG images or IDX images files; each result is named by its file")
    p.add_argument("--dataset", default=None, choices=DATASET_CHOICES,
                   help="print this dataset's class names (default: the run folder's dataset)")
    p.add_argument("--device", default="cpu", choices=DEVICE_CHOICES)
    p.add_argument("--top", type=positive_int, default=3, help="how many classes to list per image")
    p.add_argument("--invert", action="store_true",
                   help="invert the image (for dark digits on a light background)")
    p.add_argument("--preprocess", default="none", choices=("none", "mnist"),
                   help="none (default): images must have the model's size (28x28 for MNIST); "
                        "mnist: crop each digit, scale it to fit 20x20 and centre it by its centre "
                        "of mass in 28x28, the way MNIST was made")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("summary", help="layers and parameter counts of a zoo model or a model file")
    p.add_argument("target", metavar="NAME_or_MODEL.npz")
    p.add_argument("--dataset", default=None, choices=DATASET_CHOICES,
                   help="input shape for a zoo model (default: its recipe's dataset)")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("export", help="write a saved model as an ONNX file (needs xpnet[onnx])")
    p.add_argument("model_file", metavar="MODEL.npz", help="a model file, or a run folder holding model.npz")
    p.add_argument("out_file", metavar="OUT.onnx")
    p.add_argument("--opset", type=positive_int, default=DEFAULT_OPSET,
                   help=f"ONNX opset, {MIN_OPSET} or newer (default {DEFAULT_OPSET})")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("info", help="versions, backends and GPU")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("models", help="list the model zoo")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("serve", help="a local page to draw a digit and see the model's prediction")
    p.add_argument("target", metavar="RUN_DIR_or_MODEL.npz")
    p.add_argument("--port", type=port_int, default=8000, help="default 8000; 0 picks a free port")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--device", default="cpu", choices=DEVICE_CHOICES)
    p.add_argument("--quiet", action="store_true",
                   help="no access line per request (warnings and errors still go to stderr)")
    p.set_defaults(func=cmd_serve)
    return parser


def _abort_distributed_job(code):
    """A rank of a job of several (``--distributed``) that stops on a user error ends the whole job
    (MPI_Abort), as an unhandled exception would: the others would wait for it in a collective."""
    base = sys.modules.get("xpnet.distributed.base")   # imported only when a job was started
    if base is not None:
        base.abort_job(code)


def _leave_to_root(exc):
    """An error every rank of a job raises alike is rank 0's to print (distributed.base)."""
    base = sys.modules.get("xpnet.distributed.base")
    if base is not None:
        base.leave_to_root(exc)


def guarded(label, func):
    """Run ``func()``; user errors and GPU out-of-memory become one line on stderr and a status.
    Ctrl-C ends with one line saying what was kept (and where to continue from); a second Ctrl-C
    while the program winds down is ignored rather than breaking into interpreter shutdown
    (``xpnet serve`` lets it end its wait for the requests being answered: serve.serve).
    SIGTERM (``kill``, ``docker stop``) stops the same way, with status 143 (``xpnet serve``, a
    server stopped on purpose, says "stopped" and ends with 0 after either). In a job of several
    ranks (``--distributed``) every one of these ends the whole job (MPI_Abort) after its line; an
    error that every rank raises alike (``every_rank``) is rank 0's line alone."""
    previous = _interrupt_once()
    try:
        from . import ops
        ops.check()   # a bad $XPNET_OPS: this line, not a kernel's error halfway through
        return func()
    except XpnetError as exc:
        message = exc.worded("--device cpu") if isinstance(exc, NoGPUError) else \
            exc.worded("--batch-size") if isinstance(exc, BatchSizeError) else exc
        _leave_to_root(exc)   # another rank of a job: rank 0 says it and ends the job meanwhile
        print(f"{label}: error: {message}", file=sys.stderr)
        _abort_distributed_job(2)
        return 2
    except KeyboardInterrupt as exc:
        from .errors import TrainingInterrupted
        how = "stopped by SIGTERM" if _TERMINATED else "interrupted"
        if isinstance(exc, TrainingInterrupted):
            hint = f"continue with --resume {exc.folder}" if exc.folder else ""
            print(f"{label}: {how} during epoch {exc.epoch}: {exc.kept(hint)}", file=sys.stderr)
        else:
            print(f"{label}: {how}", file=sys.stderr)
        code = 143 if _TERMINATED else 130
        _abort_distributed_job(code)  # a signal to one rank ends the job: the others would wait
        return code
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        print(f"{label}: error: the GPU ran out of memory ({exc}); try a smaller --batch-size, "
              "or --device cpu", file=sys.stderr)
        _abort_distributed_job(1)
        return 1
    finally:
        if previous is not None:
            import signal
            once, term = previous
            if signal.getsignal(signal.SIGINT) is once:  # no Ctrl-C came: put it back
                signal.signal(signal.SIGINT, signal.default_int_handler)
            if signal.getsignal(signal.SIGTERM) is term:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)


_TERMINATED = []  # holds True once SIGTERM came


def _interrupt_once():
    """From the first Ctrl-C on, ignore SIGINT: the first raises KeyboardInterrupt as usual, a
    second one (an impatient user) would otherwise land in interpreter shutdown as a traceback.
    SIGTERM, where it has its default action, raises the same KeyboardInterrupt (remembered in
    _TERMINATED), so fit keeps its checkpoint, no half-written file is left and the exit says
    where to continue. Returns the handlers it put in place (restored by guarded), or None."""
    import signal
    import threading

    from . import interrupts
    if threading.current_thread() is not threading.main_thread():
        return None

    def once(signum, frame):
        for sig, handler in ((signal.SIGINT, once), (signal.SIGTERM, term)):
            if signal.getsignal(sig) is handler:
                signal.signal(sig, signal.SIG_IGN)
        interrupts.interrupt()   # KeyboardInterrupt now, or when the file being written is whole

    def term(signum, frame):
        _TERMINATED.append(True)
        once(signum, frame)

    # SIGINT ignored (a background job) or handled by the caller: leave it; the same for SIGTERM
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, once)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, term)
    return once, term


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    return guarded(f"xpnet {args.command}", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
