"""Fuzzed records on the real broker: 10,000 hostile records (tests/join/fuzz.py, seeded;
the seed is printed) interleaved with 10,000 honest payment-order pairs, through two
running `slipguard join` workers, with each guarantee.

Workers stay up; every honest recovery is on orders.recovery (once, with exactly_once);
every record the contract refuses is dead-lettered and nothing else is; the honest late
orders are reported; and the group's committed offsets reach the end of both inputs.
A few records have header names that are not UTF-8, written with aiokafka (confluent-
kafka's producer cannot write them; its consumer raises SystemError reading them).
"""

from __future__ import annotations

import os
import random
import time

import pytest
from confluent_kafka import Producer

from schemas import Anomaly, DeadLetter, LateOrder, Payment, Recovery
from streams.join.core import Side
from streams.kafka import config
from tests.integration import unreadable
from tests.integration.conftest import consume_all
from tests.integration.test_hostile_inputs import _accept_any_timestamp
from tests.integration.test_join import _settings
from tests.integration.workers import read_to_end, start, stop, wait_until_done
from tests.join import fuzz
from tests.join.fuzz import Rec

HONEST, HOSTILE = 10_000, 10_000
SENDABLE = 990_000  # records heavier than this the test's producer cannot send (message.max.bytes)


def _plan(seed: int, now: int) -> list[Rec]:
    """Honest pairs stamped 400 to 200 s ago (every deadline passed: a backlog), hostile
    records among them; none from a fast clock (two in a row may move progress, as the
    contract allows: tests/join/test_fuzz.py checks that one alone moves nothing), and
    copies near their originals (a copy later than the window is a new payment to the
    join: docs/concepts/time-safety.md, out of order by more than the window)."""
    rnd = random.Random(seed)
    honest = fuzz.honest(HONEST, seed, start=now - 400_000, spacing=20)
    payments = [r for r in honest if r.side == Side.PAYMENT]
    oids = [r.oid for r in honest]
    kinds = [k for k in fuzz.KINDS if k != "fast-clock"]
    mixed = list(honest)
    for _ in range(HOSTILE):
        rec = fuzz.hostile_record(rnd, now, oids, base=now - 500_000, kinds=kinds)
        if rec.hostile == "copy":  # a producer's retry: soon after the original (within the window)
            original = rnd.choice(payments)
            rec = Rec(original.side, original.key, original.value, original.ts, original.headers, "copy", original.oid)
            mixed.insert(mixed.index(original) + rnd.randrange(1, 20), rec)
            continue
        mixed.insert(rnd.randrange(len(mixed) + 1), rec)
    return mixed


def _produce(s, records: list[Rec]) -> list[tuple[Rec, str, int, int, int]]:
    """Produce in order; (record, topic, partition, offset, timestamp) as the broker stored it."""
    stored: list[tuple[Rec, str, int, int, int]] = []
    failed: list[str] = []
    topics = (s.payments_topic, s.orders_topic)

    def delivered(rec: Rec):
        def report(err, msg) -> None:
            if err is not None:
                failed.append(str(err))
            else:
                stored.append((rec, msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1]))
        return report

    p = Producer(config.producer(s))
    aio: list[Rec] = []
    for rec in records:
        if fuzz.weight(rec.key, rec.value, rec.headers if isinstance(rec.headers, list) else None) > SENDABLE:
            continue
        if rec.headers == fuzz.UNREADABLE:
            if rec.key is not None or rec.value is not None:  # (aiokafka refuses a record with neither)
                aio.append(rec)
            continue
        kwargs = {"timestamp": rec.ts} if rec.ts > 0 else {}
        p.produce(topics[rec.side], rec.value, rec.key, headers=rec.headers, on_delivery=delivered(rec), **kwargs)
        p.poll(0)
    assert p.flush(60) == 0 and not failed, failed[:3]
    return stored + _produce_unreadable(s, aio[:50])


def _produce_unreadable(s, records: list[Rec]) -> list[tuple[Rec, str, int, int, int]]:
    """Records with a header name that is not UTF-8 (tests/integration/unreadable.py)."""
    topics = (s.payments_topic, s.orders_topic)
    foreign = [unreadable.Foreign(topics[r.side], r.key, r.value, ts=r.ts if r.ts > 0 else None) for r in records]
    return [(rec, *where) for rec, where in zip(records, unreadable.produce(s.bootstrap_servers, foreign), strict=True)]


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_ten_thousand_hostile_records_among_honest_traffic_through_running_workers(
        base_settings, tmp_path, guarantee: str) -> None:
    seed = int(os.environ.get("SLIPGUARD_FUZZ_SEED", random.randrange(2**32)))
    print(f"fuzz seed {seed} (SLIPGUARD_FUZZ_SEED={seed} repeats this run)")
    s = _settings(base_settings, processing_guarantee=guarantee, payment_hmac_key=fuzz.KEY.decode(),
                  commit_interval="200ms")
    _accept_any_timestamp(s)
    now = int(time.time() * 1000)
    stored = _produce(s, _plan(seed, now))
    logs = [tmp_path / f"join-{i}.log" for i in range(2)]
    workers = [start(s, ["join"], log, instance_id=None) for log in logs]  # each its own identity
    try:
        wait_until_done(s, len(stored), timeout=300)
        assert all(w.poll() is None for w in workers), "every worker stays up"
        _check_outputs(s, stored, now, once=guarantee == "exactly_once")
    finally:
        codes = [stop(w) for w in workers]
        assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)


def _check_outputs(s, stored: list[tuple[Rec, str, int, int, int]], now: int, *, once: bool) -> None:
    """What the contract says of each stored record: refused (the DLQ), recovered (an
    honest payment whose order is missing or late, or a valid hostile one of its own
    order id, whose order never comes), late (an honest order past its deadline)."""
    refused, recover, late = set(), set(), set()
    honest = {rec.oid for rec, *_ in stored if not rec.hostile}
    first_payment: set[str] = set()
    for rec, topic, partition, offset, ts in sorted(stored, key=lambda x: (x[1], x[2], x[3])):
        if not fuzz.accepted(Rec(rec.side, rec.key, rec.value, ts, rec.headers), int(time.time() * 1000)):
            assert rec.hostile, f"an honest record is refused: {rec}"
            refused.add((topic, partition, offset))
            continue
        n = int(rec.oid.rsplit("-", 1)[1]) % 10 if rec.oid in honest else -1  # (a copy is about an honest one)
        if rec.side == Side.ORDER:
            if n == 7:
                late.add(rec.oid)
            continue
        p = Payment.decode(rec.value or b"")
        if p.order_id in first_payment or p.status != "succeeded" or not p.signature_valid(fuzz.KEY):
            continue
        first_payment.add(p.order_id)
        if n in (3, 7) or p.order_id not in honest:
            recover.add(p.payment_id)
    got = [Recovery.decode(v).payment.payment_id for v in read_to_end(s, s.recovery_topic, len(recover), 120, 2)]
    assert set(got) == recover, f"{len(set(got) - recover)} invented, {len(recover - set(got))} lost"
    assert not once or len(got) == len(set(got)), "each recovery once for read_committed readers"
    letters = [DeadLetter.decode(v) for v in read_to_end(s, s.dlq_topic, len(refused), 120, 1)]
    where = [(d.source_topic, d.partition, d.offset) for d in letters]
    assert set(where) == refused, (f"{len(set(where) - refused)} dead-lettered without cause, "
                                   f"{len(refused - set(where))} not")
    assert not once or len(where) == len(set(where)), "each dead letter once"
    late_seen = {LateOrder.decode(m.value()).order_id for m in consume_all(s, s.late_topic, len(late), timeout=60)}
    assert late_seen == late
    anomalies = [Anomaly.decode(v) for v in read_to_end(s, s.anomalies_topic, 0, 10, 1)]
    assert all(a.kind in ("bad_signature", "paid_at_skew", "duplicate_payment") for a in anomalies), \
        {a.kind for a in anomalies}
