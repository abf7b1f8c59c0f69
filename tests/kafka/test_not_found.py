"""A command whose topics are not there says so in one line, naming the cluster's topics
that look like slipguard's under other names (the demo's `demo.<run>.*`), at once: no
retries, no storm of warnings."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import pytest

from streams.kafka.topics import not_found
from streams.settings import Settings


@pytest.fixture(autouse=True)
def _defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("SLIPGUARD_")]:
        monkeypatch.delenv(name)


DEMO = [f"demo.120301.{t}" for t in ("payments", "orders", "orders.recovery", "orders.late", "payments.anomalies",
                                     "slipguard.dlq")]


def test_it_names_the_missing_topic_and_the_look_alikes_by_prefix_with_the_demos_env_file() -> None:
    line = not_found(Settings(), ["payments"], [*DEMO, "slipguard-demo-120301-join-state-changelog", "audit"])
    assert "\n" not in line
    assert line.startswith("topic(s) payments not found on 127.0.0.1:9092; ")
    assert "demo.120301.* (6)" in line and "--env-file .stack/demo/120301.env" in line
    assert "audit" not in line


def test_without_look_alikes_it_says_how_to_make_the_topics() -> None:
    line = not_found(Settings(), ["payments", "orders"], ["audit", "payments-v2x"])
    assert "payments, orders not found" in line and "`slipguard topics create`" in line


def test_many_prefixes_are_cut_to_three() -> None:
    topics = [f"bench-{i}.payments" for i in range(5)]
    line = not_found(Settings(), ["payments"], topics)
    assert line.count("(1)") == 3 and "and 2 more" in line and "SLIPGUARD_*_TOPIC" in line


class _Cluster:
    """A consumer of a cluster that holds only the demo's topics."""

    calls = 0

    def __init__(self, *_args) -> None:
        pass

    def list_topics(self, topic=None, timeout=None):
        _Cluster.calls += 1
        have = {t: SimpleNamespace(error=None, partitions={0: None}) for t in DEMO}
        return SimpleNamespace(topics={topic: have[topic]} if topic in have else ({} if topic else have))

    def close(self) -> None:
        pass


def test_lag_on_topics_that_are_not_there_fails_at_once_in_one_line(monkeypatch, caplog) -> None:
    from streams.ops import lag

    monkeypatch.setattr(lag, "Consumer", _Cluster)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), pytest.raises(lag.LagError) as failed:
        lag.group_lag(Settings(), ["slipguard-join"])
    assert time.monotonic() - started < 1, "no retries"
    assert [r.message for r in caplog.records] == [], "no warning per retry"
    assert "payments, orders not found" in str(failed.value) and "demo.120301.*" in str(failed.value)
    assert _Cluster.calls <= 3
