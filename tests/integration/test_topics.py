"""`slipguard topics create` against the real broker."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from streams.cli import main
from streams.kafka import config
from streams.kafka.topics import (
    CHANGELOG_MAX_MESSAGE_BYTES,
    CHANGELOG_SEGMENT_MS,
    TopicLayoutError,
    ensure_join_topics,
    existing_partitions,
    topic_specs,
    wait_for_topics,
)
from tests.integration.conftest import isolated
from tests.integration.workers import start


def _flags(s) -> list[str]:
    return [f"--{k.replace('_', '-')}={getattr(s, k)}" for k in
            ("payments_topic", "orders_topic", "recovery_topic", "late_topic", "anomalies_topic", "dlq_topic",
             "join_group")]


def test_topics_create_creates_every_topic_then_is_idempotent(base_settings, capsys) -> None:
    s = isolated(base_settings)
    assert main(["topics", "create", "--partitions=3", *_flags(s)]) == 0
    first = capsys.readouterr().out
    # A topic just created reaches this client's metadata a moment later (a broker just started).
    assert wait_for_topics(s, [spec.name for spec in topic_specs(s)], timeout=30) == []
    have = existing_partitions(AdminClient(config.admin(s)))
    for spec in topic_specs(s):
        assert spec.name in have, spec.name
        assert f"created  {spec.name}" in first
    assert have[s.payments_topic] == have[s.orders_topic] == have[s.changelog_topic] == 3

    assert main(["topics", "create", "--partitions=3", *_flags(s)]) == 0
    second = capsys.readouterr().out
    assert "created" not in second and f"verified {s.payments_topic} (3 partitions)" in second


def test_topics_create_rejects_payments_and_orders_with_different_partition_counts(base_settings, capsys) -> None:
    s = isolated(base_settings)
    admin = AdminClient(config.admin(s))
    futures = admin.create_topics([NewTopic(s.payments_topic, 4, 1), NewTopic(s.orders_topic, 2, 1)])
    for f in futures.values():
        f.result()
    assert main(["topics", "create", *_flags(s)]) == 3
    err = capsys.readouterr().err
    assert "same partition count" in err and f"{s.payments_topic}=4" in err and f"{s.orders_topic}=2" in err
    assert s.recovery_topic not in existing_partitions(admin), "nothing is created when the layout is wrong"


def test_missing_orders_topic_is_created_with_payments_partition_count(base_settings) -> None:
    s = isolated(base_settings)
    admin = AdminClient(config.admin(s))
    for f in admin.create_topics([NewTopic(s.payments_topic, 5, 1)]).values():
        f.result()
    assert main(["topics", "create", "--partitions=2", *_flags(s)]) == 0
    # A topic just created reaches this client's metadata a moment later (seen once in CI).
    assert wait_for_topics(s, [s.orders_topic], timeout=30) == []
    assert existing_partitions(admin)[s.orders_topic] == 5


def _create(admin: AdminClient, *topics: NewTopic) -> None:
    for f in admin.create_topics(list(topics)).values():
        f.result()


def test_join_creates_its_missing_changelog_compacted_and_co_partitioned(base_settings) -> None:
    s = isolated(base_settings)
    admin = AdminClient(config.admin(s))
    _create(admin, NewTopic(s.payments_topic, 3, 1), NewTopic(s.orders_topic, 3, 1))
    assert ensure_join_topics(s) == f"changelog {s.changelog_topic} created (3 partitions, compacted)"
    assert existing_partitions(admin)[s.changelog_topic] == 3
    res = ConfigResource(ConfigResource.Type.TOPIC, s.changelog_topic)
    conf = admin.describe_configs([res])[res].result()
    assert conf["cleanup.policy"].value == "compact"
    assert int(conf["max.message.bytes"].value) == CHANGELOG_MAX_MESSAGE_BYTES
    # Cleaned within minutes, tombstones included: a restore reads live state, not hours of churn.
    assert int(conf["segment.ms"].value) == int(conf["delete.retention.ms"].value) == CHANGELOG_SEGMENT_MS == 600_000
    assert ensure_join_topics(s).endswith("verified (3 partitions, compacted)")


def test_join_refuses_a_changelog_that_is_not_co_partitioned_or_not_compacted(base_settings) -> None:
    s = isolated(base_settings)
    admin = AdminClient(config.admin(s))
    _create(admin, NewTopic(s.payments_topic, 3, 1), NewTopic(s.orders_topic, 3, 1), NewTopic(s.changelog_topic, 2, 1))
    with pytest.raises(TopicLayoutError, match=f"{s.changelog_topic}=2"):
        ensure_join_topics(s)
    t = isolated(base_settings)
    _create(admin, NewTopic(t.payments_topic, 2, 1), NewTopic(t.orders_topic, 2, 1), NewTopic(t.changelog_topic, 2, 1))
    with pytest.raises(TopicLayoutError, match=r"cleanup\.policy=delete; it must be compacted"):
        ensure_join_topics(t)


def test_join_worker_with_a_missing_input_topic_exits_with_one_line_naming_it(base_settings, tmp_path) -> None:
    s = isolated(base_settings, topic_wait="3s")
    _create(AdminClient(config.admin(s)), NewTopic(s.payments_topic, 2, 1))
    log = tmp_path / "join.log"
    worker = start(s, ["join"], log)
    assert worker.wait(60) == 1
    text = log.read_text()
    assert f"slipguard join: input topic(s) {s.orders_topic} not found" in text, text
    assert "Traceback" not in text


def _compression(admin: AdminClient, topic: str, expect: str | None = None) -> str:
    """The topic's compression.type; with `expect`, waited for (a change takes a moment to
    reach the broker's config as describe_configs reads it)."""
    import time

    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    deadline = time.monotonic() + 10
    while True:
        value = admin.describe_configs([resource])[resource].result()["compression.type"].value
        if expect is None or value == expect or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_subscriber_topics_are_stored_with_a_compression_every_client_reads(base_settings, capsys) -> None:
    """gzip on the topics other teams read, also on ones created before (kafkajs cannot read lz4)."""
    s = isolated(base_settings)
    admin = AdminClient(config.admin(s))
    _create(admin, NewTopic(s.recovery_topic, 3, 1))  # an older deployment's topic: the broker's default
    assert _compression(admin, s.recovery_topic) == "producer"
    assert main(["topics", "create", "--partitions=3", *_flags(s)]) == 0
    for topic in (s.recovery_topic, s.late_topic, s.anomalies_topic, s.dlq_topic):
        assert _compression(admin, topic, expect="gzip") == "gzip", topic
    assert _compression(admin, s.changelog_topic) == "producer", "internal topics keep the producer's lz4"


def test_topics_create_warns_when_payments_or_orders_take_records_stamped_further_ahead_than_grace(
        base_settings, capsys) -> None:
    """docs/concepts/time-safety.md. The broker's default (Kafka 4: 1 h ahead of the
    append time) is warned about, and named; a bound below GRACE, or broker-stamped
    times, are not. The topics' configs are said, not changed."""
    import time

    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry

    s = isolated(base_settings, grace="5s")
    assert main(["topics", "create", "--partitions=1", "--grace=5s", *_flags(s)]) == 0
    out = capsys.readouterr().out
    for topic in (s.payments_topic, s.orders_topic):
        assert (f"warning  {topic}: takes records stamped up to 1 h ahead of their append time "
                "(message.timestamp.after.max.ms)") in out, out
    assert f"warning  {s.recovery_topic}: takes" not in out

    admin = AdminClient(config.admin(s))
    bounded = ConfigEntry("message.timestamp.after.max.ms", "2000", incremental_operation=AlterConfigOpType.SET)
    stamped = ConfigEntry("message.timestamp.type", "LogAppendTime", incremental_operation=AlterConfigOpType.SET)
    changes = [ConfigResource(ConfigResource.Type.TOPIC, s.payments_topic, incremental_configs=[bounded]),
               ConfigResource(ConfigResource.Type.TOPIC, s.orders_topic, incremental_configs=[stamped])]
    for f in admin.incremental_alter_configs(changes).values():
        f.result()
    deadline = time.monotonic() + 10
    while True:  # a change takes a moment to reach what describe_configs reads
        assert main(["topics", "create", "--partitions=1", "--grace=5s", *_flags(s)]) == 0
        out = capsys.readouterr().out
        if "takes records stamped" not in out or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "takes records stamped" not in out, out
