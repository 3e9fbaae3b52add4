"""Saving and loading whole models: one .npz file with a JSON header and host arrays.

    save_model(model, "model.npz", optimizer=None)    (or ``model.save(path)``)
    model = load_model("model.npz", device="cpu")      (also ``xpnet.load``)

The header names the model class, input shape, dtype, seed and, per layer, its type and
``get_config()``; the arrays are every parameter and buffer, plus the optimizer's state when
asked. Loading never unpickles, accepts only registered layer types, and checks every array's
name, shape and dtype against the freshly rebuilt model before copying it in.
"""
import os
import zipfile

import numpy as np

from .errors import ConfigError, DataError, ShapeError, XpnetError
from .serialization import load_npz, save_npz_atomic

FORMAT = "xpnet.model"
FORMAT_VERSION = 1
PARAM, BUFFER, OPTIM = "param/", "buffer/", "optimizer/"


# -- saving ------------------------------------------------------------------------------------
def save_model(model, path, optimizer=None, include_optimizer=True):
    """Write ``model`` (built) to ``path``; the optimizer defaults to the compiled one."""
    if not getattr(model, "built", True):  # a functional Model is built when it is made
        raise ConfigError("cannot save a model that is not built: give it an input_shape first")
    backend = model.backend
    arrays = {PARAM + k: backend.to_numpy(v) for k, v in model.parameters.items()}
    arrays.update({BUFFER + k: backend.to_numpy(v) for k, v in model.buffers.items()})
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "xpnet_version": _version(),
            "model": _model_config(model), "optimizer": None, "compile": None}
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
    shape = getattr(model, "input_shape", None)
    if shape is None and hasattr(model, "inputs"):
        shape = [tuple(t.shape) for t in model.inputs]
    config = {"class": type(model).__name__, "name": model.name,
              "input_shape": _input_shape_json(shape), "dtype": model.dtype.name,
              "seed": int(model.seed)}
    if type(model).__name__ == "Sequential":
        config["layers"] = [{"type": type(l).__name__, "config": l.get_config()} for l in model.layers]
    elif hasattr(model, "get_config"):
        config["config"] = model.get_config()
    else:
        raise ConfigError(f"cannot save a {type(model).__name__}: it has no get_config()")
    return config


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
    return {"loss": loss, "metrics": metrics}


def _optimizer_meta(opt, backend, arrays):
    """Optimizer config + state, its arrays moved into ``arrays`` under ``optimizer/<n>``."""
    if not hasattr(opt, "get_config") or not hasattr(opt, "state_dict"):
        raise ConfigError(f"cannot save optimizer {type(opt).__name__}: it needs get_config() "
                          "and state_dict()")
    counter = [0]

    def pack(value):
        if isinstance(value, dict):
            return {"dict": [[pack_key(k), pack(v)] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            return {"list": [pack(v) for v in value]}
        if value is None or isinstance(value, (bool, int, float, str)):
            return {"value": value}
        if hasattr(value, "shape") and hasattr(value, "dtype"):
            key = f"{OPTIM}{counter[0]}"
            counter[0] += 1
            arrays[key] = np.asarray(backend.to_numpy(value))
            return {"array": key}
        raise ConfigError(f"cannot save optimizer state value of type {type(value).__name__}")

    def pack_key(k):
        if not isinstance(k, (str, int)):
            raise ConfigError(f"cannot save optimizer state key {k!r}: keys must be str or int")
        return k

    return {"class": type(opt).__name__, "config": opt.get_config(), "state": pack(opt.state_dict())}


# -- loading -----------------------------------------------------------------------------------
def load_model(path, device="cpu", compile=True):
    """Rebuild a model saved by :func:`save_model` on ``device`` ("cpu", "gpu", "strict", ...)."""
    path = os.fspath(path)
    _check_container(path)
    arrays, meta = load_npz(path)
    _check_header(path, meta)
    model = _rebuild(path, meta["model"], device)
    expected = {PARAM + k: v for k, v in model.parameters.items()}
    expected.update({BUFFER + k: v for k, v in model.buffers.items()})
    optimizer_keys = {k for k in arrays if k.startswith(OPTIM)}
    _check_arrays(path, arrays, expected, optimizer_keys, meta)
    backend = model.backend
    for key, target in expected.items():
        target[...] = backend.asarray(arrays[key])
    if compile:
        _restore_training(path, model, meta, arrays)
    return model


load = load_model


def _check_container(path):
    if not os.path.isfile(path):
        raise DataError(f"no such model file: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
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


def _layer_registry():
    from .layers import LAYERS
    return dict(LAYERS)


def _model_classes():
    from .model import Sequential
    classes = {"Sequential": Sequential}
    try:
        from . import graph
    except ImportError:
        return classes
    model_cls = getattr(graph, "Model", None)
    if model_cls is not None and hasattr(model_cls, "from_config"):
        classes[model_cls.__name__] = model_cls
    return classes


def _rebuild(path, config, device):
    cls_name = config.get("class")
    classes = _model_classes()
    if not isinstance(cls_name, str) or cls_name not in classes:
        raise DataError(f"{path}: unknown model class {cls_name!r}; expected one of {sorted(classes)}")
    try:
        dtype, seed, name = config["dtype"], config["seed"], config.get("name")
        input_shape = config["input_shape"]
    except KeyError as exc:
        raise DataError(f"{path}: the model header lacks {exc.args[0]!r}") from exc
    if dtype not in ("float32", "float64"):
        raise DataError(f"{path}: model dtype must be 'float32' or 'float64', got {dtype!r}")
    try:
        if cls_name == "Sequential":
            layers = [_make_layer(path, i, spec) for i, spec in enumerate(config.get("layers") or [])]
            if not layers:
                raise DataError(f"{path}: the model header lists no layers")
            return classes[cls_name](layers, input_shape=tuple(input_shape), device=device,
                                     dtype=dtype, seed=seed, name=name)
        _check_graph_layer_types(path, config.get("config"))
        return classes[cls_name].from_config(config["config"], device=device, dtype=dtype, seed=seed)
    except (ShapeError, ConfigError, TypeError, ValueError, KeyError, OverflowError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: the saved architecture does not rebuild: {exc}") from exc
    except MemoryError as exc:
        raise DataError(f"{path}: the saved architecture asks for more memory than this machine "
                        f"has (corrupt or hostile sizes in the header?): {exc}") from exc


def _make_layer(path, index, spec):
    registry = _layer_registry()
    if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
        raise DataError(f"{path}: layer {index} in the header is malformed: {spec!r}")
    type_name = spec.get("type")
    if not isinstance(type_name, str) or type_name not in registry:
        raise DataError(f"{path}: layer {index} has unknown type {type_name!r}; model files may "
                        f"only name registered layers: {', '.join(sorted(registry))}")
    try:
        return registry[type_name].from_config(dict(spec["config"]))
    except (XpnetError, TypeError, ValueError, OverflowError) as exc:
        raise DataError(f"{path}: layer {index} ({type_name}) has an invalid config "
                        f"{spec['config']!r}: {exc}") from exc


def _check_graph_layer_types(path, config):
    """Every layer entry of a functional model's config must name a registered layer type.

    Only ``config["layers"][i]["type"]`` names a layer; nested configs (a regularizer's
    ``{"type": "L2"}``, say) are checked by the layer that owns them when it is rebuilt.
    """
    registry = _layer_registry()
    try:
        from . import graph
        registry.update(getattr(graph, "NODES", None) or getattr(graph, "LAYERS", None) or {})
    except ImportError:
        pass
    layers = config.get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list):
        raise DataError(f"{path}: the functional model's header has no list of layers")
    for index, spec in enumerate(layers):
        kind = spec.get("type") if isinstance(spec, dict) else None
        if not isinstance(kind, str) or kind not in registry:
            raise DataError(f"{path}: unknown layer type {kind!r} (layer {index}); model files may only "
                            f"name registered layers: {', '.join(sorted(registry))}")


def _check_arrays(path, arrays, expected, optimizer_keys, meta):
    missing = sorted(k for k in expected if k not in arrays)
    if missing:
        raise DataError(f"{path}: missing arrays for {', '.join(missing)}")
    extra = sorted(k for k in arrays if k not in expected and k not in optimizer_keys)
    if extra:
        raise DataError(f"{path}: unexpected arrays {', '.join(extra)} (not parameters or "
                        "buffers of the saved architecture)")
    for key, target in expected.items():
        got = arrays[key]
        if tuple(got.shape) != tuple(target.shape) or got.dtype != target.dtype:
            raise DataError(f"{path}: array {key} has shape {tuple(got.shape)} and dtype "
                            f"{got.dtype}, but the rebuilt layer expects shape "
                            f"{tuple(target.shape)} and dtype {target.dtype}")


def _restore_training(path, model, meta, arrays):
    """Recreate the optimizer (with its state) and compile the model when both are known."""
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
            if info.get("metrics"):
                kwargs["metrics"] = list(info["metrics"])
            model.compile(**kwargs)
        except (XpnetError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: cannot recompile the model with {info!r}: {exc}") from exc
    elif optimizer is not None:
        model.optimizer = optimizer


def _rebuild_optimizer(path, opt_meta, arrays, backend):
    try:
        from . import optim
    except ImportError as exc:
        raise DataError(f"{path}: the file holds optimizer state but xpnet.optim is not "
                        "available; load with compile=False") from exc
    used = set()

    def unpack(node):
        if not isinstance(node, dict) or len(node) != 1:
            raise DataError(f"{path}: malformed optimizer state entry {node!r}")
        kind, value = next(iter(node.items()))
        if kind == "value":
            return value
        if kind == "list":
            return [unpack(v) for v in value]
        if kind == "dict":
            return {k: unpack(v) for k, v in value}
        if kind == "array":
            if value not in arrays:
                raise DataError(f"{path}: optimizer state refers to missing array {value!r}")
            used.add(value)
            return backend.asarray(arrays[value])
        raise DataError(f"{path}: malformed optimizer state entry {node!r}")

    try:
        config = dict(opt_meta.get("config") or {})
        if config.get("type", opt_meta.get("class")) != opt_meta.get("class"):
            raise DataError(f"{path}: optimizer class {opt_meta.get('class')!r} does not match its "
                            f"config type {config.get('type')!r}")
        config["type"] = opt_meta.get("class")
        optimizer = optim.get(config)
        state = unpack(opt_meta.get("state"))
        optimizer.load_state_dict(state)
    except DataError:
        raise
    except (XpnetError, TypeError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: cannot restore optimizer {opt_meta.get('class')!r}: {exc}") from exc
    unused = sorted(k for k in arrays if k.startswith(OPTIM) and k not in used)
    if unused:
        raise DataError(f"{path}: unexpected arrays {', '.join(unused)}")
    return optimizer
