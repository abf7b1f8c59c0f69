"""The writer's handling of records and batches (streams/recover/writer.py), with no Kafka
and no PostgreSQL."""

from __future__ import annotations

import base64

import pytest

from schemas import DeadLetter
from streams.recover.writer import Record, Writer
from streams.settings import Settings
from tests.recover.test_rules import late, recovery

TRACE = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
S = Settings()
# A header name that was not UTF-8 on the wire, as the reader hands it over (faust_compat:
# decoded with surrogateescape).
UNREADABLE = b"\xff\xfe-bad".decode("utf-8", "surrogateescape")


@pytest.mark.parametrize("topic", [S.recovery_topic, S.late_topic])
def test_a_record_with_a_header_name_that_is_not_utf8_is_dead_lettered_whatever_its_value(topic: str) -> None:
    value = (recovery() if topic == S.recovery_topic else late()).encode()
    headers = [("traceparent", TRACE), (UNREADABLE, b"1"), ("h\u00e9", b"2")]
    record = Record(topic, 2, 7, 1_800_000_000_000, headers, b"k", value)
    items, poison = Writer(S, None)._decode([record])  # type: ignore[arg-type]
    assert items == [] and [(r.offset, summary) for r, _, summary in poison] == [(7, "a header name is not UTF-8")]
    error = poison[0][1]
    assert "b'\\xff\\xfe-bad'" in error, error

    key, letter, letter_headers = Writer(S, None).dead_letter_of(record, error)  # type: ignore[arg-type]
    dead = DeadLetter.decode(letter)
    assert (dead.source_topic, dead.partition, dead.offset, key) == (topic, 2, 7, f"{topic}:2:7".encode())
    assert base64.b64decode(dead.value_b64 or "") == value
    assert [(h.key, h.value_b64) for h in dead.headers or []] == [
        ("traceparent", base64.b64encode(TRACE).decode()), ("h\u00e9", base64.b64encode(b"2").decode())]
    assert dead.headers_dropped == 1, "marked: it cannot be replayed as it was"
    assert ("traceparent", TRACE) in letter_headers


def test_a_record_whose_header_names_are_utf8_keeps_them_all_in_its_dead_letter() -> None:
    record = Record(S.recovery_topic, 0, 1, None, [("h\u00e9", b"1"), ("\u2603", None)], None, b"{")
    _, poison = Writer(S, None)._decode([record])  # type: ignore[arg-type]
    dead = DeadLetter.decode(Writer(S, None).dead_letter_of(record, poison[0][1])[1])  # type: ignore[arg-type]
    assert [h.key for h in dead.headers or []] == ["h\u00e9", "\u2603"] and dead.headers_dropped is None
