"""Downloads that never leave a half-written or unverified file behind.

Bytes go to ``<dest>.part``; only when the md5 matches is it renamed to ``<dest>``. A wrong md5
deletes the ``.part`` file. Mirrors are tried in order until one succeeds.
"""
import gzip
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request

from ..errors import DataError

TIMEOUT = 30.0  # seconds without progress before a mirror is given up
_CHUNK = 1 << 20
urlopen = urllib.request.urlopen  # tests replace this with a fake opener


def md5_file(path, uncompressed=False):
    """md5 hex digest of a file's bytes, or of its gunzipped bytes when ``uncompressed``."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        gz = uncompressed and f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            for block in iter(lambda: f.read(_CHUNK), b""):
                h.update(block)
    except (EOFError, OSError) as exc:
        raise DataError(f"{path}: cannot read for its md5 (truncated or corrupt?): {exc}") from exc
    return h.hexdigest()


def fetch(url, dest, md5, timeout=TIMEOUT):
    """Download ``url`` to ``dest`` through ``dest.part``, checking ``md5``; returns ``dest``."""
    part = dest + ".part"
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    h = hashlib.md5()
    try:
        with urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            for block in iter(lambda: response.read(_CHUNK), b""):
                h.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        if os.path.exists(part):
            os.unlink(part)
        raise
    actual = h.hexdigest()
    if md5 is not None and actual != md5:
        os.unlink(part)
        raise DataError(f"{url}: md5 mismatch for {os.path.basename(dest)}: expected {md5}, "
                        f"got {actual}; the partial file was deleted")
    os.replace(part, dest)
    return dest


def fetch_from_mirrors(mirrors, filename, dest, md5, timeout=TIMEOUT):
    """Try ``mirror + filename`` for each mirror in turn; DataError listing every failure."""
    failures = []
    for mirror in mirrors:
        url = mirror + filename
        print(f"xpnet: downloading {url} -> {dest}", file=sys.stderr)
        try:
            return fetch(url, dest, md5, timeout)
        except DataError as exc:
            failures.append(str(exc))
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            failures.append(f"{url}: {exc}")
    raise DataError(f"could not download {filename}:\n  " + "\n  ".join(failures))
