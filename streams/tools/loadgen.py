"""`slipguard loadgen`: realistic payment and order traffic, with a known answer.

Each order id gets one succeeded payment (some failed, some repeated, a few with a second
distinct payment) and usually its order: within the window (with out-of-order jitter),
late (past the deadline), or missing. The plan says what the join must conclude, so the
demo, the tests and the benchmark can check the outcome.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message, Producer

from streams.kafka import config
from streams.settings import Settings

CURRENCIES = ("CNY", "USD", "EUR", "HKD", "SGD")
GAMES = ("baccarat", "roulette", "football", "lottery", "slots")


@dataclass(frozen=True)
class Shares:
    missing: float = 0.02  # paid, order never comes back
    late: float = 0.01  # order comes back past the deadline
    duplicates: float = 0.02  # the payment event published twice
    second_payment: float = 0.002  # a second distinct succeeded payment for the order
    mismatch: float = 0.005  # order disagrees with the payment (amount)
    failed: float = 0.02  # failed payment, no order needed
    jitter_ms: int = 2_000  # orders published up to this much before or after their payment
    # Set: orders come this many ms (low, high) after their payment instead, as real order
    # services answer (the pending state then lives across commits).
    delay_ms: tuple[int, int] | None = None


@dataclass
class Expected:
    """What the join must conclude from a plan."""

    payments: int = 0  # payment records produced (including repeats)
    orders: int = 0
    recovered: set[str] = field(default_factory=set)  # payment ids
    late: set[str] = field(default_factory=set)  # order ids with a late order
    matched: int = 0
    anomalies: dict[str, int] = field(default_factory=dict)

    def merge(self, other: Expected) -> None:
        self.payments += other.payments
        self.orders += other.orders
        self.recovered |= other.recovered
        self.late |= other.late
        self.matched += other.matched
        for k, v in other.anomalies.items():
            self.anomalies[k] = self.anomalies.get(k, 0) + v


Record = tuple[int, bytes, bytes, int]  # (0 payment | 1 order, key, value, timestamp ms)


def _payment(pid: str, oid: str, uid: str, amount: str, cur: str, status: str, ts: int, game: str) -> bytes:
    paid_at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts // 1000)) + f".{ts % 1000:03d}+00:00"
    return (f'{{"payment_id":"{pid}","order_id":"{oid}","user_id":"{uid}","amount":"{amount}",'
            f'"currency":"{cur}","status":"{status}","paid_at":"{paid_at}",'
            f'"metadata":{{"game":"{game}","round":{ts // 60000}}}}}').encode()


def _order(oid: str, uid: str, amount: str, cur: str, ts: int, game: str) -> bytes:
    created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts // 1000)) + f".{ts % 1000:03d}+00:00"
    return (f'{{"order_id":"{oid}","user_id":"{uid}","amount":"{amount}","currency":"{cur}",'
            f'"created_at":"{created}","metadata":{{"game":"{game}"}}}}').encode()


def paid_at_ms(start_ms: int, spacing_ms: float, i: int) -> int:
    """The timestamp of a plan's `i`-th payment (its first, succeeded or failed)."""
    return start_ms + int(i * spacing_ms)


def plan(count: int, *, start_ms: int, spacing_ms: float, timeout_ms: int, shares: Shares = Shares(),
         seed: int = 7, prefix: str = "o") -> tuple[list[Record], list[Record], Expected]:
    """`count` orders' worth of payments and orders, each topic in publish order.

    Returns (payments, orders, expected). Timestamps start at start_ms, one order id every
    spacing_ms; records are published in timestamp order per topic.
    """
    rnd = random.Random(seed)
    pays: list[Record] = []
    ords: list[Record] = []
    exp = Expected()
    jitter = min(shares.jitter_ms, timeout_ms)
    for i in range(count):
        t = paid_at_ms(start_ms, spacing_ms, i)
        oid = f"{prefix}{seed}-{i}"
        key = oid.encode()
        uid = f"u{rnd.randrange(100_000)}"
        amount = f"{rnd.randrange(100, 100_000) / 100:.2f}"
        cur = rnd.choice(CURRENCIES)
        game = rnd.choice(GAMES)
        pid = f"p{seed}-{i}"
        r = rnd.random()
        if r < shares.failed:
            pays.append((0, key, _payment(pid, oid, uid, amount, cur, "failed", t, game), t))
            continue
        pays.append((0, key, _payment(pid, oid, uid, amount, cur, "succeeded", t, game), t))
        if rnd.random() < shares.duplicates:
            pays.append((0, key, pays[-1][2], t + rnd.randrange(0, 500)))
        if rnd.random() < shares.second_payment:
            t2 = t + rnd.randrange(1, 1000)
            pays.append((0, key, _payment(pid + "b", oid, uid, amount, cur, "succeeded", t2, game), t2))
            exp.anomalies["duplicate_payment"] = exp.anomalies.get("duplicate_payment", 0) + 1
        r -= shares.failed
        if r < shares.missing:
            exp.recovered.add(pid)
            continue
        r -= shares.missing
        if r < shares.late:
            ts = t + timeout_ms + rnd.randrange(1, max(2, timeout_ms))
            exp.recovered.add(pid)
            exp.late.add(oid)
        else:
            ts = t + (rnd.randint(*shares.delay_ms) if shares.delay_ms else rnd.randint(-jitter, jitter))
            exp.matched += 1
            if rnd.random() < shares.mismatch:
                amount = f"{float(amount) + 1:.2f}"
                exp.anomalies["amount_mismatch"] = exp.anomalies.get("amount_mismatch", 0) + 1
        ords.append((1, key, _order(oid, uid, amount, cur, ts, game), ts))
    pays.sort(key=lambda r: r[3])
    ords.sort(key=lambda r: r[3])
    exp.payments, exp.orders = len(pays), len(ords)
    return pays, ords, exp


def merged(pays: list[Record], ords: list[Record]) -> Iterator[Record]:
    """Both topics in one publish order (by timestamp)."""
    i = j = 0
    while i < len(pays) or j < len(ords):
        if j >= len(ords) or (i < len(pays) and pays[i][3] <= ords[j][3]):
            yield pays[i]
            i += 1
        else:
            yield ords[j]
            j += 1


def produce(settings: Settings, records: list[Record] | Iterator[Record], *, rate: float | None = None,
            realtime: bool = False, progress: Callable[[str, int, int], None] | None = None, total: int = 0,
            on_delivery: Callable[[KafkaError | None, Message], None] | None = None) -> int:
    """Produce records; with `rate`, at most that many per second; with `realtime`, each at its timestamp;
    `progress(what, done, total)` every 1,000 records. `on_delivery(error, message)`: each
    record's delivery report, served as soon as it comes (the producer is polled after each
    record and while it waits), so that the time it is called is close to the broker's
    acknowledgement."""
    producer = Producer(config.producer(settings) | {"linger.ms": 20})
    topics = (settings.payments_topic, settings.orders_topic)
    started = time.monotonic()
    n = 0
    for kind, key, value, ts in records:
        if realtime:
            wait = ts / 1000 - time.time()
            if wait > 0 and on_delivery is not None:
                # poll returns as reports come (each is served at once, not after the wait);
                # it counts whole milliseconds, and would spin through the last one
                while (wait := ts / 1000 - time.time()) >= 0.001:
                    producer.poll(wait)
                time.sleep(max(0.0, wait))
            elif wait > 0:
                producer.poll(0)
                time.sleep(wait)
        elif rate:
            ahead = n / rate - (time.monotonic() - started)
            if ahead > 0.005:
                producer.poll(0)
                time.sleep(ahead)
        while True:
            try:
                producer.produce(topics[kind], value, key, timestamp=ts, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
        if on_delivery is not None:
            producer.poll(0)
        if n % 1_000 == 0:
            if n % 10_000 == 0:
                producer.poll(0)
            if progress is not None:
                progress("produced", n, total)
    remaining = producer.flush(120)
    if remaining:
        raise RuntimeError(f"{remaining} records were not delivered to Kafka")
    return n
