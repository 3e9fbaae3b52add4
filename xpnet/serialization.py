"""Safe, atomic file primitives: every model, checkpoint and download goes through these.

Writes go to a temporary file in the same folder, are flushed to disk, then renamed over the
target, so a reader never sees a half-written file. Reads never unpickle.
"""
import json
import os
import tempfile
import zipfile

import numpy as np

from .errors import DataError


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_npz_atomic(path, arrays, meta=None):
    """Save host arrays (a dict of NumPy arrays) and a JSON-able ``meta`` dict as one .npz file."""
    import io
    buf = io.BytesIO()
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in payload.items():
        if v.dtype == object:
            raise DataError(f"refusing to save {k!r}: object arrays would need pickle")
    if meta is not None:
        payload["__meta__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    np.savez(buf, **payload)
    atomic_write_bytes(path, buf.getvalue())


def load_npz(path):
    """Read a file written by :func:`save_npz_atomic`: returns (arrays, meta). Never unpickles."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"no such file: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:
        raise DataError(f"{path}: refusing to load: it holds pickled objects ({exc})") from exc
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file (truncated or corrupt?): {exc}") from exc
    meta = None
    if "__meta__" in arrays:
        raw = arrays.pop("__meta__")
        try:
            meta = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: its JSON header is corrupt: {exc}") from exc
    return arrays, meta
