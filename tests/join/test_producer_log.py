"""The join producer's failed deliveries in its log: a line per topic and error, not per record."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError, Message

from streams.join import producer
from streams.join.producer import JoinProducer
from streams.settings import load_settings


def test_a_transactions_records_timing_out_together_are_one_line_with_a_count(monkeypatch, caplog) -> None:
    clock = [1000.0]
    monkeypatch.setattr(producer.time, "monotonic", lambda: clock[0])
    out = JoinProducer(load_settings(bootstrap_servers="127.0.0.1:1"), lambda: False)
    timed_out, too_large = KafkaError(KafkaError._MSG_TIMED_OUT), KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
    with caplog.at_level(logging.ERROR, logger="slipguard.join"):
        for _ in range(209):
            out._on_delivery(timed_out, Message(topic="changelog"))
        out._on_delivery(timed_out, Message(topic="orders.recovery"))
        out._on_delivery(too_large, Message(topic="changelog"))
        clock[0] += producer.FAILURE_LOG_S
        out._on_delivery(timed_out, Message(topic="changelog"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines
    assert lines[0].startswith("delivery to changelog failed") and "more" not in lines[0]
    assert lines[1].startswith("delivery to orders.recovery failed")
    assert lines[2].startswith("delivery to changelog failed") and "MSG_SIZE_TOO_LARGE" in lines[2]
    assert lines[3].endswith("(208 more since the last line)"), lines[3]
    assert out.delivery_failures == 212, "every failure still counts"
    assert out.unfixable == ("changelog", too_large)


@pytest.mark.parametrize("code", [KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT])
def test_records_purged_on_purpose_are_not_logged(code: int, caplog) -> None:
    out = JoinProducer(load_settings(bootstrap_servers="127.0.0.1:1"), lambda: False)
    with caplog.at_level(logging.ERROR, logger="slipguard.join"):
        out._on_delivery(KafkaError(code), Message(topic="changelog"))
    assert caplog.records == []
