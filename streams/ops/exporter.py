"""The lag exporter (`slipguard lag --serve`): the one process that exports group lag."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger("slipguard.lag")

class LagCollector:
    """Exports consumer lag of some groups, refreshed in the background every `interval` s.

    Only `slipguard lag --serve` runs one: it is the single exporter of group lag, so each
    partition's lag is exported by exactly one process (workers export none; summing over
    workers and an exporter would count it several times), and it keeps working for groups
    with no active member. A refresh that fails keeps the last rows and counts the error;
    `slipguard_lag_refresh_age_seconds` says how old they are.
    """

    def __init__(self, settings: Any, groups: list[str], interval: float = 10.0,
                 topics: list[str] | None = None) -> None:
        self.settings, self.groups, self.interval, self.topics = settings, groups, interval, topics
        self.rows: list[Any] = []
        self.errors = 0
        self.refreshed_at: float | None = None
        self._stop = threading.Event()

    def start(self) -> LagCollector:
        from prometheus_client import REGISTRY

        REGISTRY.register(self)
        self._thread = threading.Thread(target=self._loop, name="lag", daemon=True)
        self._thread.start()
        return self

    def stop(self, wait: float = 0.0) -> bool:
        """Stops refreshing; with `wait`, waits that long for a refresh under way to end.
        Whether it ended (a refresh is bounded by its own timeouts, but librdkafka has
        hung on a client's teardown with a broker unreachable)."""
        self._stop.set()
        thread = getattr(self, "_thread", None)
        if thread is not None and wait > 0:
            thread.join(wait)
            return not thread.is_alive()
        return thread is None or not thread.is_alive()

    def refresh(self) -> None:
        from streams.ops.lag import group_lag

        try:
            self.rows = group_lag(self.settings, self.groups, topics=self.topics, timeout=5)
            self.refreshed_at = time.monotonic()
        except Exception as exc:  # noqa: BLE001 (a broker hiccup must not stop the exporter)
            self.errors += 1
            log.warning("lag refresh failed: %s", exc)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.interval)

    def collect(self):  # noqa: ANN201 (prometheus_client's collector protocol)
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["group", "topic", "partition"]
        msgs = GaugeMetricFamily("slipguard_consumer_lag_messages", "Log end offset minus committed offset "
                                 "(0 when only transaction markers are left)", labels=labels)
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
        age = GaugeMetricFamily("slipguard_lag_refresh_age_seconds", "Seconds since lag was last read successfully")
        age.add_metric([], -1 if self.refreshed_at is None else time.monotonic() - self.refreshed_at)
        return [msgs, secs, cur, end, errors, age]
