"""The operator endpoint of each worker: /metrics (Prometheus), /healthz and /readyz."""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger("slipguard.observe")

STUCK_AFTER_SECONDS = 60.0


class Health(Protocol):
    last_loop: float  # time.monotonic() of the last loop iteration
    ready: bool  # assigned partitions restored and being consumed


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


class LagCollector:
    """Exports consumer lag of some groups, refreshed in the background every `interval` s.

    Registered in each worker for its own group, and by `slipguard lag --serve` for any
    groups (including groups with no active member).
    """

    def __init__(self, settings: Any, groups: list[str], interval: float = 10.0) -> None:
        self.settings, self.groups, self.interval = settings, groups, interval
        self.rows: list[Any] = []
        self.errors = 0
        self._stop = threading.Event()

    def start(self) -> LagCollector:
        from prometheus_client import REGISTRY

        REGISTRY.register(self)
        threading.Thread(target=self._loop, name="lag", daemon=True).start()
        return self

    def refresh(self) -> None:
        from streams.kafka.lag import LagError, group_lag

        try:
            self.rows = group_lag(self.settings, self.groups, timeout=5)
        except (LagError, Exception) as exc:  # noqa: BLE001 (a broker hiccup must not kill the worker)
            self.errors += 1
            log.warning("lag refresh failed: %s", exc)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.interval)

    def collect(self):  # noqa: ANN201 (prometheus_client's collector protocol)
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["group", "topic", "partition"]
        msgs = GaugeMetricFamily("slipguard_consumer_lag_messages", "Log end offset minus committed offset", labels=labels)
        secs = GaugeMetricFamily("slipguard_consumer_lag_seconds", "Age of the next unread record", labels=labels)
        cur = GaugeMetricFamily("slipguard_consumer_committed_offset", "Committed offset of the group", labels=labels)
        end = GaugeMetricFamily("slipguard_log_end_offset", "Log end offset (high watermark)", labels=labels)
        for r in self.rows:
            key = [r.group, r.topic, str(r.partition)]
            end.add_metric(key, r.log_end_offset)
            if r.current_offset is not None:
                cur.add_metric(key, r.current_offset)
            if r.lag is not None:
                msgs.add_metric(key, r.lag)
            if r.lag_seconds is not None:
                secs.add_metric(key, r.lag_seconds)
        errors = CounterMetricFamily("slipguard_lag_refresh_errors", "Failed lag refreshes")
        errors.add_metric([], self.errors)
        return [msgs, secs, cur, end, errors]
