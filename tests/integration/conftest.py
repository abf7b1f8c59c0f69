"""Integration fixtures: the real local stack (deploy/local/stack.sh), isolated per test.

Each test gets its own topic names and consumer groups, so tests never see each other's
records. If the stack is not up, every integration test fails (never skips): CI must not
pass without having run them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from streams.kafka import config
from streams.kafka.topics import create_topics
from streams.settings import Settings, load_settings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.integration)


LOG_TAIL_LINES = 80


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's evidence: the last LOG_TAIL_LINES lines (librdkafka's debug lines left
    out) of every *.log its processes wrote under its tmp_path, as sections of the report,
    which CI prints. A failure seen only in CI (a worker that never recovered a payment, on
    a loaded machine) otherwise left nothing to read: its tmp_path is gone with the run."""
    report = yield
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if report.failed and isinstance(tmp, Path):
        for path in sorted(tmp.rglob("*.log")):
            lines = [line for line in path.read_text(errors="replace").splitlines() if not line.startswith("%7|")]
            report.sections.append((f"{path.relative_to(tmp)} (last {LOG_TAIL_LINES} lines)",
                                    "\n".join(lines[-LOG_TAIL_LINES:])))
    return report


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return answering(load_settings())


def answering(s: Settings, start: str = "run `make up` first") -> Settings:
    """`s`, once its Kafka and its PostgreSQL answer; else the test fails, saying to `start` them."""
    try:
        AdminClient(config.admin(s)).list_topics(timeout=10)
    except KafkaException as exc:
        pytest.fail(f"Kafka at {s.bootstrap_servers} does not answer ({exc}); {start}")
    try:
        with psycopg.connect(s.database_url.get_secret_value(), connect_timeout=5) as conn:
            conn.execute("select 1")
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL does not answer ({exc}); {start}")
    return s


def isolated(base: Settings, **over: object) -> Settings:
    return base.with_prefix(f"t{uuid.uuid4().hex[:8]}", **({"partitions": 4, "metrics_port": 0} | over))


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    s = isolated(base_settings)
    create_topics(s)
    return s


def produce(s: Settings, topic: str, records: list[tuple[bytes | None, bytes, int | None]]) -> None:
    """Produce (key, value, timestamp_ms) records with the project's producer config."""
    failed: list[str] = []
    p = Producer(config.producer(s, on_delivery=lambda err, _msg: err is not None and failed.append(str(err))))
    for key, value, ts in records:
        if ts is None:
            p.produce(topic, value=value, key=key)
        else:
            p.produce(topic, value=value, key=key, timestamp=ts)
        p.poll(0)
    assert p.flush(30) == 0
    assert not failed, f"{len(failed)} records refused by the broker, e.g. {failed[0]}"


def consume_all(s: Settings, topic: str, expected: int, timeout: float = 30.0) -> list[Message]:
    """Read a topic from the beginning as a read_committed reader until `expected` records (or timeout)."""
    import time

    c = Consumer(config.consumer(s, f"reader-{uuid.uuid4().hex[:8]}"))
    c.subscribe([topic])
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < expected and time.monotonic() < deadline:
            for m in c.consume(1000, timeout=0.5):
                if m.error() is None:
                    got.append(m)
    finally:
        c.close()
    return got


@pytest.fixture
def db(base_settings: Settings) -> Iterator[psycopg.Connection]:
    with psycopg.connect(base_settings.database_url.get_secret_value(), autocommit=True) as conn:
        yield conn
