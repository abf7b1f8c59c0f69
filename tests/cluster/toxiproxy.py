"""Toxiproxy's HTTP API (v2), the little the fault tests use.

A wrapper of urllib rather than a PyPI client: the one on PyPI (toxiproxy-python 0.1.1)
was last released in 2019, before Toxiproxy 2.x's API settled; these calls are the API's
own (https://github.com/Shopify/toxiproxy, README "HTTP API"): proxies are enabled or
disabled by POST /proxies/{name}, toxics added by POST /proxies/{name}/toxics and removed by
DELETE, and POST /reset enables every proxy and removes every toxic.

A disabled proxy closes the connections it carries and refuses new ones: to the client
it is a broker that went away (connection refused), the sharpest network partition.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class ToxiproxyError(RuntimeError):
    pass


class Toxiproxy:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            raise ToxiproxyError(f"{method} {path}: {exc.code} {exc.read().decode()[:300]}") from None
        return json.loads(text) if text.strip() else None

    def proxies(self) -> dict[str, Any]:
        return self._call("GET", "/proxies")

    def reset(self) -> None:
        """Every proxy enabled, every toxic removed."""
        self._call("POST", "/reset")

    def enable(self, proxy: str, enabled: bool = True) -> None:
        self._call("POST", f"/proxies/{proxy}", {"enabled": enabled})

    def disable(self, proxy: str) -> None:
        self.enable(proxy, False)

    def add(self, proxy: str, kind: str, name: str | None = None, *, stream: str = "downstream",
            toxicity: float = 1.0, **attributes: int) -> str:
        """A toxic on a proxy; returns its name. `stream`: downstream (broker to client: the
        responses) or upstream (the requests). Kinds and their attributes: latency (latency,
        jitter: ms), bandwidth (rate: KB/s), timeout (timeout: ms, 0 = never; the data is
        held and the connection closed after it), reset_peer (timeout: ms, then TCP RST),
        slow_close (delay), slicer (average_size, size_variation, delay), limit_data (bytes)."""
        name = name or f"{kind}_{stream}"
        self._call("POST", f"/proxies/{proxy}/toxics",
                   {"name": name, "type": kind, "stream": stream, "toxicity": toxicity, "attributes": attributes})
        return name

    def remove(self, proxy: str, toxic: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{toxic}")

    def latency(self, proxy: str, ms: int, jitter: int = 0, stream: str = "downstream") -> str:
        return self.add(proxy, "latency", stream=stream, latency=ms, jitter=jitter)

    def bandwidth(self, proxy: str, kb_per_s: int, stream: str = "downstream") -> str:
        return self.add(proxy, "bandwidth", stream=stream, rate=kb_per_s)

    def reset_peer(self, proxy: str, after_ms: int = 0, stream: str = "downstream") -> str:
        return self.add(proxy, "reset_peer", stream=stream, timeout=after_ms)

    def timeout(self, proxy: str, ms: int = 0, stream: str = "downstream") -> str:
        return self.add(proxy, "timeout", stream=stream, timeout=ms)
