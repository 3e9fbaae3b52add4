"""Saving and loading whole models: one .npz file with a JSON header and host arrays.

    save_model(model, "model.npz", optimizer=None)    (or ``model.save(path)``)
    model = load_model("model.npz", device="cpu")      (also ``xpnet.load``)

The header names the model class, input shape, dtype, seed and, per layer, its type and
``get_config()``; the arrays are every parameter and buffer, plus the optimizer's state when
asked. ``mixed_precision`` is the compiled mixed-precision policy's settings (null, or absent in
files written before it was recorded: none); load_model compiles with it again, and the loss
scale goes with the optimizer (``compile.loss_scale_state``), so training continues where it
stopped. Loading never unpickles, accepts only registered layer types, and checks every array's
name, shape and dtype against the freshly rebuilt model before copying it in.
"""
import math
import os
import warnings
import zipfile


from .errors import ConfigError, DataError, ShapeError, XpnetError
from .serialization import check_writable, file_name, load_npz, pack_state, save_npz_atomic, unpack_state

FORMAT = "xpnet.model"
FORMAT_VERSION = 1
PARAM, BUFFER, OPTIM = "param/", "buffer/", "optimizer/"


# -- saving ------------------------------------------------------------------------------------
def save_model(model, path, optimizer=None, include_optimizer=True):
    """Write ``model`` (built) to ``path``; the optimizer defaults to the compiled one."""
    if not hasattr(model, "state_arrays") or not hasattr(model, "backend"):
        swapped = isinstance(model, (str, os.PathLike))
        raise ConfigError(f"save_model(model, path): the first argument must be an xpnet model, got "
                          f"{type(model).__name__} {model!r}"[:300]
                          + (" (are the arguments the wrong way round?)" if swapped else ""))
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"save_model: path must be a file name (str or os.PathLike), got "
                          f"{type(path).__name__}")
    check_writable(path, "cannot save the model to")
    if not getattr(model, "built", True):  # a functional Model is built when it is made
        raise ConfigError("cannot save a model that is not built: give it an input_shape first")
    from .layers import check_config
    for layer in getattr(model, "layers", ()):  # before writing: a file that loads as another model
        check_config(layer)                     # (or not at all) is worse than no file
    backend = model.backend
    arrays = {k: backend.to_numpy(v) for k, v in model.state_arrays().items()}
    policy = getattr(model, "mixed_precision", None)
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "xpnet_version": _version(),
            "model": _model_config(model), "optimizer": None, "compile": None,
            "mixed_precision": None if policy is None else policy.get_config()}
    if include_optimizer:
        opt = optimizer if optimizer is not None else getattr(model, "optimizer", None)
        if opt is not None:
            meta["optimizer"] = _optimizer_meta(opt, backend, arrays)
        meta["compile"] = _compile_info(model)
    meta["arrays"] = {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in arrays.items()}
    save_npz_atomic(path, arrays, meta)
    return os.fspath(path)


def _version():
    from . import __version__
    return __version__


def _model_config(model):
    """The header's "model" section: the model's get_config() (name and layers; a functional
    Model adds its inputs, outputs and wiring) with its class, input shape, dtype and seed."""
    if not hasattr(model, "get_config"):
        raise ConfigError(f"cannot save a {type(model).__name__}: it has no get_config()")
    header = {"class": type(model).__name__, "input_shape": _input_shape_json(model.input_shape),
              "dtype": model.dtype.name, "seed": int(model.seed)}
    header.update(model.get_config())
    from .layers import savable_initializers
    if isinstance(header.get("layers"), list):
        savable_initializers(header["layers"])
    return header


def _input_shape_json(shape):
    if shape and isinstance(shape[0], (tuple, list)):  # several inputs (functional models)
        return [list(s) for s in shape]
    return list(shape)


def _compile_info(model):
    loss = getattr(model, "loss", None)
    if loss is None:
        return None
    if hasattr(loss, "get_config"):
        loss = loss.get_config()  # {"type": "CrossEntropy", ...}: rebuilt by losses.get
    elif not isinstance(loss, str):
        loss = type(loss).__name__
    metrics = [m if isinstance(m, str) else getattr(m, "name", type(m).__name__)
               for m in (getattr(model, "metrics", None) or [])]
    info = {"loss": loss, "metrics": metrics}
    step = getattr(model, "_mixed", None)
    if step is not None:  # the loss scale, its run of finite steps, the skipped steps
        info["loss_scale_state"] = [float(v) for v in model.backend.to_numpy(step.state)]
    return info


def _optimizer_meta(opt, backend, arrays):
    """Optimizer config + state, its arrays moved into ``arrays`` under ``optimizer/<n>``."""
    if not hasattr(opt, "get_config") or not hasattr(opt, "state_dict"):
        raise ConfigError(f"cannot save optimizer {type(opt).__name__}: it needs get_config() "
                          "and state_dict()")
    return {"class": type(opt).__name__, "config": opt.get_config(),
            "state": pack_state(opt.state_dict(), arrays, OPTIM, backend.to_numpy)}


# -- loading -----------------------------------------------------------------------------------
def load_model(path, device="cpu", compile=True):
    """Rebuild a model saved by :func:`save_model` on ``device`` ("cpu", "gpu", "strict", ...)."""
    return _load(path, device, compile, compile)[0]


def load_with_policy(path, device="cpu", compile=True):
    """(load_model's model, the MixedPrecision its file records or None): ``xpnet summary`` shows
    the policy of a model it loads without compiling."""
    return _load(path, device, compile, True)


def _load(path, device, compile, policy_too):
    """(model, policy): the header's mixed precision read only where ``policy_too`` (compiling, or
    summary asks), so that predict, serve and evaluate, which load without compiling, are not
    stopped by a damaged or newer mixed_precision field they do not use."""
    path = file_name(path, "load_model")
    _check_container(path)
    arrays, meta = load_npz(path)
    _check_header(path, meta)
    params = [a.size for k, a in arrays.items() if k.startswith(PARAM)]
    model = _rebuild(path, meta["model"], device, max(params, default=0))
    unknown = sorted(k for k in arrays if not k.startswith((PARAM, BUFFER, OPTIM)))
    if unknown:
        raise DataError(f"{path}: unexpected arrays {', '.join(unknown)} (not parameters, buffers "
                        "or optimizer state)")
    model.load_state_arrays(arrays, source=path, error=DataError)
    policy = saved_policy(path, meta) if policy_too else None
    if compile:
        _restore_training(path, model, meta, arrays, policy)
    return model, policy


load = load_model


def _check_container(path):
    if os.path.isdir(path):
        inside = os.path.join(path, "model.npz")
        raise DataError(f"{path} is a folder, not a model file; " + (
            f"give its {inside}" if os.path.isfile(inside) else "expected a .npz model file"))
    if not os.path.isfile(path):
        raise DataError(f"no such model file: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:   # no read permission, an I/O error, ...
        raise DataError(f"cannot read the model file {path}: {exc.strerror or exc}") from exc
    if head[:1] == b"\x80":
        raise DataError(f"{path}: refusing to load a pickle; xpnet model files are .npz archives")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an xpnet model file (expected a .npz archive; the file is "
                        "truncated, corrupt or of another type)")


def _check_header(path, meta):
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path}: not an xpnet model file (no '{FORMAT}' header; was it written "
                        "by xpnet.save_model / model.save?)")
    version = meta.get("version")
    if version != FORMAT_VERSION:
        raise DataError(f"{path}: unsupported model format version {version!r}; this xpnet "
                        f"({_version()}) reads version {FORMAT_VERSION}")
    if not isinstance(meta.get("model"), dict):
        raise DataError(f"{path}: the header has no 'model' section")


def _model_classes():
    from .graph import Model
    from .model import Sequential
    return {"Sequential": Sequential, "Model": Model}


def _rebuild(path, header, device, largest):
    """The model the header describes, no parameter larger than ``largest`` values (the file's
    largest parameter array: initializers.file_limit), with DataErrors naming the file."""
    cls_name = header.get("class")
    classes = _model_classes()
    if not isinstance(cls_name, str) or cls_name not in classes:
        raise DataError(f"{path}: unknown model class {cls_name!r}; expected one of {sorted(classes)}")
    lacking = [k for k in ("dtype", "seed", "input_shape") if header.get(k) is None]
    if lacking:
        null = " (it is null)" if lacking[0] in header else ""
        raise DataError(f"{path}: the model header lacks {lacking[0]!r}{null}")
    dtype, seed = header["dtype"], header["seed"]
    if dtype not in ("float32", "float64"):
        raise DataError(f"{path}: model dtype must be 'float32' or 'float64', got {dtype!r}")
    config = header.get("config")  # functional models were saved with their config apart
    if not isinstance(config, dict):
        config = {k: v for k, v in header.items() if k not in ("class", "dtype", "seed")}
    if not isinstance(config.get("layers"), list) or not config["layers"]:
        raise DataError(f"{path}: the model header lists no layers")
    from .backends import get_backend
    # the backend first, outside the try below: an unknown device or a bad XPNET_NUM_THREADS is
    # the environment's or the caller's error, not the file's ("does not rebuild")
    backend = get_backend(device)
    from .initializers import file_limit
    try:
        with file_limit(largest, path):
            return classes[cls_name].from_config(config, device=backend, dtype=dtype, seed=seed)
    except (ShapeError, ConfigError, TypeError, ValueError, KeyError, OverflowError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: the saved architecture does not rebuild: {exc}") from exc
    except MemoryError as exc:
        raise DataError(f"{path}: the saved architecture asks for more memory than this machine "
                        f"has (corrupt or hostile sizes in the header?): {exc}") from exc


def saved_policy(path, meta):
    """The MixedPrecision the file was trained with (its header's ``mixed_precision``), or None
    when it says none or predates the field; DataError naming the file when it is malformed."""
    from .mixed import MixedPrecision
    config = meta.get("mixed_precision")
    if config is None:
        return None
    try:
        if not isinstance(config, dict):
            raise TypeError(f"expected an object, got {type(config).__name__}")
        return MixedPrecision(**config)
    except (XpnetError, TypeError) as exc:
        raise DataError(f"{path}: the header's mixed_precision is not a mixed-precision policy "
                        f"(expected null or MixedPrecision's settings, as save_model writes them): "
                        f"{exc}") from None


def _restore_training(path, model, meta, arrays, policy=None):
    """Recreate the optimizer (with its state) and compile the model when both are known, under
    the saved mixed precision (``policy``) with its loss scale."""
    from .training import DEFAULT_METRICS
    opt_meta, info = meta.get("optimizer"), meta.get("compile")
    for key, value in (("optimizer", opt_meta), ("compile", info)):
        if value is not None and not isinstance(value, dict):
            raise DataError(f"{path}: the header's {key!r} section must be an object or null, "
                            f"got {type(value).__name__}")
    optimizer = _rebuild_optimizer(path, opt_meta, arrays, model.backend) if opt_meta else None
    if info and hasattr(model, "compile"):
        kwargs = {"loss": info.get("loss")}
        if optimizer is not None:
            kwargs["optimizer"] = optimizer
        try:
            metrics = info.get("metrics")
            if isinstance(metrics, list):
                # ["accuracy"] is what the default compile saves (files do not say whether it was
                # asked for): the default again drops it for a model with one output column
                kwargs["metrics"] = DEFAULT_METRICS if metrics == ["accuracy"] else metrics
            kwargs["mixed_precision"] = _offered(path, model.backend, policy)
            model.compile(**kwargs)
        except (XpnetError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: cannot recompile the model with {info!r}: {exc}") from exc
        if kwargs["mixed_precision"] is not None and "loss_scale_state" in info:
            model._mixed.set_state(_scale_state(path, info["loss_scale_state"]))
    elif optimizer is not None:
        model.optimizer = optimizer


def _offered(path, backend, policy):
    """``policy`` where the backend computes in its type; else None, with a warning (a model
    trained in bfloat16 on a GPU still loads on the CPU, compiled without mixed precision)."""
    if policy is None:
        return None
    try:
        backend.compute_dtype(policy.compute)
    except ConfigError as exc:
        warnings.warn(f"{path} was trained with mixed precision {policy.compute!r}, which cannot be "
                      f"used here ({exc}); the model is compiled without it, in its own dtype",
                      RuntimeWarning, stacklevel=5)   # load_model's caller
        return None
    return policy


def _scale_state(path, values):
    """The saved [loss scale, finite steps in a row, skipped steps], checked."""
    if not (isinstance(values, list) and len(values) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    and v >= 0 for v in values) and values[0] > 0):
        raise DataError(f"{path}: compile.loss_scale_state must be [loss scale > 0, finite steps, "
                        f"skipped steps] (three finite numbers >= 0), got {values!r}"[:300])
    return [float(v) for v in values]


def _rebuild_optimizer(path, opt_meta, arrays, backend):
    from . import optim
    used = set()
    try:
        config = dict(opt_meta.get("config") or {})
        if config.get("type", opt_meta.get("class")) != opt_meta.get("class"):
            raise DataError(f"{path}: optimizer class {opt_meta.get('class')!r} does not match its "
                            f"config type {config.get('type')!r}")
        config["type"] = opt_meta.get("class")
        optimizer = optim.get(config)
        optimizer.load_state_dict(unpack_state(opt_meta.get("state"), arrays, backend.asarray, path, used))
    except DataError:
        raise
    except (XpnetError, TypeError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: cannot restore optimizer {opt_meta.get('class')!r}: {exc}") from exc
    unused = sorted(k for k in arrays if k.startswith(OPTIM) and k not in used)
    if unused:
        raise DataError(f"{path}: unexpected arrays {', '.join(unused)}")
    return optimizer
