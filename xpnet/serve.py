"""``xpnet serve``: a local page to draw a digit and see what a trained model makes of it.

    server = make_server("runs/20261122-054009-seed001-m9-mnist", port=8000)
    server.serve_forever()

The server is the standard library's ``ThreadingHTTPServer``; it binds to 127.0.0.1 unless told
otherwise, loads the model with xpnet's own loader (``.npz``, never a pickle) and runs every
prediction in xpnet on the chosen device. Routes:

- ``GET /`` (and ``/serve.js``, ``/serve.css``): the page, shipped in ``xpnet/static/``.
- ``GET /api/info``: the model's name, classes and input shape, and for a run folder its config
  and result.
- ``POST /api/predict`` with ``Content-Type: application/json`` and a body
  ``{"pixels": [[...], ...]}``: a 2-D list of ink values 0..255 (0 = blank, 255 = full ink, the way
  MNIST stores digits), from 28 to 560 pixels on each side (the page sends its 280 x 280 canvas).
  The answer is ``{"class": k, "label": name, "probabilities": [...], "image": 28 x 28 ints}``,
  ``image`` being what the model saw after the MNIST preprocessing (:func:`preprocess`).
- ``GET /run/<file>`` for a run folder: only ``curves.png``, ``confusion.png``,
  ``misclassified.png``, ``config.json`` and ``result.json``.

Bad requests get a 4xx status and ``{"error": message}``: 400 (bad JSON, not an image, wrong size,
blank, more than one Content-Length), 404 (unknown path), 405 (wrong method), 411 (no
Content-Length), 413 (body over ``MAX_BODY`` bytes, refused before it is read), 415 (not JSON). An
answer that leaves the request's body unread closes the connection (the body is no next request). A
client that closes its connection early is dropped with one log line, no traceback.
"""
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

import numpy as np

from .errors import ConfigError, DataError, ShapeError
from .preprocess import BOX, FIELD as SIDE, mnist_style  # noqa: F401 (BOX, SIDE: for callers)

MIN_SIDE, MAX_SIDE = 28, 560
MAX_BODY = 2 * 1024 * 1024  # bytes: a 560 x 560 image of "255," fits
CLOSE_WAIT = 5  # seconds server_close waits for the requests being answered
POLL = 0.1      # seconds between its looks at ``Server.stop_waiting`` (a second Ctrl-C)
STATIC = {"/": ("serve.html", "text/html; charset=utf-8"),
          "/serve.js": ("serve.js", "text/javascript; charset=utf-8"),
          "/serve.css": ("serve.css", "text/css; charset=utf-8")}
RUN_FILES = {"curves.png": "image/png", "confusion.png": "image/png",
             "misclassified.png": "image/png", "config.json": "application/json",
             "result.json": "application/json"}


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a message for the client."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status, self.message, self.headers = int(status), message, headers or {}


# -- MNIST preprocessing -----------------------------------------------------------------------
def preprocess(ink):
    """A drawn digit (2-D ink values >= 0, 0 = blank, any scale and size) -> a 28 x 28 float image
    in [0, 1] made the way MNIST was (xpnet.preprocess.mnist_style, shared with `xpnet predict
    --preprocess mnist`). Returns None for a blank image."""
    ink = np.asarray(ink, dtype=np.float64)
    if ink.ndim != 2:
        raise ShapeError(f"preprocess expects a 2-D image, got shape {ink.shape}")
    if not (ink.max() > 0 if ink.size else False):
        return None
    return mnist_style(ink)


# -- the application (model and run folder) ------------------------------------------------------
class App:
    """The model behind the page, its class names and, for a run folder, the run's files."""

    def __init__(self, target, device="cpu"):
        from .cli import _class_names, _run_dataset
        from .io import load_model
        target = os.fspath(target)
        if os.path.isdir(target):
            self.run_dir = os.path.realpath(target)
            model_file = os.path.join(target, "model.npz")
            if not os.path.isfile(model_file):
                raise DataError(f"{target} has no model.npz: give a run folder of `xpnet train` "
                                f"or a model file")
        elif os.path.isfile(target):
            self.run_dir, model_file = None, target
        else:
            raise DataError(f"no such run folder or model file: {target}")
        self.model_file = model_file
        self.model = load_model(model_file, device=device, compile=False)
        shape = getattr(self.model, "input_shape", None)
        if not shape or isinstance(shape[0], (tuple, list)) or int(np.prod(shape)) != SIDE * SIDE:
            raise ShapeError(f"{model_file}: xpnet serve draws 28 x 28 grey digits, but this model "
                             f"takes input {shape}; expected (1, 28, 28) (or 784 values)")
        self.input_shape = tuple(shape)
        self.lock = threading.Lock()  # layers keep per-call state: one forward pass at a time
        self.dataset = _run_dataset(model_file)
        self.classes = list(_class_names(self.dataset, self._output_size()))

    def _output_size(self):
        probs = self.probabilities(np.zeros((SIDE, SIDE)))
        return len(probs)

    def probabilities(self, image):
        from .cli import predict_probs
        x = np.asarray(image, dtype=np.float64).reshape((1,) + self.input_shape)
        with self.lock:
            return predict_probs(self.model, x)[0]

    def predict(self, pixels):
        image = preprocess(pixels)
        if image is None:
            raise RequestError(400, "the image is blank (no ink): draw a digit first")
        probs = self.probabilities(image)
        k = int(probs.argmax())
        return {"class": k, "label": self.classes[k], "probabilities": [float(p) for p in probs],
                "image": np.rint(image * 255).astype(int).tolist()}

    def info(self):
        run = None
        if self.run_dir:
            run = {"folder": os.path.basename(self.run_dir),
                   "files": {name: f"/run/{name}" for name in RUN_FILES if self.run_file(name)},
                   "config": self._read_json("config.json"), "result": self._read_json("result.json")}
        return {"model": getattr(self.model, "name", None), "model_file": os.path.basename(self.model_file),
                "dataset": self.dataset, "classes": self.classes, "input_shape": list(self.input_shape),
                "device": self.model.backend.name, "run": run,
                "request": {"min_side": MIN_SIDE, "max_side": MAX_SIDE, "max_body": MAX_BODY}}

    def run_file(self, name):
        """The path of a known run file that exists inside the run folder, else None."""
        if not self.run_dir or name not in RUN_FILES:
            return None
        path = os.path.realpath(os.path.join(self.run_dir, name))
        if os.path.dirname(path) != self.run_dir or not os.path.isfile(path):
            return None  # missing, or a link leading out of the run folder
        return path

    def _read_json(self, name):
        path = self.run_file(name)
        if path is None:
            return None
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None


def parse_pixels(body):
    """The request body (bytes) -> a 2-D float array of ink 0..255, or RequestError(400)."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RequestError(400, f"bad JSON: {exc}") from None
    if not isinstance(data, dict) or "pixels" not in data:
        raise RequestError(400, 'expected a JSON object {"pixels": [[0..255, ...], ...]}')
    try:
        pixels = np.asarray(data["pixels"])
    except (ValueError, TypeError, RecursionError):
        raise RequestError(400, "not an image: pixels must be a 2-D list of rows of equal "
                                "length") from None
    kind = pixels.dtype.kind
    if kind not in "iuf":
        got = "strings" if kind in "US" else "true/false" if kind == "b" else pixels.dtype.name
        raise RequestError(400, f"not an image: pixels must be numbers 0..255, got {got}")
    if pixels.ndim != 2:
        raise RequestError(400, f"not an image: pixels must be a 2-D list (rows of grey values), "
                                f"got {pixels.ndim} dimension(s)")
    h, w = pixels.shape
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise RequestError(400, f"wrong size: the image is {h} x {w} pixels; each side must be "
                                f"{MIN_SIDE} to {MAX_SIDE} (the page sends 280 x 280)")
    if any(type(v) is bool for row in data["pixels"] for v in row):  # numbers mixed with true/false
        raise RequestError(400, "not an image: pixels must be numbers 0..255, got true/false among them")
    pixels = pixels.astype(np.float64)
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 255:
        raise RequestError(400, "not an image: grey values must be finite numbers from 0 to 255")
    return pixels


# -- HTTP ----------------------------------------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    server_version = "xpnet-serve"
    sys_version = ""
    protocol_version = "HTTP/1.1"  # keep-alive for the page; every answer has a Content-Length
    timeout = 30  # seconds a client may take to send its request
    _body_unread = False  # set per request by _dispatch: the answer then closes the connection

    def handle_one_request(self):
        """One request, answered and logged. From its request line to its log line it counts as
        busy on the server, whose ``server_close`` (Ctrl-C) waits for it."""
        try:
            super().handle_one_request()
        except ConnectionError as exc:  # the client went away (BrokenPipe, ConnectionReset): drop it
            self.close_connection = True
            unsent = self.__dict__.pop("_unsent", None)
            if unsent is not None:  # the answer's access line was held back (``_send``): not sent
                self.log_message("connection dropped: the client closed it before the answer (%s) "
                                 "was sent (%s)", unsent[0], type(exc).__name__)
            else:
                self.log_message("connection dropped: the client closed it (%s)", type(exc).__name__)
        finally:
            if self.__dict__.pop("_busy", False):
                self.server.end_request()

    def parse_request(self):
        self._busy = True   # the request line came: no longer an idle keep-alive connection
        self.server.begin_request()
        return super().parse_request()

    def log_request(self, code="-", size="-"):
        """The access line: held back while ``_send`` writes the answer, so that a client that
        hangs up first gets the "dropped" line alone, not a status line for an answer it never got
        (http.server writes it when the status is set, before the headers and the body)."""
        if "_unsent" in self.__dict__:
            self._unsent = (getattr(code, "value", code), size)
        else:
            super().log_request(code, size)

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_OPTIONS(self):
        self._dispatch("OPTIONS")

    def _dispatch(self, method):
        app = self.server.app
        path = self.path.partition("?")[0]
        # a body this request brings and no route reads (a refusal, a GET with a body) would be
        # read as the next request on the connection: it is closed after the answer instead
        self._body_unread = "Transfer-Encoding" in self.headers or \
            (self.headers.get("Content-Length") or "0").strip() != "0"
        try:
            self._content_length()  # several: 400 on every path, the body's end is unknown
            if path == "/api/predict":
                allowed = ("POST",)
            elif path in STATIC or path == "/api/info" or (
                    path.startswith("/run/") and app.run_file(path[len("/run/"):])):
                allowed = ("GET", "HEAD")
            else:
                raise RequestError(404, f"no such page: {path}")
            if method not in allowed:
                raise RequestError(405, f"{method} is not allowed on {path}; use {' or '.join(allowed)}",
                                   {"Allow": ", ".join(allowed)})
            if method == "POST":
                self._send_json(200, app.predict(parse_pixels(self._read_body())))
            elif path in STATIC:
                name, ctype = STATIC[path]
                self._send(200, resources.files("xpnet").joinpath("static", name).read_bytes(), ctype)
            elif path == "/api/info":
                self._send_json(200, app.info())
            else:
                name = path[len("/run/"):]
                with open(app.run_file(name), "rb") as f:
                    self._send(200, f.read(), RUN_FILES[name])
        except RequestError as exc:
            self._refuse(exc)

    def _refuse(self, exc):
        self._send_json(exc.status, {"error": exc.message, "status": exc.status}, exc.headers)

    def handle_expect_100(self):
        """``Expect: 100-continue`` (curl sends it for big bodies): refuse an oversize body, or one
        with several lengths, before the client sends it."""
        try:
            length = self._content_length() or ""
            if length.isascii() and length.isdigit() and int(length) > MAX_BODY:
                self.close_connection = True
                raise RequestError(413, f"the body is {length} bytes; at most {MAX_BODY} are accepted")
        except RequestError as exc:
            self._refuse(exc)
            return False
        return super().handle_expect_100()

    def _content_length(self):
        """The one Content-Length header's value, None without one; 400 for more than one."""
        values = self.headers.get_all("Content-Length") or []
        if len(values) > 1:  # RFC 9112 6.3: differing values must be refused; equal ones are too
            self.close_connection = True
            shown = ", ".join(repr(v) for v in values)
            raise RequestError(400, f"{len(values)} Content-Length headers ({shown}); send exactly one")
        return values[0] if values else None

    def _read_body(self):
        # a refusal here leaves the body unread (_body_unread): its answer closes the connection
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise RequestError(411, "send the body with a Content-Length, not chunked")
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        length = self._content_length()
        if length is None:
            raise RequestError(411, "a Content-Length header is required")
        try:
            length = int(length)
            if length < 0:
                raise ValueError
        except ValueError:
            raise RequestError(400, f"bad Content-Length: {length!r}") from None
        if length > MAX_BODY:
            raise RequestError(413, f"the body is {length} bytes; at most {MAX_BODY} are accepted")
        if ctype != "application/json":
            raise RequestError(415, f"send Content-Type: application/json, not {ctype or 'nothing'}")
        body = self.rfile.read(length)
        if len(body) != length:
            raise RequestError(400, f"the body ended after {len(body)} of {length} bytes")
        self._body_unread = False
        return body

    def _send_json(self, status, data, headers=None):
        self._send(status, json.dumps(data).encode("utf-8"), "application/json", headers)

    def _send(self, status, body, ctype, headers=None):
        self._unsent = None   # log_request holds the access line until the answer is written
        try:
            self._write(status, body, ctype, headers)
        except ConnectionError:
            raise   # handle_one_request() names the held status in its "dropped" line
        except BaseException:
            self.__dict__.pop("_unsent", None)
            raise
        held = self.__dict__.pop("_unsent", None)
        if held is not None:
            super().log_request(*held)

    def _write(self, status, body, ctype, headers):
        if self._body_unread:
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format, *args):
        if not self.server.quiet:
            super().log_message(format, *args)


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a connection kept alive between requests must not hold up Ctrl-C

    def __init__(self, *args, **kwargs):
        self.busy = 0   # requests whose line came and whose access line is not yet logged
        self.idle = threading.Condition()
        self.stop_waiting = threading.Event()   # set by a second Ctrl-C: server_close stops waiting
        super().__init__(*args, **kwargs)   # calls server_close when it cannot bind

    def begin_request(self):
        with self.idle:
            self.busy += 1

    def end_request(self):
        with self.idle:
            self.busy -= 1
            self.idle.notify_all()

    def server_close(self):
        """Stop listening, then wait (at most ``CLOSE_WAIT`` seconds) for the requests being
        answered to be answered and logged: their threads are daemons, which the interpreter stops
        at exit, so a Ctrl-C just after an answer was sent lost its access line. The requests still
        busy when the wait ends (after ``CLOSE_WAIT`` seconds, once ``stop_waiting`` is set, or at
        a KeyboardInterrupt, which goes on) are cut off with no access line: a warning on stderr
        counts them, even with ``quiet``, as it is no access line but the only trace they leave.
        ``serve`` sets ``stop_waiting`` from its SIGINT handler rather than raising there: an
        exception landing inside the Condition's own release and re-acquire broke it ("cannot
        release un-acquired lock")."""
        try:
            super().server_close()
            deadline = time.monotonic() + CLOSE_WAIT
            with self.idle:
                while self.busy > 0 and not self.stop_waiting.is_set():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.idle.wait(min(left, POLL))
                if self.busy == 0:
                    return
        except KeyboardInterrupt:   # SIGINT's default handler (a caller's own thread or loop)
            self._cut_off("stopped waiting (interrupted)")
            raise
        self._cut_off("stopped waiting (interrupted)" if self.stop_waiting.is_set()
                      else f"stopped waiting after {CLOSE_WAIT} s")

    def _cut_off(self, why):
        """The warning for the requests still busy (read without the lock: an interrupt may have
        landed while it was held)."""
        n = self.busy
        if n > 0:
            what = "1 request still being answered was" if n == 1 else \
                f"{n} requests still being answered were"
            print(f"warning: {why}: {what} cut off, not logged and perhaps not answered",
                  file=sys.stderr, flush=True)

    @property
    def url(self):
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"


class Server6(Server):
    address_family = socket.AF_INET6


def make_server(target, host="127.0.0.1", port=8000, device="cpu", quiet=False):
    """Load the model of ``target`` (a run folder or a model file) and bind a server to
    ``host:port`` (port 0: any free port; see ``server.url``). Call ``serve_forever()`` on it."""
    app = App(target, device=device)
    try:
        server = (Server6 if ":" in host else Server)((host, port), Handler)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                          f"(try another --port)") from None
    server.app, server.quiet = app, quiet
    return server


def serve(target, host="127.0.0.1", port=8000, device="cpu", quiet=False, stream=sys.stdout):
    """Run ``xpnet serve`` until Ctrl-C; the requests being answered then finish, access lines
    included, before "stopped". A second Ctrl-C stops that wait at once (``server_close`` counts
    the requests it cut off) and still ends with "stopped"."""
    server = make_server(target, host, port, device, quiet)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host}: other machines can reach this page", file=sys.stderr)
    print(f"serving {server.app.model_file} on {server.url}  (Ctrl-C to stop)", file=stream, flush=True)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        try:
            with _ctrl_c_stops_the_wait(sigint, server.stop_waiting):
                server.server_close()   # after the last answers and their access lines
        except KeyboardInterrupt:
            pass   # off the main thread: server_close named the requests it cut off
    print("stopped", file=stream)
    return 0


@contextlib.contextmanager
def _ctrl_c_stops_the_wait(before, stop):
    """For the block (``serve``'s wait for the requests being answered), let a Ctrl-C set
    ``stop`` (``Server.stop_waiting``), once: a further one is ignored, the warning and "stopped"
    being still to be printed. The command line (``cli.guarded``) ignores SIGINT from the first
    Ctrl-C on, so that a second one cannot break into a checkpoint being written or into
    interpreter shutdown; here there is nothing to protect but access lines, and a user who
    presses Ctrl-C again wants out now, as with uvicorn or gunicorn. The handler sets a flag and
    raises nothing: a KeyboardInterrupt could land inside the Condition's lock handling. After the
    block SIGINT's handler is the one it had before. ``before`` is SIGINT's handler while serving:
    ignored then (a background job), it stays ignored; signals are handled on the main thread
    only, so elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread() or before in (signal.SIG_IGN, None):
        yield
        return

    def stop_waiting(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop.set()
    kept = signal.signal(signal.SIGINT, stop_waiting)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL if kept is None else kept)
