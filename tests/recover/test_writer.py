"""The writer's handling of records and batches (streams/recover/writer.py), with no Kafka
and no PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable

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


# ---------------------------------------------------------------- a batch that fails
# A batch is written in a task of its own while the next is gathered. A failure retrying
# cannot fix used to stay in that task until the next batch came; with none coming the
# writer waited silently, nothing acknowledged, /healthz 200. It must stop the writer at once.


class _Stopped(Exception):
    """What the test's _fatal raises in place of exiting the process."""


def _run_one_batch(monkeypatch: pytest.MonkeyPatch, send: Callable, ack: Callable) -> list[str]:
    """Hand the writer one poison record, never another, and give it a second: the
    lines it stopped with (none: it did not stop)."""
    from streams.recover import writer as writer_module

    said: list[str] = []

    def fatal(message: str) -> None:
        said.append(message)
        raise _Stopped(message)

    monkeypatch.setattr(writer_module, "_fatal", fatal)

    async def run() -> None:
        writer = Writer(S, send)
        await writer.add(Record(S.recovery_topic, 3, 41, None, [], b"k", b"{not json", token="t41"), ack)
        await writer.flush_if_due(ack)
        writer.first_at -= 1  # (its batch is due)
        await writer.flush_if_due(ack)
        for _ in range(100):
            if said:
                break
            await asyncio.sleep(0.01)
        if writer.in_flight is not None and writer.in_flight.done():
            writer.in_flight.exception()  # (retrieved, whatever it is)

    asyncio.run(run())
    return said


def test_a_dead_letter_the_dlq_does_not_take_stops_the_writer_at_once_with_nothing_acknowledged(
        monkeypatch: pytest.MonkeyPatch) -> None:
    acked: list = []

    async def send(key: bytes, value: bytes, headers: list) -> None:
        raise RuntimeError("MessageSizeTooLargeError: MESSAGE_SIZE_TOO_LARGE")

    async def ack(token: object) -> None:
        acked.append(token)

    said = _run_one_batch(monkeypatch, send, ack)
    assert len(said) == 1, "stopped at once, with no other batch coming"
    assert f"{S.recovery_topic}:3:41" in said[0] and S.dlq_topic in said[0] and "MESSAGE_SIZE_TOO_LARGE" in said[0]
    assert "nothing of this batch" in said[0] and acked == []


def test_an_unexpected_error_in_a_batch_stops_the_writer_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    async def send(key: bytes, value: bytes, headers: list) -> None:
        pass

    async def ack(token: object) -> None:
        raise KeyError("a bug")

    said = _run_one_batch(monkeypatch, send, ack)
    assert len(said) == 1 and "KeyError" in said[0], said


def test_a_batch_cancelled_at_shutdown_does_not_stop_the_writer_as_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.recover import writer as writer_module

    said: list[str] = []
    monkeypatch.setattr(writer_module, "_fatal", said.append)

    async def send(key: bytes, value: bytes, headers: list) -> None:
        await asyncio.Event().wait()  # a DLQ that does not answer

    async def run() -> None:
        writer = Writer(S, send)
        await writer.add(Record(S.recovery_topic, 0, 0, None, [], None, b"{"), _never)
        writer.first_at -= 1
        await writer.flush_if_due(_never)
        await asyncio.sleep(0.05)
        assert writer.in_flight is not None
        writer.in_flight.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer.in_flight

    asyncio.run(run())
    assert said == []


async def _never(token: object) -> None:
    raise AssertionError("acknowledged")
