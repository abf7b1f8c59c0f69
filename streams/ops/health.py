"""The operator endpoint of each worker: /metrics (Prometheus), /healthz and /readyz.

One thread accepts connections and reads their requests without blocking; only a request
that has fully arrived gets a thread to answer it. So a client that connects and then
sends slowly, or nothing at all, costs a socket and a small buffer, never a thread, and
is cut off REQUEST_TIMEOUT after it connected whatever it sends meanwhile (a timeout per
read let 300 clients sending a byte every 3 s hold 300 threads).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger("slipguard.observe")

STUCK_AFTER_SECONDS = 60.0


class Health(Protocol):
    @property
    def last_loop(self) -> float: ...  # time.monotonic() of the last loop iteration

    @property
    def ready(self) -> bool: ...  # assigned partitions restored and being consumed


MAX_CONCURRENT = 8  # requests answered at once (a thread each); more get 503 at once, with no thread
MAX_OPEN = 128  # connections still sending their request; a new one beyond it closes the oldest
REQUEST_TIMEOUT = 5.0  # seconds from accept to the end of the request's headers; also bounds each write
HEAD_MAX = 96 * 1024  # request line and headers kept; past it http.server answers 414/431 (lines over 64 KiB)
PATHS = ("/metrics", "/healthz", "/readyz")
_END_OF_HEAD = re.compile(rb"\n\r?\n")  # an empty line, as http.server reads one (CRLF or LF)
_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n\r\n"
         b"busy\n")


@dataclass
class _Arriving:
    """A connection whose request has not fully arrived."""

    address: tuple
    deadline: float
    head: bytearray = field(default_factory=bytearray)


class Endpoint:
    """The listening socket, the thread that reads requests (`serve_forever`) and the
    bounded threads that answer them."""

    def __init__(self, host: str, port: int, health: Health | None, request_timeout: float, max_open: int) -> None:
        self.health, self.request_timeout, self.max_open = health, request_timeout, max_open
        self.socket = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                           backlog=128)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self._arriving: dict[socket.socket, _Arriving] = {}  # in accept order: the oldest first
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        self._stop, self._stopped = threading.Event(), threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.socket, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)

    def open_connections(self) -> int:
        """Connections whose request is still arriving."""
        return len(self._arriving)

    def serve_forever(self) -> None:
        try:
            while not self._stop.is_set():
                for key, _ in self._selector.select(timeout=self._until_first_deadline()):
                    conn = key.fileobj
                    if conn is self.socket:
                        self._accept()
                    elif conn is not self._wake_r and isinstance(conn, socket.socket):
                        self._read(conn)
                self._expire()
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serving; returns once the loop has stopped (then server_close is safe)."""
        self._stop.set()
        self._wake_w.send(b"x")
        self._stopped.wait(5)

    def server_close(self) -> None:
        for conn in list(self._arriving):
            self._drop(conn)
        for s in (self.socket, self._wake_r, self._wake_w):
            s.close()
        self._selector.close()

    def _until_first_deadline(self) -> float:
        if not self._arriving:
            return 1.0
        first = next(iter(self._arriving.values())).deadline  # all share one timeout: the oldest is first
        return max(0.0, first - time.monotonic())

    def _accept(self) -> None:
        for _ in range(64):  # a burst at a time, so that reads and deadlines are not starved
            try:
                conn, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, a connection reset before accept
                log.warning("metrics endpoint: accept failed: %s", exc)
                return
            if len(self._arriving) >= self.max_open:
                # The oldest has had the longest to send its request: closing it (not the new
                # one) means a flood cannot lock out a probe that sends its request at once.
                self._drop(next(iter(self._arriving)))
            conn.setblocking(False)
            self._arriving[conn] = _Arriving(address, time.monotonic() + self.request_timeout)
            self._selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn: socket.socket) -> None:
        arriving = self._arriving.get(conn)
        if arriving is None:
            return
        try:
            data = conn.recv(HEAD_MAX - len(arriving.head))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        searched_from = max(0, len(arriving.head) - 2)
        arriving.head += data
        if _END_OF_HEAD.search(arriving.head, searched_from) or len(arriving.head) >= HEAD_MAX:
            self._selector.unregister(conn)
            del self._arriving[conn]
            self._answer(conn, arriving)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._arriving:
            conn, arriving = next(iter(self._arriving.items()))
            if arriving.deadline > now:
                return
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        self._arriving.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):  # not registered (any more)
            self._selector.unregister(conn)
        conn.close()

    def _answer(self, conn: socket.socket, arriving: _Arriving) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                conn.send(_BUSY)  # a fresh socket's send buffer takes it whole: no waiting, no thread
            conn.close()
            return
        threading.Thread(target=self._respond, args=(conn, arriving), name="metrics-request", daemon=True).start()

    def _respond(self, conn: socket.socket, arriving: _Arriving) -> None:
        try:
            conn.settimeout(self.request_timeout)  # blocking, and each write of the answer bounded
            _Request(bytes(arriving.head), conn, arriving.address, self)
        except OSError as exc:  # the client went away or stopped reading the answer
            log.debug("metrics endpoint: answer not delivered: %s", exc)
        finally:
            conn.close()
            self._slots.release()


class _Request(BaseHTTPRequestHandler):
    """One request whose line and headers have arrived: parsed and answered by http.server."""

    protocol_version = "HTTP/1.0"  # one request per connection: nothing is held open

    def __init__(self, head: bytes, conn: socket.socket, address: tuple, endpoint: Endpoint) -> None:
        self._head, self.endpoint = head, endpoint
        # socketserver only keeps `server` for handlers that look at it (these do not):
        # the endpoint is not a socketserver.BaseServer, and need not be one.
        super().__init__(conn, address, endpoint)  # type: ignore[arg-type]  # (see above)

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket's reader: the request was already read
        self.rfile = io.BytesIO(self._head)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        health = self.endpoint.health
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
        self._send(405, b"only GET\n", extra=(("Allow", "GET"),))

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_TRACE = do_CONNECT = _refuse  # noqa: N815

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
              extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serve_metrics(port: int, health: Health | None = None, host: str = "127.0.0.1", *,
                  request_timeout: float | None = None, max_open: int | None = None) -> Endpoint | None:
    """Serve GET on PATHS; port 0 turns the endpoint off.

    Bounded: a request's line and headers must arrive within `request_timeout` seconds of
    its connection (default REQUEST_TIMEOUT), however slowly they trickle; at most
    `max_open` connections (default MAX_OPEN) wait for their request, a new one closing
    the oldest; line and headers are capped (HEAD_MAX, and http.server's 64 KiB per line,
    100 headers); any other method is 405; at most MAX_CONCURRENT requests are answered
    at once (each in a thread), the others get 503 at once. So no client can hang the
    endpoint or exhaust the threads of the worker it observes."""
    if not port:
        return None
    server = Endpoint(host, port, health, REQUEST_TIMEOUT if request_timeout is None else request_timeout,
                      MAX_OPEN if max_open is None else max_open)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics, /healthz and /readyz on %s:%d", host, port)
    return server
