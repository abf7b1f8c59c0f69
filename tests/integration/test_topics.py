"""`slipguard topics create` against the real broker."""

from __future__ import annotations

from confluent_kafka.admin import AdminClient, NewTopic

from streams.cli import main
from streams.kafka import config
from streams.kafka.topics import existing_partitions, topic_specs
from tests.integration.conftest import isolated


def _flags(s) -> list[str]:
    return [f"--{k.replace('_', '-')}={getattr(s, k)}" for k in
            ("payments_topic", "orders_topic", "recovery_topic", "late_topic", "anomalies_topic", "dlq_topic", "join_group")]


def test_topics_create_creates_every_topic_then_is_idempotent(base_settings, capsys) -> None:
    s = isolated(base_settings)
    assert main(["topics", "create", "--partitions=3", *_flags(s)]) == 0
    first = capsys.readouterr().out
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
    assert existing_partitions(admin)[s.orders_topic] == 5
