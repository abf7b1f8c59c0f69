"""Logs: one JSON object per line with Kafka coordinates as fields, or text with them appended."""

from __future__ import annotations

import json
import logging

import pytest

from streams.ops.logs import JsonFormatter, TextFormatter


def _record(**extra) -> logging.LogRecord:
    record = logging.LogRecord("slipguard.join", logging.WARNING, __file__, 1, "record sent to the DLQ: %s", ("bad",),
                               None)
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


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_tracebacks_and_stacks_never_carry_the_database_password(capsys, root_logging, log_format: str) -> None:
    import psycopg

    from streams.ops.logs import setup_logging
    from streams.settings import load_settings

    url = "postgresql://writer:pw-in-traceback-7f3@db.example:5432/slipguard"
    setup_logging(load_settings(database_url=url, log_format=log_format))
    log = logging.getLogger("slipguard.test")
    try:
        raise psycopg.OperationalError(f'connection to "{url}" failed: no route')  # as psycopg quotes the URI
    except psycopg.OperationalError:
        log.exception("database unreachable")
    log.warning("where from", stack_info=True)  # the stack shows this line: pw-in-traceback-7f3
    err = capsys.readouterr().err
    assert "pw-in-traceback-7f3" not in err, err
    assert "OperationalError" in err and "***" in err and "where from" in err
    if log_format == "json":
        lines = [json.loads(line) for line in err.splitlines()]
        assert "exc" in lines[0] and "stack" in lines[1], "the traceback and the stack are in the JSON too"


def test_a_short_password_is_hidden_where_it_is_a_credential_not_in_every_name() -> None:
    """The local stack's password is `slipguard`: masked everywhere, every logger, topic
    and group name read `***` (`***.join`, `t1.***.dlq`)."""
    from streams.ops import logs
    from streams.settings import load_settings

    logs._SECRETS[:] = logs.secret_values(load_settings(database_url="postgresql://slipguard:slipguard@h:5432/slipguard"))
    assert logs.redact("slipguard.join: restored partitions of t1.slipguard.dlq") == \
        "slipguard.join: restored partitions of t1.slipguard.dlq"
    assert "slipguard:slipguard@" not in logs.redact("cannot connect to postgresql://slipguard:slipguard@h:5432/db")
    said = logs.redact("host=h user=slipguard password=slipguard port=5432")
    assert said == "host=h user=slipguard password=*** port=5432"
