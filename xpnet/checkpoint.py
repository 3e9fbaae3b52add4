"""Training checkpoints: everything fit() needs to continue a run exactly.

One .npz (written atomically through xpnet.serialization) holds host copies of every parameter and
buffer, the optimizer's state_dict, each stateful callback's arrays (e.g. EarlyStopping's best
weights), and a JSON header with the completed epoch, the history, the random-generator states
(shuffler, augmenter, every layer's generator such as Dropout's) and the callbacks' scalar state.
Array names: ``param/<name>``, ``buffer/<name>``, ``optim/<n>``, ``callback/<i>/<name>``, and
``mixed/scale_state`` under mixed precision (the loss scale, its run of finite steps and the
skipped steps; a resumed run continues with that scale, and must be compiled with the same
mixed precision and, for float16, the same loss-scale settings: resuming without it, which would
drop the scale, or with other settings, which the saved scale would override in part, is refused).
Resuming needs the same stateful callbacks (History, EarlyStopping, ReduceLROnPlateau, ...) in the
same order; stateless ones (loggers, TerminateOnNaN) may differ.
"""
import os

from .backends import CounterRandom
from .errors import ConfigError, DataError, TrainingError
from .serialization import load_npz, pack_state, save_npz_atomic, unpack_state

FORMAT, VERSION = "xpnet-checkpoint", 1
FILENAME = "last.npz"


def checkpoint_path(folder):
    return os.path.join(os.fspath(folder), FILENAME)


def layer_rngs(model):
    """{"<layer>.<attr>": CounterRandom} for every generator a layer owns (Dropout masks, ...)."""
    found = {}
    for layer in model.layers:
        for attr, value in sorted(vars(layer).items()):
            if isinstance(value, CounterRandom):
                found[f"{layer.name}.{attr}"] = value
    return found


def save_checkpoint(path, model, epoch, rngs, callbacks, stopped=False):
    """Write the state after the completed ``epoch`` (0-based) to ``path`` atomically."""
    backend = model.backend
    arrays = {k: backend.to_numpy(v) for k, v in model.state_arrays().items()}
    opt = model.optimizer
    optim_state = pack_state(opt.state_dict(), arrays, "optim/", backend.to_numpy)
    cb_meta = []
    for i, cb in enumerate(callbacks):
        state, cb_arrays = cb.get_state()
        for k, v in cb_arrays.items():
            arrays[f"callback/{i}/{k}"] = v
        cb_meta.append({"class": type(cb).__name__, "state": state, "arrays": sorted(cb_arrays)})
    meta = {
        "format": FORMAT, "version": VERSION, "epoch": int(epoch), "stopped": bool(stopped),
        "model": {"seed": model.seed, "dtype": str(model.dtype),
                  "params": {k: list(v.shape) for k, v in model.parameters.items()}},
        "optimizer": {"class": type(opt).__name__, "state": optim_state},
        "rngs": {name: r.get_state() for name, r in rngs.items()},
        "layer_rngs": {name: r.get_state() for name, r in layer_rngs(model).items()},
        "callbacks": cb_meta,
    }
    mixed = getattr(model, "_mixed", None)
    if mixed is not None:
        state = mixed.get_state()
        arrays["mixed/scale_state"] = state["scale_state"]
        meta["mixed_precision"] = state["policy"]
    save_npz_atomic(path, arrays, meta)


def load_checkpoint(path, model, rngs, callbacks):
    """Restore what :func:`save_checkpoint` wrote into ``model``, its optimizer, ``rngs`` and
    ``callbacks``; returns the JSON header (``meta["epoch"]`` is the last completed epoch)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise TrainingError(f"resume=True but there is no checkpoint at {path}; run fit(..., "
                            f"checkpoint=DIR) first or pass resume=False to start afresh")
    arrays, meta = load_npz(path)  # DataError naming the path when truncated or corrupt
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path}: not an xpnet training checkpoint (format {meta and meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise DataError(f"{path}: checkpoint version {meta.get('version')!r} is not supported "
                        f"(expected {VERSION})")
    saved_dtype = meta.get("model", {}).get("dtype") if isinstance(meta.get("model"), dict) else None
    if saved_dtype is not None and saved_dtype != str(model.dtype):  # mixed precision: the masters'
        raise TrainingError(f"{path}: the checkpoint holds a {saved_dtype} model but this model is "
                            f"{model.dtype}; a run continues in the dtype it was trained in "
                            f"({saved_dtype}), or starts afresh in another")
    _check_precision(path, meta, arrays, getattr(model, "_mixed", None))
    opt = model.optimizer
    saved_opt = meta["optimizer"]["class"]
    if saved_opt != type(opt).__name__:
        raise TrainingError(f"{path}: the checkpoint was made with optimizer {saved_opt} but the model "
                            f"is compiled with {type(opt).__name__}")
    pairs = _callback_pairs(path, meta, callbacks)
    optim_state = unpack_state(meta["optimizer"]["state"], arrays, model.backend.asarray, path)
    model.load_state_arrays(arrays, source=path, error=TrainingError, cast=True)
    opt.load_state_dict(optim_state)
    mixed = getattr(model, "_mixed", None)
    if mixed is not None and "mixed/scale_state" in arrays:  # else: a float32 run's checkpoint
        mixed.set_state(arrays["mixed/scale_state"])
    for name, r in rngs.items():
        if name in meta["rngs"]:
            r.set_state(meta["rngs"][name])
    for name, r in layer_rngs(model).items():
        if name in meta["layer_rngs"]:
            r.set_state(meta["layer_rngs"][name])
    for (i, entry), cb in pairs:
        cb.set_state(entry["state"], {k: arrays[f"callback/{i}/{k}"] for k in entry["arrays"]})
    return meta


def _check_precision(path, meta, arrays, mixed):
    """TrainingError unless a checkpoint written under mixed precision is resumed under the same
    compute type (and for float16 the same loss-scale settings, _check_scale_settings): without it
    the loss scale (and its count of finite steps) would be dropped in silence; under another, a
    float16 scale would be applied to bfloat16 or the reverse. A float32 checkpoint may be
    continued in mixed precision (the scale starts at its initial value)."""
    if "mixed/scale_state" not in arrays:
        return
    policy = meta.get("mixed_precision")
    saved = policy.get("compute") if isinstance(policy, dict) else None
    if saved not in ("float16", "bfloat16"):
        raise DataError(f"{path}: the checkpoint holds a loss scale but its header names no mixed "
                        f"precision (expected 'float16' or 'bfloat16', got {saved!r})")
    now = None if mixed is None else mixed.policy.compute
    scale = float(arrays["mixed/scale_state"].reshape(-1)[0])
    if now == saved:
        _check_scale_settings(path, policy, mixed.policy, scale)
        return
    compiled = "without mixed precision" if now is None else f"with mixed precision {now!r}"
    raise TrainingError(f"{path}: the checkpoint was trained with mixed precision {saved!r} (loss "
                        f"scale {scale:g}) but this model is compiled {compiled}; compile it with "
                        f"mixed_precision={saved!r} to continue the run (or resume=False to start "
                        f"afresh)")


def _check_scale_settings(path, config, policy, scale):
    """TrainingError unless float16's loss-scale settings (``config``: the checkpoint's, as
    MixedPrecision.get_config wrote them; ``policy``: the compiled one) are the run's: the saved
    scale and run of finite steps replace initial_scale, while growth_interval, growth_factor and
    backoff_factor would change how that scale moves, so a request for other settings would be
    half ignored and half applied, in silence. The run's own settings continue it, as PyTorch's
    GradScaler.load_state_dict restores them; bfloat16 has no loss scale, so there is nothing to
    compare."""
    from .mixed import MixedPrecision
    if not policy.dynamic:
        return
    try:
        run = MixedPrecision(**config)
    except (ConfigError, TypeError) as exc:
        raise DataError(f"{path}: the header's mixed_precision is not a mixed-precision policy "
                        f"(expected MixedPrecision's settings, as fit's checkpoints write them): "
                        f"{exc}") from None
    was, now = run.get_config(), policy.get_config()
    differ = [k for k in was if was[k] != now[k]]
    if not differ:
        return
    raise TrainingError(f"{path}: the checkpoint was trained with the loss-scale settings "
                        f"{_listed(was, differ)} but this model is compiled with "
                        f"{_listed(now, differ)}; a resumed run keeps its settings and its loss "
                        f"scale ({scale:g}): compile it with mixed_precision={run!r} to continue the "
                        f"run (or resume=False to start afresh with the new settings)")


def _listed(config, keys):
    return ", ".join(f"{k}={config[k]!r}" for k in keys)


def _callback_pairs(path, meta, callbacks):
    """[((index in the checkpoint, saved entry), callback)] for the callbacks that carry state.
    Stateless callbacks (loggers, TerminateOnNaN) may come and go between runs; the stateful ones
    must be the same classes in the same order, or the resumed run would not be the same run."""
    saved = [(i, c) for i, c in enumerate(meta.get("callbacks", [])) if c["state"] or c["arrays"]]
    current = [cb for cb in callbacks if any(cb.get_state())]
    was, now = [c["class"] for _, c in saved], [type(cb).__name__ for cb in current]
    if was != now:
        raise TrainingError(f"{path}: the checkpoint holds the state of callbacks {', '.join(was)} but "
                            f"this fit() has {', '.join(now)}; pass the same stateful callbacks, in "
                            f"the same order, to continue the run (or resume=False to start afresh)")
    return list(zip(saved, current))
