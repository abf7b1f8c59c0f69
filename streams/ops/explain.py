"""`slipguard explain ORDER_ID`: what slipguard knows about one order, from what is durable.

It reads only the partition the order id hashes to (Kafka's murmur2, as every producer
of slipguard's topics partitions by order id) of payments, orders, the join's changelog,
orders.recovery, orders.late and payments.anomalies, and the order's rows in PostgreSQL,
and returns them as a timeline. (The DLQ is keyed by source coordinates, not order id,
and is not read.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from schemas import Anomaly, LateOrder, Order, Payment, Recovery
from streams.join import changelog
from streams.kafka.partition import partition_for
from streams.kafka.read import Progress, partition_count, read, topic_names
from streams.kafka.topics import not_found
from streams.settings import Settings


@dataclass
class Event:
    at: str | None  # RFC 3339, UTC; None for what has no time of its own
    source: str  # topic[partition]@offset, "changelog", "postgresql"
    what: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Explanation:
    order_id: str
    partition: int
    events: list[Event]
    state: str  # what the join holds for it now
    database: str  # what PostgreSQL holds for it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(ms: int | None) -> str | None:
    if ms is None or ms < 0:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _records(s: Settings, topic: str, oid: str, since_ms: int | None, progress: Progress | None):  # noqa: ANN202
    count = partition_count(s, topic)
    if not count:
        return
    key = oid.encode()
    p = partition_for(key, count)
    for r in read(s, topic, [p], since_ms=since_ms, progress=progress):
        if r.key == key:
            yield f"{topic}[{p}]@{r.offset}", r


def explain(s: Settings, order_id: str, *, since_ms: int | None = None, progress: Progress | None = None,
            database: bool = True) -> Explanation:
    events: list[Event] = []
    count = partition_count(s, s.payments_topic)
    if count is None:
        raise LookupError(not_found(s, [s.payments_topic], topic_names(s)))
    partition = partition_for(order_id.encode(), count)

    def decoded(model: Any, where: str, r: Any, describe: Callable[[Any], tuple[str, dict]]) -> None:
        try:
            msg = model.decode(r.value or b"")
        except (ValidationError, ValueError) as exc:
            events.append(Event(_iso(r.timestamp_ms), where, f"a record the join cannot read ({type(exc).__name__}): "
                                                             "it went to the DLQ"))
            return
        what, details = describe(msg)
        events.append(Event(_iso(r.timestamp_ms), where, what, details))

    for where, r in _records(s, s.payments_topic, order_id, since_ms, progress):
        decoded(Payment, where, r, lambda p: (
            f"payment {p.payment_id} {p.status}: {p.amount} {p.currency}, user {p.user_id}",
            {"payment_id": p.payment_id, "status": p.status}))
    for where, r in _records(s, s.orders_topic, order_id, since_ms, progress):
        decoded(Order, where, r, lambda o: (f"order arrived: {o.amount} {o.currency}, user {o.user_id}", {}))
    for where, r in _records(s, s.recovery_topic, order_id, since_ms, progress):
        decoded(Recovery, where, r, lambda x: (
            f"recovered: no order by the deadline {x.deadline.isoformat()} (recovery_id {x.recovery_id})",
            {"recovery_id": str(x.recovery_id), "payment_id": x.payment.payment_id}))
    for where, r in _records(s, s.late_topic, order_id, since_ms, progress):
        decoded(LateOrder, where, r, lambda x: (
            f"late order: came {x.lateness_seconds:.1f} s after its payment was recovered", {}))
    for where, r in _records(s, s.anomalies_topic, order_id, since_ms, progress):
        decoded(Anomaly, where, r, lambda a: (f"anomaly: {a.kind}", {"kind": a.kind}))

    state = _state(s, order_id, partition, progress)
    db = _database(s, order_id, events) if database else "not read"
    events.sort(key=lambda e: (e.at is None, e.at or ""))
    return Explanation(order_id, partition, events, state, db)


def _state(s: Settings, oid: str, partition: int, progress: Progress | None) -> str:
    """The join's state for the order, from the last value of its changelog keys."""
    latest: dict[bytes, bytes | None] = {}
    mine = changelog.keys_of(oid)
    for r in read(s, s.changelog_topic, [partition], progress=progress):
        if r.key is not None and (r.key in mine or changelog.is_bundle(r.key)):
            latest[r.key] = r.value
    said = []
    for h in changelog.held(latest, oid):
        if h.kind == "pending":
            since = h.since_ms or 0
            said.append(f"payment {h.payment_id} pending since {_iso(since)}: recovered if no order by "
                        f"{_iso(since + s.order_timeout)} (+ grace)")
        elif h.kind == "recovered":
            said.append(f"payment {h.payment_id} recovered at {_iso(h.since_ms)}; remembered to recognise its late "
                        "order")
        elif h.kind == "waiting":
            said.append("an order waiting for its payment")
        elif h.kind == "settled":
            said.append("matched, its window closed: a fingerprint of its payment is kept to recognise a duplicate "
                        "(or a second payment) delivered late")
        else:
            said.append(f"matched: payment {h.payment_id} with its order")
    return "; ".join(said) or "nothing (never seen, or forgotten after its window)"


def _database(s: Settings, oid: str, events: list[Event]) -> str:
    import psycopg

    try:
        with psycopg.connect(s.database_url.get_secret_value(), connect_timeout=5) as conn:
            order = conn.execute("SELECT source, recovered_at, reconciled_at FROM orders WHERE order_id = %s",
                                 (oid,)).fetchone()
            audits = conn.execute("SELECT outcome, reason, written_at, recovery_id FROM recovery_audit "
                                  "WHERE order_id = %s ORDER BY written_at", (oid,)).fetchall()
    except psycopg.Error as exc:
        return f"not read ({type(exc).__name__})"
    for outcome, reason, written_at, recovery_id in audits:
        events.append(Event(written_at.astimezone(UTC).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z"), "postgresql", f"recovery {recovery_id} written: {outcome}"
                                          + (f" ({reason})" if reason else ""), {"outcome": outcome}))
    if order is None:
        return "no row in orders"
    source, _recovered_at, reconciled_at = order
    if source == "recovery":
        return "a recovered order" + (", reconciled with the real order" if reconciled_at else "")
    return "an order written by the order service"


def as_text(x: Explanation) -> str:
    lines = [f"order {x.order_id} (partition {x.partition})"]
    for e in x.events:
        lines.append(f"  {e.at or '-':<24}  {e.source:<28}  {e.what}")
    if not x.events:
        lines.append("  nothing in the topics for it")
    lines.append(f"  join state now: {x.state}")
    lines.append(f"  PostgreSQL: {x.database}")
    return "\n".join(lines)
