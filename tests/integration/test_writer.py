"""The recovery writer's logic without faust (streams/recover/writer.py), on the real
PostgreSQL, with dead letters delivered to the real broker."""

from __future__ import annotations

import asyncio

import psycopg
from confluent_kafka import Producer

from schemas import DeadLetter
from streams.kafka import config
from streams.recover.writer import Record, Writer
from tests.integration.conftest import consume_all
from tests.integration.test_recover import _recovery, writer_settings


def _record(s, offset: int, value: bytes) -> Record:
    return Record(s.recovery_topic, 0, offset, 1_800_000_000_000, [("traceparent", b"00-abc")], b"key", value,
                  token=offset)


def test_a_batch_is_written_once_and_acknowledged_only_after_its_commit(base_settings) -> None:
    s = writer_settings(base_settings)
    url = s.database_url.get_secret_value()
    producer = Producer(config.producer(s))
    acked: list[tuple[int, int]] = []  # (offset, rows in the database when it was acknowledged)

    async def send_dead_letter(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        producer.produce(s.dlq_topic, value, key, headers=headers)
        assert producer.flush(30) == 0

    async def ack(token: int) -> None:
        with psycopg.connect(url) as conn:
            acked.append((token, conn.execute("SELECT count(*) FROM orders").fetchone()[0]))

    async def run() -> None:
        writer = Writer(s, send_dead_letter)
        for i in range(3):
            await writer.add(_record(s, i, _recovery(i).encode()), ack)
        await writer.add(_record(s, 3, b'{"not": "a recovery"}'), ack)
        await writer.add(_record(s, 4, _recovery(0).encode()), ack)  # redelivered: nothing written twice
        await writer.flush(ack)
        if writer.conn is not None:
            await writer.conn.close()

    asyncio.run(run())
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT order_id FROM orders ORDER BY order_id").fetchall()
        audits = conn.execute("SELECT count(*) FROM recovery_audit").fetchone()[0]
    assert [r[0] for r in rows] == ["ord-0", "ord-1", "ord-2"] and audits == 3
    assert [offset for offset, _ in acked] == [0, 1, 2, 3, 4]
    assert all(n == 3 for _, n in acked), "every record acknowledged after its batch was committed"
    got = consume_all(s, s.dlq_topic, 1)
    dead = [DeadLetter.decode(m.value()) for m in got]
    assert len(dead) == 1 and dead[0].offset == 3 and dead[0].timestamp_ms == 1_800_000_000_000
    headers = dict(got[0].headers())
    assert headers["slipguard-type"] == b"dead_letter" and headers["traceparent"] == b"00-abc"
