"""Fuzzed records through a running `slipguard recover`, on the real broker and the real
PostgreSQL: honest recoveries and late orders mixed with forgeries of them (some before
the real one), replays, junk, and malformed, huge and deep records with hostile headers
(tests/recover/test_fuzz_writer.py makes the same kinds, and its reference says what
each mutated record must become). The writer stays up; every honest recovery is written
once; nothing rejected reaches orders or late_orders; every poison record is in the DLQ,
once; and the group's committed offsets reach the end of both topics.

The seed is printed; SLIPGUARD_FUZZ_SEED replays a run.
"""

from __future__ import annotations

import functools
import os
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition

from schemas import DeadLetter, LateOrder, Recovery, recovery_id_for
from streams.kafka import config
from tests.factories import order
from tests.integration.conftest import consume_all
from tests.integration.test_recover import _recovery, writer_settings
from tests.integration.workers import committed_total, start, stop
from tests.recover.test_fuzz_writer import INSERTS, JUNK, KEY, TAILS, TRACE, WRONG, _spelled_loosely, expected

HONEST = 150


@dataclass
class Sent:
    topic: str  # "recovery" or "late"
    value: bytes | None
    kind: str
    verdict: str  # stored, rejected, dead (the reference's), or "late of another order"
    headers: list
    where: tuple[str, int, int] | None = None  # topic, partition, offset once delivered


def _signed(i: int, prefix: str = "") -> Recovery:
    r = _recovery(i)
    p = r.payment.model_copy(update={"payment_id": f"{prefix}pay-{i}", "order_id": f"{prefix}ord-{i}"})
    p = p.model_copy(update={"signature": p.expected_signature(KEY)})
    return r.model_copy(update={"recovery_id": recovery_id_for(p.payment_id), "order_id": p.order_id, "payment": p})


def _late(r: Recovery) -> LateOrder:
    return LateOrder(order_id=r.order_id, order=order(order_id=r.order_id, amount=r.payment.amount),
                     payment_id=r.payment.payment_id, recovery_id=r.recovery_id, lateness_seconds=3.0)


def _forged_recovery(rng: random.Random, r: Recovery) -> tuple[str, Recovery]:
    p = r.payment
    kinds = {
        "random recovery_id": lambda: r.model_copy(update={"recovery_id": str(uuid.UUID(int=rng.getrandbits(128)))}),
        "its recovery_id, another payment": lambda: r.model_copy(update={"payment": p.model_copy(
            update={"payment_id": "forged-" + p.payment_id})}),
        "its recovery_id, another order": lambda: r.model_copy(update={"order_id": "forged-" + r.order_id}),
        "failed": lambda: r.model_copy(update={"payment": p.model_copy(update={"status": "failed"})}),
        "unsigned": lambda: r.model_copy(update={"payment": p.model_copy(update={"signature": None})}),
        "signed with another key": lambda: r.model_copy(update={"payment": p.model_copy(
            update={"signature": p.expected_signature(WRONG)})}),
        "amount changed": lambda: r.model_copy(update={"payment": p.model_copy(update={"amount": p.amount * 10})}),
    }
    kind = rng.choice(sorted(kinds))
    return kind, kinds[kind]()


def _forged_late(rng: random.Random, late: LateOrder) -> tuple[str, LateOrder]:
    kinds = {
        "random recovery_id": {"recovery_id": str(uuid.UUID(int=rng.getrandbits(128)))},
        "its recovery_id, another payment": {"payment_id": "forged-" + late.payment_id},
        "its order_id, another order": {"order": late.order.model_copy(update={"order_id": "forged"})},
        "another order, consistent": {"order_id": "forged-" + late.order_id,
                                      "order": late.order.model_copy(update={"order_id": "forged-" + late.order_id})},
        "recovery_id spelled loosely": {"recovery_id": _spelled_loosely(late.recovery_id)},
    }
    kind = rng.choice(sorted(kinds))
    return kind, late.model_copy(update=kinds[kind])


def _mutate(rng: random.Random, raw: bytes) -> tuple[str, bytes]:
    how = rng.choice(sorted(INSERTS) + sorted(TAILS) + ["truncated", "byte flipped"])
    if how in INSERTS:
        starts = [i + 3 for i in range(len(raw)) if raw.startswith(b'":"', i)] or [len(raw) // 2]
        at = rng.choice(starts)
        return how, raw[:at] + INSERTS[how] + raw[at:]
    if how in TAILS:
        return how, raw[:-1] + TAILS[how](rng.choice([10, 3_000, 150_000, 300_000])) + b"}"
    at = rng.randrange(len(raw))
    if how == "truncated":
        return how, raw[:at]
    return how, raw[:at] + bytes([rng.randrange(256)]) + raw[at + 1:]


def _headers(rng: random.Random) -> list:
    pick = rng.random()
    if pick < 0.7:
        return [("traceparent", TRACE)]
    if pick < 0.95:
        return [(f"h{i}", rng.randbytes(rng.randrange(0, 1_000))) for i in range(rng.randrange(1, 80))]
    return [("traceparent", rng.choice([b"00-abc", b"\xff" * 55, b"0" * 4_000]))]


def _huge_trace(n: int) -> Sent:
    """Poison of 200 KB (kept whole in its dead letter, base64) with a traceparent as large as
    the broker takes beside it: copied as it is, the dead letter would not fit the broker."""
    value = b'{"pad":"' + b"x" * (200_000 + n)
    return Sent("recovery", value, "huge traceparent", "dead", [("traceparent", b"0" * 780_000)])


def _workload(seed: int) -> tuple[list[Sent], list[Recovery], list[LateOrder]]:
    rng = random.Random(seed)
    keys = (KEY,)
    honest = [_signed(i) for i in range(HONEST)]
    lates = [_late(r) for r in rng.sample(honest, 40)]
    sent = [Sent("recovery", r.encode(), "honest", "stored", [("traceparent", TRACE)]) for r in honest]
    sent += [Sent("late", lt.encode(), "honest late", "stored", []) for lt in lates]
    sent += [Sent("recovery", r.encode(), "replay", "stored", []) for r in rng.sample(honest, 20)]
    for _ in range(90):
        kind, forged = _forged_recovery(rng, rng.choice(honest))
        sent.append(Sent("recovery", forged.encode(), f"forged recovery: {kind}", "rejected", []))
    for _ in range(40):
        kind, forged_late = _forged_late(rng, rng.choice(lates))
        verdict = "late of another order" if kind == "another order, consistent" else "dead"
        sent.append(Sent("late", forged_late.encode(), f"forged late: {kind}", verdict, []))
    for n in range(150):  # malformed copies of records of their own (ids no honest record has)
        base = _signed(n, prefix="m") if rng.random() < 0.7 else _late(_signed(n, prefix="m"))
        topic = "recovery" if isinstance(base, Recovery) else "late"
        how, value = _mutate(rng, base.encode())
        sent.append(Sent(topic, value, f"mutated: {how}", expected(topic, value, keys), []))
    for junk in JUNK:
        for topic in ("recovery", "late"):
            sent.append(Sent(topic, junk, "junk", "dead", []))
    for s in sent:
        s.headers = s.headers or _headers(rng)
    sent += [_huge_trace(n) for n in range(3)]
    rng.shuffle(sent)  # forgeries before and after the records they copy
    return sent, honest, lates


def _produce(s, sent: list[Sent]) -> None:
    topics = {"recovery": s.recovery_topic, "late": s.late_topic}
    failed: list[str] = []

    def delivered(item: Sent, err, msg) -> None:
        if err is not None:
            failed.append(f"{item.kind}: {err}")
        else:
            item.where = (msg.topic(), msg.partition(), msg.offset())

    p = Producer(config.producer(s, **{"linger.ms": 50}))
    for item in sent:
        p.produce(topics[item.topic], item.value, b"ord", headers=item.headers,
                  on_delivery=functools.partial(delivered, item))
        p.poll(0)
    assert p.flush(60) == 0 and not failed, failed[:5]


def _ends(s) -> int:
    c = Consumer(config.consumer(s, f"ends-{uuid.uuid4().hex[:6]}"))
    try:
        return sum(c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
                   for t in (s.recovery_topic, s.late_topic) for p in range(s.partitions))
    finally:
        c.close()


def _wait_committed(s, end: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    done = None
    while time.monotonic() < deadline:
        done = committed_total(s, s.recover_group, [s.recovery_topic, s.late_topic], s.partitions)
        if done == end:
            return
        time.sleep(0.5)
    raise AssertionError(f"the writer's group committed {done} of {end} offsets in {timeout}s")


def test_fuzzed_records_through_a_running_writer(base_settings, tmp_path) -> None:
    seed = int(os.environ.get("SLIPGUARD_FUZZ_SEED", random.randrange(2**32)))
    print(f"writer fuzz seed: {seed} (SLIPGUARD_FUZZ_SEED={seed} replays it)")
    s = writer_settings(base_settings)
    sent, honest, lates = _workload(seed)
    _produce(s, sent)
    log = tmp_path / "recover.log"
    writer = start(s, ["recover"], log, payment_hmac_key=KEY.decode())
    try:
        _wait_committed(s, _ends(s))
        assert writer.poll() is None, log.read_text()[-3000:]
        _assert_written(s, sent, honest, lates)
        dead = [DeadLetter.decode(m.value()) for m in consume_all(s, s.dlq_topic, len(sent), timeout=10)]
        where = Counter((d.source_topic, d.partition, d.offset) for d in dead)
        assert all(n == 1 for n in where.values()), "each poison record in the DLQ once"
        poison = {x.where: x.kind for x in sent if x.verdict == "dead"}
        missing = sorted(kind for at, kind in poison.items() if at not in where)
        assert set(where) == set(poison), (f"seed {seed}: not in the DLQ: {missing[:5]}; "
                                           f"extra: {set(where) - set(poison)}")
    finally:
        assert stop(writer) == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def _decoded(sent: list[Sent], topic: str, verdict: str) -> list:
    model = Recovery if topic == "recovery" else LateOrder
    return [model.decode(x.value) for x in sent if x.topic == topic and x.verdict == verdict]  # type: ignore[arg-type]


def _assert_written(s, sent: list[Sent], honest: list[Recovery], lates: list[LateOrder]) -> None:
    stored = _decoded(sent, "recovery", "stored")
    with psycopg.connect(s.database_url.get_secret_value()) as conn:
        orders = {r[0]: r[1:] for r in conn.execute(
            "SELECT order_id, payment_id, recovery_id::text, amount, reconciled_order->>'order_id' FROM orders")}
        audit = conn.execute("SELECT recovery_id::text, outcome, source_topic, source_partition, source_offset "
                             "FROM recovery_audit").fetchall()
        late_rows = set(conn.execute("SELECT recovery_id::text, order_id FROM late_orders").fetchall())
    allowed = {r.order_id: (r.payment.payment_id, r.recovery_id, r.payment.amount) for r in stored}
    assert set(orders) == set(allowed), "the stored records' orders, and no other"
    assert all(orders[o][:3] == allowed[o] for o in orders), "each as the honest record has it"
    written = Counter(rid for rid, outcome, *_ in audit if outcome == "inserted")
    assert all(written[r.recovery_id] == 1 for r in honest), "every honest recovery written, once"
    assert all(outcome != "already_present" for _, outcome, *_ in audit)
    rejected = {(t, p, o) for _, outcome, t, p, o in audit if outcome == "rejected"}
    assert rejected == {x.where for x in sent if x.verdict == "rejected"}, "each rejected record audited, once"
    kept = _decoded(sent, "late", "stored") + _decoded(sent, "late", "late of another order")
    assert late_rows == {(lt.recovery_id, lt.order_id) for lt in kept}, "no forged late order but those of no row"
    assert {o for o, row in orders.items() if row[3] is not None} == {lt.order_id for lt in lates}
    assert all(row[3] in (None, o) for o, row in orders.items()), "reconciled only with its own order"
