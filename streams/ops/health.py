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


def serve_metrics(port: int, health: Health | None = None, host: str = "0.0.0.0") -> ThreadingHTTPServer | None:
    """Serve in a daemon thread; port 0 turns the endpoint off."""
    if not port:
        return None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.startswith("/metrics"):
                self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                stuck = health is not None and time.monotonic() - health.last_loop > STUCK_AFTER_SECONDS
                self._send(503 if stuck else 200, b"stuck\n" if stuck else b"ok\n")
            elif self.path == "/readyz":
                ready = health is None or health.ready
                self._send(200 if ready else 503, b"ready\n" if ready else b"not ready\n")
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics, /healthz and /readyz on port %d", port)
    return server
