"""Logs: one JSON object per line with Kafka coordinates as fields, or text with them appended."""

from __future__ import annotations

import json
import logging

from streams.ops.logs import JsonFormatter, TextFormatter


def _record(**extra) -> logging.LogRecord:
    record = logging.LogRecord("slipguard.join", logging.WARNING, __file__, 1, "record sent to the DLQ: %s", ("bad",), None)
    for k, v in extra.items():
        setattr(record, k, v)
    return record


def test_json_logs_carry_topic_partition_and_offset() -> None:
    line = JsonFormatter().format(_record(topic="payments", partition=3, offset=42))
    body = json.loads(line)
    assert body["msg"] == "record sent to the DLQ: bad" and body["level"] == "warning"
    assert (body["topic"], body["partition"], body["offset"]) == ("payments", 3, 42)
    assert "\n" not in line


def test_text_logs_append_the_coordinates() -> None:
    line = TextFormatter().format(_record(topic="orders", partition=1, offset=7))
    assert line.endswith("[topic=orders partition=1 offset=7]")


def test_logged_validation_errors_name_fields_never_values() -> None:
    import pytest
    from pydantic import ValidationError

    from schemas import Payment
    from streams.ops.logs import safe_error

    with pytest.raises(ValidationError) as info:
        Payment.decode(b'{"payment_id":"p","order_id":"o","user_id":"u","amount":"123456.789012","currency":"CNY",'
                       b'"status":"succeeded","paid_at":"2026-01-01T00:00:00Z"}')
    text = safe_error(info.value)
    assert "amount" in text and "123456.789012" not in text
