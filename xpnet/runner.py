"""Train a named zoo model on a dataset and write a run folder (used by the CLI and the examples).

    result = run_training("seed001-tf", dataset="mnist", device="auto", out_dir="runs")

The run folder ``<out_dir>/<timestamp>-<model>-<dataset>/`` holds config.json (the exact
configuration and command), log.csv and log.json (one row per epoch), curves.png (loss and
accuracy), result.json (test error, mistakes, best epoch, timings, device, versions),
model.npz (the trained model, see xpnet.io) and last.npz (fit's checkpoint, from which
``resume_training(folder)`` continues an interrupted run). The validation set is split off the
training images; the test set is used once, at the end, and never for early stopping or tuning.
"""
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import re
import sys
import time

from .errors import BatchSizeError, ConfigError, on_every_rank

DEFAULT_MODEL = "seed001-tf"
QUICK_MODEL = "quick-mlp"
QUICK_TRAIN_IMAGES = 20000  # --quick: the first 20,000 training images (the test set stays whole)
QUICK_EPOCHS = 3            # --quick: at most this many epochs


def default_model(quick=False):
    """The zoo's default model name (its quick one with ``quick``)."""
    from . import models
    if quick:
        return getattr(models, "QUICK", QUICK_MODEL)
    return getattr(models, "DEFAULT", DEFAULT_MODEL)


def make_recipe(entry, quick=False, epochs=None, batch_size=None, overrides=None):
    """The zoo entry's recipe with the quick settings and then the caller's overrides applied."""
    from .models import RECIPE_KEYS
    recipe = dict(entry.recipe)
    if quick:
        recipe["epochs"] = min(int(recipe.get("epochs") or QUICK_EPOCHS), QUICK_EPOCHS)
    for key, value in (overrides or {}).items():
        if key not in RECIPE_KEYS:
            raise ConfigError(f"unknown recipe override {key!r}; expected one of {', '.join(RECIPE_KEYS)}")
        recipe[key] = value
    if epochs is not None:
        recipe["epochs"] = epochs
    if batch_size is not None:
        recipe["batch_size"] = batch_size
    check_recipe(recipe)
    return recipe


def check_recipe(recipe, where=""):
    """ConfigError (prefixed with ``where``) unless the recipe's epochs, batch size, validation
    split and early stopping make sense together."""
    for key in ("epochs", "batch_size"):
        value = recipe.get(key)
        if not _positive_int(value):
            raise ConfigError(f"{where}{key} must be a positive integer, got {value!r}")
    split = recipe.get("validation_split") or 0.0
    if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0.0 <= split < 1.0:
        raise ConfigError(f"{where}validation_split must be a number in [0, 1), got {split!r}")
    stopping = recipe.get("early_stopping")
    if stopping is not None and not isinstance(stopping, dict):
        raise ConfigError(f"{where}early_stopping must be a dict of EarlyStopping's arguments or "
                          f"None, got {stopping!r}")
    monitor = (stopping or {}).get("monitor", "val_loss")
    if stopping and str(monitor).startswith("val_") and not split:
        raise ConfigError(f"{where}early stopping monitors {monitor!r} but the recipe holds out no "
                          "validation images (validation_split is 0); the test set is never used "
                          "for early stopping")


def _positive_int(value):
    return not isinstance(value, bool) and isinstance(value, int) and value > 0


def run_folder(out_dir, model_name, dataset):
    """A new, empty folder ``<out_dir>/<YYYYmmdd-HHMMSS>-<model>-<dataset>[-N]``; ConfigError naming
    the folder and the reason when it cannot be made (/sys or /proc, a name too long, ...)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = os.path.join(os.fspath(out_dir), f"{stamp}-{model_name}-{dataset}")
    path, n = base, 1
    while True:
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            n += 1
            path = f"{base}-{n}"
        except OSError as exc:
            raise ConfigError(f"cannot make the run folder {path}: {exc.strerror or exc}; expected an "
                              f"output folder where folders can be made") from None


def versions(backend):
    out = {"xpnet": _xpnet_version(), "python": platform.python_version(),
           "numpy": importlib.metadata.version("numpy")}
    if backend.is_gpu:
        info = backend.memory_info()
        out["cupy"] = info.get("cupy")
        out["cuda_runtime"] = info.get("cuda_runtime")
    return out


def _xpnet_version():
    from . import __version__
    return __version__


def device_description(backend):
    if backend.is_gpu:
        info = backend.memory_info()
        return {"backend": backend.name, "gpu": info.get("gpu"),
                "memory_total_bytes": info.get("total_bytes"),
                "pool_total_bytes": info.get("pool_total_bytes"),  # what the pool holds: ~ the peak
                "settings": backend.settings()}
    return {"backend": backend.name, "cpu": _cpu_name(), "cpu_count": os.cpu_count()}


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_json(path, data):
    from .serialization import atomic_write_bytes
    atomic_write_bytes(path, (json.dumps(_clean(data), indent=1, allow_nan=False) + "\n").encode())


def _clean(value):
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # a NumPy scalar
        return _clean(value.item())
    if hasattr(value, "get_config"):
        return _clean(value.get_config())
    return str(value)


def run_training(model_name=None, dataset=None, device="auto", epochs=None, batch_size=None,
                 data_dir=None, out_dir="runs", quick=False, seed=0, verbose="auto", plot=False,
                 dtype="float32", command=None, train_images=None, test_images=None,
                 time_limit_minutes=None, distributed=False, tensorboard=None, mixed_precision=None,
                 **overrides):
    """Train, evaluate on the test set, write the run folder; returns the result dict.

    ``time_limit_minutes`` caps the wall-clock time from this call's start: training ends after
    the last epoch that fits (see fit's ``time_limit``), then the best weights are restored when
    the recipe's early stopping says so, the model is evaluated and the run folder written.
    ``distributed``: data-parallel over the ranks of mpirun (True, or a communicator from
    xpnet.distributed.init); ``batch_size`` is then the global batch. Rank 0 makes the run
    folder, writes every file and returns the result; the other ranks return None.

    ``dataset`` defaults to the recipe's; ``overrides`` replace recipe entries (lr=..., ...).
    ``train_images`` / ``test_images`` keep only the first N images of each split (smoke tests;
    both are recorded in config.json). ``tensorboard=DIR`` also writes TensorBoard logs to
    ``DIR/<run folder name>``. ``mixed_precision`` ("float16", "bfloat16" or None) is compile's
    (xpnet/mixed.py), with the default loss-scale settings; config.json records it with the
    precision actually used (``precision``).
    """
    from . import datasets, mixed, models
    from .backends import get_backend
    t_start = time.perf_counter()
    entry = models.get(model_name or default_model(quick))
    recipe = make_recipe(entry, quick, epochs, batch_size, overrides)
    if quick and train_images is None:
        train_images = QUICK_TRAIN_IMAGES
    for name, value in (("train_images", train_images), ("test_images", test_images)):
        if value is not None and not _positive_int(value):
            raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
    _check_minutes(time_limit_minutes)
    check_folder(out_dir, "the output folder (out_dir)")
    check_folder(tensorboard, "the TensorBoard folder")
    comm = _communicator(distributed, device)
    backend = get_backend(device) if comm is None else comm.backend
    if verbose and comm is None and str(device).lower() == "auto" and not backend.is_gpu:
        from .backends.cupy_backend import gpu_problem
        print(f"note: the GPU is not used, training runs on the CPU: {gpu_problem()}")
    policy = mixed.get(mixed_precision)
    if policy is not None:  # refused before the run folder exists
        _check_default_scaling(policy)
        if str(dtype) != "float32":
            raise ConfigError(f"mixed precision keeps float32 master weights; drop --dtype {dtype}")
        backend.compute_dtype(policy.compute)
    config = {"model": entry.name, "description": entry.description,
              "dataset": datasets.info(dataset or recipe.get("dataset") or "mnist")["name"],
              "device": backend.name, "dtype": str(dtype), "seed": int(seed), "quick": bool(quick),
              "recipe": recipe, "limits": {"train_images": train_images, "test_images": test_images},
              "time_limit_minutes": time_limit_minutes,
              "mixed_precision": None if policy is None else policy.compute,
              "precision": mixed.describe(policy, dtype, backend),
              "data_dir": None if data_dir is None else os.fspath(data_dir),
              "command": list(command) if command else [sys.executable] + sys.argv}
    if comm is not None:
        config["distributed"] = {"ranks": comm.size, "communicator": comm.kind}
    if tensorboard:
        from .tensorboard_logs import summary_writer_class
        summary_writer_class()  # ImportError naming the extra, before the run folder exists
    _check_settings(backend)
    data = _load_data(config)  # before the run folder exists, so a missing dataset leaves nothing
    if comm is not None:  # ranks started with other data or settings: refused before the folder
        from .distributed.data_parallel import agree_then_check_batches
        validation = 0 if data[1] is None else len(data[1][1])
        agree_then_check_batches(comm, [("the number of training samples", len(data[0][1])),
                                        ("the number of validation samples", validation),
                                        ("the batch size", recipe["batch_size"]),
                                        ("the number of epochs", recipe["epochs"])],
                                 recipe["batch_size"], len(data[0][1]))   # fit's checks, before the folder
    else:  # a BatchNorm that would see a last batch of one sample: fit's check, before the folder
        info = data[3]
        entry.build(tuple(info["image_shape"]), info["classes"], backend, seed,
                    dtype)._check_last_batch(len(data[0][1]), recipe["batch_size"])
    if comm is None:
        folder = run_folder(out_dir, entry.name, config["dataset"])
    else:  # rank 0 makes the folder, every rank uses it
        folder = comm.broadcast_text(run_folder(out_dir, entry.name, config["dataset"])
                                     if comm.rank == 0 else "")
    with _training_in(folder, comm):
        return _execute(config, folder, backend, data, verbose, plot, False, t_start,
                        time_limit_minutes, comm, tensorboard)


def _check_default_scaling(policy):
    """ConfigError for a MixedPrecision with other loss-scale settings than the defaults: a run
    folder records the compute type alone (config.json ``mixed_precision``), which the run and
    --resume compile with, so the settings would be dropped while ``precision`` claimed them.
    bfloat16 has no loss scale, so its settings change nothing and are not compared."""
    from .mixed import MixedPrecision
    default = MixedPrecision(policy.compute)
    if policy.dynamic and policy.get_config() != default.get_config():
        raise ConfigError(f"run_training takes mixed_precision as a name ('float16' or 'bfloat16'), "
                          f"which trains with the default loss-scale settings, got {policy!r}; "
                          f"for other settings compile and fit the model yourself")


def lock_run(folder):
    """An exclusive lock on the run folder while this process trains in it (the writing rank's):
    a second process that would train in it at the same time (two --resume of one folder) gets a
    ConfigError. The lock goes with the process, however it ends. Returns what unlock_run takes;
    None where the system has no such locks (no fcntl, or a file system without them)."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"{folder} is being trained by another process; wait for it to end (or "
                          "stop it) before resuming") from None
    except OSError:
        os.close(fd)
        return None
    return fd


# serialization's atomic writes: NAME.<8 characters of tempfile.mkstemp>.tmp beside NAME
_TEMPORARY = re.compile(r".+\.[a-z0-9_]{8}\.tmp")


def remove_stale_temporaries(folder):
    """Delete the temporary files of atomic writes that a killed process left in a run folder (a
    rank aborted by another's MPI_Abort in the middle of writing a checkpoint, a SIGKILL): called
    with the folder's lock held, so no other process is writing them. The file they were meant to
    replace is whole, since only a finished write replaces it."""
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if _TEMPORARY.fullmatch(name) and os.path.isfile(path):
            try:
                os.unlink(path)
            except OSError:
                pass   # not ours to insist on: the run goes on either way


def unlock_run(lock):
    if lock is not None:
        os.close(lock)


@contextlib.contextmanager
def _training_in(folder, comm, stale=False):
    """The run folder locked by the writing process (rank 0 of a job) while the block trains in it;
    with ``stale``, a killed writer's temporary files removed first (once the lock is held)."""
    lock = lock_run(folder) if comm is None or comm.rank == 0 else None
    try:
        if stale and lock is not None:
            remove_stale_temporaries(folder)
        yield
    finally:
        unlock_run(lock)


def _check_settings(backend):
    """The environment settings that fit would refuse (XPNET_PROGRESS_SECONDS, XPNET_CONV_CHOICE),
    checked before the run folder is made: a folder with only config.json cannot be resumed."""
    from .ops import autotune
    from .progress import line_interval_default
    line_interval_default()
    autotune.mode(backend)


def _communicator(distributed, device):
    """None, or the data-parallel communicator (``distributed`` True makes one for ``device``)."""
    if not distributed:
        return None
    if distributed is True:
        from . import distributed as dist
        return dist.init(device or "auto")
    return distributed


def resume_training(run_dir, device=None, verbose="auto", plot=False, command=None,
                    time_limit_minutes=None, distributed=False, tensorboard=None):
    """Continue an interrupted run, or one ended by its time limit, from its folder (config.json +
    fit's last.npz checkpoint); a run that finished its epochs or stopped early is refused.
    ``time_limit_minutes`` is this call's own wall-clock budget. ``distributed`` as for
    run_training: every rank reads the same folder (a shared file system)."""
    from .backends import get_backend
    from .checkpoint import checkpoint_path
    from .errors import DataError, NoGPUError
    t_start = time.perf_counter()
    _check_minutes(time_limit_minutes)
    check_folder(tensorboard, "the TensorBoard folder")
    run_dir = os.fspath(run_dir)
    if not run_dir:
        raise ConfigError("the run folder to resume is an empty name; expected a folder written by "
                          "xpnet train")
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise DataError(f"{run_dir} is not a run folder: it has no config.json")
    config = _read_json(path)
    _check_config(config, path)
    stopped = _stopped_by_time_limit(run_dir)
    if not os.path.isfile(checkpoint_path(run_dir)):
        raise DataError(f"{run_dir} has no checkpoint ({os.path.basename(checkpoint_path(run_dir))}): "
                        "no epoch had completed, so start the run again")
    try:
        comm = _communicator(distributed, device or config["device"])
        backend = get_backend(device or config["device"]) if comm is None else comm.backend
    except NoGPUError as exc:
        if device is not None:
            raise
        raise NoGPUError(f"{run_dir} was trained on the GPU ({config['device']}), which cannot be used "
                         f"here: {exc.reason}", "add {cpu} to continue it on the CPU") from None
    config.setdefault("resumed", []).append(
        {"command": list(command) if command else [sys.executable] + sys.argv,
         "device": backend.name, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
         "time_limit_minutes": time_limit_minutes})
    if stopped is not None:  # the time-limited sitting's result, kept here: result.json is rewritten
        config["resumed"][-1]["after_time_limit"] = stopped
    if comm is not None:
        config["resumed"][-1]["distributed"] = {"ranks": comm.size, "communicator": comm.kind}
    with _training_in(run_dir, comm, stale=True):
        data = _load_data(config)
        if comm is not None:
            _check_resume_ranks(config, run_dir, len(data[0][1]), comm)
        return _execute(config, run_dir, backend, data, verbose, plot, True, t_start,
                        time_limit_minutes, comm, tensorboard)


def _ranks_before(config):
    """The number of ranks the run trained on in its last sitting before this one (1: one process)."""
    sittings = [config] + config.get("resumed", [])[:-1]
    return int((sittings[-1].get("distributed") or {}).get("ranks", 1))


def _check_resume_ranks(config, run_dir, n, comm):
    """ConfigError, before fit, when the run's global batch cannot be shared by this job's ranks
    (fit's check_batches); a resume keeps the batch size, so the way out is another rank count."""
    from .distributed.data_parallel import agree_sizes, check_batches
    batch = config["recipe"]["batch_size"]
    agree_sizes(comm, [("the number of training samples", n)])
    try:
        check_batches(batch, n, comm.size)
    except BatchSizeError:
        last = n % batch
        most = batch if last == 0 else min(batch, last)
        why = (f"the global batch of {batch} samples is smaller than the {comm.size} ranks"
               if batch < comm.size else
               f"the last batch of each epoch would hold {last} of {n} samples, fewer than the "
               f"{comm.size} ranks")
        raise on_every_rank(ConfigError(
            f"{run_dir} cannot be resumed on {comm.size} ranks: {why}; --resume keeps the run's batch "
            f"size ({batch}), so resume it on at most {_ranks(most)} (it last trained on "
            f"{_ranks(_ranks_before(config))})")) from None


def _ranks(n):
    return f"{n} rank" if n == 1 else f"{n} ranks"


def _check_config(config, path):
    """DataError naming config.json and the entry unless it is a run configuration xpnet can
    continue (the keys it needs, each of the type it had when xpnet wrote it)."""
    from . import datasets, models
    from .errors import DataError
    needed = ("model", "dataset", "device", "dtype", "seed", "recipe", "limits", "data_dir")
    if not isinstance(config, dict) or any(k not in config for k in needed):
        raise DataError(f"{path}: not a run configuration written by xpnet (it needs the keys "
                        f"{', '.join(needed)})")

    def bad(key, expected):
        return DataError(f"{path}: {key} must be {expected}, got {config_value(key)!r}")

    def config_value(key):
        value = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    for key in ("model", "dataset", "device"):
        if not isinstance(config[key], str):
            raise bad(key, "a string")
    if config["dtype"] not in ("float32", "float64"):
        raise bad("dtype", "'float32' or 'float64'")
    if isinstance(config["seed"], bool) or not isinstance(config["seed"], int) or config["seed"] < 0:
        raise bad("seed", "a whole number >= 0")
    if config["data_dir"] is not None and not isinstance(config["data_dir"], str):
        raise bad("data_dir", "a folder name or null")
    if config.get("mixed_precision") not in (None, "float16", "bfloat16"):
        raise bad("mixed_precision", "'float16', 'bfloat16' or null")
    if not isinstance(config["limits"], dict):
        raise bad("limits", "an object with train_images and test_images")
    for key in ("train_images", "test_images"):
        value = config["limits"].get(key)
        if value is not None and not _positive_int(value):
            raise bad(f"limits.{key}", "a positive integer or null")
    if not isinstance(config["recipe"], dict):
        raise bad("recipe", "an object (the zoo recipe the run used)")
    try:
        models.get(config["model"])
        datasets.info(config["dataset"])
        check_recipe(config["recipe"], "recipe.")
    except ConfigError as exc:
        raise DataError(f"{path}: {exc}") from None


def _read_json(path):
    """A run folder's JSON file, or a DataError naming it and what went wrong."""
    from .errors import DataError
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read it: {exc}") from None


def _stopped_by_time_limit(run_dir):
    """None when the run folder has no result.json (an interrupted run); the result's summary when
    the run was ended by its time limit (it goes on from its checkpoint); otherwise the run has
    finished (all its epochs, or early stopping) and is not continued."""
    path = os.path.join(run_dir, "result.json")
    if not os.path.isfile(path):
        return None
    result = _read_json(path)
    if not isinstance(result, dict) or not result.get("stopped_by_time_limit"):
        raise ConfigError(f"{run_dir} has finished (it has result.json and was not stopped by a time "
                          f"limit); start a new run instead")
    return {k: result.get(k) for k in ("epochs_run", "test_error_percent", "mistakes", "time_limit_minutes")}


def _check_minutes(value):
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"time_limit_minutes must be a positive number of minutes or None, got {value!r}")


def check_folder(path, what):
    """ConfigError unless ``path`` (None: not asked for) is a folder, or one that can be made:
    checked before training, so a file in the way does not fail the run at its end."""
    if path is None:
        return
    from .serialization import folder_problem   # the one test of a folder, as callbacks use it
    path = os.path.abspath(os.fspath(path))
    problem = folder_problem(path)
    if problem is not None:
        raise ConfigError(f"{what} {path} cannot be used as a folder: {problem}")


def _load_data(config):
    """(train, validation or None, test, dataset info) as host arrays, as ``config`` says."""
    from . import datasets
    info = datasets.info(config["dataset"])
    (x_train, y_train), (x_test, y_test) = datasets.load(info["name"], data_dir=config["data_dir"])
    limits = config["limits"]
    if limits.get("train_images"):
        x_train, y_train = x_train[:limits["train_images"]], y_train[:limits["train_images"]]
    if limits.get("test_images"):
        x_test, y_test = x_test[:limits["test_images"]], y_test[:limits["test_images"]]
    validation = None
    split = config["recipe"].get("validation_split")
    if split:  # held out of the training images, never the test set
        (x_train, y_train), validation = datasets.train_val_split(x_train, y_train, split,
                                                                  seed=config["seed"])
    return (x_train, y_train), validation, (x_test, y_test), info


def _execute(config, folder, backend, data, verbose, plot, resume, t_start, time_limit_minutes=None,
             comm=None, tensorboard=None):
    from . import datasets, models
    from .io import save_model
    (x_train, y_train), validation, (x_test, y_test), info = data
    recipe, seed, dtype = config["recipe"], config["seed"], config["dtype"]
    config.update(train_images=len(y_train), test_images=len(y_test),
                  validation_images=0 if validation is None else len(validation[1]))
    root = comm is None or comm.rank == 0  # data-parallel: rank 0 alone prints and writes files
    verbose = verbose if root else 0
    config_path = os.path.join(folder, "config.json")
    if root and not resume:
        write_json(config_path, config)

    entry = models.get(config["model"])
    model = entry.build(tuple(info["image_shape"]), info["classes"], backend, seed, dtype)
    if verbose:
        model.summary()
        print(f"{'resuming' if resume else 'training'} {entry.name} on {len(y_train)} {info['name']} "
              f"images ({config['validation_images']} held out for validation) with {backend.name}"
              f"{'' if comm is None else f' on {comm.size} ranks ({comm.kind})'}, "
              f"{recipe['epochs']} epochs of batch {recipe['batch_size']}; run folder {folder}")
    if recipe.get("targets") == "one_hot":
        y_train = datasets.one_hot(y_train, info["classes"], dtype)
        if validation is not None:
            validation = (validation[0], datasets.one_hot(validation[1], info["classes"], dtype))
    callbacks = _callbacks(recipe, folder, tensorboard)
    record = None
    if root and resume:  # config.json with this sitting's entry once fit has taken the checkpoint:
        record = _write_once(lambda: write_json(config_path, config))  # a refusal leaves it as it was
        callbacks.insert(0, record)
    if verbose:
        callbacks.append(_estimate(recipe, backend))
    model.compile(loss=recipe.get("loss") or "cross_entropy", optimizer=_optimizer(recipe),
                  metrics=["accuracy"], mixed_precision=config.get("mixed_precision"))
    if verbose and config.get("mixed_precision") and not backend.is_gpu:
        print(f"note: mixed precision ({config['mixed_precision']}) on the CPU: NumPy computes float16 "
              f"without BLAS, much slower than float32; it is meant for GPUs")
    t_fit = time.perf_counter()
    time_limit = None
    if time_limit_minutes is not None:  # what is left of the budget after loading the data
        time_limit = max(60.0 * time_limit_minutes - (t_fit - t_start), 1e-3)
    history = model.fit(x_train, y_train, epochs=recipe["epochs"], batch_size=recipe["batch_size"],
                        validation_data=validation, callbacks=callbacks,
                        augment=recipe.get("augment"), seed=seed, verbose=verbose,
                        checkpoint=folder, resume=resume, time_limit=time_limit, distributed=comm)
    backend.synchronize()
    fit_seconds = time.perf_counter() - t_fit
    if record is not None:
        record.write()  # no epoch was left to run
    if not root:
        return None  # the model is rank 0's too (same weights); rank 0 tests and writes it

    predicted = model.predict(x_test, batch_size=max(recipe["batch_size"], 500)).argmax(axis=1)
    mistakes = int((predicted != y_test).sum())
    epochs_run = len(history.epoch)
    epoch_seconds = [v for v in history.history.get("seconds", []) if v is not None]
    result = {"model": entry.name, "dataset": info["name"], "test_samples": len(y_test),
              "mistakes": mistakes, "test_error_percent": 100.0 * mistakes / len(y_test),
              "test_accuracy": 1.0 - mistakes / len(y_test),
              "reported_error_percent": recipe.get("reported_error"),
              "best_epoch": _best_epoch(history, callbacks), "epochs_run": epochs_run,
              "final_logs": dict(history.rows()[-1], epoch=history.epoch[-1] + 1) if epochs_run else None,
              "seconds_fit": fit_seconds,
              "seconds_per_epoch": sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else None,
              "resumed": bool(config.get("resumed")),
              "time_limit_minutes": time_limit_minutes,
              "stopped_by_time_limit": bool(history.stopped_by_time_limit),
              "device": device_description(backend), "versions": versions(backend),
              "run_dir": folder}
    save_model(model, os.path.join(folder, "model.npz"))
    result["plots"] = _plots(history, folder, plot, model, x_test, y_test, predicted, info)
    result["seconds_total"] = time.perf_counter() - t_start
    write_json(os.path.join(folder, "result.json"), result)
    return result


def _write_once(write):
    """A callback that calls ``write()`` once: when fit begins its first epoch (after it has taken
    the checkpoint it resumes from) or when its ``write()`` is called, whichever comes first."""
    from .callbacks import Callback

    class WriteOnce(Callback):
        rank_zero_only = True
        done = False

        def on_epoch_begin(self, epoch, logs=None):
            self.write()

        def write(self):
            if not self.done:
                write()
                self.done = True

    return WriteOnce()


def _optimizer(recipe):
    from . import optim
    name = recipe.get("optimizer") or "adam"
    kwargs = {}
    for key in ("lr", "decay", "clipvalue"):
        if recipe.get(key) is not None:
            kwargs[key] = recipe[key]
    if recipe.get("momentum"):
        kwargs["momentum"] = recipe["momentum"]
    return optim.get(name, **kwargs)


def _callbacks(recipe, folder, tensorboard=None):
    from . import callbacks as cb
    out = [cb.CSVLogger(os.path.join(folder, "log.csv")), cb.JSONLogger(os.path.join(folder, "log.json"))]
    if tensorboard:  # one subfolder per run, so `tensorboard --logdir DIR` compares runs
        out.append(cb.TensorBoard(os.path.join(os.fspath(tensorboard), os.path.basename(
            os.path.normpath(folder)))))
    if recipe.get("schedule") is not None:
        out.append(cb.LearningRateScheduler(recipe["schedule"]))
    if recipe.get("early_stopping"):
        out.append(cb.EarlyStopping(**recipe["early_stopping"]))
    return out


CPU_ADVICE = ("on this CPU that is long: --time-limit MINUTES ends the run in time (checkpoint, "
              "test result and all), --quick checks the setup in seconds, a GPU (--device gpu) "
              "runs the whole recipe, and --resume RUN_DIR continues an interrupted run")


def _estimate(recipe, backend):
    """The line with the measured time per epoch and for the run; on a CPU, what to do instead."""
    from .progress import Estimate
    return Estimate(advice=None if backend.is_gpu else CPU_ADVICE,
                    stops_early=bool(recipe.get("early_stopping")))


def _best_epoch(history, callbacks):
    """1-based epoch that early stopping kept, else the one with the lowest val_loss (or loss)."""
    for c in callbacks:
        if type(c).__name__ == "EarlyStopping" and c.best_epoch is not None:
            return int(c.best_epoch) + 1
    values = history.history.get("val_loss") or history.history.get("loss") or []
    finite = [(v, i) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    return history.epoch[min(finite)[1]] + 1 if finite else None


def _plots(history, folder, plot, model, x_test, y_test, predicted, info):
    """curves.png always (when matplotlib is installed); with ``plot`` also the confusion matrix,
    the misclassified test images and, for convolutional models, the first layer's filters."""
    from . import viz
    from .errors import XpnetError
    written = []
    try:
        written.append(os.path.basename(viz.plot_history(history, os.path.join(folder, "curves.png"))))
        if plot:
            names = info["class_names"]
            written.append(os.path.basename(viz.plot_confusion_matrix(
                y_test, predicted, os.path.join(folder, "confusion.png"), class_names=names)))
            if int((predicted != y_test).sum()):
                written.append(os.path.basename(viz.plot_misclassified(
                    x_test, y_test, predicted, os.path.join(folder, "misclassified.png"),
                    class_names=names)))
            try:
                written.append(os.path.basename(viz.plot_conv_filters(
                    model, os.path.join(folder, "filters.png"))))
            except XpnetError:
                pass  # no convolution in this model
    except ImportError as exc:
        print(f"note: no plots written ({exc})", file=sys.stderr)
    return written
