"""The operator endpoint of each worker: /metrics (Prometheus), /healthz and /readyz."""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger("slipguard.observe")

STUCK_AFTER_SECONDS = 60.0


class Health(Protocol):
    @property
    def last_loop(self) -> float: ...  # time.monotonic() of the last loop iteration

    @property
    def ready(self) -> bool: ...  # assigned partitions restored and being consumed


MAX_CONCURRENT = 8  # requests served at once; more get 503 at once instead of a thread each
REQUEST_TIMEOUT = 5.0  # seconds a client may take to send its request or read the answer
PATHS = ("/metrics", "/healthz", "/readyz")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 16


def serve_metrics(port: int, health: Health | None = None, host: str = "0.0.0.0") -> ThreadingHTTPServer | None:
    """Serve GET on PATHS in daemon threads; port 0 turns the endpoint off.

    Bounded: a request must arrive within REQUEST_TIMEOUT (a slow or silent client is cut
    off), its line and headers are capped by http.server (64 KiB, 100 headers), any other
    method is 405, and at most MAX_CONCURRENT requests are served at once (the others get
    503), so no client can hang or exhaust the worker it observes."""
    if not port:
        return None
    slots = threading.BoundedSemaphore(MAX_CONCURRENT)

    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT  # applied to the connection's socket by StreamRequestHandler
        protocol_version = "HTTP/1.0"  # one request per connection: nothing is held open

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if not slots.acquire(blocking=False):
                self._send(503, b"busy\n")
                return
            try:
                self._get(self.path.split("?", 1)[0])
            finally:
                slots.release()

        def _get(self, path: str) -> None:
            if path == "/metrics":
                self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                stuck = health is not None and time.monotonic() - health.last_loop > STUCK_AFTER_SECONDS
                self._send(503 if stuck else 200, b"stuck\n" if stuck else b"ok\n")
            elif path == "/readyz":
                ready = health is None or health.ready
                self._send(200 if ready else 503, b"ready\n" if ready else b"not ready\n")
            else:
                self._send(404, b"not found\n")

        def _refuse(self) -> None:
            self._send(405, b"only GET\n", extra=[("Allow", "GET")])

        do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_TRACE = do_CONNECT = _refuse  # noqa: N815

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
                  extra: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for name, value in extra:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = _Server((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics, /healthz and /readyz on %s:%d", host, port)
    return server
