"""The operator endpoint: GET only on its three paths, and no client can hang or exhaust it."""

from __future__ import annotations

import socket
import threading
import time
from http.client import HTTPConnection

import pytest

from streams.ops import health


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Loop:
    def __init__(self, ready: bool = True, stuck_for: float = 0.0) -> None:
        self.ready, self.last_loop = ready, time.monotonic() - stuck_for


@pytest.fixture
def endpoint():
    servers = []

    def start(state: Loop | None = None) -> int:
        port = _free_port()
        servers.append(health.serve_metrics(port, state, host="127.0.0.1"))
        return port

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _request(port: int, method: str, path: str) -> tuple[int, bytes]:
    conn = HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request(method, path)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


def test_get_on_the_three_paths_and_nothing_else(endpoint) -> None:
    port = endpoint(Loop(ready=False))
    assert _request(port, "GET", "/metrics")[0] == 200
    assert _request(port, "GET", "/healthz") == (200, b"ok\n")
    assert _request(port, "GET", "/readyz") == (503, b"not ready\n")
    assert _request(port, "GET", "/metrics?name[]=x")[0] == 200
    assert _request(port, "GET", "/metricsfoo")[0] == 404
    assert _request(port, "GET", "/")[0] == 404
    for method in ("POST", "PUT", "DELETE", "HEAD", "OPTIONS"):
        assert _request(port, method, "/metrics")[0] == 405, method


def test_a_stuck_loop_turns_healthz_503(endpoint) -> None:
    port = endpoint(Loop(stuck_for=health.STUCK_AFTER_SECONDS + 1))
    assert _request(port, "GET", "/healthz") == (503, b"stuck\n")


def test_silent_and_huge_requests_neither_hang_nor_block_the_endpoint(endpoint, monkeypatch) -> None:
    monkeypatch.setattr(health, "REQUEST_TIMEOUT", 1.0)
    port = endpoint()
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]  # connect, send nothing
    try:
        started = time.monotonic()
        assert _request(port, "GET", "/healthz")[0] == 200, "served beside 20 silent clients"
        huge = socket.create_connection(("127.0.0.1", port), timeout=5)
        huge.sendall(b"GET /" + b"a" * 70_000 + b" HTTP/1.0\r\n\r\n")
        assert huge.recv(100).startswith(b"HTTP/1.0 414"), "a request line over 64 KiB is refused"
        huge.close()
        for s in silent:  # each silent client is cut off after the timeout
            s.settimeout(5)
            assert s.recv(1) == b""
        assert time.monotonic() - started < 8
    finally:
        for s in silent:
            s.close()


def test_concurrent_requests_beyond_the_limit_get_503_at_once(endpoint, monkeypatch) -> None:
    release = threading.Event()
    entered = threading.Semaphore(0)

    def slow_metrics(registry):  # noqa: ANN001, ANN202
        entered.release()
        release.wait(10)
        return b""

    monkeypatch.setattr(health, "generate_latest", slow_metrics)
    port = endpoint()
    threads = [threading.Thread(target=_request, args=(port, "GET", "/metrics")) for _ in range(health.MAX_CONCURRENT)]
    for t in threads:
        t.start()
    for _ in threads:
        assert entered.acquire(timeout=5)
    try:
        assert _request(port, "GET", "/healthz") == (503, b"busy\n")
    finally:
        release.set()
        for t in threads:
            t.join(10)
    assert _request(port, "GET", "/healthz")[0] == 200
