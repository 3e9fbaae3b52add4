"""Safe, atomic file primitives: every model, checkpoint and download goes through these.

Writes go to a temporary file in the same folder, are flushed to disk, then renamed over the
target, so a reader never sees a half-written file. Reads never unpickle.
"""
import errno
import json
import os
import tempfile
import zipfile

import numpy as np

from .errors import DataError
from .interrupts import deferred


def _umask():
    """The process umask, read from /proc where possible (os.umask can only be read by setting it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def nearest_existing(path):
    """The absolute ``path`` itself when it exists, else its nearest ancestor that does: what a
    file or folder made there would be created in (a file in that place blocks it)."""
    path = os.path.abspath(os.fspath(path))
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def folder_problem(folder):
    """Why ``folder`` cannot be made or written into (what is in the way, or no permission), as the
    end of a message, or None."""
    existing = nearest_existing(folder)
    if not os.path.isdir(existing):
        return f"{existing} is a file, where a folder is needed"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"no permission to write into {existing}"
    return None


def unwritable_reason(path):
    """Why a file cannot be written at ``path`` because of what the path names (a folder, a name
    ending in a separator, a parent that is a file), or None. Permissions are not checked."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return "it is a folder; give a file name inside it"
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        return "the name ends with a path separator (a folder); give a file name"
    parent = nearest_existing(os.path.dirname(os.path.abspath(path)))
    if os.path.exists(parent) and not os.path.isdir(parent):
        return f"{parent} is a file, not a folder"
    return None


def file_name(path, caller):
    """``path`` (str or os.PathLike naming a str) as a str; ConfigError naming ``caller`` (such
    as "load_model") for anything else: bytes, None, a number, ..."""
    from .errors import ConfigError
    name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else path
    if not isinstance(name, str):
        raise ConfigError(f"{caller}: path must be a file name (str or os.PathLike), got "
                          f"{type(path).__name__}")
    return name


def check_writable(path, what="cannot write"):
    """DataError naming ``path`` when :func:`unwritable_reason` finds a reason."""
    reason = unwritable_reason(path)
    if reason is not None:
        raise DataError(f"{what} {os.fspath(path)}: {reason}")


def check_destination(path):
    """DataError "cannot write PATH: why" when a file cannot be written at ``path`` for a reason
    that shows before writing: what the path names (:func:`unwritable_reason`) or its folder
    (:func:`folder_problem`: a file in the way, no permission)."""
    check_writable(path)
    problem = folder_problem(os.path.dirname(os.path.abspath(os.fspath(path))))
    if problem is not None:
        raise DataError(f"cannot write {os.fspath(path)}: {problem}")


def write_failure(path, exc):
    """Why writing ``path`` failed with the OSError ``exc``, for the end of a message. The system's
    own words, except for ENOENT in a folder that exists: /proc, /sys and other special file
    systems answer "No such file or directory" to a new file, which reads as a missing folder."""
    if exc.errno == errno.ENOENT:
        existing = nearest_existing(os.path.dirname(os.path.abspath(os.fspath(path))))
        if os.path.isdir(existing):
            return (f"{existing} does not take new files (the system answered "
                    f"\"{exc.strerror}\", as special file systems such as /proc and /sys do); "
                    f"give a path in an ordinary folder")
    return exc.strerror or str(exc)


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename).

    The file gets the permissions ``open()`` would give it (0o666 less the umask), not the
    owner-only mode of the temporary file, so results written from a container stay readable.
    """
    path = os.fspath(path)
    check_writable(path)
    try:
        with deferred():   # a Ctrl-C or SIGTERM from the command line waits for the write's end
            _atomic_write(path, data)
    except (IsADirectoryError, NotADirectoryError, FileExistsError) as exc:
        # the path changed under us after check_writable: name the target, not the temp file
        raise DataError(f"cannot write {path}: "
                        f"{unwritable_reason(path) or exc.strerror or type(exc).__name__}") from exc
    except OSError as exc:
        # no permission, a read-only file system, a full disk, a name too long, ...: the error
        # names the temporary file (or the folder); name the target and the reason instead
        raise DataError(f"cannot write {path}: {write_failure(path, exc)}") from exc


def _atomic_write(path, data):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass   # gone already, or the folder no longer lets us: the first error is the one to tell
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
    with deferred():   # zipfile interrupted half way raises its own AttributeError instead
        np.savez(buf, **payload)
        atomic_write_bytes(path, buf.getvalue())


def _check_members(path):
    """Compare each .npy member's declared shape and dtype with its stored size before reading it,
    so a forged header cannot make the reader allocate memory that the file does not back."""
    fmt = np.lib.format
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as f:
                try:
                    version = fmt.read_magic(f)
                    read_header = fmt.read_array_header_1_0 if version == (1, 0) else \
                        fmt.read_array_header_2_0
                    shape, _, dtype = read_header(f)
                except ValueError as exc:
                    raise DataError(f"{path}: member {info.filename} has a malformed .npy header: "
                                    f"{exc}") from exc
                header_size = f.tell()
            if dtype.hasobject:
                raise DataError(f"{path}: refusing to load: member {info.filename} holds pickled "
                                "objects (dtype object)")
            count = 1
            for d in shape:
                count *= int(d)
            declared = count * dtype.itemsize
            if header_size + declared != info.file_size:
                raise DataError(f"{path}: member {info.filename} declares shape {tuple(shape)} of "
                                f"{dtype} ({declared} bytes) but stores {info.file_size - header_size}"
                                " bytes: the file is corrupt or forged")


def load_npz(path):
    """Read a file written by :func:`save_npz_atomic`: returns (arrays, meta). Never unpickles."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"no such file: {path}")
    try:
        _check_members(path)
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except DataError:
        raise
    except ValueError as exc:
        raise DataError(f"{path}: refusing to load: it holds pickled objects ({exc})") from exc
    except (PermissionError, IsADirectoryError) as exc:   # the file is fine; this process cannot read it
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file (truncated or corrupt?): {exc}") from exc
    except MemoryError as exc:
        raise DataError(f"{path}: an array in it is larger than this machine's memory: {exc}") from exc
    meta = None
    if "__meta__" in arrays:
        raw = arrays.pop("__meta__")
        try:
            meta = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: its JSON header is corrupt: {exc}") from exc
    return arrays, meta


# -- nested state (optimizer state dicts, ...) as JSON plus named arrays ---------------------------
def pack_state(value, arrays, prefix, to_host):
    """Nested dicts/lists of scalars and arrays -> a JSON-able tree; each array is stored in
    ``arrays`` as ``<prefix><n>`` (after ``to_host``) and the tree names it. Dict keys must be
    str or int. Raises ConfigError for anything else."""
    from .errors import ConfigError
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, (str, int))]
        if bad:
            raise ConfigError(f"cannot save state key {bad[0]!r}: keys must be str or int")
        return {"dict": [[k, pack_state(v, arrays, prefix, to_host)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"list": [pack_state(v, arrays, prefix, to_host) for v in value]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        key = f"{prefix}{sum(k.startswith(prefix) for k in arrays)}"
        arrays[key] = np.asarray(to_host(value))
        return {"array": key}
    raise ConfigError(f"cannot save a state value of type {type(value).__name__}")


def unpack_state(node, arrays, to_device, source, used=None):
    """The inverse of :func:`pack_state`: arrays come back through ``to_device``; the names used
    are added to ``used`` (a set) when given. Raises DataError naming ``source``."""
    if not isinstance(node, dict) or len(node) != 1:
        raise DataError(f"{source}: malformed state entry {node!r}")
    kind, value = next(iter(node.items()))
    if kind == "value":
        return value
    if kind == "list" and isinstance(value, list):
        return [unpack_state(v, arrays, to_device, source, used) for v in value]
    if kind == "dict" and isinstance(value, list):
        out = {}
        for item in value:
            if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], (str, int)):
                raise DataError(f"{source}: malformed state entry {item!r}")
            out[item[0]] = unpack_state(item[1], arrays, to_device, source, used)
        return out
    if kind == "array":
        if not isinstance(value, str) or value not in arrays:
            raise DataError(f"{source}: the saved state refers to a missing array {value!r}")
        if used is not None:
            used.add(value)
        return to_device(arrays[value])
    raise DataError(f"{source}: malformed state entry {node!r}")
