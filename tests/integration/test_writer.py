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

TRACE = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _record(s, offset: int, value: bytes) -> Record:
    return Record(s.recovery_topic, 0, offset, 1_800_000_000_000, [("traceparent", TRACE)], b"key", value,
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
    assert headers["slipguard-type"] == b"dead_letter" and headers["traceparent"] == TRACE


def test_one_batch_gives_the_outcomes_of_writing_its_records_one_by_one(base_settings) -> None:
    """The batch goes to PostgreSQL as one statement (arrays, unnest); its outcomes must be
    those of writing the records in order: of two payments for one order the first is
    inserted and the second already present; a recovery seen twice is counted once; a
    failed payment is rejected; amounts, times and metadata arrive exactly."""
    from datetime import timedelta
    from decimal import Decimal

    from schemas import Recovery, recovery_id_for
    from streams.recover.store import Item, write_batch
    from tests.integration.test_recover import T0, payment

    s = writer_settings(base_settings)
    url = s.database_url.get_secret_value()

    def rec(pid: str, oid: str, **over) -> Recovery:
        p = payment(payment_id=pid, order_id=oid, **over)
        return Recovery(recovery_id=recovery_id_for(pid), order_id=oid, payment=p,
                        deadline=T0 + timedelta(seconds=60), detected_at=T0 + timedelta(seconds=66))

    first, second = rec("pay-a", "ord-x", amount=Decimal("1.2345")), rec("pay-b", "ord-x")
    failed = rec("pay-c", "ord-y", status="failed")
    odd = rec("pay-d", "ord-z", amount=Decimal("9999.5"), metadata={"game": "百家乐", "n": 2.5, "none": None})
    batch = [first, second, first, failed, odd]
    items = [Item(s.recovery_topic, 2, 100 + n, r) for n, r in enumerate(batch)]

    async def run():
        async with await psycopg.AsyncConnection.connect(url) as conn:
            return await write_batch(conn, items, None), await write_batch(conn, items, None)

    outcomes, again = asyncio.run(run())
    assert dict(outcomes) == {"inserted": 2, "already_present": 1, "rejected": 1, "reconciled": 0}
    assert sum(again.values()) == 0, "a redelivered batch records nothing new"
    with psycopg.connect(url) as conn:
        audit = dict(conn.execute("SELECT payment_id, outcome || ':' || source_offset FROM recovery_audit").fetchall())
        found = conn.execute("SELECT order_id, payment_id, amount, metadata, created_at FROM orders")
        rows = {r[0]: r[1:] for r in found}
    assert audit == {"pay-a": "inserted:100", "pay-b": "already_present:101", "pay-c": "rejected:103",
                     "pay-d": "inserted:104"}
    assert rows["ord-x"][:2] == ("pay-a", Decimal("1.2345"))
    assert rows["ord-z"][1:] == (Decimal("9999.5"), {"game": "百家乐", "n": 2.5, "none": None}, odd.payment.paid_at)
    assert "ord-y" not in rows


def _write(url: str, *batches: list) -> list:
    """Each batch through write_batch in turn (one connection); their outcomes."""
    from streams.recover.store import write_batch

    async def run():
        async with await psycopg.AsyncConnection.connect(url) as conn:
            return [dict(await write_batch(conn, items, None)) for items in batches]

    return asyncio.run(run())


def test_a_rejected_record_naming_a_real_recovery_id_blocks_none_of_its_rows(base_settings) -> None:
    """A forged record that claims a real recovery's id but is rejected (here: its payment
    failed) comes first; the real recovery after it is inserted and audited, and the
    forged one keeps its own audit row. Redelivering both adds nothing."""
    from streams.recover.store import Item

    s = writer_settings(base_settings)
    url = s.database_url.get_secret_value()
    real = _recovery(7)
    forged = real.model_copy(update={"payment": real.payment.model_copy(update={"status": "failed"})})
    first = [Item(s.recovery_topic, 0, 10, forged)]
    second = [Item(s.recovery_topic, 1, 20, real)]
    outcomes = _write(url, first, second, first, second)
    assert outcomes[:2] == [{"rejected": 1, "reconciled": 0}, {"inserted": 1, "reconciled": 0}]
    assert all(sum(o.values()) == 0 for o in outcomes[2:]), "a redelivery records nothing new"
    with psycopg.connect(url) as conn:
        audit = conn.execute("SELECT recovery_id::text, outcome, source_offset FROM recovery_audit "
                             "ORDER BY source_offset").fetchall()
        row = conn.execute("SELECT payment_id, recovery_id::text FROM orders WHERE order_id = 'ord-7'").fetchone()
    assert audit == [(real.recovery_id, "rejected", 10), (real.recovery_id, "inserted", 20)]
    assert row == ("pay-7", real.recovery_id)


def _run_writer(s, values: list[tuple[str, bytes]]) -> list[DeadLetter]:
    """(topic, value) records through a Writer, dead letters to the real broker; the DLQ."""
    producer = Producer(config.producer(s))

    async def send_dead_letter(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        producer.produce(s.dlq_topic, value, key, headers=headers)
        assert producer.flush(30) == 0

    async def ack(token: int) -> None:
        pass

    async def run() -> None:
        writer = Writer(s, send_dead_letter)
        for offset, (topic, value) in enumerate(values):
            await writer.add(Record(topic, 0, offset, None, [], b"key", value, token=offset), ack)
        await writer.flush(ack)
        if writer.conn is not None:
            await writer.conn.close()

    asyncio.run(run())
    return [DeadLetter.decode(m.value()) for m in consume_all(s, s.dlq_topic, len(values), timeout=5)]


def test_forged_ids_reach_neither_orders_nor_late_orders(base_settings) -> None:
    """Late orders whose recovery_id is another payment's, or whose order is another
    order, go to the DLQ before the real late order: it reconciles the row with the real
    order. A recovery whose recovery_id is not derived from its payment is rejected."""
    import uuid
    from decimal import Decimal

    from schemas import LateOrder, recovery_id_for
    from tests.factories import order

    s = writer_settings(base_settings)
    real = _recovery(5)
    honest = LateOrder(order_id="ord-5", order=order(order_id="ord-5", amount=Decimal("12.34")), payment_id="pay-5",
                       recovery_id=real.recovery_id, lateness_seconds=1.0)
    takes_its_id = honest.model_copy(update={"payment_id": "pay-6",
                                             "order": order(order_id="ord-5", amount=Decimal("999"))})
    another_order = honest.model_copy(update={"order": order(order_id="ord-9", amount=Decimal("999"))})
    forged = _recovery(8).model_copy(update={"recovery_id": str(uuid.uuid4())})
    dead = _run_writer(s, [(s.late_topic, takes_its_id.encode()), (s.late_topic, another_order.encode()),
                           (s.recovery_topic, forged.encode()), (s.recovery_topic, real.encode()),
                           (s.late_topic, honest.encode())])
    assert sorted((d.offset, d.error.split(":")[0]) for d in dead) == [
        (0, (f"late order's recovery_id {real.recovery_id} is not the one derived from its payment_id pay-6 "
             f"({recovery_id_for('pay-6')})")),
        (1, "late order's order_id ord-5 differs from its order's ord-9")]
    with psycopg.connect(s.database_url.get_secret_value()) as conn:
        rows = conn.execute("SELECT order_id, reconciled_order->>'amount' FROM orders").fetchall()
        late = conn.execute("SELECT order_id, payment_id FROM late_orders").fetchall()
        audit = dict(conn.execute("SELECT order_id, outcome FROM recovery_audit").fetchall())
    assert rows == [("ord-5", "12.34")] and late == [("ord-5", "pay-5")]
    assert audit == {"ord-5": "inserted", "ord-8": "rejected"}


def test_a_late_order_of_another_order_neither_reconciles_nor_pre_empts_the_recovered_row(base_settings) -> None:
    """Its ids agree with each other (recovery_id derived from payment_id, order_id its
    order's), so only the database can tell that the row recovered for that payment is of
    another order: it comes first, then the real late order reconciles the row."""
    from decimal import Decimal

    from schemas import LateOrder
    from tests.factories import order

    s = writer_settings(base_settings)
    real = _recovery(5)
    honest = LateOrder(order_id="ord-5", order=order(order_id="ord-5", amount=Decimal("12.34")), payment_id="pay-5",
                       recovery_id=real.recovery_id, lateness_seconds=1.0)
    other = honest.model_copy(update={"order_id": "ord-9", "order": order(order_id="ord-9", amount=Decimal("999"))})
    assert _run_writer(s, [(s.late_topic, other.encode()), (s.recovery_topic, real.encode())]) == []
    assert _run_writer(s, [(s.late_topic, honest.encode())]) == []
    with psycopg.connect(s.database_url.get_secret_value()) as conn:
        rows = conn.execute("SELECT order_id, reconciled_order->>'order_id', reconciled_order->>'amount' "
                            "FROM orders").fetchall()
    assert rows == [("ord-5", "ord-5", "12.34")]
