"""Shared by the `xpnet serve` tests: a server on an ephemeral port in a thread, and requests."""
import contextlib
import http.client
import json
import os
import threading

import numpy as np

from xpnet.serve import make_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_DIR = os.path.join(ROOT, "docs", "runs", "seed001-m9")  # committed: 8-16 CNN, 0.83 % error


@contextlib.contextmanager
def running_server(target=RUN_DIR, **kwargs):
    server = make_server(target, host="127.0.0.1", port=0, quiet=True, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def request(server, method, path, body=None, headers=None):
    """(status, headers, body bytes, JSON or None) of one request."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        parsed = None
        if response.getheader("Content-Type", "").startswith("application/json"):
            parsed = json.loads(data)
        return response.status, response.headers, data, parsed
    finally:
        conn.close()


def on_canvas(image28, size=280, scale=8, top=28, left=28):
    """An MNIST image (28 x 28, 0..1) blown up ``scale`` times (pixel blocks) at (top, left) on a
    blank ``size`` x ``size`` canvas of ink values 0..255."""
    big = np.kron(np.asarray(image28, dtype=np.float64), np.ones((scale, scale)))
    canvas = np.zeros((size, size))
    canvas[top:top + big.shape[0], left:left + big.shape[1]] = big * 255
    return canvas
