"""`xpnet serve`: the MNIST preprocessing, and every request the server answers or refuses."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

import xpnet
from xpnet import cli
from xpnet.cli import predict_probs
from xpnet.preprocess import resize
from xpnet.errors import ConfigError, DataError, ShapeError
from xpnet.serve import BOX, MAX_BODY, RUN_FILES, App, make_server, preprocess

from .serve_support import ROOT, RUN_DIR, on_canvas, request, running_server


@pytest.fixture(scope="module")
def server():
    with running_server() as s:
        yield s


@pytest.fixture(scope="module")
def mnist_test():
    (_, _), (x, y) = xpnet.datasets.load("mnist", data_dir=os.path.join(ROOT, "data"))
    return x[:200, 0].astype(np.float64) / 255, y[:200]


def post(server, payload, headers=None):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request(server, "POST", "/api/predict", body,
                   {"Content-Type": "application/json", **(headers or {})})


# -- preprocessing -----------------------------------------------------------------------------
def test_preprocess_block_scaled_mnist_digits_come_back_as_they_were(mnist_test):
    x, _ = mnist_test
    exact = 0
    for i, image in enumerate(x):
        out = preprocess(on_canvas(image, scale=8, top=3 + i % 50, left=53 - i % 50))
        assert out.shape == (28, 28) and out.min() >= 0 and out.max() <= 1
        assert np.abs(out - image).mean() < 1e-3, i
        exact += np.allclose(out, image, atol=1e-9)
    assert exact >= 0.8 * len(x)  # the rest sit one pixel over where MNIST's rounding was a tie


def test_preprocess_resized_mnist_digits_are_close_and_classified_the_same(mnist_test):
    x, y = mnist_test
    app = App(RUN_DIR)
    out = []
    for i, image in enumerate(x):
        big = resize(image[None], 173, 173)[0]  # bilinear, not a whole multiple
        canvas = np.zeros((300, 260))
        top, left = 100 - i % 90, 5 + i % 80
        canvas[top:top + 173, left:left + 173] = big * 200  # fainter ink is scaled back up
        out.append(preprocess(canvas))
    out = np.array(out)
    assert np.abs(out - x).mean() < 0.05
    before = predict_probs(app.model, x[:, None]).argmax(axis=1)
    after = predict_probs(app.model, out[:, None]).argmax(axis=1)
    assert (before == after).mean() >= 0.97
    assert (after == y).mean() >= 0.95


def test_preprocess_fits_the_bounding_box_to_20_and_centres_the_mass():
    ink = np.zeros((280, 280))
    ink[30:230, 200:250] = 255  # a tall bar in a corner
    out = preprocess(ink)
    rows, cols = np.nonzero(out.any(axis=1))[0], np.nonzero(out.any(axis=0))[0]
    assert rows[-1] - rows[0] + 1 == BOX and cols[-1] - cols[0] + 1 == 5
    ys, xs = np.mgrid[:28, :28]
    assert abs((out * ys).sum() / out.sum() - 14) <= 0.5
    assert abs((out * xs).sum() / out.sum() - 14) <= 0.5
    dot = np.zeros((100, 100))
    dot[50, 50] = 9
    assert preprocess(dot).max() == 1 and (preprocess(dot) > 0).sum() == BOX * BOX
    assert preprocess(np.zeros((280, 280))) is None
    with pytest.raises(ShapeError):
        preprocess(np.zeros((2, 28, 28)))


# -- good requests -----------------------------------------------------------------------------
def test_page_and_its_files(server):
    status, headers, body, _ = request(server, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<canvas id="pad"' in body and b'id="clear"' in body and b"/serve.js" in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for path, kind in (("/serve.js", "text/javascript"), ("/serve.css", "text/css")):
        status, headers, body, _ = request(server, "GET", path)
        assert status == 200 and headers["Content-Type"].startswith(kind) and len(body) > 100
    status, headers, body, _ = request(server, "HEAD", "/")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 100
    # http.client reads no body after HEAD whatever comes: the socket shows one sent by mistake
    answer = raw(server, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and rest == b"", answer[:300]


def test_info_names_the_model_and_the_run(server):
    status, _, _, info = request(server, "GET", "/api/info")
    assert status == 200
    assert info["classes"] == [str(k) for k in range(10)] and info["input_shape"] == [1, 28, 28]
    assert info["dataset"] == "mnist" and info["device"] == "numpy"
    assert info["run"]["folder"] == "seed001-m9"
    assert info["run"]["config"]["model"] == "seed001-m9"
    assert info["run"]["result"]["mistakes"] == 83
    assert set(info["run"]["files"]) == set(RUN_FILES)


@pytest.mark.parametrize("name", sorted(RUN_FILES))
def test_run_files_are_served_from_the_run_folder(server, name):
    status, headers, body, _ = request(server, "GET", f"/run/{name}")
    assert status == 200 and headers["Content-Type"] == RUN_FILES[name]
    with open(os.path.join(RUN_DIR, name), "rb") as f:
        assert body == f.read()


def test_a_drawn_mnist_digit_is_predicted(server, mnist_test):
    x, y = mnist_test
    for i in range(5):
        status, _, _, out = post(server, {"pixels": on_canvas(x[i]).astype(int).tolist()})
        assert status == 200, out
        assert out["class"] == y[i] and out["label"] == str(y[i])
        assert len(out["probabilities"]) == 10 and abs(sum(out["probabilities"]) - 1) < 1e-6
        assert np.abs(np.array(out["image"]) - x[i] * 255).max() <= 1  # what the model saw


def test_predictions_from_many_threads_at_once_agree(server, mnist_test):
    x, y = mnist_test
    bodies = [{"pixels": on_canvas(x[i]).astype(int).tolist()} for i in range(6)]
    results = [None] * 12

    def work(k):
        results[k] = post(server, bodies[k % 6])[3]["probabilities"]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for k in range(6):
        assert results[k] == results[k + 6]
        assert int(np.argmax(results[k])) == y[k]


def test_forward_passes_never_overlap(mnist_test):
    """The test above passes without App's lock (these outputs do not depend on the per-call state
    the layers keep): here each forward pass is held open a moment, and none may start meanwhile."""
    app = App(RUN_DIR)
    forward, inside, most = app.model.forward, [], []

    def held(*args, **kwargs):
        inside.append(1)
        most.append(len(inside))
        time.sleep(0.05)
        inside.pop()
        return forward(*args, **kwargs)
    app.model.forward = held
    threads = [threading.Thread(target=app.probabilities, args=(mnist_test[0][k],)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(most) == 4 and max(most) == 1, most


def test_a_model_file_works_without_a_run_folder(tmp_path, mnist_test):
    shutil.copy(os.path.join(RUN_DIR, "model.npz"), tmp_path / "m.npz")
    with running_server(str(tmp_path / "m.npz")) as s:
        _, _, _, info = request(s, "GET", "/api/info")
        assert info["run"] is None and info["model_file"] == "m.npz"
        assert request(s, "GET", "/run/config.json")[0] == 404
        x, y = mnist_test
        assert post(s, {"pixels": on_canvas(x[0]).tolist()})[3]["class"] == y[0]


# -- bad requests ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/nothing", "/api", "/run/model.npz", "/run/log.csv",
                                  "/run/../model.npz", "/run/%2e%2e/model.npz", "/../../etc/passwd",
                                  "/run/", "/run//etc/passwd", "/static/serve.html", "serve.js"])
def test_unknown_paths_get_404(server, path):
    status, headers, _, out = request(server, "GET", path)
    assert status == 404 and headers["Content-Type"] == "application/json"
    assert "no such page" in out["error"]


@pytest.mark.parametrize("method,path,allow", [
    ("GET", "/api/predict", "POST"), ("PUT", "/api/predict", "POST"), ("POST", "/", "GET, HEAD"),
    ("DELETE", "/api/info", "GET, HEAD"), ("PATCH", "/run/config.json", "GET, HEAD"),
    ("OPTIONS", "/serve.js", "GET, HEAD")])
def test_wrong_methods_get_405(server, method, path, allow):
    status, headers, _, out = request(server, method, path, b"{}" if method != "GET" else None)
    assert status == 405 and headers["Allow"] == allow
    assert method in out["error"] and out["status"] == 405


def test_an_oversize_body_gets_413_before_it_is_read(server):
    host, port = server.server_address[:2]
    import http.client
    conn = http.client.HTTPConnection(host, port, timeout=10)  # the server would wait 30 s to read
    conn.putrequest("POST", "/api/predict")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(MAX_BODY + 1))
    conn.endheaders()
    conn.send(b'{"pixels": [')  # and never the rest
    response = conn.getresponse()
    out = json.loads(response.read())
    conn.close()
    assert response.status == 413 and str(MAX_BODY) in out["error"]
    assert response.getheader("Connection") == "close"   # the unread body is no next request


def test_an_oversize_body_announced_with_expect_100_continue_gets_413_not_100(server):
    import socket
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(f"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {MAX_BODY + 1}\r\nExpect: 100-continue\r\n\r\n".encode())
        answer = b""
        while b"}" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert str(MAX_BODY).encode() in answer and b"Connection: close" in answer


def test_content_length_and_type_are_required(server):
    host, port = server.server_address[:2]
    import http.client
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.putrequest("POST", "/api/predict")
    conn.putheader("Content-Type", "application/json")
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 411 and "Content-Length" in json.loads(response.read())["error"]
    conn.close()
    status, headers, _, out = request(server, "POST", "/api/predict", b"{}", {
        "Content-Length": "lots", "Content-Type": "application/json"})
    assert status == 400 and "Content-Length" in out["error"] and headers["Connection"] == "close"
    status, headers, _, out = request(server, "POST", "/api/predict", b'{"pixels": []}',
                                      {"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in out["error"]
    assert headers["Connection"] == "close"   # its body was not read: no next request on it


def raw(server, data):
    """Everything the server answers to ``data`` sent on a socket, until it closes; a server that
    waits instead fails the test with a timeout rather than hanging it."""
    import socket
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


@pytest.mark.parametrize("lengths,expect", [(("5", "5"), False), (("100", "5"), False),
                                            (("5", "100"), False), (("5", "5"), True)])
def test_several_content_length_headers_get_400(server, lengths, expect):
    head = "".join(f"Content-Length: {n}\r\n" for n in lengths)
    head += "Expect: 100-continue\r\n" if expect else ""
    answer = raw(server, (f"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                          f"\r\n{head}\r\n[1,2]").encode())
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]  # not 100 Continue, not a wait
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["error"] == (f"2 Content-Length headers ('{lengths[0]}', '{lengths[1]}'); "
                             f"send exactly one") and b"Connection: close" in answer
    assert answer.count(b"HTTP/1.1 ") == 1  # one answer, no 100 Continue before it
    answer = raw(server, b"GET /api/info HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                         b"Content-Length: 0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Content-Length headers" in answer


def test_a_chunked_body_gets_411_and_a_body_cut_short_gets_400(server):
    """Two refusals no test reached (removed, each still got a 400 for its JSON): chunked with a
    Content-Length too is not read as JSON, and a client that stops sending early is told so."""
    import socket
    answer = raw(server, b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\n[1,2]\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411 ") and b"not chunked" in answer, answer[:300]
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n[1,2]")
        sock.shutdown(socket.SHUT_WR)   # the other 95 bytes never come
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ") and b"the body ended after 5 of 100 bytes" in answer, answer[:300]


@pytest.mark.parametrize("first", [b"POST / HTTP/1.1", b"POST /nothing HTTP/1.1", b"GET /api/info HTTP/1.1"])
def test_a_body_no_route_reads_is_not_taken_for_the_next_request(server, first):
    """A 405, a 404 or a GET answered without reading the request's body left the body on the
    connection, read as the next request line: the request after it got "501 Unsupported method
    ('{}GET')" (a body that was a request would have been answered). The connection now closes."""
    answer = raw(server, first + b"\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
                 b"GET /api/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in answer, answer[-300:]
    # a body that was read (a refusal after reading it) keeps the connection for the next request
    body = json.dumps({"pixels": np.zeros((28, 28), dtype=int).tolist()}).encode()
    answer = raw(server, b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                 + b"GET /api/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"blank" in answer
    assert answer.count(b"HTTP/1.1 200 ") == 1 and b'"dataset": "mnist"' in answer, answer[-300:]


def test_a_content_length_of_non_ascii_digits_with_expect_100_continue_gets_400(server):
    """"\u00b2" (latin-1 byte B2) passes str.isdigit() but not int(): the Expect check raised a
    ValueError in the handler (a traceback, the connection closed without an answer)."""
    answer = raw(server, b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: \xb2\r\nExpect: 100-continue\r\n\r\n[1,2]")
    final = answer.split(b"HTTP/1.1 ")[-1]
    assert final.startswith(b"400 ") and b"bad Content-Length" in final, answer[:300]


@pytest.mark.parametrize("body,words", [
    (b"{not json", "bad JSON"), (b"\xff\xfe\x00", "bad JSON"), (b"", "bad JSON"),
    (b"[" * 200000, "bad JSON"), (b"[1, 2]", "expected a JSON object"),
    (b'{"image": []}', "expected a JSON object"), (b'{"pixels": "digit.png"}', "not an image"),
    (b'{"pixels": [[1, 2], [3]]}', "not an image"), (b'{"pixels": [[{"a": 1}]]}', "not an image"),
    (b'{"pixels": [[true, false]]}', "not an image"), (b'{"pixels": 7}', "not an image"),
    (b'{"pixels": [[[0, 0]]]}', "not an image")])
def test_malformed_bodies_get_400(server, body, words):
    status, _, _, out = post(server, body)
    assert status == 400 and words in out["error"], out


@pytest.mark.parametrize("flag", [True, False])
def test_true_and_false_among_the_numbers_get_400(server, flag):
    pixels = np.zeros((28, 28), dtype=int).tolist()
    pixels[9][9:19] = [255] * 10
    pixels[3][4] = flag  # a Python bool is an int: np.asarray alone takes it as 1 or 0
    status, _, _, out = post(server, {"pixels": pixels})
    assert status == 400 and out["error"] == ("not an image: pixels must be numbers 0..255, got "
                                              "true/false among them")
    status, _, _, out = post(server, {"pixels": [[flag] * 28] * 28})
    assert status == 400 and out["error"] == "not an image: pixels must be numbers 0..255, got true/false"


@pytest.mark.parametrize("shape", [(27, 28), (28, 27), (561, 100), (100, 561), (1, 784), (784, 1)])
def test_wrong_sizes_get_400(server, shape):
    status, _, _, out = post(server, {"pixels": np.ones(shape, dtype=int).tolist()})
    assert status == 400 and "wrong size" in out["error"] and f"{shape[0]} x {shape[1]}" in out["error"]


@pytest.mark.parametrize("bad", [256, -1, 1e300, float("nan"), float("inf")])
def test_grey_values_out_of_range_get_400(server, bad):
    pixels = np.zeros((28, 28)).tolist()
    pixels[3][4] = bad
    status, _, _, out = post(server, {"pixels": pixels})
    assert status == 400 and "0 to 255" in out["error"]


def test_a_blank_canvas_gets_400(server):
    status, _, _, out = post(server, {"pixels": np.zeros((280, 280), dtype=int).tolist()})
    assert status == 400 and "blank" in out["error"]


def test_the_server_still_answers_after_the_bad_requests(server, mnist_test):
    x, y = mnist_test
    assert post(server, {"pixels": on_canvas(x[1]).tolist()})[3]["class"] == y[1]


# -- what it loads and where it listens --------------------------------------------------------
def test_a_link_out_of_the_run_folder_is_not_served(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(os.path.join(RUN_DIR, "model.npz"), run / "model.npz")
    secret = tmp_path / "secret.json"
    secret.write_text('{"password": 1}')
    os.symlink(secret, run / "config.json")
    with running_server(str(run)) as s:
        assert request(s, "GET", "/run/config.json")[0] == 404
        info = request(s, "GET", "/api/info")[3]
        assert info["run"]["config"] is None and info["run"]["files"] == {}


def test_bad_targets_are_refused_with_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such run folder or model file"):
        make_server(str(tmp_path / "missing"), port=0)
    with pytest.raises(DataError, match="has no model.npz"):
        make_server(str(tmp_path), port=0)
    pickled = tmp_path / "pickled.npz"  # an object array: loading it would unpickle
    np.savez(pickled, __meta__=np.array([{"format": "xpnet.model"}], dtype=object))
    with pytest.raises(DataError, match=r"pickled\.npz: refusing to load.* pickled objects"):
        make_server(str(pickled), port=0)   # (the file's own name matched "pickle" before)
    colour = xpnet.Sequential([xpnet.layers.Flatten(), xpnet.layers.Dense(10)], input_shape=(3, 32, 32))
    colour.save(tmp_path / "colour.npz")
    with pytest.raises(ShapeError, match=r"expected \(1, 28, 28\)"):
        make_server(str(tmp_path / "colour.npz"), port=0)


def test_it_binds_to_127_0_0_1_by_default_and_reports_a_busy_port():
    server = make_server(RUN_DIR, port=0, quiet=True)
    try:
        assert server.server_address[0] == "127.0.0.1"
        with pytest.raises(ConfigError, match="cannot listen on 127.0.0.1"):
            make_server(RUN_DIR, port=server.server_address[1])
    finally:
        server.server_close()


def _serve_one_then_interrupt(python_args, options=()):
    """Run ``python python_args serve RUN_DIR --port 0 options``, get /api/info once, send SIGINT:
    the server's stderr, once it has exited."""
    proc = subprocess.Popen([sys.executable, *python_args, "serve", RUN_DIR, "--port", "0", *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving ") and "http://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split(" on ")[1].split()[0]
        with urllib.request.urlopen(url + "api/info", timeout=20) as r:
            assert json.loads(r.read())["run"]["folder"] == "seed001-m9"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "stopped" in out, err
        return err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_serve_runs_until_interrupted():
    err = _serve_one_then_interrupt(["-m", "xpnet"])
    assert '"GET /api/info HTTP/1.1" 200' in err  # one access-log line per request


def test_cli_serve_quiet_writes_no_access_lines():
    assert _serve_one_then_interrupt(["-m", "xpnet"], ["--quiet"]).strip() == ""


def test_cli_serve_interrupted_before_an_access_line_still_writes_it():
    """The access line follows the answer, so the client can return, and Ctrl-C come, before it is
    written; the handler threads are daemons, which the interpreter stopped at exit, and the line
    was lost (4 of 64 runs of the test above). Here every line waits half a second."""
    slow_log = ("import sys, time, http.server\n"
                "log = http.server.BaseHTTPRequestHandler.log_request\n"
                "def slow(self, *args):\n"
                "    time.sleep(0.5)\n"
                "    log(self, *args)\n"
                "http.server.BaseHTTPRequestHandler.log_request = slow\n"
                "from xpnet.cli import main\n"
                "sys.exit(main(sys.argv[1:]))\n")
    err = _serve_one_then_interrupt(["-c", slow_log])
    assert '"GET /api/info HTTP/1.1" 200' in err
    assert "cut off" not in err   # it finished within the wait: no warning


def _with_a_request_held(server):
    """Start a ``GET /api/info`` that the server keeps answering until the returned Event is set;
    return once the server counts it busy."""
    import socket
    answering, release = threading.Event(), threading.Event()
    info = server.app.info

    def held():
        answering.set()
        release.wait(20)
        return info()

    server.app.info = held
    host, port = server.server_address[:2]
    client = socket.create_connection((host, port), timeout=20)
    client.sendall(b"GET /api/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answering.wait(20)
    return release, client


@pytest.mark.parametrize("stop", ["close_wait", "keyboard_interrupt"])
def test_requests_still_answered_when_the_close_wait_stops_are_counted_in_a_warning(monkeypatch, capsys, stop):
    """server_close waits CLOSE_WAIT seconds; a request still busy after it was cut off without a
    trace. One line on stderr now counts it, even with quiet (which silences access lines only).
    Called directly (SIGINT's default handler), a KeyboardInterrupt in the wait is counted the same
    way and goes on."""
    from xpnet import serve
    monkeypatch.setattr(serve, "CLOSE_WAIT", 0.2)
    server = make_server(RUN_DIR, port=0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    release, client = _with_a_request_held(server)

    def interrupted(timeout=None):
        raise KeyboardInterrupt
    try:
        server.shutdown()
        if stop == "close_wait":
            server.server_close()
            why = "after 0.2 s"
        else:
            server.idle.wait = interrupted
            with pytest.raises(KeyboardInterrupt):
                server.server_close()
            why = "(interrupted)"
        err = capsys.readouterr().err
        assert err == (f"warning: stopped waiting {why}: 1 request still being answered was "
                       "cut off, not logged and perhaps not answered\n"), err
    finally:
        release.set()
        client.close()
        thread.join(10)


def test_a_ctrl_c_during_the_close_wait_stops_it_and_serve_still_says_stopped(monkeypatch, capsys):
    """A second Ctrl-C during server_close's wait stops it at once: serve's SIGINT handler sets
    stop_waiting (it raises nothing, so it cannot break the Condition's lock), the requests cut
    off are counted on stderr, and serve() ends as after one Ctrl-C."""
    import io
    from xpnet import serve
    monkeypatch.setattr(serve, "CLOSE_WAIT", 60)
    waits = []

    def second_ctrl_c(timeout=None):   # the signal arrives while the main thread waits
        waits.append(timeout)
        if len(waits) == 3:
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        return False

    def first_ctrl_c(self, *args, **kwargs):
        threading.Thread(target=self.handle_request, daemon=True).start()   # accepts one connection
        held.extend(_with_a_request_held(self))
        self.idle.wait = second_ctrl_c
        raise KeyboardInterrupt

    held = []
    kept = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(serve.Server, "serve_forever", first_ctrl_c)
    out = io.StringIO()
    try:
        code = serve.serve(RUN_DIR, port=0, quiet=True, stream=out)
    finally:
        if held:
            release, client = held
            release.set()
            client.close()
    assert code == 0 and out.getvalue().splitlines()[1:] == ["stopped"], out.getvalue()
    assert waits == [serve.POLL] * 3       # polled until the flag, not the 60 s
    assert signal.getsignal(signal.SIGINT) is kept   # the handler from before the wait is back
    err = capsys.readouterr().err
    assert err == ("warning: stopped waiting (interrupted): 1 request still being answered was cut "
                   "off, not logged and perhaps not answered\n"), err


def test_the_wait_takes_ctrl_c_once_on_the_main_thread_and_restores_the_handler_after():
    """serve's wait installs a handler that sets the flag (once: a third Ctrl-C is ignored) on
    the main thread, where SIGINT was not ignored while serving, and puts back the handler it
    found: ignored after the command line's first Ctrl-C, the default for a library caller. A
    background job that ignored SIGINT from the start, and any other thread, keep theirs."""
    from xpnet import serve
    kept = signal.getsignal(signal.SIGINT)
    try:
        for found in (signal.SIG_IGN, signal.default_int_handler):  # cli.guarded's, a caller's
            signal.signal(signal.SIGINT, found)
            stop = threading.Event()
            with serve._ctrl_c_stops_the_wait(signal.default_int_handler, stop):
                handler = signal.getsignal(signal.SIGINT)
                assert handler not in (signal.SIG_IGN, signal.SIG_DFL, signal.default_int_handler)
                assert not stop.is_set()
                handler(signal.SIGINT, None)       # the second Ctrl-C: no exception
                assert stop.is_set()
                assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN   # a third is ignored
            assert signal.getsignal(signal.SIGINT) == found
            with serve._ctrl_c_stops_the_wait(signal.default_int_handler, threading.Event()):
                assert signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, found)
            assert signal.getsignal(signal.SIGINT) == found    # restored without a second
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with serve._ctrl_c_stops_the_wait(signal.SIG_IGN, threading.Event()):  # ignored from the start
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        seen = []

        def off_main():
            with serve._ctrl_c_stops_the_wait(signal.default_int_handler, threading.Event()):
                seen.append(signal.getsignal(signal.SIGINT))
        thread = threading.Thread(target=off_main)
        thread.start()
        thread.join(10)
        assert seen == [signal.SIG_IGN]
    finally:
        signal.signal(signal.SIGINT, kept)


@pytest.mark.timeout(120)   # a regression fails here instead of blocking on a line that never comes
def test_cli_serve_a_second_ctrl_c_stops_the_close_wait():
    """The command line ignores SIGINT from the first Ctrl-C on (cli.guarded), so a second Ctrl-C
    did nothing while serve waited (up to CLOSE_WAIT, here 60 s) for a request still being
    answered. It now stops the wait at once, counts the request it cut off, and ends as one
    Ctrl-C does. The script says "answering" when the request is busy and "waiting" once the wait
    has begun, so each SIGINT is sent at its moment."""
    import socket
    script = ("import sys, threading\n"
              "from xpnet import serve\n"
              "serve.CLOSE_WAIT = 60\n"
              "class Announced(threading.Condition):\n"
              "    def wait(self, timeout=None):\n"
              "        if not getattr(self, 'said', False):\n"
              "            self.said = print('waiting', flush=True) or True\n"
              "        return super().wait(timeout)\n"
              "init = serve.Server.__init__\n"
              "def announced(self, *args, **kwargs):\n"
              "    init(self, *args, **kwargs)\n"
              "    self.idle = Announced()\n"
              "serve.Server.__init__ = announced\n"
              "def held(self):\n"
              "    print('answering', flush=True)\n"
              "    threading.Event().wait(120)\n"
              "serve.App.info = held\n"
              "from xpnet.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    proc = subprocess.Popen([sys.executable, "-c", script, "serve", RUN_DIR, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving "), line + proc.stderr.read()
        host, port = line.split(" on ")[1].split()[0].split("//")[1].rstrip("/").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=20) as client:
            client.sendall(b"GET /api/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert proc.stdout.readline() == "answering\n"
            proc.send_signal(signal.SIGINT)
            assert proc.stdout.readline() == "waiting\n"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)   # well before the 60 s wait ends
        assert proc.returncode == 0 and out == "stopped\n", out + err
        warning = ("warning: stopped waiting (interrupted): 1 request still being answered was cut "
                   "off, not logged and perhaps not answered")
        assert warning in err.splitlines() and err.count("cut off") == 1 and "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _handled(wfile):
    """One ``GET /api/info`` through serve.Handler.handle(), the answer written to ``wfile``; the
    server's stderr lines (the access log)."""
    import io
    import types
    from xpnet import serve
    handler = serve.Handler.__new__(serve.Handler)
    handler.server = types.SimpleNamespace(quiet=False, app=types.SimpleNamespace(
        info=lambda: {"model": "x"}, run_file=lambda name: None),
        begin_request=lambda: None, end_request=lambda: None)
    handler.client_address = ("127.0.0.1", 50000)
    handler.rfile = io.BytesIO(b"GET /api/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    handler.wfile = wfile
    err = io.StringIO()
    real, sys.stderr = sys.stderr, err
    try:
        handler.handle()
    finally:
        sys.stderr = real
    return err.getvalue().splitlines()


def test_the_access_line_comes_after_the_answer_is_written():
    """http.server logs the status when it is set, before the answer is written: a client that had
    hung up got a "200" line and then the "dropped" one. The line now waits for the write."""
    import io

    class Gone(io.RawIOBase):
        def writable(self):
            return True

        def write(self, data):
            raise BrokenPipeError(32, "Broken pipe")

    lines = _handled(Gone())
    assert len(lines) == 1, lines
    assert "connection dropped: the client closed it before the answer (200) was sent (BrokenPipeError)" in lines[0]
    assert '"GET /api/info HTTP/1.1" 200' not in lines[0]
    delivered = io.BytesIO()
    lines = _handled(delivered)
    assert len(lines) == 1 and '"GET /api/info HTTP/1.1" 200' in lines[0], lines
    assert delivered.getvalue().startswith(b"HTTP/1.1 200") and delivered.getvalue().endswith(b'{"model": "x"}')


def test_clients_that_hang_up_early_are_dropped_without_a_traceback(mnist_test):
    import socket
    import struct
    proc = subprocess.Popen([sys.executable, "-m", "xpnet", "serve", RUN_DIR, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    err = []
    reader = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        url = proc.stdout.readline().split(" on ")[1].split()[0]
        host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
        body = json.dumps({"pixels": on_canvas(mnist_test[0][0]).tolist()}).encode()
        req = (f"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        for reset in (False, True, False, True):  # close, and close with a reset (linger 0)
            sock = socket.create_connection((host, int(port)), timeout=10)
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(req)
            sock.close()  # before the answer comes
        for _ in range(100):  # until the server saw all four go (as a rule a line each, fixed or not)
            if sum("connection dropped" in line or "Exception occurred" in line for line in err) >= 4:
                break
            time.sleep(0.1)
        still = urllib.request.Request(url + "api/predict", data=body,
                                       headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(still, timeout=20) as r:  # still serving
            assert json.loads(r.read())["class"] == mnist_test[1][0]
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        reader.join(10)
        text = "".join(err)
        assert proc.returncode == 0, text
        assert "Traceback" not in text and "Exception occurred" not in text, text
        dropped = [line for line in err if "connection dropped: the client closed it" in line]
        assert len(dropped) <= 4 and all(len(line) < 150 for line in dropped), text  # one at most
        # and one at least: each early client left its "dropped" line, or (if its answer got out
        # before it went) an access line; the last of those lines is the still-serving request's
        answered = sum('"POST /api/predict HTTP/1.1" 200' in line for line in err) - 1
        assert dropped and len(dropped) + answered >= 4, text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_serve_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["serve", str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xpnet serve: error: no such run folder") and err.count("\n") == 1
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", RUN_DIR, "--port", "70000"])
    assert exc.value.code == 2


def test_the_page_is_installed_as_package_data():
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11+")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        globs = tomllib.load(f)["tool"]["setuptools"]["package-data"]["xpnet"]
    import fnmatch
    static = os.listdir(os.path.join(ROOT, "xpnet", "static"))
    assert {"serve.html", "serve.js", "serve.css"} <= set(static)
    for name in static:
        assert any(fnmatch.fnmatch(f"static/{name}", g) for g in globs), name
