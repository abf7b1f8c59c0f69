"""The operator endpoint: GET only on its three paths, and no client can hang or exhaust it."""

from __future__ import annotations

import contextlib
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

    def start(state: Loop | None = None, **bounds: float) -> int:
        port = _free_port()
        servers.append(health.serve_metrics(port, state, host="127.0.0.1", **bounds))
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

    def slow_metrics(registry):
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


def _closed_by_server(s: socket.socket) -> bool:
    """Whether the server has closed this connection (reading shows its end at once)."""
    s.settimeout(0.05)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:  # reset: closed while we were still sending
        return True


def test_slow_loris_clients_are_cut_off_at_the_deadline_with_no_thread_each(endpoint) -> None:
    deadline = 1.5
    port = endpoint(request_timeout=deadline)
    threads_before = threading.active_count()
    started = time.monotonic()
    loris = [socket.create_connection(("127.0.0.1", port)) for _ in range(60)]
    dribbled = b"GET /healthz HTTP/1.0\r\nX-Slow: " + b"a" * 100  # never ends its headers in time
    try:
        for n in range(1, 9):  # a byte from each every 0.3 s: a per-read timeout would never fire
            for s in loris:
                with contextlib.suppress(OSError):
                    s.send(dribbled[n - 1:n])
            if n == 2:
                assert threading.active_count() - threads_before < 5, "no thread per slow connection"
                assert _request(port, "GET", "/healthz") == (200, b"ok\n"), "answered beside 60 slow clients"
            time.sleep(0.3)
        # 2.4 s after they connected, past the deadline, though each sent a byte 0.3 s ago
        assert time.monotonic() - started < deadline + 2.0
        assert all(_closed_by_server(s) for s in loris), "every slow client was cut off at the deadline"
        assert threading.active_count() - threads_before < 5
    finally:
        for s in loris:
            s.close()


def test_connections_beyond_the_cap_close_the_oldest_and_a_probe_still_gets_in(endpoint) -> None:
    port = endpoint(max_open=20)
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]  # connect, send nothing
    try:
        time.sleep(0.3)  # let the endpoint accept them all
        assert sum(not _closed_by_server(s) for s in silent) <= 20, "at most max_open kept open"
        assert not any(_closed_by_server(s) for s in silent[-10:]), "the newest are kept, the oldest closed"
        assert _request(port, "GET", "/healthz") == (200, b"ok\n")
    finally:
        for s in silent:
            s.close()
